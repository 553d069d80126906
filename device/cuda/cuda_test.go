package cuda

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
	"github.com/ringo-ml/ringo/device/cuda/cudatest"
	"github.com/ringo-ml/ringo/device/cuda/kernels"
)

func TestLoadMissingLibrary(t *testing.T) {
	start := time.Now()
	_, err := load("/nonexistent/libcuda.so.1")
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "/nonexistent/libcuda.so.1") || !strings.Contains(err.Error(), LibraryEnv) {
		t.Fatalf("load of a missing library: %v; want ErrNoDriver naming the path and %s", err, LibraryEnv)
	}
	if !strings.HasPrefix(err.Error(), "no CUDA driver found") {
		t.Fatalf("%q: want it to start with %q", err, "no CUDA driver found")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("failing to find the driver took %v", took)
	}
}

func TestLoadNotADriver(t *testing.T) {
	_, err := load("libc.so.6")
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "libc.so.6 has no cu") {
		t.Fatalf("load of libc: %v; want ErrNoDriver naming the missing driver function", err)
	}
}

// fake loads the stand-in driver with env set for its cuInit.
func fake(t *testing.T, env ...string) (*Driver, error) {
	lib := cudatest.FakeDriver(t)
	t.Setenv("FAKECUDA_DEVICES", "1")
	t.Setenv("FAKECUDA_MEM", "")
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
	return load(lib)
}

