package transport

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Kind: KindData, Op: 1, DType: 2, RedOp: 3, Algo: 1, Seq: 1 << 40, Count: 12345, Root: -1, Step: 7, Length: 99, From: 5}
	var b [HeaderSize]byte
	h.Encode(b[:])
	var got Header
	if err := got.Decode(b[:]); err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("round trip: got %+v want %+v", got, h)
	}
}

func TestHeaderRejects(t *testing.T) {
	good := func() []byte {
		h := Header{Kind: KindData, Length: 10, From: 1}
		b := make([]byte, HeaderSize)
		h.Encode(b)
		return b
	}
	cases := map[string]func([]byte) []byte{
		"short":    func(b []byte) []byte { return b[:HeaderSize-1] },
		"magic":    func(b []byte) []byte { b[0] = 'X'; return b },
		"version":  func(b []byte) []byte { b[2] = 9; return b },
		"checksum": func(b []byte) []byte { b[20] ^= 1; return b },
	}
	for name, mutate := range cases {
		var h Header
		err := h.Decode(mutate(good()))
		var he *HeaderError
		if !errors.As(err, &he) {
			t.Errorf("%s: got %v, want a *HeaderError", name, err)
		}
	}
}

func TestFaultRoundTrip(t *testing.T) {
	f := &Fault{Kind: FaultMismatch, Peer: 3, Reporter: 1, Op: 2, Seq: 9, Detail: "rank 1 called x; rank 3 called y"}
	got, err := DecodeFault(EncodeFault(f))
	if err != nil {
		t.Fatal(err)
	}
	if *got != *f {
		t.Fatalf("got %+v want %+v", got, f)
	}
	if !errors.Is(got, ErrMismatch) {
		t.Fatalf("%v does not match ErrMismatch", got)
	}
}

// FuzzHeaderDecode: whatever arrives on a socket, Decode either rejects it
// or returns a header that encodes back to the same bytes.
func FuzzHeaderDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		if err := h.Decode(b); err != nil {
			return
		}
		if h.Length > MaxPayload || h.From < 0 {
			t.Fatalf("accepted out-of-range header %+v", h)
		}
		out := make([]byte, HeaderSize)
		h.Encode(out)
		if !bytes.Equal(out, b[:HeaderSize]) {
			t.Fatalf("decode/encode changed the bytes:\n in %x\nout %x", b[:HeaderSize], out)
		}
	})
}

// FuzzFaultDecode: fault notices come from peers; decoding must never
// panic, and what it accepts must re-encode identically.
func FuzzFaultDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := DecodeFault(b)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeFault(fl), b) {
			t.Fatalf("re-encoding changed the notice")
		}
	})
}
