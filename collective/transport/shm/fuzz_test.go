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

// FuzzDecodeRef: a window reference comes from a peer's ring; decoding
// never panics, and what it accepts re-encodes identically.
func FuzzDecodeRef(f *testing.F) {
	var good [refBytes]byte
	windowRef{id: 77, fd: 9, off: 4096}.encode(good[:])
	f.Add(good[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRef(b)
		if err != nil {
			return
		}
		var out [refBytes]byte
		r.encode(out[:])
		if !bytes.Equal(out[:], b[:refBytes]) {
			t.Fatalf("decode/encode changed the reference:\n in %x\nout %x", b[:refBytes], out)
		}
	})
}

// The window set finds the window a slice lies in, at the right offset,
// and nothing for memory outside every window.
func TestWindowFind(t *testing.T) {
	a, err := NewWindow(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := NewWindow(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s   []byte
		w   *Window
		off uint64
	}{
		{a.Bytes(), a, 0},
		{a.Bytes()[100:200], a, 100},
		{a.Bytes()[len(a.Bytes())-1:], a, uint64(len(a.Bytes()) - 1)},
		{b.Bytes()[4096:], b, 4096},
		{make([]byte, 100), nil, 0},
		{nil, nil, 0},
	} {
		w, off, ok := windows.find(tc.s)
		if w != tc.w || ok != (tc.w != nil) || ok && off != tc.off {
			t.Errorf("find(%d bytes): window %p at %d (%v), want %p at %d", len(tc.s), w, off, ok, tc.w, tc.off)
		}
	}
	s := b.Bytes()[:10]
	b.Close()
	if w, _, ok := windows.find(s); ok {
		t.Errorf("a closed window is still found: %p", w)
	}
}
