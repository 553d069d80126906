package kernels_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/device/cuda/kernels"
)

// snippet wraps instructions in a module with one entry, k(p_x, p_y), and
// a few registers of each class.
func snippet(body string) string {
	return fmt.Sprintf(`.version 7.0
.target sm_70
.address_size 64

.visible .entry k(
	.param .u64 p_x,
	.param .u64 p_y
)
{
	.reg .pred	%%p<3>;
	.reg .b16	%%rs<3>;
	.reg .b32	%%r<4>;
	.reg .u32	%%u<2>;
	.reg .b64	%%rd<4>;
	.reg .f32	%%f<4>;
	.reg .f64	%%fd<3>;

%s
$L_end:
	ret;
}
`, body)
}

// TestInterpreterRejects checks that the interpreter refuses what is
// outside the subset, so that it validates the generator's PTX.
func TestInterpreterRejects(t *testing.T) {
	for _, c := range []struct{ name, body string }{
		{"unknown instruction", "\tfma.rn.f32\t%f1, %f2, %f3, %f1;"},
		{"PTX min drops NaNs", "\tmin.f32\t%f1, %f2, %f3;"},
		{"float add without rounding", "\tadd.f32\t%f1, %f2, %f3;"},
		{"approximate divide", "\tdiv.approx.f32\t%f1, %f2, %f3;"},
		{"flush to zero", "\tadd.rn.ftz.f32\t%f1, %f2, %f3;"},
		{"unknown type suffix", "\tadd.u8\t%r1, %r2, %r3;"},
		{"half arithmetic", "\tadd.rn.f16\t%rs1, %rs2, %rs1;"},
		{"undeclared register", "\tadd.u32\t%r9, %r1, %r2;"},
		{"wrong width", "\tadd.u32\t%r1, %rd1, %r2;"},
		{"float register for integer op", "\tadd.u32\t%f1, %r1, %r2;"},
		{"unsigned register for float op", "\tadd.rn.f32\t%f1, %u1, %f2;"},
		{"16-bit register for 32-bit load", "\tld.global.b32\t%rs1, [%rd1];"},
		{"32-bit address", "\tld.global.b32\t%r1, [%r2];"},
		{"non-coherent load", "\tld.global.nc.b32\t%r1, [%rd1];"},
		{"unknown label", "\t@%p1 bra\t$L_nowhere;"},
		{"guard not a predicate", "\t@%r1 bra\t$L_end;"},
		{"float conversion", "\tcvt.rn.f32.f16\t%f1, %rs1;"},
		{"immediate as first source", "\tsub.u32\t%r1, 126, %r2;"},
		{"immediate too wide", "\tmov.u32\t%r1, 0x100000000;"},
		{"integer immediate for float", "\tselp.f32\t%f1, 0, %f2, %p1;"},
		{"unknown special register", "\tmov.u32\t%r1, %laneid;"},
		{"special register as u64", "\tmov.u64\t%rd1, %tid.x;"},
		{"parameter of another type", "\tld.param.u32\t%r1, [p_x];"},
		{"unknown parameter", "\tld.param.u64\t%rd1, [p_z];"},
		{"store to param space", "\tst.param.u64\t[p_x], %rd1;"},
		{"store of an immediate", "\tst.global.b32\t[%rd1], 1;"},
		{"operand count", "\tadd.u32\t%r1, %r2;"},
		{"bit type ordered compare", "\tsetp.lt.b32\t%p1, %r1, %r2;"},
		{"unknown float compare", "\tsetp.lg.f32\t%p1, %f1, %f2;"},
		{"shift amount of 64 bits", "\tshl.b32\t%r1, %r2, %rd1;"},
		{"missing semicolon", "\tadd.u32\t%r1, %r2, %r3\n\tret;"},
		{"declaration after code", "\tmov.u32\t%r1, 1;\n\t.reg .b32 %q;"},
		{"duplicate label", "$L_end:\n\tmov.u32\t%r1, 1;"},
		{"comment block", "\t/* no */"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ParsePTX(snippet(c.body)); err == nil {
				t.Errorf("accepted:\n%s", c.body)
			} else {
				t.Log(err)
			}
		})
	}
	for name, src := range map[string]string{
		"no version":        ".target sm_70\n.address_size 64\n",
		"32-bit addressing": ".version 7.0\n.target sm_70\n.address_size 32\n",
		"global variable":   ".version 7.0\n.target sm_70\n.address_size 64\n.global .u32 g;\n",
		"duplicate entry":   snippet("") + strings.SplitN(snippet(""), "64\n", 2)[1],
	} {
		if _, err := ParsePTX(src); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParsePTX(snippet("\tmov.u32\t%r1, 1;")); err != nil {
		t.Fatalf("the snippet itself does not parse: %v", err)
	}
}

func launchSnippet(t *testing.T, body string, bufs ...[]byte) error {
	t.Helper()
	m, err := ParsePTX(snippet(body))
	if err != nil {
		t.Fatalf("does not parse: %v", err)
	}
	mem := &Memory{}
	args := []uint64{0, 0}
	for i, b := range bufs {
		args[i] = mem.Alloc(b)
	}
	return m.Launch("k", 1, 2, args, mem)
}

