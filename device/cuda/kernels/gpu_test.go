package kernels_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/device/cuda"
	"github.com/ringo-ml/ringo/device/cuda/kernels"
)

// gpu opens device 0 through the real driver, or skips.
func gpu(tb testing.TB) (*cuda.Context, *cuda.Reducer, *cuda.Stream) {
	tb.Helper()
	d, err := cuda.Load()
	if err != nil {
		tb.Skipf("no GPU to run the kernels on: %v", err)
	}
	c, err := d.Open(0)
	if err != nil {
		tb.Skipf("no GPU to run the kernels on: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	r, err := c.Reducer()
	if err != nil {
		tb.Fatal(err)
	}
	s, err := c.NewStream()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return c, r, s
}

func upload(tb testing.TB, c *cuda.Context, b []byte) *cuda.Mem {
	tb.Helper()
	m, err := c.Alloc(max(len(b), 1))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Free() })
	if err := m.CopyFromHost(0, b); err != nil {
		tb.Fatal(err)
	}
	return m
}

func download(tb testing.TB, m *cuda.Mem, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if err := m.CopyToHost(b, 0); err != nil {
		tb.Fatal(err)
	}
	return b
}

// gpuCases adds sizes that need many blocks and several trips of the
// grid-stride loop to the interpreter's cases.
func gpuCases(d kernels.DType, rng *rand.Rand) []inputCase {
	cases := inputCases(d, rng)
	for _, n := range []int{255, 257, 100_003, 1<<20 + 7} {
		c := inputCase{name: fmt.Sprintf("n%d", n), a: make([]uint64, n), b: make([]uint64, n)}
		for i := range n {
			c.a[i], c.b[i] = value(rng, d), value(rng, d)
		}
		cases = append(cases, c)
	}
	return cases
}

// TestGPUReduce runs every reduction kernel on the GPU, out of place and
// in place, and compares the result bit for bit with the host reference
// (which TestReduce ties to package collective).
func TestGPUReduce(t *testing.T) {
	c, r, s := gpu(t)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, o := range kernels.Ops() {
		for _, d := range kernels.DTypes() {
			t.Run(kernels.ReduceName(o, d), func(t *testing.T) {
				for _, cs := range gpuCases(d, rng) {
					want := make([]uint64, len(cs.a))
					for i := range want {
						want[i] = ref(o, d, cs.a[i], cs.b[i])
					}
					a, b := encode(d, cs.a), encode(d, cs.b)
					for _, inPlace := range []bool{false, true} {
						ma, mb := upload(t, c, a), upload(t, c, b)
						dst := ma
						if !inPlace {
							dst = upload(t, c, make([]byte, len(a)))
						}
						if err := r.Reduce(s, o, d, dst.Ptr(), ma.Ptr(), mb.Ptr(), len(cs.a)); err != nil {
							t.Fatal(err)
						}
						if err := s.Sync(); err != nil {
							t.Fatal(err)
						}
						got := decode(d, download(t, dst, len(a)))
						for i := range want {
							if got[i] != want[i] {
								t.Fatalf("%s, in place %v, index %d: %#x %s %#x = %#x on the GPU, host %#x", cs.name, inPlace, i, cs.a[i], o, cs.b[i], got[i], want[i])
							}
						}
					}
				}
			})
		}
	}
}

// TestGPUDivide runs the divide kernels on group sizes and on divisors
// that make NaNs, infinities and subnormals.
func TestGPUDivide(t *testing.T) {
	c, r, s := gpu(t)
	rng := rand.New(rand.NewPCG(9, 10))
	for _, d := range kernels.DTypes() {
		t.Run(kernels.DivideName(d), func(t *testing.T) {
			vals := append([]uint64(nil), specials[d]...)
			for range 100_000 {
				vals = append(vals, value(rng, d))
			}
			for _, div := range []float64{2, 3, 7, 8, 1000, -2.5, 1e-40, 0} {
				buf := encode(d, vals)
				m := upload(t, c, buf)
				if err := r.Divide(s, d, m.Ptr(), len(vals), div); err != nil {
					t.Fatal(err)
				}
				if err := s.Sync(); err != nil {
					t.Fatal(err)
				}
				for i, v := range decode(d, download(t, m, len(buf))) {
					if w := refDivide(d, vals[i], div); v != w {
						t.Fatalf("divisor %v, index %d: %#x / %v = %#x on the GPU, host %#x", div, i, vals[i], div, v, w)
					}
				}
			}
		})
	}
}

