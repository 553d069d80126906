//go:build amd64

#include "textflag.h"

// Kernels for bfloat16 and float16 reductions: 16 elements per iteration,
// widened to float32 in two YMM registers, combined, rounded back. Each
// gives the same bits as the portable loops in reduce.go, so the operand
// order matters: a is always the first source of VADDPS/VMULPS, because
// x86 returns the first source's NaN when both are NaN, and that is the
// rule the portable code follows (nanResult).

DATA bf16one<>+0(SB)/4, $0x00000001
GLOBL bf16one<>(SB), RODATA|NOPTR, $4
DATA bf16bias<>+0(SB)/4, $0x00007fff
GLOBL bf16bias<>(SB), RODATA|NOPTR, $4

// BF16SETUP loads the constants: Y15 zero, Y14 the lowest kept bit, Y13 the
// rounding bias.
#define BF16SETUP \
	VPXOR        Y15, Y15, Y15;            \
	VPBROADCASTD bf16one<>(SB), Y14;       \
	VPBROADCASTD bf16bias<>(SB), Y13

// BF16LOAD widens 16 bfloat16s at ptr into float32 lanes by putting each
// in the top half of a zero dword. Unpacking works within 128-bit lanes, so
// lo holds elements 0-3 and 8-11, hi 4-7 and 12-15; VPACKUSDW in BF16STORE
// undoes exactly that, so no cross-lane shuffle is needed.
#define BF16LOAD(ptr, lo, hi) \
	VPUNPCKLWD (ptr), Y15, lo; \
	VPUNPCKHWD (ptr), Y15, hi

// BF16NARROW rounds the float32 lanes of r to bfloat16 (left in the low 16
// bits of each lane) as f32ToBF16 does: add 0x7fff plus the lowest kept bit,
// then truncate. f32ToBF16 truncates NaNs and sets their quiet bit instead;
// here no lane needs that, because every NaN these kernels produce comes
// from the hardware, which returns an operand's NaN quieted, or its default
// NaN: the quiet bit is set and, the operands being widened bfloat16s, the
// low 16 bits are zero, so rounding adds no carry and truncates exactly.
#define BF16NARROW(r, t) \
	VPSRLD $16, r, t; \
	VPAND  Y14, t, t; \
	VPADDD Y13, r, r; \
	VPADDD t, r, r;   \
	VPSRLD $16, r, r

// BF16STORE narrows lo and hi and stores the 16 results at DI.
#define BF16STORE(lo, hi) \
	BF16NARROW(lo, Y4); \
	BF16NARROW(hi, Y5); \
	VPACKUSDW hi, lo, lo;       \
	VMOVDQU   lo, (DI)

#define F16LOAD(ptr, lo, hi) \
	VCVTPH2PS (ptr), lo;   \
	VCVTPH2PS 16(ptr), hi

// Immediate 0 rounds to nearest even regardless of MXCSR; overflow gives
// Inf, NaNs are quieted with their top payload bits kept: exactly f32ToF16.
#define F16STORE(lo, hi) \
	VCVTPS2PH $0, lo, (DI); \
	VCVTPS2PH $0, hi, 16(DI)

// MINOP and MAXOP compute x = minHalf(x, y) (maxHalf): VMINPS with b as its
// first source returns b only when b < a, so ties (and -0 against +0) keep
// a; where either is NaN it returns a, so those lanes take a+b instead,
// which is a's NaN if a is one and b's otherwise, as in the portable code.
#define MINOP(x, y, t, m) \
	VMINPS    x, y, t;     \
	VCMPPS    $3, y, x, m; \
	VADDPS    y, x, x;     \
	VBLENDVPS m, x, t, x

#define MAXOP(x, y, t, m) \
	VMAXPS    x, y, t;     \
	VCMPPS    $3, y, x, m; \
	VADDPS    y, x, x;     \
	VBLENDVPS m, x, t, x

#define ARGS \
	MOVQ dst+0(FP), DI; \
	MOVQ a+8(FP), SI;   \
	MOVQ b+16(FP), DX;  \
	MOVQ n+24(FP), CX

#define NEXT \
	ADDQ $32, SI; \
	ADDQ $32, DX; \
	ADDQ $32, DI; \
	SUBQ $16, CX

// func addBF16AVX2(dst, a, b *uint16, n int)
TEXT ·addBF16AVX2(SB), NOSPLIT, $0-32
	ARGS
	BF16SETUP
