//go:build amd64

package collective

import "golang.org/x/sys/cpu"

// halfSIMD says whether the 16-bit float kernels use AVX2 and F16C (F16C
// converts float16 in hardware; bfloat16 needs only AVX2 integer work).
// CPUs without them take the portable loops. Tests switch it off to compare
// the two paths.
var halfSIMD = cpu.X86.HasAVX2 && cpu.X86.HasF16C

// The vector kernels each do n elements, n a positive multiple of 16; dst
// may be a or b. They are in half_amd64.s.

//go:noescape
func addBF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func mulBF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func minBF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func maxBF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func divBF16AVX2(s *uint16, n int, d float32)

//go:noescape
func addF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func mulF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func minF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func maxF16AVX2(dst, a, b *uint16, n int)

//go:noescape
func divF16AVX2(s *uint16, n int, d float32)

// combineBF16SIMD reduces the longest prefix of a multiple of 16 elements
// with AVX2 and returns its length (0 when the CPU cannot); the caller does
// the rest. The slices have equal lengths.
func combineBF16SIMD(o Op, dst, a, b []uint16) int {
	n := len(dst) &^ 15
	if !halfSIMD || n == 0 {
		return 0
	}
	switch o {
	case Sum, Avg:
		addBF16AVX2(&dst[0], &a[0], &b[0], n)
	case Prod:
		mulBF16AVX2(&dst[0], &a[0], &b[0], n)
	case Min:
		minBF16AVX2(&dst[0], &a[0], &b[0], n)
	case Max:
		maxBF16AVX2(&dst[0], &a[0], &b[0], n)
	default:
		return 0
	}
	return n
}

func combineF16SIMD(o Op, dst, a, b []uint16) int {
	n := len(dst) &^ 15
	if !halfSIMD || n == 0 {
		return 0
	}
	switch o {
	case Sum, Avg:
		addF16AVX2(&dst[0], &a[0], &b[0], n)
	case Prod:
		mulF16AVX2(&dst[0], &a[0], &b[0], n)
	case Min:
		minF16AVX2(&dst[0], &a[0], &b[0], n)
	case Max:
		maxF16AVX2(&dst[0], &a[0], &b[0], n)
	default:
		return 0
	}
	return n
}

// divideBF16SIMD divides the longest prefix of a multiple of 16 elements by
// d and returns its length, as combineBF16SIMD.
func divideBF16SIMD(s []uint16, d float32) int {
	n := len(s) &^ 15
	if !halfSIMD || n == 0 {
		return 0
	}
	divBF16AVX2(&s[0], n, d)
	return n
}

func divideF16SIMD(s []uint16, d float32) int {
	n := len(s) &^ 15
	if !halfSIMD || n == 0 {
		return 0
	}
	divF16AVX2(&s[0], n, d)
	return n
}