// BenchmarkGPUReduce measures a (op) b into a over 256 MiB buffers, as
// bytes moved (read a, read b, write a) per second, beside a plain
// device-to-device copy of the same buffer in the same run (bytes read
// and written per second): the memory bandwidth the kernel can hope for.
// The target is float32 sum at 80% or more of it.
func BenchmarkGPUReduce(b *testing.B) {
	c, r, s := gpu(b)
	const size = 256 << 20
	x := upload(b, c, bytes.Repeat([]byte{0, 0, 128, 63}, size/4)) // 1.0f
	y := upload(b, c, bytes.Repeat([]byte{0, 0, 128, 63}, size/4))
	start, _ := c.NewEvent()
	end, _ := c.NewEvent()
	defer start.Close()
	defer end.Close()
	timeIt := func(f func() error) float64 {
		const reps = 10
		if err := f(); err != nil { // warm-up, JIT
			b.Fatal(err)
		}
		s.Record(start)
		for range reps {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
		s.Record(end)
		if err := end.Sync(); err != nil {
			b.Fatal(err)
		}
		el, err := end.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		return el.Seconds() / reps
	}
	copySec := timeIt(func() error { return s.CopyDevice(x, 0, y, 0, size) })
	copyBW := 2 * size / copySec
	for _, o := range []kernels.Op{kernels.Sum, kernels.Max} {
		for _, d := range kernels.DTypes() {
			b.Run(kernels.ReduceName(o, d), func(b *testing.B) {
				var sec float64
				for b.Loop() {
					sec = timeIt(func() error { return r.Reduce(s, o, d, x.Ptr(), x.Ptr(), y.Ptr(), size/d.Size()) })
				}
				bw := 3 * size / sec
				b.ReportMetric(bw/1e9, "GB/s")
				b.ReportMetric(copyBW/1e9, "copy-GB/s")
				b.ReportMetric(bw/copyBW, "of-copy")
				b.ReportMetric(float64(time.Duration(sec*1e9).Microseconds()), "us/call")
			})
		}
	}
}

// BenchmarkGPUReduceStep is one ring step's reduction done on the GPU: the
// received 4 MiB chunk copied in from pinned memory, reduced into the
// local chunk, and the result copied out to be sent on. Its MB/s (bytes
// of one operand) is what the GPU offers against the host's reduction of
// the same chunk, collective's BenchmarkReduce, which gpu-check.sh runs
// beside it.
func BenchmarkGPUReduceStep(b *testing.B) {
	c, r, s := gpu(b)
	const size = 4 << 20
	local := upload(b, c, make([]byte, size))
	recv := upload(b, c, make([]byte, size))
	in, err := c.HostAlloc(size)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Free()
	out, err := c.HostAlloc(size)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Free()
	for _, d := range []kernels.DType{kernels.Float32, kernels.BFloat16} {
		b.Run(string(d)+"-sum", func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				if err := s.CopyToDevice(recv, 0, in.Bytes()); err != nil {
					b.Fatal(err)
				}
				if err := r.Reduce(s, kernels.Sum, d, local.Ptr(), local.Ptr(), recv.Ptr(), size/d.Size()); err != nil {
					b.Fatal(err)
				}
				if err := s.CopyToHost(out.Bytes(), local, 0); err != nil {
					b.Fatal(err)
				}
				if err := s.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
