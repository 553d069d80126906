package collectivetest

import (
	"math"
	"testing"

	"github.com/ringo-ml/ringo/collective"
)

func TestF16(t *testing.T) {
	cases := []struct {
		f    float32
		bits uint16
	}{
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{0.5, 0x3800},
		{65504, 0x7bff},        // largest finite
		{65519, 0x7bff},        // rounds down
		{65520, 0x7c00},        // halfway to the next binade: ties to even, Inf
		{1.0 / 3, 0x3555},      // rounds down
		{1 + 1.0/2048, 0x3c00}, // tie, to even (down)
		{1 + 3.0/2048, 0x3c02}, // tie, to even (up)
		{0x1p-14, 0x0400},      // smallest normal
		{0x1p-24, 0x0001},      // smallest subnormal
		{0x1p-25, 0x0000},      // tie between 0 and the smallest: to even, 0
		{0x1.8p-25, 0x0001},    // above the tie
		{0x3p-25, 0x0002},      // 1.5 units: tie, to even (2)
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{99, 0x5630},
	}
	for _, c := range cases {
		if got := F16FromFloat32(c.f); got != c.bits {
			t.Errorf("F16FromFloat32(%v) = %#04x, want %#04x", c.f, got, c.bits)
		}
	}
	// Every finite binary16 value survives the round trip, and the widening
	// is monotonic.
	prev := float32(math.Inf(-1))
	for h := 0xfbff; h >= 0x8000; h-- { // negative finite, from -65504 up to -0
		f := F16ToFloat32(uint16(h))
		if f < prev {
			t.Fatalf("F16ToFloat32(%#04x) = %v is below its predecessor %v", h, f, prev)
		}
		prev = f
	}
	for h := range 0x7c00 {
		f := F16ToFloat32(uint16(h))
		if back := F16FromFloat32(f); back != uint16(h) {
			t.Fatalf("round trip of %#04x (%v) gave %#04x", h, f, back)
		}
		if h > 0 && f <= F16ToFloat32(uint16(h-1)) {
			t.Fatalf("F16ToFloat32 is not increasing at %#04x", h)
		}
	}
	if f := F16ToFloat32(0x7e00); f == f {
		t.Errorf("F16ToFloat32(0x7e00) = %v, want NaN", f)
	}
	if h := F16FromFloat32(float32(math.NaN())); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
		t.Errorf("F16FromFloat32(NaN) = %#04x, not a NaN", h)
	}
}

func TestBF16(t *testing.T) {
	cases := []struct {
		f    float32
		bits uint16
	}{
		{0, 0x0000},
		{1, 0x3f80},
		{-2, 0xc000},
		{1.0 / 3, 0x3eab}, // 0x3eaaaaab rounds up
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, to even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, to even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie
		{math.MaxFloat32, 0x7f80},                  // rounds up to Inf
		{math.Float32frombits(0x00010000), 0x0001}, // subnormal
		{float32(math.Inf(-1)), 0xff80},
		{99, 0x42c6},
	}
	for _, c := range cases {
		if got := BF16FromFloat32(c.f); got != c.bits {
			t.Errorf("BF16FromFloat32(%v) = %#04x, want %#04x", c.f, got, c.bits)
		}
	}
	for h := range 0x7f80 {
		if back := BF16FromFloat32(BF16ToFloat32(uint16(h))); back != uint16(h) {
			t.Fatalf("round trip of %#04x gave %#04x", h, back)
		}
	}
	if h := BF16FromFloat32(float32(math.NaN())); h&0x7f80 != 0x7f80 || h&0x7f == 0 {
		t.Errorf("BF16FromFloat32(NaN) = %#04x, not a NaN", h)
	}
}

// TestReference checks the reference itself on a few hand-worked cases.
func TestReference(t *testing.T) {
	in := [][]float64{{1, -3, 2}, {2, 3, -1}, {2, -1, -1}}
	cases := []struct {
		d    collective.DType
		op   collective.Op
		want []float64
	}{
		{collective.Float32, collective.Sum, []float64{5, -1, 0}},
		{collective.Int32, collective.Avg, []float64{1, 0, 0}}, // 5/3, -1/3, 0/3 truncated
		{collective.Float32, collective.Avg, []float64{float64(float32(5) / 3), float64(float32(-1) / 3), 0}},
		{collective.BFloat16, collective.Avg, []float64{float64(BF16ToFloat32(0x3fd5)), float64(BF16ToFloat32(0xbeab)), 0}},
		{collective.Int64, collective.Min, []float64{1, -3, -1}},
		{collective.Float16, collective.Max, []float64{2, 3, 2}},
		{collective.Float64, collective.Prod, []float64{4, 9, 2}},
	}
	for _, c := range cases {
		if d := diff(refReduce(c.d, c.op, in), c.want); d != "" {
			t.Errorf("refReduce(%v, %v): %s", c.d, c.op, d)
		}
	}
	// Inputs depend on the rank, the index and the seed.
	a, b := exactInputs(collective.Sum, 0, 0, 64), exactInputs(collective.Sum, 0, 1, 64)
	if diff(a, b) == "" {
		t.Errorf("ranks 0 and 1 contribute the same inputs")
	}
	for _, v := range a {
		if v < -3 || v > 3 || v != math.Trunc(v) {
			t.Fatalf("input %v is not a small integer", v)
		}
	}
	// Buffers round-trip their values in every dtype.
	for _, d := range collective.DTypes {
		vals := []float64{-3, 0, 1, 99, 2}
		if got := values(newBuffer(d, vals)); diff(got, vals) != "" {
			t.Errorf("%v buffer: %s", d, diff(got, vals))
		}
	}
}
