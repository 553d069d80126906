package transport

import (
	"bytes"
	"testing"
)

// FuzzDecodeHello: whatever a stray process writes to a rank's socket or
// stream, DecodeHello rejects it or returns what encodes back to the same
// bytes, and a hello is taken for this group only with its nonce. Seeds
// under testdata/fuzz/FuzzDecodeHello (the shm and p2p hellos of the
// first bootstrap among them, which this one refuses).
func FuzzDecodeHello(f *testing.F) {
	f.Add(Hello{Nonce: 7, From: 2, Index: 1}.Encode(), uint64(7))
	f.Fuzz(func(t *testing.T, b []byte, nonce uint64) {
		h, err := DecodeHello(b)
		if err != nil {
			return
		}
		if out := h.Encode(); !bytes.Equal(out, b) {
			t.Fatalf("decode/encode changed the hello:\n in %x\nout %x", b, out)
		}
		if h.From < 0 || h.Index < 0 {
			t.Fatalf("accepted a negative rank or index: %+v", h)
		}
		if (h.Nonce == nonce) != bytes.Equal(b[8:16], Hello{Nonce: nonce}.Encode()[8:16]) {
			t.Fatalf("nonce %d read as %d", nonce, h.Nonce)
		}
	})
}
