package collectivetest

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ringo-ml/ringo/collective"
)

// This file is the naive reference the suite checks results against: value
// conversions for the 16-bit float formats, typed buffers built from and
// read back into float64, and element-wise reductions computed in float64.
// It is written independently of package collective's kernels (the 16-bit
// conversions work on float64 arithmetic, not bit tricks) so that a bug in
// one is not mirrored in the other.

// BF16FromFloat32 rounds f to the nearest bfloat16 (ties to even) and
// returns its bits. NaN stays NaN; values beyond the range become Inf.
func BF16FromFloat32(f float32) uint16 {
	if f != f {
		return 0x7fc0 | uint16(math.Float32bits(f)>>16)&0x8000
	}
	return fromFloat64Format(float64(f), 8, 127, 7)
}

// BF16ToFloat32 widens bfloat16 bits exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F16FromFloat32 rounds f to the nearest IEEE binary16 (ties to even) and
// returns its bits. NaN stays NaN; values beyond the range become Inf;
// tiny values become subnormals or zero.
func F16FromFloat32(f float32) uint16 {
	if f != f {
		return 0x7e00 | uint16(math.Float32bits(f)>>16)&0x8000
	}
	return fromFloat64Format(float64(f), 5, 15, 10)
}

// F16ToFloat32 widens binary16 bits exactly.
func F16ToFloat32(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0x1f:
		if mant != 0 {
			return float32(math.NaN())
		}
		return float32(math.Inf(int(sign)))
	case 0:
		return float32(sign * math.Ldexp(mant, -24))
	}
	return float32(sign * math.Ldexp(1+mant/1024, exp-15))
}

// fromFloat64Format rounds a non-NaN v to a binary format with expBits
// exponent bits of the given bias and mantBits fraction bits, ties to even,
// and returns the bits. Every step is exact in float64 for the 16-bit
// formats, so the only rounding is the explicit RoundToEven.
func fromFloat64Format(v float64, expBits, bias, mantBits int) uint16 {
	var sign uint16
	if math.Signbit(v) {
		sign = 1 << (expBits + mantBits)
		v = -v
	}
	infBits := uint16(1<<expBits-1) << mantBits
	if math.IsInf(v, 0) {
		return sign | infBits
	}
	minNormalExp := 1 - bias
	var bits uint64
	if v < math.Ldexp(1, minNormalExp) {
		// Subnormal range: count units of the smallest subnormal; 1<<mantBits
		// of them is the smallest normal, whose bits follow on naturally.
		bits = uint64(math.RoundToEven(math.Ldexp(v, mantBits-minNormalExp)))
	} else {
		_, e := math.Frexp(v) // v = fr * 2^e, fr in [0.5, 1)
		e--                   // v = s * 2^e, s in [1, 2)
		frac := math.Ldexp(v, -e) - 1
		m := uint64(math.RoundToEven(math.Ldexp(frac, mantBits)))
		// A fraction that rounds up to 1<<mantBits carries into the exponent.
		bits = uint64(e+bias)<<mantBits + m
	}
	if bits >= uint64(infBits) {
		return sign | infBits
	}
	return sign | uint16(bits)
}

// roundTo returns v rounded to the nearest value of dtype d (integers: v
// must already be an integer in range).
func roundTo(d collective.DType, v float64) float64 {
	switch d {
	case collective.Float32:
		return float64(float32(v))
	case collective.Float64:
		return v
	case collective.Int32:
		return float64(int32(v))
	case collective.Int64:
		return float64(int64(v))
	case collective.BFloat16:
		return float64(BF16ToFloat32(BF16FromFloat32(float32(v))))
	case collective.Float16:
		return float64(F16ToFloat32(F16FromFloat32(float32(v))))
	}
	panic(fmt.Sprintf("collectivetest: unknown dtype %v", d))
}

func isFloat(d collective.DType) bool {
	return d != collective.Int32 && d != collective.Int64
}

// newBuffer returns a fresh buffer of dtype d holding vals, each rounded to
// d (vals for integer dtypes must be integers in range).
func newBuffer(d collective.DType, vals []float64) collective.Buffer {
	n := len(vals)
	switch d {
	case collective.Float32:
		s := make([]float32, n)
		for i, v := range vals {
			s[i] = float32(v)
		}
		return collective.Float32s(s)
	case collective.Float64:
		return collective.Float64s(append(make([]float64, 0, n), vals...))
	case collective.Int32:
		s := make([]int32, n)
		for i, v := range vals {
			s[i] = int32(v)
		}
		return collective.Int32s(s)
	case collective.Int64:
		s := make([]int64, n)
		for i, v := range vals {
			s[i] = int64(v)
		}
		return collective.Int64s(s)
	case collective.BFloat16:
		s := make([]uint16, n)
		for i, v := range vals {
			s[i] = BF16FromFloat32(float32(v))
		}
		return collective.BFloat16s(s)
	case collective.Float16:
		s := make([]uint16, n)
		for i, v := range vals {
			s[i] = F16FromFloat32(float32(v))
		}
		return collective.Float16s(s)
	}
	panic(fmt.Sprintf("collectivetest: unknown dtype %v", d))
}

