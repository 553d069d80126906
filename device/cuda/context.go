package cuda

import (
	"encoding/hex"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Context is one device's primary context (the one the CUDA runtime, and
// so PyTorch, uses on that device in this process), with two streams of
// its own: one for copies to the host and one for copies to the device,
// so that the two directions overlap. A CUDA context is current per OS
// thread; every method here locks its goroutine to its thread and makes
// the context current first, so a Context may be used from any
// goroutine.
type Context struct {
	d       *Driver
	ordinal int
	info    DeviceInfo
	ctx     uintptr // CUcontext
	toHost  *Stream
	toDev   *Stream

	mu     sync.Mutex
	closed bool
	red    *Reducer
}

// Device attributes read at Open (cuda.h CUdevice_attribute).
const (
	attrMultiprocessors = 16
	attrComputeMajor    = 75
	attrComputeMinor    = 76
)

// Open retains the primary context of the device with this ordinal among
// the visible ones (CUDA_VISIBLE_DEVICES applies: a worker that the
// launcher gave one GPU opens ordinal 0).
func (d *Driver) Open(ordinal int) (*Context, error) {
	n, err := d.Visible()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("%w: device %d asked for, %d visible (CUDA_VISIBLE_DEVICES=%q): ask for 0 to %d", ErrNoDevice, ordinal, n, envOr("CUDA_VISIBLE_DEVICES", "unset"), n-1)
	}
	info, err := d.Describe(ordinal)
	if err != nil {
		return nil, err
	}
	c := &Context{d: d, ordinal: ordinal, info: info}
	if err := d.call(ordinal, "cuDevicePrimaryCtxRetain", d.f.primaryCtxRetain, uintptr(unsafe.Pointer(&c.ctx)), info.dev); err != nil {
		return nil, err
	}
	if c.toHost, err = c.NewStream(); err == nil {
		c.toDev, err = c.NewStream()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// DeviceInfo is what the driver says of a device without a context on
// it (a context costs device memory and time).
type DeviceInfo struct {
	Ordinal         int    `json:"ordinal"` // among the visible devices
	Name            string `json:"name"`
	UUID            string `json:"uuid"` // nvidia-smi's form, as NVML reports it
	MemoryTotal     int64  `json:"memory_total_bytes"`
	Multiprocessors int    `json:"multiprocessors"`
	ComputeMajor    int    `json:"compute_major"`
	ComputeMinor    int    `json:"compute_minor"`
	dev             uintptr
}

// Describe reads the name, UUID, memory and architecture of the device
// with this ordinal.
func (d *Driver) Describe(ordinal int) (DeviceInfo, error) {
	info := DeviceInfo{Ordinal: ordinal}
	var dev int32
	if err := d.call(ordinal, "cuDeviceGet", d.f.deviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(ordinal)); err != nil {
		return info, err
	}
	info.dev = uintptr(dev)
	var name [256]byte
	if err := d.call(ordinal, "cuDeviceGetName", d.f.deviceGetName, uintptr(unsafe.Pointer(&name[0])), uintptr(len(name)-1), info.dev); err != nil {
		return info, err
	}
	info.Name = goString(&name[0])
	var uuid [16]byte
	if err := d.call(ordinal, "cuDeviceGetUuid", d.f.deviceGetUuid, uintptr(unsafe.Pointer(&uuid[0])), info.dev); err != nil {
		return info, err
	}
	info.UUID = formatUUID(uuid)
	var total uint64
	if err := d.call(ordinal, "cuDeviceTotalMem", d.f.deviceTotalMem, uintptr(unsafe.Pointer(&total)), info.dev); err != nil {
		return info, err
	}
	info.MemoryTotal = int64(total)
	for _, a := range []struct {
		attr int
		to   *int
	}{{attrMultiprocessors, &info.Multiprocessors}, {attrComputeMajor, &info.ComputeMajor}, {attrComputeMinor, &info.ComputeMinor}} {
		var v int32
		if err := d.call(ordinal, "cuDeviceGetAttribute", d.f.deviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(a.attr), info.dev); err != nil {
			return info, detail(err, "attribute %d", a.attr)
		}
		*a.to = int(v)
	}
	return info, nil
}

func envOr(k, def string) string {
	if v, ok := lookupEnv(k); ok {
		return v
	}
	return def
}

// formatUUID writes a device UUID the way nvidia-smi and NVML do.
func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return "GPU-" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// call runs a driver function with this context current on the calling
// thread.
//
//go:uintptrescapes
func (c *Context) call(what string, fn uintptr, args ...uintptr) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := c.d.call(c.ordinal, "cuCtxSetCurrent", c.d.f.ctxSetCurrent, c.ctx); err != nil {
		return err
	}
	return c.d.call(c.ordinal, what, fn, args...)
}

// destroy releases the driver object *h with fn, once.
func (c *Context) destroy(what string, fn uintptr, h *uintptr) error {
	if *h == 0 {
		return nil
	}
	err := c.call(what, fn, *h)
	*h = 0
	return err
}

// Device is the ordinal this context was opened on.
func (c *Context) Device() int { return c.ordinal }

// Name is the device's product name, e.g. "NVIDIA H200".
func (c *Context) Name() string { return c.info.Name }

// UUID is the device's UUID in nvidia-smi's form (GPU-xxxxxxxx-…), the
// key that ties it to NVML's view (package device).
func (c *Context) UUID() string { return c.info.UUID }

// TotalMem is the device memory in bytes.
func (c *Context) TotalMem() int64 { return c.info.MemoryTotal }

// Multiprocessors is the number of streaming multiprocessors.
func (c *Context) Multiprocessors() int { return c.info.Multiprocessors }

// ComputeCapability is the architecture, e.g. 9, 0 for Hopper.
func (c *Context) ComputeCapability() (major, minor int) {
	return c.info.ComputeMajor, c.info.ComputeMinor
}

// MemInfo is the free and total device memory, now.
func (c *Context) MemInfo() (free, total int64, err error) {
	var f, t uint64
	err = c.call("cuMemGetInfo", c.d.f.memGetInfo, uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t)))
	return int64(f), int64(t), err
}

