package cuda

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"testing"
)

// realGPU opens device 0 of the machine's driver, or skips.
func realGPU(tb testing.TB) *Context {
	tb.Helper()
	d, err := Load()
	if err != nil {
		tb.Skipf("no GPU: %v", err)
	}
	c, err := d.Open(0)
	if err != nil {
		tb.Skipf("no GPU: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func TestGPUDevice(t *testing.T) {
	c := realGPU(t)
	maj, min := c.ComputeCapability()
	t.Logf("device 0: %s, %s, %d MiB, %d SMs, compute %d.%d, driver CUDA %d", c.Name(), c.UUID(), c.TotalMem()>>20, c.Multiprocessors(), maj, min, c.d.Version())
	if c.Name() == "" || !regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(c.UUID()) || c.TotalMem() <= 0 || c.Multiprocessors() <= 0 || maj < 7 {
		t.Fatalf("implausible device: %q %q %d bytes %d SMs %d.%d", c.Name(), c.UUID(), c.TotalMem(), c.Multiprocessors(), maj, min)
	}
	free, total, err := c.MemInfo()
	if err != nil || total != c.TotalMem() || free <= 0 || free > total {
		t.Fatalf("MemInfo: %d free of %d, %v", free, total, err)
	}
	_, err = c.Alloc(int(2 * c.TotalMem()))
	if !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("allocating twice the device's memory: %v; want ErrOutOfMemory", err)
	}
	t.Logf("out of memory reads: %v", err)
	for _, n := range []int{1, 4097, 3<<20 + 5} {
		for _, pinned := range []bool{false, true} {
			t.Run(fmt.Sprintf("n%d/pinned=%v", n, pinned), func(t *testing.T) {
				m, err := c.Alloc(n)
				if err != nil {
					t.Fatal(err)
				}
				defer m.Free()
				in, out := make([]byte, n), make([]byte, n)
				if pinned {
					pi, err := c.HostAlloc(n)
					if err != nil {
						t.Fatal(err)
					}
					defer pi.Free()
					po, err := c.HostAlloc(n)
					if err != nil {
						t.Fatal(err)
					}
					defer po.Free()
					in, out = pi.Bytes(), po.Bytes()
				}
				for i := range in {
					in[i] = byte(i*7 + n)
				}
				if err := m.CopyFromHost(0, in); err != nil {
					t.Fatal(err)
				}
				if err := m.CopyToHost(out, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(in, out) {
					t.Fatal("bytes read back differ from those written")
				}
			})
		}
	}
}

// BenchmarkGPUCopy measures 256 MiB moved each way: one plain copy of the
// whole buffer into pinned memory (what the bus gives), then the same in
// 4 MiB pieces through Mem's copies (what a Stager's stages do), and into
// pageable Go memory.
func BenchmarkGPUCopy(b *testing.B) {
	c := realGPU(b)
	const size, chunk = 256 << 20, 4 << 20
	m, err := c.Alloc(size)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Free()
	p, err := c.HostAlloc(size)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Free()
	pageable := make([]byte, size)
	s, err := c.NewStream()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	cases := []struct {
		name string
		f    func() error
	}{
		{"d2h/plain-pinned", func() error {
			if err := s.CopyToHost(p.Bytes(), m, 0); err != nil {
				return err
			}
			return s.Sync()
		}},
		{"h2d/plain-pinned", func() error {
			if err := s.CopyToDevice(m, 0, p.Bytes()); err != nil {
				return err
			}
			return s.Sync()
		}},
		{"d2h/chunked-pinned", func() error {
			for off := 0; off < size; off += chunk {
				if err := m.CopyToHost(p.Bytes()[off:off+chunk], off); err != nil {
					return err
				}
			}
			return nil
		}},
		{"h2d/chunked-pinned", func() error {
			for off := 0; off < size; off += chunk {
				if err := m.CopyFromHost(off, p.Bytes()[off:off+chunk]); err != nil {
					return err
				}
			}
			return nil
		}},
		{"d2h/pageable", func() error { return m.CopyToHost(pageable, 0) }},
		{"h2d/pageable", func() error { return m.CopyFromHost(0, pageable) }},
	}
	for _, cs := range cases {
		b.Run(cs.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				if err := cs.f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
