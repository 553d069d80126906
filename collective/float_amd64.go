//go:build amd64

package collective

import "golang.org/x/sys/cpu"

// floatSIMD says whether float32 and float64 sums and products use the AVX
// kernels in float_amd64.s. The portable loop does about one element per
// cycle (about 5 GB/s of float32 at 4 MiB on the development machine);
// the kernels run at memory speed. Tests switch it off to compare paths.
var floatSIMD = cpu.X86.HasAVX

// The kernels do n elements, n a positive multiple of 32 (float32) or 16
// (float64); dst may be a or b.

//go:noescape
func addF32AVX(dst, a, b *float32, n int)

//go:noescape
func mulF32AVX(dst, a, b *float32, n int)

//go:noescape
func addF64AVX(dst, a, b *float64, n int)

//go:noescape
func mulF64AVX(dst, a, b *float64, n int)

// combineF32SIMD reduces the longest prefix of a multiple of 32 elements
// with AVX and returns its length (0 when the CPU cannot or the op has no
// kernel); the caller does the rest. The slices have equal lengths.
func combineF32SIMD(o Op, dst, a, b []float32) int {
	n := len(dst) &^ 31
	if !floatSIMD || n == 0 {
		return 0
	}
	switch o {
	case Sum, Avg:
		addF32AVX(&dst[0], &a[0], &b[0], n)
	case Prod:
		mulF32AVX(&dst[0], &a[0], &b[0], n)
	default:
		return 0
	}
	return n
}

// combineF64SIMD is combineF32SIMD for float64, in multiples of 16.
func combineF64SIMD(o Op, dst, a, b []float64) int {
	n := len(dst) &^ 15
	if !floatSIMD || n == 0 {
		return 0
	}
	switch o {
	case Sum, Avg:
		addF64AVX(&dst[0], &a[0], &b[0], n)
	case Prod:
		mulF64AVX(&dst[0], &a[0], &b[0], n)
	default:
		return 0
	}
	return n
}
