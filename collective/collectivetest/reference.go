package collectivetest

import (
	"fmt"
	"math"
	"sync"
	"unsafe"

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
		if _, ok := smallInt(v); ok {
			return v
		}
		return float64(BF16ToFloat32(BF16FromFloat32(float32(v))))
	case collective.Float16:
		if _, ok := smallInt(v); ok {
			return v
		}
		return float64(F16ToFloat32(F16FromFloat32(float32(v))))
	}
	panic(fmt.Sprintf("collectivetest: unknown dtype %v", d))
}

func isFloat(d collective.DType) bool {
	return d != collective.Int32 && d != collective.Int64
}

// The suite converts millions of elements, and the race detector makes
// every conversion slow, so the 16-bit formats go through tables: all
// 65536 bit patterns widened, and the small integers the exact tests use
// narrowed.
type halfTab struct {
	once            sync.Once
	bf16, f16       []float32 // indexed by bits
	bf16Int, f16Int []uint16  // indexed by v + halfIntRange
}

var halfTables halfTab

// halfIntRange bounds the integers in the narrowing tables; all of them
// are exact in both 16-bit formats.
const halfIntRange = 256

func tables() *halfTab {
	h := &halfTables
	h.once.Do(func() {
		h.bf16, h.f16 = make([]float32, 1<<16), make([]float32, 1<<16)
		for b := range 1 << 16 {
			h.bf16[b], h.f16[b] = BF16ToFloat32(uint16(b)), F16ToFloat32(uint16(b))
		}
		h.bf16Int, h.f16Int = make([]uint16, 2*halfIntRange+1), make([]uint16, 2*halfIntRange+1)
		for i := range h.bf16Int {
			v := float32(i - halfIntRange)
			h.bf16Int[i], h.f16Int[i] = BF16FromFloat32(v), F16FromFloat32(v)
		}
	})
	return h
}

// smallInt returns v + halfIntRange if v is an integer within the tables.
func smallInt(v float64) (int, bool) {
	if v >= -halfIntRange && v <= halfIntRange && v == float64(int(v)) {
		return int(v) + halfIntRange, true
	}
	return 0, false
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
	case collective.BFloat16, collective.Float16:
		tab, slow := tables().bf16Int, BF16FromFloat32
		if d == collective.Float16 {
			tab, slow = tables().f16Int, F16FromFloat32
		}
		s := make([]uint16, n)
		for i, v := range vals {
			if k, ok := smallInt(v); ok {
				s[i] = tab[k]
			} else {
				s[i] = slow(float32(v))
			}
		}
		if d == collective.Float16 {
			return collective.Float16s(s)
		}
		return collective.BFloat16s(s)
	}
	panic(fmt.Sprintf("collectivetest: unknown dtype %v", d))
}

// view returns b's memory as a slice of T (one unsafe conversion per
// buffer, not per element).
func view[T any](b collective.Buffer) []T {
	raw := b.Bytes()
	var zero T
	n := len(raw) / int(unsafe.Sizeof(zero))
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&raw[0])), n)
}

// values reads b's elements as float64 (exactly, for every dtype and for
// integers up to 2^53).
func values(b collective.Buffer) []float64 {
	out := make([]float64, b.Len())
	switch b.DType() {
	case collective.Float32:
		for i, v := range view[float32](b) {
			out[i] = float64(v)
		}
	case collective.Float64:
		copy(out, view[float64](b))
	case collective.Int32:
		for i, v := range view[int32](b) {
			out[i] = float64(v)
		}
	case collective.Int64:
		for i, v := range view[int64](b) {
			out[i] = float64(v)
		}
	case collective.BFloat16:
		tab := tables().bf16
		for i, v := range view[uint16](b) {
			out[i] = float64(tab[v])
		}
	case collective.Float16:
		tab := tables().f16
		for i, v := range view[uint16](b) {
			out[i] = float64(tab[v])
		}
	default:
		panic(fmt.Sprintf("collectivetest: unknown dtype %v", b.DType()))
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
// small integer in -3..3 (so that any combination of up to 8 ranks is
// exact in every dtype), from a hash of seed, rank and index so that no two
// ranks, blocks or chunks look alike. For Prod it is one of 1, -1, 2
// (|product| <= 256).
func exactInput(op collective.Op, seed, r, i int) float64 {
	h := mix(uint64(seed), uint64(r), uint64(i))
	if op == collective.Prod {
		return [3]float64{1, -1, 2}[h%3]
	}
	return float64(h%7) - 3
}

// mix is a small integer hash (splitmix64's finaliser over a combination).
func mix(a, b, c uint64) uint64 {
	x := a*0x9e3779b97f4a7c15 ^ (b+1)*0xbf58476d1ce4e5b9 ^ (c+7)*0x94d049bb133111eb
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	x *= 0x94d049bb133111eb
	x ^= x >> 32
	return x
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
