package collective

import (
	"fmt"
	"unsafe"
)

// DType is the element type of a Buffer.
type DType uint8

const (
	Float32  DType = 1 + iota
	Float64        //
	Int32          //
	Int64          //
	BFloat16       // stored as uint16: the top half of a float32
	Float16        // IEEE 754 binary16, stored as uint16
)

// DTypes lists every supported element type.
var DTypes = []DType{Float32, Float64, Int32, Int64, BFloat16, Float16}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	switch d {
	case Float32, Int32:
		return 4
	case Float64, Int64:
		return 8
	case BFloat16, Float16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Float64:
		return "float64"
	case Int32:
		return "int32"
	case Int64:
		return "int64"
	case BFloat16:
		return "bfloat16"
	case Float16:
		return "float16"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// ParseDType accepts the names String prints, plus the usual short forms.
func ParseDType(s string) (DType, error) {
	switch s {
	case "float32", "f32", "float":
		return Float32, nil
	case "float64", "f64", "double":
		return Float64, nil
	case "int32", "i32", "int":
		return Int32, nil
	case "int64", "i64":
		return Int64, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	case "float16", "f16", "half":
		return Float16, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want float32, float64, int32, int64, bfloat16 or float16)", s)
}

// Buffer is a typed view of memory that collectives read or write. Build
// one with Float32s, Float64s, Int32s, Int64s, BFloat16s or Float16s; it
// shares the slice's memory and costs no allocation.
type Buffer struct {
	dtype DType
	data  []byte
}

func bytesOf[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(zero)))
}

func Float32s(s []float32) Buffer { return Buffer{Float32, bytesOf(s)} }
func Float64s(s []float64) Buffer { return Buffer{Float64, bytesOf(s)} }
func Int32s(s []int32) Buffer     { return Buffer{Int32, bytesOf(s)} }
func Int64s(s []int64) Buffer     { return Buffer{Int64, bytesOf(s)} }

// BFloat16s views s as bfloat16 values (the upper 16 bits of a float32).
func BFloat16s(s []uint16) Buffer { return Buffer{BFloat16, bytesOf(s)} }

// Float16s views s as IEEE 754 half-precision values.
func Float16s(s []uint16) Buffer { return Buffer{Float16, bytesOf(s)} }

// BufferOf views raw bytes as elements of d; len(b) must be a multiple of
// d.Size(). Transports and benchmarks use it; training code should prefer
// the typed constructors.
func BufferOf(d DType, b []byte) Buffer { return Buffer{d, b} }

// DType returns the element type.
func (b Buffer) DType() DType { return b.dtype }

// Len returns the number of elements.
func (b Buffer) Len() int {
	if s := b.dtype.Size(); s > 0 {
		return len(b.data) / s
	}
	return 0
}

// Bytes returns the underlying memory.
func (b Buffer) Bytes() []byte { return b.data }

// sameMemory reports whether a and b start at the same address (in place).
func sameMemory(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && &a[0] == &b[0]
}

// overlaps reports whether a and b share any byte.
func overlaps(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}
