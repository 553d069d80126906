package collective

import (
	"math"
	"unsafe"
)

// The reduction kernels. Each computes dst[i] = a[i] (op) b[i] over typed
// views of byte slices; dst may alias a or b. They are generic over the Go
// element type so that every instantiation is a tight loop with no calls
// per element. 16-bit floats are widened to float32, combined, and rounded
// back to nearest-even, so every rank computes the same bits; their kernels
// have an AVX2 version on amd64 (half_amd64.s) that gives the same bits as
// the portable one, NaN payloads included.

type number interface {
	~float32 | ~float64 | ~int32 | ~int64
}

func view[T any](b []byte) []T {
	if len(b) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), len(b)/int(unsafe.Sizeof(zero)))
}

func combine[T number](o Op, dst, a, b []T) {
	n := len(dst)
	a, b = a[:n], b[:n]
	switch o {
	case Sum, Avg:
		for i := range dst {
			dst[i] = a[i] + b[i]
		}
	case Prod:
		for i := range dst {
			dst[i] = a[i] * b[i]
		}
	case Min:
		// NaN propagates (IEEE 754-2019 minimum); a's NaN wins over b's so
		// that the result does not depend on which NaN payload came first.
		for i := range dst {
			x, y := a[i], b[i]
			if y < x || y != y {
				x = y
			}
			if a[i] != a[i] {
				x = a[i]
			}
			dst[i] = x
		}
	case Max:
		for i := range dst {
			x, y := a[i], b[i]
			if y > x || y != y {
				x = y
			}
			if a[i] != a[i] {
				x = a[i]
			}
			dst[i] = x
		}
	}
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func f32ToBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	if f != f {
		return uint16(bits>>16) | 0x40 // keep it a (quiet) NaN after truncation
	}
	bits += 0x7fff + (bits>>16)&1
	return uint16(bits >> 16)
}

// f16ToF32 widens an IEEE binary16 value exactly.
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: mant × 2^-24.
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// f32ToF16 rounds to the nearest binary16, ties to even; overflow gives Inf.
func f32ToF16(f float32) uint16 {
	bits := math.Float32bits(f)
	sign := uint16(bits>>16) & 0x8000
	exp := int32(bits>>23) & 0xff
	mant := bits & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13) // quiet NaN, payload kept where it fits
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign // underflows to zero
		}
		// Subnormal: shift the mantissa (with its implicit 1) into place.
		m := mant | 0x800000
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rem := m & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, up to Inf: that is correct rounding
	}
	return sign | uint16(r)
}

func minF32(x, y float32) float32 {
	if y < x || y != y {
		x = y
	}
	return x
}

func maxF32(x, y float32) float32 {
	if y > x || y != y {
		x = y
	}
	return x
}

// NaN results of 16-bit float arithmetic follow one rule on every
// architecture and on both the vector and the portable path: a NaN in a
// gives the result (its sign and payload, quieted), else a NaN in b does,
// and an invalid operation on numbers (Inf-Inf, 0*Inf) gives the negative
// quiet NaN. Min and Max pick the same NaN. That is what x86 does in
// hardware, so the AVX2 kernels need no fix-up; the portable loops apply it
// by hand because arm64 and riscv64 pick NaNs differently (riscv64 always
// returns its canonical NaN), and ranks on different machines must agree.
// Narrowing quiets NaNs, so only the sign and the top payload bits reach the
// result.
func nanResult(x, y float32) float32 {
	if x != x {
		return x
	}
	if y != y {
		return y
	}
	return math.Float32frombits(0xffc00000)
}

func minHalf(x, y float32) float32 {
	if x != x {
		return x
	}
	return minF32(x, y)
}

func maxHalf(x, y float32) float32 {
	if x != x {
		return x
	}
	return maxF32(x, y)
}

// combineBF16 reduces bfloat16s: the vector kernel takes what it can (a
// multiple of 16 elements) and the portable loop finishes the tail, so both
// paths must give the same bits (half_test.go checks that they do).
func combineBF16(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	done := combineBF16SIMD(o, dst, a, b)
	combineBF16Generic(o, dst[done:], a[done:], b[done:])
}

func combineF16(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	done := combineF16SIMD(o, dst, a, b)
	combineF16Generic(o, dst[done:], a[done:], b[done:])
}

