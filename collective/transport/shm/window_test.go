package shm_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

func joinPair(t *testing.T, tune func(r int, c *shm.Config)) []*shm.Transport {
	t.Helper()
	tts, errs := joinAll(t, 2, tune)
	t.Cleanup(func() { closeAll(tts) })
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return tts
}

func newWindow(t *testing.T, n int) *shm.Window {
	t.Helper()
	w, err := shm.NewWindow(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func pattern(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) + seed
	}
}

func soon() time.Time { return time.Now().Add(10 * time.Second) }

// A payload in a window goes as a loan: the receiver reads the sender's
// memory when it receives (so a change made after the send shows), and
// the sender's AwaitLent returns only once it has. Both ways of receiving
// (a copy out, and in place) see the bytes.
func TestLentPayloadIsReadInPlace(t *testing.T) {
	tts := joinPair(t, nil)
	w := newWindow(t, 1<<20)
	payload := w.Bytes()[4099 : 4099+300_001] // odd offset and length
	for _, inPlace := range []bool{false, true} {
		pattern(payload, 1)
		h := transport.Header{Kind: transport.KindData}
		ticket, err := tts[0].SendLent(1, &h, payload, soon())
		if err != nil || ticket == 0 {
			t.Fatalf("SendLent: ticket %d, %v; want a loan", ticket, err)
		}
		// Unread: the loan is outstanding.
		err = tts[0].AwaitLent(1, ticket, time.Now().Add(30*time.Millisecond))
		if !errors.Is(err, transport.ErrTimeout) {
			t.Fatalf("AwaitLent before the peer read: %v, want a timeout", err)
		}
		pattern(payload, 2) // what the receiver must see
		var got transport.Header
		if err := tts[1].RecvHeader(0, &got, soon()); err != nil {
			t.Fatal(err)
		}
		if got.Length != uint64(len(payload)) {
			t.Fatalf("header says %d bytes, lent %d", got.Length, len(payload))
		}
		out := make([]byte, len(payload))
		if inPlace {
			if !tts[1].InPlace(0, len(out)) {
				t.Fatal("shm link not in place")
			}
			pieces := 0
			err = tts[1].RecvPayloadFunc(0, len(out), func(off int, part []byte) {
				pieces++
				copy(out[off:], part)
			}, soon())
			if pieces != 1 {
				t.Errorf("a loan came in %d pieces, want 1", pieces)
			}
		} else {
			err = tts[1].RecvPayload(0, out, soon())
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, payload) {
			t.Fatalf("in place %v: the receiver read other bytes than the window holds at receive time", inPlace)
		}
		if err := tts[0].AwaitLent(1, ticket, soon()); err != nil {
			t.Fatalf("AwaitLent after the peer read: %v", err)
		}
	}
}

// What is not lendable is copied, with ticket 0: a payload outside any
// window, one below the lending size, and anything to a rank that takes
// no loans (NoLend).
func TestUnlendablePayloadsAreCopied(t *testing.T) {
	w := newWindow(t, 256<<10)
	heap := make([]byte, 200<<10)
	cases := []struct {
		name    string
		payload []byte
		noLend  bool
	}{
		{"heap memory", heap, false},
		{"below the lending size", w.Bytes()[:1000], false},
		{"to a rank that takes no loans", w.Bytes()[:200<<10], true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tts := joinPair(t, func(r int, c *shm.Config) { c.NoLend = tc.noLend && r == 1 })
			pattern(tc.payload, 3)
			want := append([]byte(nil), tc.payload...)
			h := transport.Header{Kind: transport.KindData}
			ticket, err := tts[0].SendLent(1, &h, tc.payload, soon())
			if err != nil || ticket != 0 {
				t.Fatalf("SendLent: ticket %d, %v; want a copy (ticket 0)", ticket, err)
			}
			pattern(tc.payload, 4) // a copy does not see this
			var got transport.Header
			if err := tts[1].RecvHeader(0, &got, soon()); err != nil {
				t.Fatal(err)
			}
			out := make([]byte, got.Length)
			if err := tts[1].RecvPayload(0, out, soon()); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, want) {
				t.Fatal("the receiver did not get the bytes as they were at the send")
			}
		})
	}
}

// AwaitLent of a loan that the peer never read, because it died, fails
// naming the peer; it does not hang.
func TestLoanToADeadPeerFails(t *testing.T) {
	tts := joinPair(t, nil)
	w := newWindow(t, 1<<20)
	h := transport.Header{Kind: transport.KindData}
	ticket, err := tts[0].SendLent(1, &h, w.Bytes()[:512<<10], soon())
	if err != nil || ticket == 0 {
		t.Fatalf("SendLent: ticket %d, %v", ticket, err)
	}
	tts[1].Kill()
	done := make(chan error, 1)
	go func() { done <- tts[0].AwaitLent(1, ticket, time.Now().Add(5*time.Second)) }()
	select {
	case err := <-done:
		var f *transport.Fault
		if !errors.As(err, &f) || f.Peer != 1 {
			t.Fatalf("AwaitLent on a dead peer: %v, want a fault naming rank 1", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("AwaitLent on a dead peer hung")
	}
}
