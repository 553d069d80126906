package shm

// copyNT copies the first len(src)&^63 bytes of src to dst, which must be
// 16-byte aligned, with non-temporal stores.
//
//go:noescape
func copyNT(dst, src []byte)

const haveNT = true
