package cuda

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrNoDriver: libcuda.so.1 is missing, is not a CUDA driver, or
	// cannot start (cuInit failed).
	ErrNoDriver = errors.New("no CUDA driver found")
	// ErrNoDevice: the driver sees no GPU (none installed, or
	// CUDA_VISIBLE_DEVICES hides them all), or the ordinal asked for is
	// not one of those visible.
	ErrNoDevice = errors.New("no CUDA device visible")
	// ErrOutOfMemory: an allocation did not fit.
	ErrOutOfMemory = errors.New("out of GPU memory")
)

// Error is a driver call that failed: which device, which call, and the
// driver's own name and description of the result code.
type Error struct {
	Device int    // ordinal among the visible devices; -1 when not about one
	Call   string // the driver function and its main arguments
	Code   int    // CUresult
	Name   string // e.g. CUDA_ERROR_OUT_OF_MEMORY
	Msg    string // the driver's description
}

func (e *Error) Error() string {
	where := "cuda"
	if e.Device >= 0 {
		where = fmt.Sprintf("cuda device %d", e.Device)
	}
	return fmt.Sprintf("%s: %s: %s (%d): %s", where, e.Call, e.Name, e.Code, e.Msg)
}

// Is maps result codes onto the sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrOutOfMemory:
		return e.Code == errOutOfMemory
	case ErrNoDevice:
		return e.Code == errNoDevice || e.Code == errInvalidDevice
	}
	return false
}

// CUresult values this package acts on (cuda.h).
const (
	success          = 0
	errOutOfMemory   = 2
	errNoDevice      = 100
	errInvalidDevice = 101
	errNotReady      = 600
)

// LibraryEnv names a driver library to load instead of libcuda.so.1.
const LibraryEnv = "RINGO_CUDA_LIBRARY"

// DefaultLibrary is the driver library's name; the dynamic loader finds it
// where the NVIDIA driver installed it.
const DefaultLibrary = "libcuda.so.1"

// Driver is the loaded CUDA driver library. There is one per process
// (Load); it is never unloaded, as the driver does not support that.
type Driver struct {
	path    string
	version int
	f       symbols
}

// symbols are the addresses of the driver functions used. The _v2 names
// are the ones cuda.h maps the plain names onto since CUDA 4 (64-bit
// sizes and device pointers).
type symbols struct {
	init, driverGetVersion, deviceGetCount, deviceGet, deviceGetName, deviceGetUuid,
	deviceTotalMem, deviceGetAttribute, primaryCtxRetain, primaryCtxRelease, ctxSetCurrent,
	memGetInfo, memAlloc, memFree, memHostAlloc, memFreeHost,
	memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync, memsetD8Async,
	streamCreate, streamDestroy, streamSynchronize,
	eventCreate, eventRecord, eventSynchronize, eventElapsedTime, eventDestroy,
	moduleLoadData, moduleGetFunction, moduleUnload, launchKernel,
	getErrorName, getErrorString uintptr
}

func (s *symbols) table() map[string]*uintptr {
	return map[string]*uintptr{
		"cuInit": &s.init, "cuDriverGetVersion": &s.driverGetVersion,
		"cuDeviceGetCount": &s.deviceGetCount, "cuDeviceGet": &s.deviceGet,
		"cuDeviceGetName": &s.deviceGetName, "cuDeviceGetUuid": &s.deviceGetUuid,
		"cuDeviceTotalMem_v2": &s.deviceTotalMem, "cuDeviceGetAttribute": &s.deviceGetAttribute,
		"cuDevicePrimaryCtxRetain": &s.primaryCtxRetain, "cuDevicePrimaryCtxRelease_v2": &s.primaryCtxRelease,
		"cuCtxSetCurrent": &s.ctxSetCurrent, "cuMemGetInfo_v2": &s.memGetInfo,
		"cuMemAlloc_v2": &s.memAlloc, "cuMemFree_v2": &s.memFree,
		"cuMemHostAlloc": &s.memHostAlloc, "cuMemFreeHost": &s.memFreeHost,
		"cuMemcpyHtoDAsync_v2": &s.memcpyHtoDAsync, "cuMemcpyDtoHAsync_v2": &s.memcpyDtoHAsync,
		"cuMemcpyDtoDAsync_v2": &s.memcpyDtoDAsync, "cuMemsetD8Async": &s.memsetD8Async,
		"cuStreamCreate": &s.streamCreate, "cuStreamDestroy_v2": &s.streamDestroy,
		"cuStreamSynchronize": &s.streamSynchronize,
		"cuEventCreate":       &s.eventCreate, "cuEventRecord": &s.eventRecord,
		"cuEventSynchronize": &s.eventSynchronize, "cuEventElapsedTime": &s.eventElapsedTime,
		"cuEventDestroy_v2":  &s.eventDestroy,
		"cuModuleLoadDataEx": &s.moduleLoadData, "cuModuleGetFunction": &s.moduleGetFunction,
		"cuModuleUnload": &s.moduleUnload, "cuLaunchKernel": &s.launchKernel,
		"cuGetErrorName": &s.getErrorName, "cuGetErrorString": &s.getErrorString,
	}
}

