package collective

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The kernels against a naive float64 reference, for every dtype and op.
func TestReduceBytesMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 257
	for _, d := range DTypes {
		for _, o := range []Op{Sum, Prod, Min, Max} {
			a, b, dst := make([]byte, n*d.Size()), make([]byte, n*d.Size()), make([]byte, n*d.Size())
			av, bv := make([]float64, n), make([]float64, n)
			for i := range av {
				// Small integers: exact in every dtype, so the reference is exact.
				av[i], bv[i] = float64(rng.IntN(9)-4), float64(rng.IntN(9)-4)
				put(d, a, i, av[i])
				put(d, b, i, bv[i])
			}
			reduceBytes(d, o, dst, a, b)
			for i := range av {
				var want float64
				switch o {
				case Sum:
					want = av[i] + bv[i]
				case Prod:
					want = av[i] * bv[i]
				case Min:
					want = math.Min(av[i], bv[i])
				case Max:
					want = math.Max(av[i], bv[i])
				}
				if got := get(d, dst, i); got != want {
					t.Fatalf("%s %s [%d]: %v op %v = %v, want %v", d, o, i, av[i], bv[i], got, want)
				}
			}
		}
	}
}

func TestNaNAndInfPropagate(t *testing.T) {
	for _, d := range []DType{Float32, Float64, BFloat16, Float16} {
		for _, o := range []Op{Sum, Prod, Min, Max} {
			a, b, dst := make([]byte, 2*d.Size()), make([]byte, 2*d.Size()), make([]byte, 2*d.Size())
			put(d, a, 0, math.NaN())
			put(d, b, 0, 1)
			put(d, a, 1, math.Inf(1))
			put(d, b, 1, 2)
			reduceBytes(d, o, dst, b, a) // NaN on either side
			if v := get(d, dst, 0); !math.IsNaN(v) {
				t.Errorf("%s %s: 1 op NaN = %v, want NaN", d, o, v)
			}
			if v := get(d, dst, 1); o != Min && !math.IsInf(v, 1) {
				t.Errorf("%s %s: 2 op +Inf = %v, want +Inf", d, o, v)
			}
		}
	}
}

// Every float16 bit pattern survives a round trip through float32, and
// rounding float32 to float16 picks the nearest (ties to even).
func TestFloat16Conversions(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := f16ToF32(uint16(h))
		if f != f {
			continue
		}
		if back := f32ToF16(f); back != uint16(h) {
			t.Fatalf("f16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
	// 1 + 2^-11 lies exactly between 1 and the next float16 (1 + 2^-10):
	// ties go to the even mantissa, 1.
	if got := f32ToF16(1 + 1.0/2048); got != 0x3c00 {
		t.Errorf("tie rounded to %#04x, want 0x3c00", got)
	}
	if got := f32ToF16(70000); got != 0x7c00 {
		t.Errorf("70000 -> %#04x, want +Inf", got)
	}
	for h := 0; h < 1<<16; h++ {
		f := bf16ToF32(uint16(h))
		if f != f {
			continue
		}
		if back := f32ToBF16(f); back != uint16(h) {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func put(d DType, b []byte, i int, v float64) {
	switch d {
	case Float32:
		view[float32](b)[i] = float32(v)
	case Float64:
		view[float64](b)[i] = v
	case Int32:
		view[int32](b)[i] = int32(v)
	case Int64:
		view[int64](b)[i] = int64(v)
	case BFloat16:
		view[uint16](b)[i] = f32ToBF16(float32(v))
	case Float16:
		view[uint16](b)[i] = f32ToF16(float32(v))
	}
}

func get(d DType, b []byte, i int) float64 {
	switch d {
	case Float32:
		return float64(view[float32](b)[i])
	case Float64:
		return view[float64](b)[i]
	case Int32:
		return float64(view[int32](b)[i])
	case Int64:
		return float64(view[int64](b)[i])
	case BFloat16:
		return float64(bf16ToF32(view[uint16](b)[i]))
	case Float16:
		return float64(f16ToF32(view[uint16](b)[i]))
	}
	return math.NaN()
}

// BenchmarkReduce measures the kernels' throughput (bytes of one operand
// per second): the reduction in a ring all-reduce touches every byte once.
func BenchmarkReduce(b *testing.B) {
	const size = 4 << 20
	for _, d := range DTypes {
		b.Run(fmt.Sprintf("%s-sum", d), func(b *testing.B) {
			x, y := make([]byte, size), make([]byte, size)
			b.SetBytes(size)
			for b.Loop() {
				reduceBytes(d, Sum, x, y, x)
			}
		})
	}
}
