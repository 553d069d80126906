//go:build !amd64

package shm

func copyNT(dst, src []byte) { copy(dst, src[:len(src)&^63]) }

const haveNT = false
