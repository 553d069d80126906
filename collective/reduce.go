package collective

import (
	"math"
	"unsafe"
)

// The reduction kernels. Each computes dst[i] = a[i] (op) b[i] over typed
// views of byte slices; dst may alias a or b. They are generic over the Go
// element type so that every instantiation is a tight loop with no calls
// per element. 16-bit floats are widened to float32, combined, and rounded
// back to nearest-even, so every rank computes the same bits.

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

// combineHalf reduces 16-bit floats: widen, combine in float32, round back.
// One loop per op keeps the conversions inlined (a generic per-element
// call ran at a quarter of a GB/s).
func combineHalf(o Op, dst, a, b []uint16, widen func(uint16) float32, narrow func(float32) uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	switch o {
	case Sum, Avg:
		for i := range dst {
			dst[i] = narrow(widen(a[i]) + widen(b[i]))
		}
	case Prod:
		for i := range dst {
			dst[i] = narrow(widen(a[i]) * widen(b[i]))
		}
	case Min:
		for i := range dst {
			x := widen(a[i])
			if x == x {
				x = minF32(x, widen(b[i]))
			}
			dst[i] = narrow(x)
		}
	case Max:
		for i := range dst {
			x := widen(a[i])
			if x == x {
				x = maxF32(x, widen(b[i]))
			}
			dst[i] = narrow(x)
		}
	}
}

func combineBF16(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	switch o {
	case Sum, Avg:
		for i := range dst {
			dst[i] = f32ToBF16(bf16ToF32(a[i]) + bf16ToF32(b[i]))
		}
	case Prod:
		for i := range dst {
			dst[i] = f32ToBF16(bf16ToF32(a[i]) * bf16ToF32(b[i]))
		}
	default:
		combineHalf(o, dst, a, b, bf16ToF32, f32ToBF16)
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

func f16Widen(h uint16) float32 { return f16Table[h] }

func combineF16(o Op, dst, a, b []uint16) {
	n := len(dst)
	a, b = a[:n], b[:n]
	t := f16Table
	switch o {
	case Sum, Avg:
		for i := range dst {
			dst[i] = f32ToF16(t[a[i]] + t[b[i]])
		}
	case Prod:
		for i := range dst {
			dst[i] = f32ToF16(t[a[i]] * t[b[i]])
		}
	default:
		combineHalf(o, dst, a, b, f16Widen, f32ToF16)
	}
}

// reduceBytes computes dst = a (op) b elementwise for dtype d. All three
// have the same length in bytes; dst may alias a or b.
func reduceBytes(d DType, o Op, dst, a, b []byte) {
	switch d {
	case Float32:
		combine(o, view[float32](dst), view[float32](a), view[float32](b))
	case Float64:
		combine(o, view[float64](dst), view[float64](a), view[float64](b))
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

func divideHalf(s []uint16, n float32, widen func(uint16) float32, narrow func(float32) uint16) {
	for i := range s {
		s[i] = narrow(widen(s[i]) / n)
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
		divideHalf(view[uint16](b), float32(n), bf16ToF32, f32ToBF16)
	case Float16:
		divideHalf(view[uint16](b), float32(n), f16ToF32, f32ToF16)
	}
}
