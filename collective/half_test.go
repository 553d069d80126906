package collective

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// The vector kernels (half_amd64.s) against the portable loops: same bits
// for every op, both 16-bit dtypes, any length and any bit pattern. Where
// there are no vector kernels both sides are the portable loops and the
// tests only check the NaN rule and the tails.

type halfKernels struct {
	name    string
	combine func(o Op, dst, a, b []uint16) // what reduceBytes runs
	generic func(o Op, dst, a, b []uint16)
	divide  func(s []uint16, n float32)
	divGen  func(s []uint16, n float32)
}

var halfKinds = []halfKernels{
	{"bfloat16", combineBF16, combineBF16Generic, divideBF16, divideBF16Generic},
	{"float16", combineF16, combineF16Generic, divideF16, divideF16Generic},
}

// halfSpecials are the bit patterns where conversions and NaN rules go
// wrong, for both formats: zeros, the smallest and largest subnormals and
// normals, infinities, quiet and signalling NaNs with payloads, of both
// signs.
var halfSpecials = func() []uint16 {
	var s []uint16
	for _, h := range []uint16{
		0x0000, 0x0001, 0x0002, 0x03ff, 0x0400, 0x3c00, 0x3c01, 0x7bff, 0x7c00, 0x7c01, 0x7d00, 0x7e00, 0x7e01, 0x7fff, // float16
		0x007f, 0x0080, 0x3f80, 0x3f81, 0x7f7f, 0x7f80, 0x7f81, 0x7fa0, 0x7fc0, 0x7fc1, // bfloat16
	} {
		s = append(s, h, h|0x8000)
	}
	return s
}()

// halfValues fills s with a mix: a third specials, a third any bits, a
// third ordinary numbers near 1 (where sums and products round).
func halfValues(rng *rand.Rand, s []uint16, bf16 bool) {
	for i := range s {
		switch rng.IntN(3) {
		case 0:
			s[i] = halfSpecials[rng.IntN(len(halfSpecials))]
		case 1:
			s[i] = uint16(rng.Uint32())
		default:
			f := float32(rng.NormFloat64() * 4)
			if bf16 {
				s[i] = f32ToBF16(f)
			} else {
				s[i] = f32ToF16(f)
			}
		}
	}
}

func requireHalfSIMD(t testing.TB) {
	if !halfSIMD {
		t.Skip("no vector kernels for 16-bit floats on this machine (amd64 with AVX2 and F16C has them); the portable loops are checked elsewhere")
	}
}

func diffHalf(got, want []uint16) int {
	for i := range want {
		if got[i] != want[i] {
			return i
		}
	}
	return -1
}

func TestHalfKernelsMatchGeneric(t *testing.T) {
	requireHalfSIMD(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var lengths []int
	for n := 0; n <= 67; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 1000+7, 4096)
	for _, k := range halfKinds {
		for _, o := range Ops {
			for _, n := range lengths {
				a, b := make([]uint16, n), make([]uint16, n)
				halfValues(rng, a, k.name == "bfloat16")
				halfValues(rng, b, k.name == "bfloat16")
				want := make([]uint16, n)
				k.generic(o, want, a, b)
				got := make([]uint16, n)
				k.combine(o, got, a, b)
				if i := diffHalf(got, want); i >= 0 {
					t.Fatalf("%s %s n=%d [%d]: %#04x op %#04x = %#04x, portable gives %#04x", k.name, o, n, i, a[i], b[i], got[i], want[i])
				}
				// In place, as the ring reduces: dst is a or b.
				for side := range 2 {
					x := append([]uint16(nil), a...)
					y := append([]uint16(nil), b...)
					dst := x
					if side == 1 {
						dst = y
					}
					k.combine(o, dst, x, y)
					if i := diffHalf(dst, want); i >= 0 {
						t.Fatalf("%s %s n=%d in place (dst is operand %d) [%d]: %#04x, want %#04x", k.name, o, n, side, i, dst[i], want[i])
					}
				}
			}
		}
		for _, n := range lengths {
			for _, div := range []float32{1, 2, 3, 7, 1024} {
				s := make([]uint16, n)
				halfValues(rng, s, k.name == "bfloat16")
				want := append([]uint16(nil), s...)
				k.divGen(want, div)
				k.divide(s, div)
				if i := diffHalf(s, want); i >= 0 {
					t.Fatalf("%s /%v n=%d [%d]: %#04x, portable gives %#04x", k.name, div, n, i, s[i], want[i])
				}
			}
		}
	}
}