func fakeContext(t *testing.T) *Context {
	d, err := fake(t, "FAKECUDA_MEM", fmt.Sprint(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFakeDriverDescribesTheDevice(t *testing.T) {
	d, err := fake(t, "FAKECUDA_DEVICES", "2", "FAKECUDA_MEM", "1048576")
	if err != nil {
		t.Fatal(err)
	}
	if d.Version() != 12040 {
		t.Errorf("version %d, want 12040", d.Version())
	}
	if n, err := d.Count(); err != nil || n != 2 {
		t.Fatalf("count %d, %v; want 2", n, err)
	}
	c, err := d.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Name() != "Fake CUDA Device" || c.Device() != 1 || c.TotalMem() != 1<<20 || c.Multiprocessors() != 4 {
		t.Errorf("device %d %q, %d bytes, %d SMs", c.Device(), c.Name(), c.TotalMem(), c.Multiprocessors())
	}
	if maj, min := c.ComputeCapability(); maj != 9 || min != 0 {
		t.Errorf("compute capability %d.%d, want 9.0", maj, min)
	}
	if want := "GPU-01112131-4151-6171-8191-a1b1c1d1e1f1"; c.UUID() != want {
		t.Errorf("UUID %s, want %s", c.UUID(), want)
	}
	if _, err := d.Open(2); !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "device 2 asked for, 2 visible") {
		t.Errorf("Open(2) of 2 devices: %v; want ErrNoDevice naming both", err)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestFakeDriverNoDevice(t *testing.T) {
	_, err := fake(t, "FAKECUDA_DEVICES", "0")
	var e *Error
	if !errors.Is(err, ErrNoDevice) || !errors.As(err, &e) || e.Call != "cuInit" || e.Name != "CUDA_ERROR_NO_DEVICE" {
		t.Fatalf("cuInit with no device: %v; want ErrNoDevice from cuInit, CUDA_ERROR_NO_DEVICE", err)
	}
}

func TestFakeDriverOutOfMemory(t *testing.T) {
	c := fakeContext(t)
	m, err := c.Alloc(48 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	_, err = c.Alloc(32 << 20)
	var e *Error
	if !errors.Is(err, ErrOutOfMemory) || !errors.As(err, &e) || e.Device != 0 {
		t.Fatalf("allocating past the device's memory: %v; want ErrOutOfMemory on device 0", err)
	}
	for _, want := range []string{"cuda device 0", "cuMemAlloc(33554432 bytes; 16777216 of 67108864 bytes free)", "CUDA_ERROR_OUT_OF_MEMORY"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	if err := m.Free(); err != nil {
		t.Fatal(err)
	}
	if err := m.Free(); err != nil {
		t.Errorf("second Free: %v", err)
	}
	if free, _, err := c.MemInfo(); err != nil || free != 64<<20 {
		t.Errorf("after Free: %d bytes free, %v; want all 64 MiB", free, err)
	}
}

// TestFakeDriverCopies moves bytes through device memory from many
// goroutines at once: the stand-in fails any call made on a thread where
// the context is not current, so this checks that every call sets it.
func TestFakeDriverCopies(t *testing.T) {
	c := fakeContext(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[g] = func() error {
				m, err := c.Alloc(1000 + g)
				if err != nil {
					return err
				}
				defer m.Free()
				p, err := c.HostAlloc(1000 + g)
				if err != nil {
					return err
				}
				defer p.Free()
				want := bytes.Repeat([]byte{byte(g), 7, 9}, 400)[:1000+g]
				copy(p.Bytes(), want)
				for i := range 50 {
					if err := m.CopyFromHost(0, p.Bytes()); err != nil {
						return err
					}
					got := make([]byte, 500)
					if err := m.CopyToHost(got, 500+g); err != nil {
						return err
					}
					if !bytes.Equal(got, want[500+g:]) {
						return fmt.Errorf("round %d: read back %x, want %x", i, got[:8], want[500+g:508+g])
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	for g, err := range errs {
		if err != nil {
			t.Fatalf("goroutine %d: %v", g, err)
		}
	}
	m, err := c.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	if err := m.CopyToHost(make([]byte, 16), 56); err == nil || !strings.Contains(err.Error(), "bytes 56..72 outside 64 bytes") {
		t.Errorf("copy past the end: %v", err)
	}
	if err := m.CopyFromHost(-1, make([]byte, 4)); err == nil {
		t.Error("copy to offset -1 accepted")
	}
	s, err := c.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m2, err := c.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Free()
	start, _ := c.NewEvent()
	end, _ := c.NewEvent()
	defer start.Close()
	defer end.Close()
	src := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	for _, err := range []error{s.Record(start), s.CopyToDevice(m, 0, src), s.Memset(m2, 0, 64, 'x'), s.CopyDevice(m2, 8, m, 16, 8), s.Record(end), end.Sync()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 24)
	if err := s.CopyToHost(got, m2, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if string(got) != "xxxxxxxx01234567xxxxxxxx" {
		t.Errorf("after memset and device copy: %q", got)
	}
	if d, err := end.Since(start); err != nil || d < 0 {
		t.Errorf("elapsed %v, %v", d, err)
	}
}

func TestFakeDriverModules(t *testing.T) {
	c := fakeContext(t)
	r, err := c.Reducer()
	if err != nil {
		t.Fatal(err)
	}
	if r2, err := c.Reducer(); err != nil || r2 != r {
		t.Errorf("second Reducer: %p, %v; want the same one", r2, err)
	}
	if len(r.fns) != len(kernels.Names()) {
		t.Errorf("%d kernels found, want %d", len(r.fns), len(kernels.Names()))
	}
	m, err := c.Alloc(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	err = r.Reduce(c.toDev, kernels.Sum, kernels.Float32, m.Ptr(), m.Ptr(), m.Ptr(), 256)
	if err == nil || !strings.Contains(err.Error(), "cuLaunchKernel(reduce_sum_float32, grid 1, block 256)") || !strings.Contains(err.Error(), "CUDA_ERROR_NOT_SUPPORTED") {
		t.Errorf("launch on the stand-in: %v; want CUDA_ERROR_NOT_SUPPORTED naming the kernel and its shape", err)
	}
	if err := r.Reduce(c.toDev, "xor", kernels.Float32, 0, 0, 0, 1); err == nil {
		t.Error("reduce with op xor accepted")
	}
	_, err = c.LoadModule("not ptx at all")
	if err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_INVALID_PTX") || !strings.Contains(err.Error(), "JIT log: ptxas fatal") {
		t.Errorf("loading garbage: %v; want CUDA_ERROR_INVALID_PTX with the JIT's log", err)
	}
	if _, err := r.mod.Function("reduce_xor_float32"); err == nil || !strings.Contains(err.Error(), `"reduce_xor_float32"`) {
		t.Errorf("missing kernel: %v; want an error naming it", err)
	}
	if err := c.toDev.Launch(r.fns[kernels.ReduceName(kernels.Sum, kernels.Float32)], 1, 1, "dst"); err == nil || !strings.Contains(err.Error(), "argument 0 is a string") {
		t.Errorf("a string kernel argument: %v", err)
	}
}

// TestFakeDriverStager all-reduces device memory of the stand-in driver
// through collective.Stager with pinned slots, across 3 ranks in one
// process (one context each would be the same primary context here).
func TestFakeDriverStager(t *testing.T) {
	c := fakeContext(t)
	const n, count = 3, 10007
	w := inproc.NewWorld(n)
	errs := make([]error, n)
	got := make([][]byte, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = func() error {
				comm, err := collective.New(w.Transport(r), collective.DefaultConfig())
				if err != nil {
					return err
				}
				defer comm.Close()
				cfg := collective.StagingConfig{ChunkBytes: 4096, Slots: 3}
				cfg.Alloc, cfg.Free = c.PinnedAllocator()
				s, err := collective.NewStager(comm, cfg)
				if err != nil {
					return err
				}
				defer s.Close()
				m, err := c.Alloc(4 * count)
				if err != nil {
					return err
				}
				defer m.Free()
				in := make([]float32, count)
				for i := range in {
					in[i] = float32((i*3+r)%11 - 5)
				}
				if err := m.CopyFromHost(0, collective.Float32s(in).Bytes()); err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := s.AllReduce(ctx, collective.OnDevice(collective.Float32, m), collective.OnDevice(collective.Float32, m), collective.Sum); err != nil {
					return err
				}
				got[r] = make([]byte, 4*count)
				return m.CopyToHost(got[r], 0)
			}()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	want := make([]float32, count)
	for i := range want {
		for r := range n {
			want[i] += float32((i*3+r)%11 - 5)
		}
	}
	for r := range n {
		if !bytes.Equal(got[r], collective.Float32s(want).Bytes()) {
			t.Fatalf("rank %d: the staged all-reduce of device memory differs from the sum", r)
		}
	}
}
