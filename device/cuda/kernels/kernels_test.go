package kernels_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
	"github.com/ringo-ml/ringo/device/cuda/kernels"
)

var update = flag.Bool("update", false, "rewrite testdata/kernels.ptx from Source()")

const goldenPath = "testdata/kernels.ptx"

// TestGolden keeps the generated PTX in review: any change to Source()
// shows as a change to testdata/kernels.ptx (go test -update rewrites it).
func TestGolden(t *testing.T) {
	src := kernels.Source()
	if *update {
		if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if string(want) == src {
		return
	}
	g, w := strings.Split(src, "\n"), strings.Split(string(want), "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			t.Fatalf("Source() differs from %s at line %d:\n got  %q\n want %q\nrun go test -update to accept the change", goldenPath, i+1, gl, wl)
		}
	}
}

// TestSourceIsDeterministic also checks that the text is plain ASCII.
func TestSourceIsDeterministic(t *testing.T) {
	if kernels.Source() != kernels.Source() {
		t.Fatal("Source() changed between calls")
	}
	for i, line := range strings.Split(kernels.Source(), "\n") {
		for _, c := range line {
			if c > 0x7e || c < 0x20 && c != '\t' {
				t.Fatalf("line %d: %q is not printable ASCII, which PTX source must be", i+1, c)
			}
		}
	}
	head := ".version " + kernels.PTXVersion + "\n.target " + kernels.Target + "\n.address_size 64\n"
	if !strings.Contains(kernels.Source(), head) {
		t.Fatalf("Source() lacks the header %q", head)
	}
}

func TestNames(t *testing.T) {
	names := kernels.Names()
	if want := len(kernels.Ops())*len(kernels.DTypes()) + len(kernels.DTypes()); len(names) != want {
		t.Fatalf("%d names, want %d", len(names), want)
	}
	seen := map[string]bool{}
	src := kernels.Source()
	for _, n := range names {
		if seen[n] {
			t.Errorf("%s listed twice", n)
		}
		seen[n] = true
		if c := strings.Count(src, ".visible .entry "+n+"("); c != 1 {
			t.Errorf("%s: %d definitions in Source()", n, c)
		}
	}
	if c := strings.Count(src, ".visible .entry "); c != len(names) {
		t.Errorf("Source() has %d entries, Names() %d", c, len(names))
	}
	for _, o := range kernels.Ops() {
		for _, d := range kernels.DTypes() {
			if n := kernels.ReduceName(o, d); !seen[n] {
				t.Errorf("ReduceName(%s, %s) = %s, not in Names()", o, d, n)
			}
		}
	}
	for _, d := range kernels.DTypes() {
		if n := kernels.DivideName(d); !seen[n] {
			t.Errorf("DivideName(%s) = %s, not in Names()", d, n)
		}
	}
	m := parsed(t)
	if !slices.Equal(m.Order, names) {
		t.Errorf("entries in Source() order %v, Names() %v", m.Order, names)
	}
	for _, bad := range []func(){
		func() { kernels.ReduceName("avg", kernels.Float32) },
		func() { kernels.ReduceName(kernels.Sum, "int32") },
		func() { kernels.DivideName("int64") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("an invalid op or dtype did not panic")
				}
			}()
			bad()
		}()
	}
}

var parsedModule = sync.OnceValues(func() (*Module, error) { return ParsePTX(kernels.Source()) })

func parsed(t *testing.T) *Module {
	t.Helper()
	m, err := parsedModule()
	if err != nil {
		t.Fatalf("Source() does not parse: %v", err)
	}
	return m
}

