package kernels

import (
	"fmt"
	"strings"
)

// The generator writes each kernel as straight-line PTX around one
// grid-stride loop. Every value gets a fresh virtual register (the driver's
// register allocator packs them), so the code reads top to bottom like the
// Go it mirrors in package collective's reduce.go.

// regClass is a kind of virtual register: its declared type and its name.
type regClass struct {
	typ    string
	prefix string
}

var (
	pred = regClass{".pred", "%p"}
	r16  = regClass{".b16", "%rs"}
	r32  = regClass{".b32", "%r"}
	r64  = regClass{".b64", "%rd"}
	f32  = regClass{".f32", "%f"}
	f64  = regClass{".f64", "%fd"}
)

// regClasses is the order of the .reg declarations.
var regClasses = []regClass{pred, r16, r32, r64, f32, f64}

// kernel builds the text of one .entry.
type kernel struct {
	name   string
	doc    string
	params []string
	body   strings.Builder
	count  map[regClass]int
}

func newKernel(name, doc string) *kernel {
	return &kernel{name: name, doc: doc, count: map[regClass]int{}}
}

// reg returns a new register of class c.
func (k *kernel) reg(c regClass) string {
	k.count[c]++
	return fmt.Sprintf("%s%d", c.prefix, k.count[c])
}

// ins writes one instruction.
func (k *kernel) ins(op string, operands ...string) {
	if len(operands) == 0 {
		fmt.Fprintf(&k.body, "\t%s;\n", op)
		return
	}
	fmt.Fprintf(&k.body, "\t%s\t%s;\n", op, strings.Join(operands, ", "))
}

// bra writes a branch taken when p is true.
func (k *kernel) bra(p, label string) {
	fmt.Fprintf(&k.body, "\t@%s bra\t%s;\n", p, label)
}

func (k *kernel) label(l string) { fmt.Fprintf(&k.body, "%s:\n", l) }

func (k *kernel) note(text string) { fmt.Fprintf(&k.body, "\t// %s\n", text) }

// param declares a parameter of PTX type typ (".u64", ".f32", ...) and
// loads it into a new register of class c.
func (k *kernel) param(typ, name string, c regClass) string {
	p := "p_" + name
	k.params = append(k.params, fmt.Sprintf("\t.param %s %s", typ, p))
	r := k.reg(c)
	k.ins("ld.param"+typ, r, "["+p+"]")
	return r
}

// pointer declares a pointer parameter and converts it to a global address.
func (k *kernel) pointer(name string) string {
	return k.op(r64, "cvta.to.global.u64", k.param(".u64", name, r64))
}

// forEach writes the grid-stride loop over i < n around body, which writes
// the work for element i.
func (k *kernel) forEach(n string, body func(i string)) {
	k.note("i = ctaid.x*ntid.x + tid.x; i += nctaid.x*ntid.x while i < n")
	ctaid, ntid, tid, nctaid := k.reg(r32), k.reg(r32), k.reg(r32), k.reg(r32)
	k.ins("mov.u32", ctaid, "%ctaid.x")
	k.ins("mov.u32", ntid, "%ntid.x")
	k.ins("mov.u32", tid, "%tid.x")
	k.ins("mov.u32", nctaid, "%nctaid.x")
	i, t, stride := k.reg(r64), k.reg(r64), k.reg(r64)
	k.ins("mul.wide.u32", i, ctaid, ntid)
	k.ins("cvt.u64.u32", t, tid)
	k.ins("add.s64", i, i, t)
	k.ins("mul.wide.u32", stride, nctaid, ntid)
	done := k.reg(pred)
	k.ins("setp.ge.u64", done, i, n)
	k.bra(done, "$L_done")
	k.label("$L_loop")
	body(i)
	k.ins("add.s64", i, i, stride)
	more := k.reg(pred)
	k.ins("setp.lt.u64", more, i, n)
	k.bra(more, "$L_loop")
	k.label("$L_done")
	k.ins("ret")
}

