package collective

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// specials32 and specials64 are the values a kernel most easily gets
// wrong: signed zeros, subnormals, the extremes, infinities and NaNs with
// different payloads (so that which operand's NaN comes out shows).
var specials32 = []float32{0, float32(math.Copysign(0, -1)), 1, -1, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32,
	math.MaxFloat32, -math.MaxFloat32, float32(math.Inf(1)), float32(math.Inf(-1)),
	math.Float32frombits(0x7fc00001), math.Float32frombits(0xffc00002), math.Float32frombits(0x7f800003)}

var specials64 = []float64{0, math.Copysign(0, -1), 1, -1, math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64,
	math.MaxFloat64, -math.MaxFloat64, math.Inf(1), math.Inf(-1),
	math.Float64frombits(0x7ff8000000000001), math.Float64frombits(0xfff8000000000002), math.Float64frombits(0x7ff0000000000003)}

// TestFloatKernelsMatchPortable compares reduceBytes (vector kernels where
// the CPU has them) with the portable loop bit for bit, at lengths around
// the kernels' 32- and 16-element blocks, with random and special values,
// in place and out of place.
func TestFloatKernelsMatchPortable(t *testing.T) {
	if !floatSIMD {
		t.Log("no float vector kernels on this machine: comparing the portable loop with itself")
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 100, 1000, 4097} {
		for _, o := range []Op{Sum, Prod, Avg, Min, Max} {
			t.Run(fmt.Sprintf("float32/%s/n%d", o, n), func(t *testing.T) {
				a, b := make([]float32, n), make([]float32, n)
				for i := range a {
					a[i], b[i] = pick32(rng), pick32(rng)
				}
				want := make([]float32, n)
				combine(o, want, a, b)
				got := make([]float32, n)
				reduceBytes(Float32, o, bytesOf(got), bytesOf(a), bytesOf(b))
				inPlace := append([]float32(nil), a...)
				reduceBytes(Float32, o, bytesOf(inPlace), bytesOf(inPlace), bytesOf(b))
				for i := range want {
					w := math.Float32bits(want[i])
					if g := math.Float32bits(got[i]); g != w {
						t.Fatalf("index %d: %v %s %v = %#x, portable %#x", i, a[i], o, b[i], g, w)
					}
					if g := math.Float32bits(inPlace[i]); g != w {
						t.Fatalf("in place, index %d: %#x, portable %#x", i, g, w)
					}
				}
			})
			t.Run(fmt.Sprintf("float64/%s/n%d", o, n), func(t *testing.T) {
				a, b := make([]float64, n), make([]float64, n)
				for i := range a {
					a[i], b[i] = pick64(rng), pick64(rng)
				}
				want := make([]float64, n)
				combine(o, want, a, b)
				got := make([]float64, n)
				reduceBytes(Float64, o, bytesOf(got), bytesOf(a), bytesOf(b))
				for i := range want {
					if g, w := math.Float64bits(got[i]), math.Float64bits(want[i]); g != w {
						t.Fatalf("index %d: %v %s %v = %#x, portable %#x", i, a[i], o, b[i], g, w)
					}
				}
			})
		}
	}
}

func pick32(rng *rand.Rand) float32 {
	if rng.IntN(4) == 0 {
		return specials32[rng.IntN(len(specials32))]
	}
	return float32(rng.NormFloat64() * 1e3)
}

func pick64(rng *rand.Rand) float64 {
	if rng.IntN(4) == 0 {
		return specials64[rng.IntN(len(specials64))]
	}
	return rng.NormFloat64() * 1e3
}
