package collective

// Conversions between float32 and the 16-bit float formats, rounding to
// nearest-even: the same ones the reductions use, exported for code that
// fills or reads BFloat16s and Float16s buffers.

// BF16FromFloat32 rounds f to bfloat16.
func BF16FromFloat32(f float32) uint16 { return f32ToBF16(f) }

// BF16ToFloat32 widens a bfloat16 exactly.
func BF16ToFloat32(h uint16) float32 { return bf16ToF32(h) }

// F16FromFloat32 rounds f to IEEE binary16 (overflow gives ±Inf).
func F16FromFloat32(f float32) uint16 { return f32ToF16(f) }

// F16ToFloat32 widens an IEEE binary16 exactly.
func F16ToFloat32(h uint16) float32 { return f16ToF32(h) }