var (
	loadOnce   sync.Once
	loaded     *Driver
	loadFailed error
)

// Load opens the CUDA driver library (libcuda.so.1, or the file
// RINGO_CUDA_LIBRARY names) and initialises it. It runs once per process;
// later calls return the same driver or the same error. Without a driver
// the error wraps ErrNoDriver and says which library was looked for; the
// process goes on (nothing is linked against the driver).
func Load() (*Driver, error) {
	loadOnce.Do(func() {
		path := os.Getenv(LibraryEnv)
		if path == "" {
			path = DefaultLibrary
		}
		loaded, loadFailed = load(path)
	})
	return loaded, loadFailed
}

func load(path string) (*Driver, error) {
	lib, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("%w: loading %s: %v (install the NVIDIA driver, or set %s to the driver library)", ErrNoDriver, path, err, LibraryEnv)
	}
	d := &Driver{path: path}
	for name, addr := range d.f.table() {
		if *addr, err = purego.Dlsym(lib, name); err != nil || *addr == 0 {
			purego.Dlclose(lib)
			return nil, fmt.Errorf("%w: %s has no %s: it is not a CUDA driver library (or one older than CUDA 11)", ErrNoDriver, path, name)
		}
	}
	if err := d.call(-1, "cuInit", d.f.init, 0); err != nil {
		if errors.Is(err, ErrNoDevice) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s is there but does not start (is the nvidia kernel module loaded?): %w", ErrNoDriver, path, err)
	}
	var v int32
	if err := d.call(-1, "cuDriverGetVersion", d.f.driverGetVersion, uintptr(unsafe.Pointer(&v))); err != nil {
		return nil, err
	}
	d.version = int(v)
	return d, nil
}

// Path is the library that was loaded.
func (d *Driver) Path() string { return d.path }

// Version is the CUDA version the driver supports, as 1000*major +
// 10*minor (12040 is CUDA 12.4), as cuDriverGetVersion reports it.
func (d *Driver) Version() int { return d.version }

// Count is the number of devices this process may use (those
// CUDA_VISIBLE_DEVICES leaves visible).
func (d *Driver) Count() (int, error) {
	var n int32
	if err := d.call(-1, "cuDeviceGetCount", d.f.deviceGetCount, uintptr(unsafe.Pointer(&n))); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Visible is Count, failing with ErrNoDevice when there are none.
func (d *Driver) Visible() (int, error) {
	n, err := d.Count()
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: the driver reports no devices (CUDA_VISIBLE_DEVICES=%q): check that the GPUs are installed and that CUDA_VISIBLE_DEVICES names them", ErrNoDevice, envOr("CUDA_VISIBLE_DEVICES", "unset"))
	}
	return n, err
}

// call runs driver function fn and turns its CUresult into nil or an
// *Error naming dev and what. Pointers converted to uintptr in the
// argument list stay alive and unmoved for the call (uintptrescapes, as
// syscall.Syscall does).
//
//go:uintptrescapes
func (d *Driver) call(dev int, what string, fn uintptr, args ...uintptr) error {
	r1, _, _ := purego.SyscallN(fn, args...)
	return d.result(dev, what, r1)
}

func (d *Driver) result(dev int, what string, r1 uintptr) error {
	code := int(int32(r1))
	if code == success {
		return nil
	}
	return &Error{Device: dev, Call: what, Code: code, Name: d.cString(d.f.getErrorName, code), Msg: d.cString(d.f.getErrorString, code)}
}

// detail adds the arguments that matter to a failed call's description;
// formatted only on failure, so that the copies' hot path allocates
// nothing.
func detail(err error, format string, a ...any) error {
	var e *Error
	if errors.As(err, &e) {
		e.Call += "(" + fmt.Sprintf(format, a...) + ")"
	}
	return err
}

// cString asks cuGetErrorName or cuGetErrorString about code and copies
// the driver's static string.
func (d *Driver) cString(fn uintptr, code int) string {
	var p *byte
	if fn == 0 {
		return "unknown CUDA result"
	}
	if r1, _, _ := purego.SyscallN(fn, uintptr(code), uintptr(unsafe.Pointer(&p))); r1 != success || p == nil {
		return "unknown CUDA result"
	}
	return goString(p)
}

// goString copies a NUL-terminated C string that the driver owns.
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

var lookupEnv = os.LookupEnv