// TestModule checks the header and every entry's parameters, and logs the
// instructions the module uses.
func TestModule(t *testing.T) {
	m := parsed(t)
	if m.Version != kernels.PTXVersion || m.Target != kernels.Target || m.AddressSize != "64" {
		t.Errorf("header %s %s %s", m.Version, m.Target, m.AddressSize)
	}
	u64 := ptxType{'u', 64}
	for _, o := range kernels.Ops() {
		for _, d := range kernels.DTypes() {
			e := m.Entries[kernels.ReduceName(o, d)]
			want := []Param{{"p_dst", u64}, {"p_a", u64}, {"p_b", u64}, {"p_n", u64}}
			if !slices.Equal(e.Params, want) {
				t.Errorf("%s params %v, want %v", e.Name, e.Params, want)
			}
		}
	}
	for _, d := range kernels.DTypes() {
		e := m.Entries[kernels.DivideName(d)]
		want := []Param{{"p_dst", u64}, {"p_n", u64}, {"p_divisor", ptxType{'f', d.ComputeBits()}}}
		if !slices.Equal(e.Params, want) {
			t.Errorf("%s params %v, want %v", e.Name, e.Params, want)
		}
	}
	ops := map[string]int{}
	for _, e := range m.Entries {
		for op, n := range e.Ops {
			ops[op] += n
		}
	}
	var list []string
	for op := range ops {
		list = append(list, op)
	}
	slices.Sort(list)
	t.Logf("%d instruction forms: %s", len(list), strings.Join(list, " "))
}

// ---------------------------------------------------------------------------
// The host's reduction, by hand from collective's reduce.go, and through a
// real 2-rank all-reduce.

func minOf[T float32 | float64](x, y T) T {
	r := x
	if y < r || y != y {
		r = y
	}
	if x != x {
		r = x
	}
	return r
}

func maxOf[T float32 | float64](x, y T) T {
	r := x
	if y > r || y != y {
		r = y
	}
	if x != x {
		r = x
	}
	return r
}

// nan32 and nan64 are nanResult as x86 computes it: x's NaN, else y's,
// quieted; the negative quiet NaN for an invalid operation.
func nan32(x, y float32) uint32 {
	switch {
	case x != x:
		return math.Float32bits(x) | 0x400000
	case y != y:
		return math.Float32bits(y) | 0x400000
	}
	return 0xffc00000
}

func nan64(x, y float64) uint64 {
	switch {
	case x != x:
		return math.Float64bits(x) | 0x8000000000000
	case y != y:
		return math.Float64bits(y) | 0x8000000000000
	}
	return 0xfff8000000000000
}

func halfConv(d kernels.DType) (widen func(uint16) float32, narrow func(float32) uint16) {
	if d == kernels.BFloat16 {
		return collective.BF16ToFloat32, collective.BF16FromFloat32
	}
	return collective.F16ToFloat32, collective.F16FromFloat32
}

// ref is a (o) b on the bits of two elements of d, as the host computes it.
func ref(o kernels.Op, d kernels.DType, a, b uint64) uint64 {
	switch d {
	case kernels.Float32:
		x, y := math.Float32frombits(uint32(a)), math.Float32frombits(uint32(b))
		var r float32
		switch o {
		case kernels.Sum:
			r = x + y
		case kernels.Prod:
			r = x * y
		case kernels.Min:
			return uint64(math.Float32bits(minOf(x, y)))
		case kernels.Max:
			return uint64(math.Float32bits(maxOf(x, y)))
		}
		if r != r {
			return uint64(nan32(x, y))
		}
		return uint64(math.Float32bits(r))
	case kernels.Float64:
		x, y := math.Float64frombits(a), math.Float64frombits(b)
		var r float64
		switch o {
		case kernels.Sum:
			r = x + y
		case kernels.Prod:
			r = x * y
		case kernels.Min:
			return math.Float64bits(minOf(x, y))
		case kernels.Max:
			return math.Float64bits(maxOf(x, y))
		}
		if r != r {
			return nan64(x, y)
		}
		return math.Float64bits(r)
	}
	widen, narrow := halfConv(d)
	x, y := widen(uint16(a)), widen(uint16(b))
	var r float32
	switch o {
	case kernels.Sum:
		r = x + y
	case kernels.Prod:
		r = x * y
	case kernels.Min:
		r = minOf(x, y)
	case kernels.Max:
		r = maxOf(x, y)
	}
	if r != r && (o == kernels.Sum || o == kernels.Prod) {
		r = math.Float32frombits(nan32(x, y)) // narrowing quiets anyway
	}
	return uint64(narrow(r))
}