// offset returns i scaled to bytes (i << shift).
func (k *kernel) offset(i string, shift int) string {
	off := k.reg(r64)
	k.ins("shl.b64", off, i, fmt.Sprint(shift))
	return off
}

// at returns the address base+off.
func (k *kernel) at(base, off string) string {
	a := k.reg(r64)
	k.ins("add.s64", a, base, off)
	return a
}

// text returns the kernel: its comment, signature, declarations and body.
func (k *kernel) text() string {
	var b strings.Builder
	for _, line := range strings.Split(k.doc, "\n") {
		fmt.Fprintf(&b, "// %s\n", line)
	}
	fmt.Fprintf(&b, ".visible .entry %s(\n%s\n)\n{\n", k.name, strings.Join(k.params, ",\n"))
	for _, c := range regClasses {
		if n := k.count[c]; n > 0 {
			fmt.Fprintf(&b, "\t.reg %s\t%s<%d>;\n", c.typ, c.prefix, n+1)
		}
	}
	b.WriteString("\n")
	b.WriteString(k.body.String())
	b.WriteString("}\n")
	return b.String()
}

// Small helpers, one instruction each, that return the register written.

func (k *kernel) op(c regClass, op string, operands ...string) string {
	d := k.reg(c)
	k.ins(op, append([]string{d}, operands...)...)
	return d
}

func (k *kernel) setp(cmp string, a, b string) string { return k.op(pred, "setp."+cmp, a, b) }

// ---------------------------------------------------------------------------
// The float types arithmetic runs in.

type float struct {
	ptx     string   // "f32"
	bits    string   // "b32": the bit type of the same width
	freg    regClass // registers holding the value as a float
	breg    regClass // registers holding its bits
	quiet   string   // the quiet bit of a NaN
	invalid string   // the NaN x86 returns for an invalid operation: negative, quiet
}

var (
	single = &float{"f32", "b32", f32, r32, "0x400000", "0xffc00000"}
	double = &float{"f64", "b64", f64, r64, "0x8000000000000", "0xfff8000000000000"}
)

// asFloat moves bits into a float register (no instruction in the end: the
// driver gives both the same hardware register).
func (k *kernel) asFloat(f *float, bits string) string { return k.op(f.freg, "mov."+f.bits, bits) }

func (k *kernel) asBits(f *float, x string) string { return k.op(f.breg, "mov."+f.bits, x) }

func (k *kernel) isNaN(f *float, x string) string { return k.setp("nan."+f.ptx, x, x) }

// selp returns p ? a : b, on bits.
func (k *kernel) selp(f *float, a, b, p string) string { return k.op(f.breg, "selp."+f.bits, a, b, p) }

// nanResult returns the bits of r, or where r is NaN the bits of
// nanResult(x, y) as the host computes it (collective's reduce.go): x if
// it is NaN, else y if it is NaN, else the negative quiet NaN; quieted. A
// GPU instead returns its canonical NaN for every NaN result. xb, yb and
// x, y are the bits and the float registers of the operands.
func (k *kernel) nanResult(f *float, r, xb, yb, x, y string) string {
	k.note("a NaN result is nanResult(x, y), quieted, as on the host")
	t := k.selp(f, yb, f.invalid, k.isNaN(f, y))
	t = k.selp(f, xb, t, k.isNaN(f, x))
	t = k.op(f.breg, "or."+f.bits, t, f.quiet)
	return k.selp(f, t, k.asBits(f, r), k.isNaN(f, r))
}

