// Package kernels generates the PTX of ringo's elementwise GPU reduction
// kernels. The driver compiles PTX, NVIDIA's virtual instruction set,
// itself when a module is loaded (cuModuleLoadData), so no CUDA toolkit is
// needed to build or ship them: Source returns the text.
//
// # What the kernels compute
//
// reduce_<op>_<dtype>(dst, a, b, n) computes dst[i] = a[i] (op) b[i] for
// i < n, for op sum, prod, min or max and dtype float32, float64, bfloat16
// or float16 (the 16-bit types stored as uint16). dst may be a or b.
// divide_<dtype>(dst, n, divisor) computes dst[i] = dst[i] / divisor; an
// average is a sum and then a divide by the group size. ReduceName and
// DivideName give the names and document the parameters.
//
// Every result has the same bits as ringo's host reduction (package
// collective, reduce.go), so that ranks that reduce on a GPU and ranks that
// reduce on a CPU agree:
//
//   - float32 and float64 sums and products round to nearest even (add.rn,
//     mul.rn, subnormals kept). A NaN result is replaced by what x86 returns
//     and the host therefore returns: a's NaN if a is NaN, else b's,
//     quieted; the negative quiet NaN for an invalid operation (Inf-Inf,
//     0×Inf). A GPU returns its one canonical NaN instead, hence the
//     fix-up.
//   - min and max propagate NaNs, a's first, and keep a on ties (±0); they
//     are built from compares and selects, since PTX's min and max drop
//     NaNs.
//   - bfloat16 and float16 are widened to float32, combined by the same
//     rules, and rounded back to nearest even, with the host's handling of
//     NaN payloads, subnormals and overflow to Inf.
//   - divide is div.rn with the same NaN rule for float32 and float64; for
//     the 16-bit types a NaN quotient keeps the dividend, as on the host.
//
// The 16-bit conversions are integer instructions that mirror the host's
// f16ToF32, f32ToF16 and f32ToBF16 step by step, not PTX cvt: cvt's
// treatment of NaN payloads is not documented to match the host's, and an
// integer sequence has only one possible result.
//
// The module targets PTX ISA 7.0 and sm_70, so one text runs on Volta and
// every later architecture up to Hopper; it uses no instruction newer than
// those.
//
// # Speed
//
// Each kernel is a grid-stride loop (i = ctaid.x*ntid.x + tid.x; i +=
// nctaid.x*ntid.x) that loads a[i] and b[i] once and stores dst[i] once:
// consecutive threads touch consecutive elements, so every warp's accesses
// coalesce, and the arithmetic is a few dozen integer and float
// instructions per element, far below what a memory-bound kernel can hide.
// Any launch shape is correct; a block of 256 threads and a grid of a few
// blocks per streaming multiprocessor (or enough to cover n, if fewer)
// is the usual choice. The target is at least 80% of the device's memory
// bandwidth for float32 sum at 256 MiB (3 × 256 MiB moved per call).
// The loop body is about 20 PTX instructions per element for float32 and
// float64, 35 for bfloat16 and 95 for float16, whose widening and
// narrowing are long integer sequences: float16 is the kernel most likely
// to be bound by the integer units rather than by memory.
//
// # How they are verified
//
// Without a GPU. The tests hold a small PTX interpreter for exactly the
// subset the generator emits; it rejects any other instruction, modifier,
// type, register or label, and a register used at the wrong type or width,
// so it validates the text as well. It runs each kernel over a simulated
// grid of a few blocks of a few threads (the grid-stride loop runs many
// times), in place and out of place, and models the GPU where it differs
// from Go: a floating-point operation whose result is NaN gives the
// canonical NaN. The results are compared bit for bit with a reference
// written from reduce.go and with a real 2-rank all-reduce of package
// collective, for every op and dtype, at odd sizes, on random values and on
// every pair of special values (signed zeros, subnormals, the largest
// values, infinities, quiet and signalling NaNs with payloads, rounding
// ties). The 16-bit widenings are checked on all 65536 values, the
// narrowings on every exponent with the mantissas around each rounding
// point. testdata/kernels.ptx holds the generated module, so that any
// change to the PTX shows in review (go test -update rewrites it).
//
// What only a GPU can settle: that the driver's JIT accepts the text (the
// interpreter checks the syntax and types the PTX ISA documents, not every
// rule ptxas enforces), that the hardware's arithmetic and moves behave as
// the ISA says (round to nearest even without flushing subnormals, selects
// and moves keep NaN bits), and the speed.
package kernels