// refDivide is x / div as the host's Avg finishes it.
func refDivide(d kernels.DType, x uint64, div float64) uint64 {
	switch d {
	case kernels.Float32:
		xf, df := math.Float32frombits(uint32(x)), float32(div)
		if r := xf / df; r == r {
			return uint64(math.Float32bits(r))
		}
		return uint64(nan32(xf, df))
	case kernels.Float64:
		xf := math.Float64frombits(x)
		if r := xf / div; r == r {
			return math.Float64bits(r)
		}
		return nan64(xf, div)
	}
	widen, narrow := halfConv(d)
	xf := widen(uint16(x))
	r := xf / float32(div)
	if r != r {
		r = xf
	}
	return uint64(narrow(r))
}

var collectiveDType = map[kernels.DType]collective.DType{
	kernels.Float32: collective.Float32, kernels.Float64: collective.Float64,
	kernels.BFloat16: collective.BFloat16, kernels.Float16: collective.Float16,
}

var collectiveOp = map[kernels.Op]collective.Op{
	kernels.Sum: collective.Sum, kernels.Prod: collective.Prod, kernels.Min: collective.Min, kernels.Max: collective.Max,
}

// hostComparable says whether collective's result is the one the kernels
// reproduce: the 16-bit reductions fix NaNs up by hand on every machine;
// float32 and float64 take the hardware's NaN, which is nanResult on x86.
func hostComparable(d kernels.DType) bool {
	return d.Size() == 2 || runtime.GOARCH == "amd64"
}

// host is a 2-rank group over the in-process transport. With recursive
// doubling, both ranks compute rank 0's buffer (op) rank 1's.
type host struct{ comms [2]collective.Comm }

func newHost(t *testing.T) *host {
	t.Helper()
	w := inproc.NewWorld(2)
	cfg := collective.DefaultConfig()
	cfg.Algo = collective.AlgoRecursiveDoubling
	cfg.Timeout = 30 * time.Second
	h := &host{}
	for r := range h.comms {
		c, err := collective.New(w.Transport(r), cfg)
		if err != nil {
			t.Fatal(err)
		}
		h.comms[r] = c
	}
	t.Cleanup(func() {
		for _, c := range h.comms {
			c.Close()
		}
	})
	return h
}