loop:
	BF16LOAD(SI, Y0, Y1)
	BF16LOAD(DX, Y2, Y3)
	VADDPS Y2, Y0, Y0
	VADDPS Y3, Y1, Y1
	BF16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func mulBF16AVX2(dst, a, b *uint16, n int)
TEXT ·mulBF16AVX2(SB), NOSPLIT, $0-32
	ARGS
	BF16SETUP
loop:
	BF16LOAD(SI, Y0, Y1)
	BF16LOAD(DX, Y2, Y3)
	VMULPS Y2, Y0, Y0
	VMULPS Y3, Y1, Y1
	BF16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func minBF16AVX2(dst, a, b *uint16, n int)
TEXT ·minBF16AVX2(SB), NOSPLIT, $0-32
	ARGS
	BF16SETUP
loop:
	BF16LOAD(SI, Y0, Y1)
	BF16LOAD(DX, Y2, Y3)
	MINOP(Y0, Y2, Y4, Y5)
	MINOP(Y1, Y3, Y7, Y8)
	BF16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func maxBF16AVX2(dst, a, b *uint16, n int)
TEXT ·maxBF16AVX2(SB), NOSPLIT, $0-32
	ARGS
	BF16SETUP
loop:
	BF16LOAD(SI, Y0, Y1)
	BF16LOAD(DX, Y2, Y3)
	MAXOP(Y0, Y2, Y4, Y5)
	MAXOP(Y1, Y3, Y7, Y8)
	BF16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func divBF16AVX2(s *uint16, n int, d float32)
TEXT ·divBF16AVX2(SB), NOSPLIT, $0-20
	MOVQ         s+0(FP), DI
	MOVQ         n+8(FP), CX
	VBROADCASTSS d+16(FP), Y11
	BF16SETUP
loop:
	BF16LOAD(DI, Y0, Y1)
	VDIVPS Y11, Y0, Y0
	VDIVPS Y11, Y1, Y1
	BF16STORE(Y0, Y1)
	ADDQ $32, DI
	SUBQ $16, CX
	JNZ  loop
	VZEROUPPER
	RET

// func addF16AVX2(dst, a, b *uint16, n int)
TEXT ·addF16AVX2(SB), NOSPLIT, $0-32
	ARGS
loop:
	F16LOAD(SI, Y0, Y1)
	F16LOAD(DX, Y2, Y3)
	VADDPS Y2, Y0, Y0
	VADDPS Y3, Y1, Y1
	F16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func mulF16AVX2(dst, a, b *uint16, n int)
TEXT ·mulF16AVX2(SB), NOSPLIT, $0-32
	ARGS
loop:
	F16LOAD(SI, Y0, Y1)
	F16LOAD(DX, Y2, Y3)
	VMULPS Y2, Y0, Y0
	VMULPS Y3, Y1, Y1
	F16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func minF16AVX2(dst, a, b *uint16, n int)
TEXT ·minF16AVX2(SB), NOSPLIT, $0-32
	ARGS
loop:
	F16LOAD(SI, Y0, Y1)
	F16LOAD(DX, Y2, Y3)
	MINOP(Y0, Y2, Y4, Y5)
	MINOP(Y1, Y3, Y7, Y8)
	F16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func maxF16AVX2(dst, a, b *uint16, n int)
TEXT ·maxF16AVX2(SB), NOSPLIT, $0-32
	ARGS
loop:
	F16LOAD(SI, Y0, Y1)
	F16LOAD(DX, Y2, Y3)
	MAXOP(Y0, Y2, Y4, Y5)
	MAXOP(Y1, Y3, Y7, Y8)
	F16STORE(Y0, Y1)
	NEXT
	JNZ loop
	VZEROUPPER
	RET

// func divF16AVX2(s *uint16, n int, d float32)
TEXT ·divF16AVX2(SB), NOSPLIT, $0-20
	MOVQ         s+0(FP), DI
	MOVQ         n+8(FP), CX
	VBROADCASTSS d+16(FP), Y11
loop:
	F16LOAD(DI, Y0, Y1)
	VDIVPS Y11, Y0, Y0
	VDIVPS Y11, Y1, Y1
	F16STORE(Y0, Y1)
	ADDQ $32, DI
	SUBQ $16, CX
	JNZ  loop
	VZEROUPPER
	RET