// combine returns the bits of xb (o) yb computed in f.
func (k *kernel) combine(f *float, o Op, xb, yb string) string {
	x, y := k.asFloat(f, xb), k.asFloat(f, yb)
	switch o {
	case Sum, Prod:
		op := map[Op]string{Sum: "add", Prod: "mul"}[o]
		r := k.op(f.freg, op+".rn."+f.ptx, x, y)
		return k.nanResult(f, r, xb, yb, x, y)
	default:
		// x = a; if y < x (y > x for Max) or y is NaN { x = y }; if a is
		// NaN { x = a }. The unordered compare is true when either is NaN.
		// (PTX's min and max would drop the NaN.)
		cmp := map[Op]string{Min: "ltu", Max: "gtu"}[o]
		k.note(string(o) + " propagates NaN, a's first; equal values (+0 and -0) keep a")
		r := k.selp(f, yb, xb, k.setp(cmp+"."+f.ptx, y, x))
		return k.selp(f, xb, r, k.isNaN(f, x))
	}
}

// ---------------------------------------------------------------------------
// The element types: how each is loaded, widened, narrowed and stored.

type elem struct {
	dtype DType
	shift int    // log2 of the element's size in bytes
	calc  *float // the type arithmetic runs in
	// load loads the element at addr and returns its bits widened to calc.
	load func(k *kernel, addr string) string
	// store narrows bits of calc to the element type and stores them.
	store func(k *kernel, addr, bits string)
	// half: a NaN quotient of divide keeps the dividend (divideBF16Generic)
	// instead of taking nanResult.
	half bool
}

func elemOf(d DType) elem {
	switch d {
	case Float32:
		return elem{dtype: d, shift: 2, calc: single, load: loadBits(single), store: storeBits(single)}
	case Float64:
		return elem{dtype: d, shift: 3, calc: double, load: loadBits(double), store: storeBits(double)}
	case BFloat16:
		return elem{dtype: d, shift: 1, calc: single, half: true,
			load:  func(k *kernel, addr string) string { return k.widenBF16(k.load16(addr)) },
			store: func(k *kernel, addr, bits string) { k.store16(addr, k.narrowBF16(bits)) },
		}
	case Float16:
		return elem{dtype: d, shift: 1, calc: single, half: true,
			load:  func(k *kernel, addr string) string { return k.widenF16(k.load16(addr)) },
			store: func(k *kernel, addr, bits string) { k.store16(addr, k.narrowF16(bits)) },
		}
	}
	panic("kernels: unknown dtype " + string(d))
}

func loadBits(f *float) func(*kernel, string) string {
	return func(k *kernel, addr string) string { return k.op(f.breg, "ld.global."+f.bits, "["+addr+"]") }
}

func storeBits(f *float) func(*kernel, string, string) {
	return func(k *kernel, addr, bits string) { k.ins("st.global."+f.bits, "["+addr+"]", bits) }
}

// load16 loads a 16-bit element into the low half of a 32-bit register.
func (k *kernel) load16(addr string) string {
	return k.op(r32, "cvt.u32.u16", k.op(r16, "ld.global.u16", "["+addr+"]"))
}

// store16 stores the low half of a 32-bit register.
func (k *kernel) store16(addr, h string) {
	k.ins("st.global.u16", "["+addr+"]", k.op(r16, "cvt.u16.u32", h))
}

// u32 writes one 32-bit integer instruction.
func (k *kernel) u32(op string, operands ...string) string { return k.op(r32, op, operands...) }

// widenBF16 is bf16ToF32: the bits are the top half of a float32.
func (k *kernel) widenBF16(h string) string {
	return k.u32("shl.b32", h, "16")
}

// narrowBF16 is f32ToBF16: round to nearest even by adding 0x7fff and the
// lowest kept bit, then truncate; a NaN is truncated and quieted instead.
func (k *kernel) narrowBF16(x string) string {
	k.note("f32ToBF16")
	hi := k.u32("shr.u32", x, "16")
	lsb := k.u32("and.b32", hi, "1")
	t := k.u32("add.u32", x, "0x7fff")
	t = k.u32("add.u32", t, lsb)
	rounded := k.u32("shr.u32", t, "16")
	quieted := k.u32("or.b32", hi, "0x40")
	abs := k.u32("and.b32", x, "0x7fffffff")
	return k.u32("selp.b32", quieted, rounded, k.setp("gt.u32", abs, "0x7f800000"))
}