// Close releases the context's streams and its hold on the primary
// context. Memory, streams and modules made from it must be freed first.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	if c.red != nil {
		keep(c.red.mod.Close())
	}
	for _, s := range []*Stream{c.toHost, c.toDev} {
		if s != nil {
			keep(s.Close())
		}
	}
	if c.ctx != 0 {
		keep(c.d.call(c.ordinal, "cuDevicePrimaryCtxRelease", c.d.f.primaryCtxRelease, c.info.dev))
	}
	return first
}

// Mem is device memory from cuMemAlloc. It implements the interface
// collective.DeviceMemory (Len, CopyToHost, CopyFromHost), so a Stager
// can all-reduce it; each copy runs on its context's stream for that
// direction and returns when it is done.
type Mem struct {
	c    *Context
	ptr  uint64
	n    int
	once sync.Once
}

// Alloc allocates n bytes of device memory. A request that does not fit
// fails with an error that wraps ErrOutOfMemory and says how much was
// free.
func (c *Context) Alloc(n int) (*Mem, error) {
	if n < 0 {
		return nil, fmt.Errorf("cuda device %d: allocating %d bytes", c.ordinal, n)
	}
	m := &Mem{c: c, n: n}
	if n == 0 {
		return m, nil // the driver refuses size 0; nothing to copy either
	}
	if err := c.call("cuMemAlloc", c.d.f.memAlloc, uintptr(unsafe.Pointer(&m.ptr)), uintptr(n)); err != nil {
		free, total, ierr := c.MemInfo()
		if ierr == nil {
			return nil, detail(err, "%d bytes; %d of %d bytes free", n, free, total)
		}
		return nil, detail(err, "%d bytes", n)
	}
	return m, nil
}

// Ptr is the device address (for kernels and Stream methods).
func (m *Mem) Ptr() uint64 { return m.ptr }

// Len is the size in bytes.
func (m *Mem) Len() int { return m.n }