// values reads b's elements as float64 (exactly, for every dtype and for
// integers up to 2^53).
func values(b collective.Buffer) []float64 {
	raw := b.Bytes()
	n := b.Len()
	out := make([]float64, n)
	ne := binary.NativeEndian
	for i := range out {
		switch b.DType() {
		case collective.Float32:
			out[i] = float64(math.Float32frombits(ne.Uint32(raw[4*i:])))
		case collective.Float64:
			out[i] = math.Float64frombits(ne.Uint64(raw[8*i:]))
		case collective.Int32:
			out[i] = float64(int32(ne.Uint32(raw[4*i:])))
		case collective.Int64:
			out[i] = float64(int64(ne.Uint64(raw[8*i:])))
		case collective.BFloat16:
			out[i] = float64(BF16ToFloat32(ne.Uint16(raw[2*i:])))
		case collective.Float16:
			out[i] = float64(F16ToFloat32(ne.Uint16(raw[2*i:])))
		default:
			panic(fmt.Sprintf("collectivetest: unknown dtype %v", b.DType()))
		}
	}
	return out
}

// cloneBuffer returns a buffer of the same dtype holding a copy of b.
func cloneBuffer(b collective.Buffer) collective.Buffer {
	return newBuffer(b.DType(), values(b))
}

// refReduce combines inputs[0..k-1] element-wise with op the way the
// library defines it, for inputs whose every partial result is exact in d
// (small integers): the exact result rounded to d, except Avg, which is the
// sum divided by size: truncated toward zero for integers, and for floats
// the IEEE quotient in d (the correctly rounded quotient, which is what
// dividing in d, or in float32 and rounding to a 16-bit format, gives).
func refReduce(d collective.DType, op collective.Op, inputs [][]float64) []float64 {
	k := len(inputs)
	out := append([]float64(nil), inputs[0]...)
	for _, in := range inputs[1:] {
		for i, v := range in {
			switch op {
			case collective.Sum, collective.Avg:
				out[i] += v
			case collective.Prod:
				out[i] *= v
			case collective.Min:
				out[i] = math.Min(out[i], v)
			case collective.Max:
				out[i] = math.Max(out[i], v)
			}
		}
	}
	for i, v := range out {
		if op == collective.Avg {
			switch d {
			case collective.Int32, collective.Int64:
				v = float64(int64(v) / int64(k))
			case collective.Float32:
				a, b := float32(v), float32(k)
				v = float64(a / b)
			default:
				v /= float64(k)
			}
		}
		out[i] = roundTo(d, v)
	}
	return out
}

// exactInput is the value rank r contributes at index i in exact tests: a
// small integer, so that any combination of up to 8 ranks is exact in
// every dtype. For Prod it is one of 1, -1, 2 (|product| <= 256).
func exactInput(op collective.Op, seed, r, i int) float64 {
	if op == collective.Prod {
		return [3]float64{1, -1, 2}[(r*5+i*7+seed)%3]
	}
	return float64((r*7+i*3+seed*5)%7 - 3)
}

func exactInputs(op collective.Op, seed, r, count int) []float64 {
	out := make([]float64, count)
	for i := range out {
		out[i] = exactInput(op, seed, r, i)
	}
	return out
}

// sameValue reports whether got matches want: equal, or both NaN.
func sameValue(got, want float64) bool {
	return got == want || (got != got && want != want)
}

// diff describes the first few elements where got differs from want, or
// returns "" when they match.
func diff(got, want []float64) string {
	if len(got) != len(want) {
		return fmt.Sprintf("got %d elements, want %d", len(got), len(want))
	}
	var msg string
	bad := 0
	for i := range got {
		if !sameValue(got[i], want[i]) {
			if bad < 4 {
				msg += fmt.Sprintf(" [index %d: got %v, want %v]", i, got[i], want[i])
			}
			bad++
		}
	}
	if bad == 0 {
		return ""
	}
	return fmt.Sprintf("%d of %d elements wrong:%s", bad, len(got), msg)
}