// Every value of a against a few values of b, every op.
func TestHalfKernelsExhaustive(t *testing.T) {
	requireHalfSIMD(t)
	const n = 1 << 16
	a := make([]uint16, n)
	for i := range a {
		a[i] = uint16(i)
	}
	bs := []uint16{0x0000, 0x8000, 0x0001, 0x3c00, 0xbc00, 0x3f80, 0xbf80, 0x7bff, 0x7c00, 0xfc00, 0x7f80, 0xff80, 0x7e00, 0x7d00, 0x7fc0, 0x7fa0, 0x1234}
	b := make([]uint16, n)
	got, want := make([]uint16, n), make([]uint16, n)
	for _, k := range halfKinds {
		for _, o := range Ops {
			for _, bv := range bs {
				for i := range b {
					b[i] = bv
				}
				for _, swap := range []bool{false, true} {
					x, y := a, b
					if swap {
						x, y = b, a
					}
					k.generic(o, want, x, y)
					k.combine(o, got, x, y)
					if i := diffHalf(got, want); i >= 0 {
						t.Fatalf("%s %s: %#04x op %#04x = %#04x, portable gives %#04x", k.name, o, x[i], y[i], got[i], want[i])
					}
				}
			}
		}
		for _, div := range []float32{2, 3, 6} {
			s := append([]uint16(nil), a...)
			w := append([]uint16(nil), a...)
			k.divide(s, div)
			k.divGen(w, div)
			if i := diffHalf(s, w); i >= 0 {
				t.Fatalf("%s %#04x / %v = %#04x, portable gives %#04x", k.name, a[i], div, s[i], w[i])
			}
		}
	}
}

// The NaN rule (nanResult), spelled out in bits, on whichever path this
// machine takes and on the portable one: a's NaN beats b's and comes out
// quiet with its payload, an invalid operation gives the negative quiet
// NaN, and Min and Max keep a on ties, -0 against +0 included.
func TestHalfNaNRule(t *testing.T) {
	type tc struct {
		o       Op
		a, b, r uint16
	}
	cases := map[string][]tc{
		"bfloat16": {
			{Sum, 0x7f81, 0xffa0, 0x7fc1}, // both NaN: a's, quieted
			{Sum, 0x3f80, 0xffa0, 0xffe0}, // b's NaN, quieted
			{Sum, 0x7f80, 0xff80, 0xffc0}, // Inf-Inf
			{Prod, 0x0000, 0xff80, 0xffc0},
			{Prod, 0xffc3, 0x7f81, 0xffc3},
			{Avg, 0x7fc0, 0x3f80, 0x7fc0},
			{Min, 0x7f81, 0x3f80, 0x7fc1},
			{Min, 0x3f80, 0xff81, 0xffc1},
			{Max, 0x3f80, 0x7fa0, 0x7fe0},
			{Min, 0x0000, 0x8000, 0x0000},
			{Min, 0x8000, 0x0000, 0x8000},
			{Max, 0x0000, 0x8000, 0x0000},
			{Max, 0x8000, 0x0000, 0x8000},
			{Max, 0xff80, 0x7f80, 0x7f80},
		},
		"float16": {
			{Sum, 0x7c01, 0xfd00, 0x7e01},
			{Sum, 0x3c00, 0xfd00, 0xff00},
			{Sum, 0x7c00, 0xfc00, 0xfe00},
			{Prod, 0x0000, 0xfc00, 0xfe00},
			{Prod, 0xfe03, 0x7c01, 0xfe03},
			{Min, 0x7c01, 0x3c00, 0x7e01},
			{Min, 0x3c00, 0xfc01, 0xfe01},
			{Max, 0x3c00, 0x7d00, 0x7f00},
			{Min, 0x0000, 0x8000, 0x0000},
			{Min, 0x8000, 0x0000, 0x8000},
			{Max, 0x0000, 0x8000, 0x0000},
			{Max, 0x8000, 0x0000, 0x8000},
			{Sum, 0x7bff, 0x7bff, 0x7c00}, // overflow rounds to Inf
		},
	}
	for _, k := range halfKinds {
		for _, c := range cases[k.name] {
			// 16 copies plus one so that the vector kernel and the tail both see it.
			const n = 17
			a, b := make([]uint16, n), make([]uint16, n)
			for i := range a {
				a[i], b[i] = c.a, c.b
			}
			for _, f := range []struct {
				path string
				fn   func(o Op, dst, a, b []uint16)
			}{{"dispatch", k.combine}, {"portable", k.generic}} {
				dst := make([]uint16, n)
				f.fn(c.o, dst, a, b)
				for i, r := range dst {
					if r != c.r {
						t.Errorf("%s %s (%s) [%d]: %#04x op %#04x = %#04x, want %#04x", k.name, c.o, f.path, i, c.a, c.b, r, c.r)
						break
					}
				}
			}
		}
	}
}

