//go:build !amd64

package collective

// Elsewhere the 16-bit float kernels are the portable loops in reduce.go.
// halfSIMD exists so that the tests compile the same everywhere.
var halfSIMD = false

func combineBF16SIMD(o Op, dst, a, b []uint16) int { return 0 }

func combineF16SIMD(o Op, dst, a, b []uint16) int { return 0 }

func divideBF16SIMD(s []uint16, d float32) int { return 0 }

func divideF16SIMD(s []uint16, d float32) int { return 0 }

// floatSIMD and its kernels: likewise the portable loops.
var floatSIMD = false

func combineF32SIMD(o Op, dst, a, b []float32) int { return 0 }

func combineF64SIMD(o Op, dst, a, b []float64) int { return 0 }
