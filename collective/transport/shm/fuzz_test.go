package shm

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzDecodeOffer: an offer comes from a peer; decoding never panics, and
// what it accepts re-encodes identically.
func FuzzDecodeOffer(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := decodeOffer(b)
		if err != nil {
			return
		}
		if out := o.encode(); !bytes.Equal(out, b) {
			t.Fatalf("decode/encode changed the offer:\n in %x\nout %x", b, out)
		}
	})
}

// FuzzSegmentCheck: a peer's segment starts with an identity block;
// whatever it holds, check accepts only the ring it expects and never
// panics.
func FuzzSegmentCheck(f *testing.F) {
	const slotBytes, slots = 4096, 64
	f.Fuzz(func(t *testing.T, id []byte) {
		r, fd, err := newSegment(slotBytes, slots, 1, 0)
		if err != nil {
			t.Skip(err)
		}
		defer unix.Close(fd)
		defer r.unmap()
		copy(r.mem[:32], id)
		if r.check(1, 0) != nil {
			return
		}
		h := r.mem[:32]
		if [8]byte(h[:8]) != ringMagic || binary.LittleEndian.Uint32(h[8:]) != ringVersion ||
			binary.LittleEndian.Uint32(h[12:]) != slotBytes || binary.LittleEndian.Uint32(h[16:]) != slots ||
			binary.LittleEndian.Uint32(h[20:]) != 1 || binary.LittleEndian.Uint32(h[24:]) != 0 {
			t.Fatalf("accepted a segment for another ring: %x", h)
		}
	})
}