// TestInterpreterRuntimeErrors checks what only running can find.
func TestInterpreterRuntimeErrors(t *testing.T) {
	load := "\tld.param.u64\t%rd1, [p_x];\n\tcvta.to.global.u64\t%rd2, %rd1;\n"
	for _, c := range []struct{ name, body string }{
		{"read before write", "\tadd.u32\t%r1, %r2, 1;"},
		{"guard before write", "\t@%p1 bra\t$L_end;"},
		{"out of bounds", load + "\tld.global.b32\t%r1, [%rd2+8];"},
		{"misaligned", load + "\tld.global.b32\t%r1, [%rd2+2];"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := c.body
			err := launchSnippet(t, body, make([]byte, 8))
			if err == nil {
				t.Errorf("ran without an error:\n%s", body)
			} else {
				t.Log(err)
			}
		})
	}
	// Control that falls off the end of the code without ret.
	m, err := ParsePTX(strings.Replace(snippet(""), "\tret;\n", "\tbra\t$L_x;\n$L_x:\n", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Launch("k", 1, 1, []uint64{0, 0}, &Memory{}); err == nil {
		t.Error("ran off the end without an error")
	}
}

// TestInterpreterModelsTheGPU checks the places where the interpreter
// follows the GPU instead of Go: NaN results are canonical, shifts clamp.
func TestInterpreterModelsTheGPU(t *testing.T) {
	body := `	ld.param.u64	%rd1, [p_x];
	cvta.to.global.u64	%rd2, %rd1;
	ld.global.b32	%r1, [%rd2];
	ld.global.b32	%r2, [%rd2+4];
	mov.b32	%f1, %r1;
	mov.b32	%f2, %r2;
	add.rn.f32	%f3, %f1, %f2;
	st.global.b32	[%rd2+8], %f3;
	shl.b32	%r3, %r1, 40;
	st.global.b32	[%rd2+12], %r3;
`
	for _, c := range [][2]uint32{
		{0x7fc12345, 0x3f800000}, // a NaN operand
		{0x3f800000, 0xff812345}, // a signalling NaN operand
		{0x7f800000, 0xff800000}, // Inf - Inf
		{0x3f800000, 0x40000000}, // a number: 1 + 2
		{0x00000001, 0x80000000}, // a subnormal is kept
	} {
		buf := make([]byte, 16)
		binary.LittleEndian.PutUint32(buf, c[0])
		binary.LittleEndian.PutUint32(buf[4:], c[1])
		if err := launchSnippet(t, body, buf); err != nil {
			t.Fatal(err)
		}
		want := uint32(0x7fffffff)
		if s := math.Float32frombits(c[0]) + math.Float32frombits(c[1]); s == s {
			want = math.Float32bits(s)
		}
		if got := binary.LittleEndian.Uint32(buf[8:]); got != want {
			t.Errorf("%#x + %#x = %#x, want %#x", c[0], c[1], got, want)
		}
		if got := binary.LittleEndian.Uint32(buf[12:]); got != 0 {
			t.Errorf("shl by 40 = %#x, want 0", got)
		}
	}
}

// TestNaNFixupIsNeeded takes the fix-up out of reduce_sum_float32 (the
// last select before the store, which picks nanResult over the hardware's
// NaN) and checks that the interpreter then disagrees with the host: the
// property tests would catch a kernel that forgot it.
func TestNaNFixupIsNeeded(t *testing.T) {
	src := kernels.Source()
	name := kernels.ReduceName(kernels.Sum, kernels.Float32)
	start := strings.Index(src, ".visible .entry "+name+"(")
	end := start + strings.Index(src[start:], "\n}\n")
	entry := src[start:end]
	store := strings.Index(entry, "\tst.global.b32")
	sel := strings.LastIndex(entry[:store], "\tselp.b32\t")
	line := entry[sel : sel+strings.Index(entry[sel:], "\n")]
	ops := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "\tselp.b32\t"), ";"), ", ")
	mutated := entry[:sel] + "\tmov.b32\t" + ops[0] + ", " + ops[2] + ";" + entry[sel+len(line):]
	m, err := ParsePTX(src[:start] + mutated + src[end:])
	if err != nil {
		t.Fatal(err)
	}
	a := []uint32{0x7fc12345, 0x3f800000, 0x7f800000}
	b := []uint32{0x3f800000, 0xff812345, 0xff800000}
	buf := make([]byte, 12)
	bb := make([]byte, 12)
	for i := range a {
		binary.LittleEndian.PutUint32(buf[4*i:], a[i])
		binary.LittleEndian.PutUint32(bb[4*i:], b[i])
	}
	mem := &Memory{}
	pa, pb := mem.Alloc(buf), mem.Alloc(bb)
	if err := m.Launch(name, 1, 3, []uint64{pa, pa, pb, 3}, mem); err != nil {
		t.Fatal(err)
	}
	for i := range a {
		got := binary.LittleEndian.Uint32(buf[4*i:])
		if want := ref(kernels.Sum, kernels.Float32, uint64(a[i]), uint64(b[i])); uint64(got) == want {
			t.Errorf("without the fix-up, %#x + %#x still gives the host's %#x", a[i], b[i], got)
		}
	}
}