// Free releases the memory; later calls do nothing.
func (m *Mem) Free() error {
	var err error
	m.once.Do(func() {
		if m.ptr != 0 {
			err = m.c.call("cuMemFree", m.c.d.f.memFree, uintptr(m.ptr))
		}
		m.ptr, m.n = 0, 0
	})
	return err
}

func (m *Mem) bounds(what string, off, n int) error {
	if off < 0 || n < 0 || off+n > m.n {
		return fmt.Errorf("cuda device %d: %s of bytes %d..%d outside %d bytes of device memory", m.c.ordinal, what, off, off+n, m.n)
	}
	return nil
}

// CopyToHost copies len(dst) bytes from offset off to dst and waits. dst
// in pinned memory (Context.HostAlloc) moves at the bus's speed; other
// memory is staged by the driver, several times slower.
func (m *Mem) CopyToHost(dst []byte, off int) error {
	if err := m.c.toHost.CopyToHost(dst, m, off); err != nil {
		return err
	}
	return m.c.toHost.Sync()
}

// CopyFromHost copies src to offset off and waits.
func (m *Mem) CopyFromHost(off int, src []byte) error {
	if err := m.c.toDev.CopyToDevice(m, off, src); err != nil {
		return err
	}
	return m.c.toDev.Sync()
}

// Pinned is page-locked host memory from cuMemHostAlloc, which the GPU's
// copy engines reach directly. It is portable: every context in the
// process may use it.
type Pinned struct {
	c    *Context
	p    *byte
	n    int
	once sync.Once
}

const hostAllocPortable = 1 // CU_MEMHOSTALLOC_PORTABLE

// HostAlloc allocates n bytes of pinned host memory.
func (c *Context) HostAlloc(n int) (*Pinned, error) {
	p := &Pinned{c: c, n: n}
	if n <= 0 {
		return nil, fmt.Errorf("cuda device %d: pinned host allocation of %d bytes", c.ordinal, n)
	}
	if err := c.call("cuMemHostAlloc", c.d.f.memHostAlloc, uintptr(unsafe.Pointer(&p.p)), uintptr(n), hostAllocPortable); err != nil {
		return nil, detail(err, "%d bytes pinned", n)
	}
	return p, nil
}

// Bytes is the memory; it must not be used after Free.
func (p *Pinned) Bytes() []byte {
	if p.p == nil {
		return nil
	}
	return unsafe.Slice(p.p, p.n)
}

// Free releases the memory; later calls do nothing.
func (p *Pinned) Free() error {
	var err error
	p.once.Do(func() {
		if p.p != nil {
			err = p.c.call("cuMemFreeHost", p.c.d.f.memFreeHost, uintptr(unsafe.Pointer(p.p)))
		}
		p.p, p.n = nil, 0
	})
	return err
}

// Stream is a queue of device work that runs in order; work on
// different streams may overlap.
type Stream struct {
	c *Context
	s uintptr
}

const streamNonBlocking = 1 // CU_STREAM_NON_BLOCKING: no implicit sync with the legacy default stream

// NewStream creates a stream.
func (c *Context) NewStream() (*Stream, error) {
	s := &Stream{c: c}
	if err := c.call("cuStreamCreate", c.d.f.streamCreate, uintptr(unsafe.Pointer(&s.s)), streamNonBlocking); err != nil {
		return nil, err
	}
	return s, nil
}

// CopyToHost queues a copy of len(dst) bytes from src at off into dst.
// dst must stay untouched until the stream is synchronised.
func (s *Stream) CopyToHost(dst []byte, src *Mem, off int) error {
	if err := src.bounds("copy to host", off, len(dst)); err != nil || len(dst) == 0 {
		return err
	}
	if err := s.c.call("cuMemcpyDtoHAsync", s.c.d.f.memcpyDtoHAsync, uintptr(unsafe.Pointer(&dst[0])), uintptr(src.ptr)+uintptr(off), uintptr(len(dst)), s.s); err != nil {
		return detail(err, "%d bytes from offset %d", len(dst), off)
	}
	return nil
}