// combineBF16Generic and combineF16Generic are the portable kernels: widen
// to float32, combine, round back. One loop per op keeps the conversions
// inlined (a call per element through a function value ran at a quarter of
// a GB/s).
func combineBF16Generic(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	switch o {
	case Sum, Avg:
		for i := range dst {
			x, y := bf16ToF32(a[i]), bf16ToF32(b[i])
			r := x + y
			if r != r {
				r = nanResult(x, y)
			}
			dst[i] = f32ToBF16(r)
		}
	case Prod:
		for i := range dst {
			x, y := bf16ToF32(a[i]), bf16ToF32(b[i])
			r := x * y
			if r != r {
				r = nanResult(x, y)
			}
			dst[i] = f32ToBF16(r)
		}
	case Min:
		for i := range dst {
			dst[i] = f32ToBF16(minHalf(bf16ToF32(a[i]), bf16ToF32(b[i])))
		}
	case Max:
		for i := range dst {
			dst[i] = f32ToBF16(maxHalf(bf16ToF32(a[i]), bf16ToF32(b[i])))
		}
	}
}

// f16Table widens every float16 by lookup: cheaper than the bit work.
var f16Table = func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = f16ToF32(uint16(i))
	}
	return &t
}()

func combineF16Generic(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	t := f16Table
	switch o {
	case Sum, Avg:
		for i := range dst {
			x, y := t[a[i]], t[b[i]]
			r := x + y
			if r != r {
				r = nanResult(x, y)
			}
			dst[i] = f32ToF16(r)
		}
	case Prod:
		for i := range dst {
			x, y := t[a[i]], t[b[i]]
			r := x * y
			if r != r {
				r = nanResult(x, y)
			}
			dst[i] = f32ToF16(r)
		}
	case Min:
		for i := range dst {
			dst[i] = f32ToF16(minHalf(t[a[i]], t[b[i]]))
		}
	case Max:
		for i := range dst {
			dst[i] = f32ToF16(maxHalf(t[a[i]], t[b[i]]))
		}
	}
}

// reduceBytes computes dst = a (op) b elementwise for dtype d. All three
// have the same length in bytes; dst may alias a or b.
func reduceBytes(d DType, o Op, dst, a, b []byte) {
	switch d {
	case Float32:
		d, x, y := view[float32](dst), view[float32](a), view[float32](b)
		done := combineF32SIMD(o, d, x[:len(d)], y[:len(d)])
		combine(o, d[done:], x[done:], y[done:])
	case Float64:
		d, x, y := view[float64](dst), view[float64](a), view[float64](b)
		done := combineF64SIMD(o, d, x[:len(d)], y[:len(d)])
		combine(o, d[done:], x[done:], y[done:])
	case Int32:
		combine(o, view[int32](dst), view[int32](a), view[int32](b))
	case Int64:
		combine(o, view[int64](dst), view[int64](a), view[int64](b))
	case BFloat16:
		combineBF16(o, view[uint16](dst), view[uint16](a), view[uint16](b))
	case Float16:
		combineF16(o, view[uint16](dst), view[uint16](a), view[uint16](b))
	}
}

func divide[T number](s []T, n T) {
	for i := range s {
		s[i] /= n
	}
}

// divideBF16 and divideF16 finish an Avg of 16-bit floats: vector kernel
// first, portable loop for the tail, as in combineBF16.
func divideBF16(s []uint16, n float32) {
	done := divideBF16SIMD(s, n)
	divideBF16Generic(s[done:], n)
}

func divideF16(s []uint16, n float32) {
	done := divideF16SIMD(s, n)
	divideF16Generic(s[done:], n)
}

// The divisor is a group size (finite, at least 1), so a NaN quotient comes
// only from a NaN dividend, which is kept (see nanResult).
func divideBF16Generic(s []uint16, n float32) {
	for i := range s {
		x := bf16ToF32(s[i])
		r := x / n
		if r != r {
			r = x
		}
		s[i] = f32ToBF16(r)
	}
}

func divideF16Generic(s []uint16, n float32) {
	t := f16Table
	for i := range s {
		x := t[s[i]]
		r := x / n
		if r != r {
			r = x
		}
		s[i] = f32ToF16(r)
	}
}

// scaleForAvg divides every element of b by n, finishing an Avg.
func scaleForAvg(d DType, b []byte, n int) {
	switch d {
	case Float32:
		divide(view[float32](b), float32(n))
	case Float64:
		divide(view[float64](b), float64(n))
	case Int32:
		divide(view[int32](b), int32(n))
	case Int64:
		divide(view[int64](b), int64(n))
	case BFloat16:
		divideBF16(view[uint16](b), float32(n))
	case Float16:
		divideF16(view[uint16](b), float32(n))
	}
}
