package order

import "math/bits"

// The generators below are written out here on purpose instead of using
// math/rand/v2: the order of an epoch is part of a checkpoint's meaning, so
// it must not change when the Go toolchain changes. pcg is the same
// algorithm as math/rand/v2's PCG (128-bit LCG, DXSM output), and a test
// pins its output with golden values.

const (
	golden = 0x9E3779B97F4A7C15 // splitmix64 increment, 2^64/phi

	// Domain separation constants for deriving the PCG seed.
	domainHi = 0x6F72646572000001 // "order\0\0\1"
	domainLo = 0x6F72646572000002
	domainV2 = 0x6F72646572000200 // V2's generators (newPCGv2)
)

// mix64 is the splitmix64 finaliser; it is a bijection on uint64.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// deriveSeed maps (seed, epoch) to the two 64-bit words of the PCG state:
//
//	hi = mix64(seed ^ domainHi)
//	lo = mix64(mix64(seed ^ domainLo) + golden*(uint64(epoch)+1))
//
// hi determines seed (mix64 is a bijection) and, for a fixed seed, lo
// determines epoch, so distinct (seed, epoch) pairs get distinct states.
func deriveSeed(seed uint64, epoch int) (hi, lo uint64) {
	hi = mix64(seed ^ domainHi)
	lo = mix64(mix64(seed^domainLo) + golden*(uint64(int64(epoch))+1))
	return hi, lo
}

// pcg is a PCG generator with 128 bits of state and DXSM output.
type pcg struct{ hi, lo uint64 }

func newPCG(seed uint64, epoch int) *pcg {
	hi, lo := deriveSeed(seed, epoch)
	return &pcg{hi: hi, lo: lo}
}

func (p *pcg) Uint64() uint64 {
	const (
		mulHi = 2549297995355413924
		mulLo = 4865540595714422341
		incHi = 6364136223846793005
		incLo = 1442695040888963407
	)
	// state = state*mul + inc (mod 2^128)
	hi, lo := bits.Mul64(p.lo, mulLo)
	hi += p.hi*mulLo + p.lo*mulHi
	lo, c := bits.Add64(lo, incLo, 0)
	hi, _ = bits.Add64(hi, incHi, c)
	p.lo, p.hi = lo, hi

	// DXSM output.
	const cheapMul = 0xda942042e4dd58b5
	hi ^= hi >> 32
	hi *= cheapMul
	hi ^= hi >> 48
	hi *= lo | 1
	return hi
}

// Uint64n returns a uniform value in [0, n), n > 0, by Lemire's
// multiply-and-reject method (exactly uniform, no modulo bias).
func (p *pcg) Uint64n(n uint64) uint64 {
	hi, lo := bits.Mul64(p.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(p.Uint64(), n)
		}
	}
	return hi
}

// Intn returns a uniform value in [0, n), n > 0.
func (p *pcg) Intn(n int) int { return int(p.Uint64n(uint64(n))) }