// allReduce returns a (op) b computed by the group.
func (h *host) allReduce(t *testing.T, d kernels.DType, op collective.Op, a, b []byte) []byte {
	t.Helper()
	in := [2][]byte{bytes.Clone(a), bytes.Clone(b)}
	out := [2][]byte{make([]byte, len(a)), make([]byte, len(a))}
	var errs [2]error
	var wg sync.WaitGroup
	for r, c := range h.comms {
		wg.Go(func() {
			errs[r] = c.AllReduce(context.Background(), collective.BufferOf(collectiveDType[d], in[r]), collective.BufferOf(collectiveDType[d], out[r]), op)
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if !bytes.Equal(out[0], out[1]) {
		t.Fatal("the two ranks disagree")
	}
	return out[0]
}

// ---------------------------------------------------------------------------
// Inputs.

var specials = map[kernels.DType][]uint64{
	kernels.Float32: {
		0, 0x80000000, 0x3f800000, 0xbf800000, 0x3f800001, 0x33800000, 0x33800001, 0x4b800000, // ±0, ±1, ties
		0x00000001, 0x80000001, 0x007fffff, 0x807fffff, 0x00800000, 0x80800000, // subnormals, smallest normal
		0x7f7fffff, 0xff7fffff, 0x7f000000, 0x7f800000, 0xff800000, // largest, overflowing, ±Inf
		0x7fc00000, 0xffc00000, 0x7fc00001, 0xffc12345, 0x7f800001, 0xff812345, 0x7fffffff, // quiet and signalling NaNs
	},
	kernels.Float64: {
		0, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000, 0x3ff0000000000001, 0x3ca0000000000000, 0x3ca0000000000001,
		0x0000000000000001, 0x8000000000000001, 0x000fffffffffffff, 0x0010000000000000,
		0x7fefffffffffffff, 0xffefffffffffffff, 0x7fe0000000000000, 0x7ff0000000000000, 0xfff0000000000000,
		0x7ff8000000000000, 0xfff8000000000000, 0x7ff8000000000001, 0xfff8000000012345, 0x7ff0000000000001, 0xfff0000000012345, 0x7fffffffffffffff,
	},
	kernels.BFloat16: {
		0, 0x8000, 0x3f80, 0xbf80, 0x3f81, 0x3b80, 0x3b81, 0x4380,
		0x0001, 0x8001, 0x007f, 0x807f, 0x0080, 0x8080,
		0x7f7f, 0xff7f, 0x7f00, 0x7f80, 0xff80,
		0x7fc0, 0xffc0, 0x7fc1, 0xffd5, 0x7f81, 0xff85, 0x7fff,
	},
	kernels.Float16: {
		0, 0x8000, 0x3c00, 0xbc00, 0x3c01, 0x1000, 0x1001, 0x6800,
		0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x8400, 0x0200,
		0x7bff, 0xfbff, 0x7800, 0x7c00, 0xfc00,
		0x7e00, 0xfe00, 0x7e01, 0xfe55, 0x7c01, 0xfc55, 0x7fff,
	},
}

// value draws an element of d: a special, random bits, or a value of
// ordinary size.
func value(rng *rand.Rand, d kernels.DType) uint64 {
	sp := specials[d]
	switch rng.IntN(3) {
	case 0:
		return sp[rng.IntN(len(sp))]
	case 1:
		return rng.Uint64() & (1<<(8*d.Size()) - 1)
	}
	f := rng.NormFloat64() * math.Pow(10, float64(rng.IntN(9)-4))
	switch d {
	case kernels.Float32:
		return uint64(math.Float32bits(float32(f)))
	case kernels.Float64:
		return math.Float64bits(f)
	}
	_, narrow := halfConv(d)
	return uint64(narrow(float32(f)))
}

func encode(d kernels.DType, vals []uint64) []byte {
	s := d.Size()
	b := make([]byte, len(vals)*s)
	for i, v := range vals {
		for k := range s {
			b[i*s+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func decode(d kernels.DType, b []byte) []uint64 {
	s := d.Size()
	vals := make([]uint64, len(b)/s)
	for i := range vals {
		for k := s - 1; k >= 0; k-- {
			vals[i] = vals[i]<<8 | uint64(b[i*s+k])
		}
	}
	return vals
}

// grids are the launch shapes: blocks × threads, small so that the
// grid-stride loop runs many times and the threads' order is shuffled.
var grids = [][2]int{{1, 1}, {2, 3}, {3, 7}, {4, 64}}

type inputCase struct {
	name string
	a, b []uint64
}

func inputCases(d kernels.DType, rng *rand.Rand) []inputCase {
	var cases []inputCase
	for _, n := range []int{0, 1, 7, 33, 1000} {
		c := inputCase{name: fmt.Sprintf("n%d", n), a: make([]uint64, n), b: make([]uint64, n)}
		for i := range n {
			c.a[i], c.b[i] = value(rng, d), value(rng, d)
		}
		cases = append(cases, c)
	}
	// Every special against every special.
	sp := specials[d]
	c := inputCase{name: "specials"}
	for _, x := range sp {
		for _, y := range sp {
			c.a, c.b = append(c.a, x), append(c.b, y)
		}
	}
	return append(cases, c)
}

// ---------------------------------------------------------------------------
// The property tests.

// TestReduce runs every reduction kernel in the interpreter, on every
// launch shape, out of place and in place (dst = a, dst = b), and compares
// the result bit for bit with the host's, by hand and through collective.
func TestReduce(t *testing.T) {
	m := parsed(t)
	h := newHost(t)
	rng := rand.New(rand.NewPCG(1, 2))
	if runtime.GOARCH != "amd64" {
		t.Logf("on %s collective's float32 and float64 NaNs are the hardware's: checked against the reference by hand only", runtime.GOARCH)
	}
	for _, o := range kernels.Ops() {
		for _, d := range kernels.DTypes() {
			name := kernels.ReduceName(o, d)
			t.Run(name, func(t *testing.T) {
				for _, c := range inputCases(d, rng) {
					want := make([]uint64, len(c.a))
					for i := range want {
						want[i] = ref(o, d, c.a[i], c.b[i])
					}
					a, b := encode(d, c.a), encode(d, c.b)
					if hostComparable(d) {
						got := decode(d, h.allReduce(t, d, collectiveOp[o], a, b))
						for i := range want {
							if got[i] != want[i] {
								t.Fatalf("%s: the reference disagrees with collective at %d: %#x %s %#x: collective %#x, reference %#x", c.name, i, c.a[i], o, c.b[i], got[i], want[i])
							}
						}
					}
					for _, g := range grids {
						for alias, how := range []string{"out of place", "dst = a", "dst = b"} {
							mem := &Memory{}
							ab, bb := bytes.Clone(a), bytes.Clone(b)
							pa, pb := mem.Alloc(ab), mem.Alloc(bb)
							dst, pd := ab, pa
							switch alias {
							case 0:
								dst = make([]byte, len(a))
								pd = mem.Alloc(dst)
							case 2:
								dst, pd = bb, pb
							}
							if err := m.Launch(name, g[0], g[1], []uint64{pd, pa, pb, uint64(len(c.a))}, mem); err != nil {
								t.Fatalf("%s, grid %v, %s: %v", c.name, g, how, err)
							}
							got := decode(d, dst)
							for i := range want {
								if got[i] != want[i] {
									t.Fatalf("%s, grid %v, %s, index %d: %#x %s %#x = %#x, host %#x", c.name, g, how, i, c.a[i], o, c.b[i], got[i], want[i])
								}
							}
						}
					}
				}
			})
		}
	}
}

func divisorArg(d kernels.DType, div float64) uint64 {
	if d.ComputeBits() == 64 {
		return math.Float64bits(div)
	}
	return uint64(math.Float32bits(float32(div)))
}

// TestDivide runs the divide kernels against the host's divide: group sizes
// (the real use) and divisors that make NaNs, infinities and subnormals.
func TestDivide(t *testing.T) {
	m := parsed(t)
	rng := rand.New(rand.NewPCG(3, 4))
	divisors := []float64{1, 2, 3, 7, 8, 1000, 0.1, -2.5, 1e-40, 3e38, math.Inf(1), math.Inf(-1), math.NaN(), 0, math.Copysign(0, -1)}
	for _, d := range kernels.DTypes() {
		name := kernels.DivideName(d)
		t.Run(name, func(t *testing.T) {
			vals := slices.Clone(specials[d])
			for range 1000 {
				vals = append(vals, value(rng, d))
			}
			for _, div := range divisors {
				want := make([]uint64, len(vals))
				for i, x := range vals {
					want[i] = refDivide(d, x, div)
				}
				for _, n := range []int{0, 1, 7, 33, len(vals)} {
					for _, g := range grids {
						mem := &Memory{}
						buf := encode(d, vals[:n])
						if err := m.Launch(name, g[0], g[1], []uint64{mem.Alloc(buf), uint64(n), divisorArg(d, div)}, mem); err != nil {
							t.Fatalf("divisor %v, n %d, grid %v: %v", div, n, g, err)
						}
						for i, v := range decode(d, buf) {
							if v != want[i] {
								t.Fatalf("divisor %v, n %d, grid %v, index %d: %#x / %v = %#x, host %#x", div, n, g, i, vals[i], div, v, want[i])
							}
						}
					}
				}
			}
		})
	}
}

// TestAvg checks sum then divide by 2 against collective's Avg over two
// ranks.
func TestAvg(t *testing.T) {
	m := parsed(t)
	h := newHost(t)
	rng := rand.New(rand.NewPCG(5, 6))
	for _, d := range kernels.DTypes() {
		if !hostComparable(d) {
			continue
		}
		t.Run(string(d), func(t *testing.T) {
			for _, c := range inputCases(d, rng) {
				a, b := encode(d, c.a), encode(d, c.b)
				want := h.allReduce(t, d, collective.Avg, a, b)
				mem := &Memory{}
				pa, pb := mem.Alloc(a), mem.Alloc(b)
				n := uint64(len(c.a))
				if err := m.Launch(kernels.ReduceName(kernels.Sum, d), 3, 7, []uint64{pa, pa, pb, n}, mem); err != nil {
					t.Fatal(err)
				}
				if err := m.Launch(kernels.DivideName(d), 2, 3, []uint64{pa, n, divisorArg(d, 2)}, mem); err != nil {
					t.Fatal(err)
				}
				got, w := decode(d, a), decode(d, want)
				for i := range w {
					if got[i] != w[i] {
						t.Fatalf("%s index %d: avg(%#x, %#x) = %#x, collective %#x", c.name, i, c.a[i], c.b[i], got[i], w[i])
					}
				}
			}
		})
	}
}

// TestConversions checks the 16-bit widening on every value and the
// narrowing on every exponent with the mantissas around each rounding
// point, through test kernels that only convert.
func TestConversions(t *testing.T) {
	m, err := ParsePTX(kernels.ConversionSource())
	if err != nil {
		t.Fatal(err)
	}
	all := make([]uint64, 1<<16)
	for i := range all {
		all[i] = uint64(i)
	}
	// Float32 inputs: every sign and exponent with mantissas that sit on,
	// next to and between the rounding points of both formats, and random
	// bits.
	var wide []uint64
	for s := range uint64(2) {
		for e := range uint64(256) {
			for k := range uint64(23) {
				for _, m := range []uint64{1 << k, 1<<k - 1, 1<<k + 1, 3 << k, 0x7fffff &^ (1<<k - 1), 0x7fffff ^ 1<<k} {
					wide = append(wide, s<<31|e<<23|m&0x7fffff)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for range 1 << 16 {
		wide = append(wide, uint64(rng.Uint32()))
	}
	for _, d := range []kernels.DType{kernels.BFloat16, kernels.Float16} {
		widen, narrow := halfConv(d)
		t.Run("widen_"+string(d), func(t *testing.T) {
			src, dst := encode(kernels.BFloat16, all), make([]byte, 4*len(all))
			mem := &Memory{}
			if err := m.Launch("widen_"+string(d), 5, 64, []uint64{mem.Alloc(dst), mem.Alloc(src), uint64(len(all))}, mem); err != nil {
				t.Fatal(err)
			}
			for i, v := range decode(kernels.Float32, dst) {
				if w := math.Float32bits(widen(uint16(i))); v != uint64(w) {
					t.Fatalf("%#04x widens to %#08x, host %#08x", i, v, w)
				}
			}
		})
		t.Run("narrow_"+string(d), func(t *testing.T) {
			src, dst := encode(kernels.Float32, wide), make([]byte, 2*len(wide))
			mem := &Memory{}
			if err := m.Launch("narrow_"+string(d), 5, 64, []uint64{mem.Alloc(dst), mem.Alloc(src), uint64(len(wide))}, mem); err != nil {
				t.Fatal(err)
			}
			for i, v := range decode(kernels.BFloat16, dst) {
				if w := narrow(math.Float32frombits(uint32(wide[i]))); v != uint64(w) {
					t.Fatalf("%#08x narrows to %#04x, host %#04x", wide[i], v, w)
				}
			}
		})
	}
}