func FuzzHalfKernels(f *testing.F) {
	f.Add([]byte{0x81, 0x7f, 0xa0, 0xff, 0x00, 0x7c, 0x00, 0xfc})
	f.Add(make([]byte, 70))
	seed := make([]byte, 200)
	for i := range seed {
		seed[i] = byte(i * 37)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		requireHalfSIMD(t)
		n := len(data) / 4
		a, b := make([]uint16, n), make([]uint16, n)
		for i := range n {
			a[i] = binary.LittleEndian.Uint16(data[4*i:])
			b[i] = binary.LittleEndian.Uint16(data[4*i+2:])
		}
		got, want := make([]uint16, n), make([]uint16, n)
		for _, k := range halfKinds {
			for _, o := range Ops {
				k.combine(o, got, a, b)
				k.generic(o, want, a, b)
				if i := diffHalf(got, want); i >= 0 {
					t.Fatalf("%s %s [%d]: %#04x op %#04x = %#04x, portable gives %#04x", k.name, o, i, a[i], b[i], got[i], want[i])
				}
			}
		}
	})
}

// BenchmarkHalfKernels runs the vector and the portable kernels side by
// side (and float32 for scale). Bytes are those of one input vector, as in
// BenchmarkReduce; dst is a third buffer so every iteration sees the same
// numbers.
func BenchmarkHalfKernels(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, size := range []int{1 << 20, 64 << 20} {
		sz := fmt.Sprintf("%dMiB", size>>20)
		n := size / 2
		x, y, dst := make([]uint16, n), make([]uint16, n), make([]uint16, n)
		for i := range dst {
			dst[i] = 1 // fault the pages in now, not in the first benchmark
		}
		for _, k := range halfKinds {
			for i := range x {
				f, g := float32(rng.NormFloat64()), float32(rng.NormFloat64())
				if k.name == "bfloat16" {
					x[i], y[i] = f32ToBF16(f), f32ToBF16(g)
				} else {
					x[i], y[i] = f32ToF16(f), f32ToF16(g)
				}
			}
			for _, o := range Ops {
				for _, path := range []string{"simd", "generic"} {
					b.Run(fmt.Sprintf("%s/%s/%s/%s", k.name, o, sz, path), func(b *testing.B) {
						if path == "simd" && !halfSIMD {
							b.Skip("no vector kernels on this machine")
						}
						fn := k.combine
						div := k.divide
						if path == "generic" {
							fn, div = k.generic, k.divGen
						}
						b.SetBytes(int64(size))
						for b.Loop() {
							if o == Avg {
								// Only the division that finishes an Avg (its sum is
								// Sum's); by 1, in place, so the numbers stay put.
								div(dst, 1)
							} else {
								fn(o, dst, x, y)
							}
						}
					})
				}
			}
		}
		fx, fy, fd := make([]float32, size/4), make([]float32, size/4), make([]float32, size/4)
		for i := range fx {
			fx[i], fy[i], fd[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64()), 1
		}
		b.Run(fmt.Sprintf("float32/sum/%s/generic", sz), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				combine(Sum, fd, fx, fy)
			}
		})
	}
}