// CopyToDevice queues a copy of src into dst at off. src must stay
// untouched until the stream is synchronised.
func (s *Stream) CopyToDevice(dst *Mem, off int, src []byte) error {
	if err := dst.bounds("copy to device", off, len(src)); err != nil || len(src) == 0 {
		return err
	}
	if err := s.c.call("cuMemcpyHtoDAsync", s.c.d.f.memcpyHtoDAsync, uintptr(dst.ptr)+uintptr(off), uintptr(unsafe.Pointer(&src[0])), uintptr(len(src)), s.s); err != nil {
		return detail(err, "%d bytes to offset %d", len(src), off)
	}
	return nil
}

// CopyDevice queues a device-to-device copy of n bytes.
func (s *Stream) CopyDevice(dst *Mem, dstOff int, src *Mem, srcOff, n int) error {
	if err := dst.bounds("device copy", dstOff, n); err != nil {
		return err
	}
	if err := src.bounds("device copy", srcOff, n); err != nil || n == 0 {
		return err
	}
	if err := s.c.call("cuMemcpyDtoDAsync", s.c.d.f.memcpyDtoDAsync, uintptr(dst.ptr)+uintptr(dstOff), uintptr(src.ptr)+uintptr(srcOff), uintptr(n), s.s); err != nil {
		return detail(err, "%d bytes", n)
	}
	return nil
}

// Memset queues setting n bytes at off to v.
func (s *Stream) Memset(dst *Mem, off, n int, v byte) error {
	if err := dst.bounds("memset", off, n); err != nil || n == 0 {
		return err
	}
	return s.c.call("cuMemsetD8Async", s.c.d.f.memsetD8Async, uintptr(dst.ptr)+uintptr(off), uintptr(v), uintptr(n), s.s)
}

// Sync waits until everything queued on the stream is done; an
// asynchronous failure (a kernel's fault) shows here.
func (s *Stream) Sync() error {
	return s.c.call("cuStreamSynchronize", s.c.d.f.streamSynchronize, s.s)
}

// Close destroys the stream (queued work still completes).
func (s *Stream) Close() error { return s.c.destroy("cuStreamDestroy", s.c.d.f.streamDestroy, &s.s) }

// Event marks a point in a stream, to wait for or to time.
type Event struct {
	c *Context
	e uintptr
}

// NewEvent creates an event that records time.
func (c *Context) NewEvent() (*Event, error) {
	e := &Event{c: c}
	if err := c.call("cuEventCreate", c.d.f.eventCreate, uintptr(unsafe.Pointer(&e.e)), 0); err != nil {
		return nil, err
	}
	return e, nil
}

// Record marks the stream's current end.
func (s *Stream) Record(e *Event) error {
	return s.c.call("cuEventRecord", s.c.d.f.eventRecord, e.e, s.s)
}

// Sync waits for the work before the event.
func (e *Event) Sync() error { return e.c.call("cuEventSynchronize", e.c.d.f.eventSynchronize, e.e) }

// Since is the GPU time between start and e (both recorded and done).
func (e *Event) Since(start *Event) (time.Duration, error) {
	var ms float32
	if err := e.c.call("cuEventElapsedTime", e.c.d.f.eventElapsedTime, uintptr(unsafe.Pointer(&ms)), start.e, e.e); err != nil {
		return 0, err
	}
	return time.Duration(float64(ms) * float64(time.Millisecond)), nil
}

// Close destroys the event.
func (e *Event) Close() error { return e.c.destroy("cuEventDestroy", e.c.d.f.eventDestroy, &e.e) }

// Module is code loaded into a context: PTX text compiled by the driver's
// JIT for this device.
type Module struct {
	c *Context
	m uintptr
}

// JIT options of cuModuleLoadDataEx (cuda.h CUjit_option).
const (
	jitErrorLogBuffer     = 5
	jitErrorLogBufferSize = 6
)