// widenF16 is f16ToF32. The exponent and mantissa shift into place
// together; the exponent is rebiased from 15 to 127 for a number, and from
// 31 to 255 for Inf and NaN (the payload moves up unchanged). A subnormal,
// mant × 2^-24, is normalised: its leading one moves to bit 23 and the
// exponent follows from the count of leading zeros.
func (k *kernel) widenF16(h string) string {
	k.note("f16ToF32")
	abs := k.u32("and.b32", h, "0x7fff")
	t := k.u32("shl.b32", abs, "13")
	normal := k.u32("add.u32", t, "0x38000000")
	special := k.u32("add.u32", t, "0x70000000")
	r := k.u32("selp.b32", special, normal, k.setp("ge.u32", abs, "0x7c00"))
	// Subnormal: with c leading zeros in the 32-bit mant, its leading one
	// is bit 31-c, so it moves left by c-8 to bit 23 and the biased
	// exponent is (31-c) - 24 + 127 = 134-c. The shifted mant, leading one
	// included (worth one in the exponent field), plus (133-c) << 23 gives
	// both.
	c := k.u32("clz.b32", abs)
	m := k.u32("shl.b32", abs, k.u32("sub.u32", c, "8"))
	m = k.u32("sub.u32", m, k.u32("shl.b32", c, "23"))
	sub := k.u32("add.u32", m, "0x42800000") // 133 << 23
	r = k.u32("selp.b32", sub, r, k.setp("lt.u32", abs, "0x400"))
	r = k.u32("selp.b32", "0", r, k.setp("eq.u32", abs, "0"))
	sign := k.u32("shl.b32", k.u32("and.b32", h, "0x8000"), "16")
	return k.u32("or.b32", r, sign)
}

// narrowF16 is f32ToF16: every case is computed, then the one that
// applies is selected by the magnitude of x, from smallest to largest.
func (k *kernel) narrowF16(x string) string {
	k.note("f32ToF16")
	sign := k.u32("and.b32", k.u32("shr.u32", x, "16"), "0x8000")
	abs := k.u32("and.b32", x, "0x7fffffff")
	// Normal: rebias the exponent from 127 to 15 and drop 13 mantissa bits,
	// rounding to nearest even (add 0xfff and the lowest kept bit); a carry
	// may reach the exponent, up to Inf, which is correct rounding.
	t := k.u32("sub.u32", abs, "0x38000000")
	lsb := k.u32("and.b32", k.u32("shr.u32", t, "13"), "1")
	t = k.u32("add.u32", t, "0xfff")
	t = k.u32("add.u32", t, lsb)
	normal := k.u32("shr.u32", t, "13")
	// Subnormal (exponent e from 102 to 112): the mantissa with its implicit
	// one, shifted right by 126-e, rounded to nearest even the same way:
	// add half-1 and the lowest kept bit before shifting.
	e := k.u32("shr.u32", abs, "23")
	shift := k.u32("sub.u32", k.u32("mov.u32", "126"), e)
	m := k.u32("or.b32", k.u32("and.b32", abs, "0x7fffff"), "0x800000")
	lsb = k.u32("and.b32", k.u32("shr.u32", m, shift), "1")
	half := k.u32("shl.b32", k.u32("mov.u32", "1"), k.u32("sub.u32", shift, "1"))
	m = k.u32("add.u32", m, k.u32("sub.u32", half, "1"))
	m = k.u32("add.u32", m, lsb)
	sub := k.u32("shr.u32", m, shift)
	r := k.u32("selp.b32", sub, normal, k.setp("lt.u32", abs, "0x38800000")) // e <= 112
	r = k.u32("selp.b32", "0", r, k.setp("lt.u32", abs, "0x33000000"))       // e < 102: underflows to zero
	r = k.u32("selp.b32", "0x7c00", r, k.setp("ge.u32", abs, "0x47800000"))  // e >= 143: overflows to Inf
	// NaN: quiet, payload kept where it fits.
	nan := k.u32("or.b32", k.u32("and.b32", k.u32("shr.u32", abs, "13"), "0x3ff"), "0x7e00")
	r = k.u32("selp.b32", nan, r, k.setp("gt.u32", abs, "0x7f800000"))
	return k.u32("or.b32", r, sign)
}

// ---------------------------------------------------------------------------
// The kernels.

func reduceKernel(o Op, e elem) string {
	sym := map[Op]string{Sum: "a[i] + b[i]", Prod: "a[i] * b[i]", Min: "min(a[i], b[i])", Max: "max(a[i], b[i])"}[o]
	k := newKernel(ReduceName(o, e.dtype), fmt.Sprintf("dst[i] = %s for i < n, %s, bit for bit as the host.", sym, e.dtype))
	dst, a, b := k.pointer("dst"), k.pointer("a"), k.pointer("b")
	n := k.param(".u64", "n", r64)
	k.forEach(n, func(i string) {
		off := k.offset(i, e.shift)
		x := e.load(k, k.at(a, off))
		y := e.load(k, k.at(b, off))
		r := k.combine(e.calc, o, x, y)
		e.store(k, k.at(dst, off), r)
	})
	return k.text()
}

func divideKernel(e elem) string {
	f := e.calc
	k := newKernel(DivideName(e.dtype), fmt.Sprintf("dst[i] = dst[i] / divisor for i < n, %s, bit for bit as the host.", e.dtype))
	dst := k.pointer("dst")
	n := k.param(".u64", "n", r64)
	d := k.param("."+f.ptx, "divisor", f.freg)
	var db string
	if !e.half {
		db = k.asBits(f, d)
	}
	k.forEach(n, func(i string) {
		addr := k.at(dst, k.offset(i, e.shift))
		xb := e.load(k, addr)
		x := k.asFloat(f, xb)
		q := k.op(f.freg, "div.rn."+f.ptx, x, d)
		var r string
		if e.half {
			k.note("a NaN quotient keeps x, as the host")
			r = k.selp(f, xb, k.asBits(f, q), k.isNaN(f, q))
		} else {
			r = k.nanResult(f, q, xb, db, x, d)
		}
		e.store(k, addr, r)
	})
	return k.text()
}

// conversionSource is a module of test kernels that only convert:
// widen_<dtype>(dst, src, n) widens 16-bit src to float32 bits dst, and
// narrow_<dtype>(dst, src, n) rounds float32 bits src to 16-bit dst, for
// the 16-bit types, so that tests can check the conversions on their own
// over every 16-bit value.
func conversionSource() string {
	var kernels []string
	for _, d := range []DType{BFloat16, Float16} {
		e := elemOf(d)
		k := newKernel("widen_"+string(d), "test kernel: dst[i] = widen(src[i])")
		dst, src := k.pointer("dst"), k.pointer("src")
		n := k.param(".u64", "n", r64)
		k.forEach(n, func(i string) {
			x := e.load(k, k.at(src, k.offset(i, 1)))
			storeBits(single)(k, k.at(dst, k.offset(i, 2)), x)
		})
		kernels = append(kernels, k.text())

		k = newKernel("narrow_"+string(d), "test kernel: dst[i] = narrow(src[i])")
		dst, src = k.pointer("dst"), k.pointer("src")
		n = k.param(".u64", "n", r64)
		k.forEach(n, func(i string) {
			x := loadBits(single)(k, k.at(src, k.offset(i, 2)))
			e.store(k, k.at(dst, k.offset(i, 1)), x)
		})
		kernels = append(kernels, k.text())
	}
	return module("conversion test kernels", kernels)
}