// LoadModule compiles PTX text. A module the JIT rejects fails with the
// JIT's own log in the error, which names the line.
func (c *Context) LoadModule(ptx string) (*Module, error) {
	text := append([]byte(ptx), 0)
	log := make([]byte, 8<<10)
	opts := []int32{jitErrorLogBuffer, jitErrorLogBufferSize}
	vals := []uintptr{uintptr(unsafe.Pointer(&log[0])), uintptr(len(log))}
	m := &Module{c: c}
	err := c.call("cuModuleLoadDataEx", c.d.f.moduleLoadData, uintptr(unsafe.Pointer(&m.m)), uintptr(unsafe.Pointer(&text[0])),
		uintptr(len(opts)), uintptr(unsafe.Pointer(&opts[0])), uintptr(unsafe.Pointer(&vals[0])))
	runtime.KeepAlive(log)
	if err != nil {
		if msg := goString(&log[0]); msg != "" {
			return nil, detail(err, "%d bytes of PTX; JIT log: %s", len(ptx), msg)
		}
		return nil, detail(err, "%d bytes of PTX", len(ptx))
	}
	return m, nil
}

// Function is a kernel of a module.
type Function struct {
	c    *Context
	f    uintptr
	name string
}

// Function looks up a kernel by its entry name.
func (m *Module) Function(name string) (*Function, error) {
	cname := append([]byte(name), 0)
	f := &Function{c: m.c, name: name}
	if err := m.c.call("cuModuleGetFunction", m.c.d.f.moduleGetFunction, uintptr(unsafe.Pointer(&f.f)), m.m, uintptr(unsafe.Pointer(&cname[0]))); err != nil {
		return nil, detail(err, "%q", name)
	}
	return f, nil
}

// Close unloads the module.
func (m *Module) Close() error { return m.c.destroy("cuModuleUnload", m.c.d.f.moduleUnload, &m.m) }

// Launch queues f on a one-dimensional grid of blocks of threads. Each
// argument is a uint64 (device pointers, counts), a float32 or a
// float64, in the order of the kernel's parameters.
func (s *Stream) Launch(f *Function, grid, block int, args ...any) error {
	vals := make([]uint64, len(args))
	params := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			vals[i] = v
		case float32:
			vals[i] = uint64(math.Float32bits(v)) // the low, first 4 bytes: little-endian
		case float64:
			vals[i] = math.Float64bits(v)
		default:
			return fmt.Errorf("cuda device %d: kernel %s argument %d is a %T; want uint64, float32 or float64", s.c.ordinal, f.name, i, a)
		}
		params[i] = unsafe.Pointer(&vals[i])
	}
	var pp uintptr
	if len(params) > 0 {
		pp = uintptr(unsafe.Pointer(&params[0]))
	}
	err := s.c.call("cuLaunchKernel", s.c.d.f.launchKernel, f.f, uintptr(grid), 1, 1, uintptr(block), 1, 1, 0, s.s, pp, 0)
	runtime.KeepAlive(vals)
	if err != nil {
		return detail(err, "%s, grid %d, block %d", f.name, grid, block)
	}
	return nil
}

// PinnedAllocator returns functions for collective.StagingConfig's Alloc
// and Free that hand out pinned memory of this context, so that a
// Stager's copies run at the bus's speed.
func (c *Context) PinnedAllocator() (alloc func(n int) ([]byte, error), free func([]byte)) {
	var mu sync.Mutex
	held := map[*byte]*Pinned{}
	alloc = func(n int) ([]byte, error) {
		p, err := c.HostAlloc(n)
		if err != nil {
			return nil, err
		}
		b := p.Bytes()
		mu.Lock()
		held[&b[0]] = p
		mu.Unlock()
		return b, nil
	}
	free = func(b []byte) {
		if len(b) == 0 {
			return
		}
		mu.Lock()
		p := held[&b[0]]
		delete(held, &b[0])
		mu.Unlock()
		if p != nil {
			p.Free()
		}
	}
	return alloc, free
}

// OpenLocal loads the driver and opens the GPU of a worker with this
// local rank: visible device localRank mod their count. The launcher
// gives each worker its own GPU (CUDA_VISIBLE_DEVICES, so the ordinal is
// 0); workers that outnumber the GPUs share them, each process with its
// own context.
func OpenLocal(localRank int) (*Context, error) {
	d, err := Load()
	if err != nil {
		return nil, err
	}
	n, err := d.Visible()
	if err != nil {
		return nil, err
	}
	return d.Open(localRank % n)
}
