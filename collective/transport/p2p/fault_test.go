package p2p_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

// waitFault waits up to limit for tt to record a fault.
func waitFault(tt *p2p.Transport, limit time.Duration) *transport.Fault {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if f := tt.Fault(); f != nil {
			return f
		}
	}
	return nil
}

// A killed rank is seen as lost by every other rank at once, although no
// data flows, and the fault names its rank and peer ID.
func TestKillSeenAtOnce(t *testing.T) {
	j, tts := mustJoin(t, 3, nil)
	start := time.Now()
	tts[2].Kill()
	for r := range 2 {
		f := waitFault(tts[r], 2*time.Second)
		if f == nil {
			t.Fatalf("rank %d: no fault %v after rank 2 was killed", r, time.Since(start))
		}
		if f.Kind != transport.FaultPeerLost || f.Peer != 2 {
			t.Errorf("rank %d: fault %+v; want FaultPeerLost naming rank 2", r, f)
		}
		if !strings.Contains(f.Detail, "rank 2") || !strings.Contains(f.Detail, j.ids[2].String()) {
			t.Errorf("rank %d: %q does not name rank 2 and its peer ID %s", r, f.Detail, j.ids[2])
		}
		var h transport.Header
		begin := time.Now()
		err := tts[r].RecvHeader(1-r, &h, time.Now().Add(10*time.Second))
		if !errors.Is(err, transport.ErrPeerLost) || time.Since(begin) > 100*time.Millisecond {
			t.Errorf("rank %d: RecvHeader after the loss: %v after %v; want ErrPeerLost at once", r, err, time.Since(begin))
		}
	}
}

// A rank blocked in a receive from a healthy peer is woken when another
// peer dies, with the dead peer's fault.
func TestKillWakesBlockedReceive(t *testing.T) {
	_, tts := mustJoin(t, 3, nil)
	errc := make(chan error, 1)
	go func() {
		var h transport.Header
		errc <- tts[0].RecvHeader(1, &h, time.Now().Add(20*time.Second))
	}()
	time.Sleep(50 * time.Millisecond)
	tts[2].Kill()
	select {
	case err := <-errc:
		var f *transport.Fault
		if !errors.As(err, &f) || f.Peer != 2 || !errors.Is(err, transport.ErrPeerLost) {
			t.Fatalf("blocked receive from rank 1 returned %v; want rank 2's loss", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a receive blocked on rank 1 was not woken by rank 2's death")
	}
}

// Abort's notice reaches every rank, which then fails with the same
// explanation.
func TestAbortReachesEveryRank(t *testing.T) {
	_, tts := mustJoin(t, 3, nil)
	f := &transport.Fault{Kind: transport.FaultMismatch, Peer: 1, Reporter: 0, Op: 3, Seq: 9, Detail: "ranks 0 and 1 disagree"}
	tts[0].Abort(f)
	for r := 1; r < 3; r++ {
		got := waitFault(tts[r], 2*time.Second)
		if got == nil || got.Kind != f.Kind || got.Detail != f.Detail || got.Reporter != 0 || got.Seq != 9 {
			t.Fatalf("rank %d: fault %+v; want rank 0's notice %+v", r, got, f)
		}
	}
}

func recvMsg(t *testing.T, tt *p2p.Transport, from int) []byte {
	t.Helper()
	var h transport.Header
	if err := tt.RecvHeader(from, &h, time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("rank %d: RecvHeader from %d: %v", tt.Rank(), from, err)
	}
	buf := make([]byte, h.Length)
	if err := tt.RecvPayload(from, buf, time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("rank %d: RecvPayload from %d: %v", tt.Rank(), from, err)
	}
	return buf
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// Messages sent before Close are delivered even though the receiver reads
// them only after the sender's Close has returned (closing a libp2p
// connection discards what the peer has not read; Close must not). Then
// the receiver learns that the sender closed.
func TestCloseDeliversWhatWasSent(t *testing.T) {
	_, tts := mustJoin(t, 2, nil)
	first := pattern(2<<20, 1) // larger than a stream's window: rank 1 reads while it is sent
	done := make(chan error, 1)
	go func() {
		done <- tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: 1}, first, time.Time{})
	}()
	if got := recvMsg(t, tts[1], 0); !bytes.Equal(got, first) {
		t.Fatal("first message corrupted")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// These fit in the window: Send returns before rank 1 reads them.
	second, third := pattern(100<<10, 2), pattern(10, 3)
	for i, m := range [][]byte{second, third} {
		if err := tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: uint64(2 + i)}, m, time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tts[0].Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the connection's end reach rank 1
	if got := recvMsg(t, tts[1], 0); !bytes.Equal(got, second) {
		t.Fatalf("second message (%d bytes) lost or corrupted after the sender closed: got %d bytes", len(second), len(got))
	}
	if got := recvMsg(t, tts[1], 0); !bytes.Equal(got, third) {
		t.Fatalf("third message lost or corrupted after the sender closed: %v", got)
	}
	var h transport.Header
	err := tts[1].RecvHeader(0, &h, time.Now().Add(5*time.Second))
	if !errors.Is(err, transport.ErrPeerLost) || !strings.Contains(err.Error(), "closed its group") {
		t.Fatalf("RecvHeader after the sender closed: %v; want ErrPeerLost saying rank 0 closed its group", err)
	}
}

// Close returns promptly even when the peer is already dead, and a second
// Close is harmless.
func TestCloseAfterPeerDied(t *testing.T) {
	_, tts := mustJoin(t, 3, nil)
	tts[1].Kill()
	if waitFault(tts[0], 2*time.Second) == nil {
		t.Fatal("rank 0 did not notice rank 1's death")
	}
	start := time.Now()
	if err := tts[0].Close(); err != nil {
		t.Fatal(err)
	}
	if err := tts[0].Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v beside a dead peer", d)
	}
	// The first fault sticks: rank 1's loss, seen before the Close.
	if err := tts[0].Send(2, &transport.Header{Kind: transport.KindData}, nil, time.Time{}); !errors.Is(err, transport.ErrPeerLost) {
		t.Fatalf("Send after Close: %v; want the recorded loss of rank 1", err)
	}
}

// A receive with a deadline and no sender times out with ErrTimeout
// naming the silent rank, without failing the transport (the layer above
// decides).
func TestReceiveTimeout(t *testing.T) {
	j, tts := mustJoin(t, 2, nil)
	var h transport.Header
	start := time.Now()
	err := tts[1].RecvHeader(0, &h, time.Now().Add(200*time.Millisecond))
	if !errors.Is(err, transport.ErrTimeout) || !strings.Contains(err.Error(), j.ids[0].String()) {
		t.Fatalf("RecvHeader with nobody sending: %v; want ErrTimeout naming rank 0's peer", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timed out after %v, deadline was 200ms", d)
	}
	if f := tts[1].Fault(); f != nil {
		t.Fatalf("a timeout recorded a fault: %v", f)
	}
	// The stream is still usable.
	go tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: 5}, []byte("late"), time.Time{})
	if got := recvMsg(t, tts[1], 0); string(got) != "late" {
		t.Fatalf("after a timeout: got %q", got)
	}
}

// A group of one needs no identity and no network.
func TestGroupOfOne(t *testing.T) {
	c := p2p.DefaultConfig()
	c.Size = 1
	tt, err := p2p.Join(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if tt.Rank() != 0 || tt.Size() != 1 {
		t.Fatalf("rank %d size %d", tt.Rank(), tt.Size())
	}
	if err := tt.Close(); err != nil {
		t.Fatal(err)
	}
}

// Join gives up when its context ends, naming what it waited for.
func TestJoinGivesUp(t *testing.T) {
	j := newJob(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p2p.Join(ctx, j.config(1)) // rank 0 never starts
	if err == nil || !strings.Contains(err.Error(), "rendezvous") {
		t.Fatalf("rank 1 without a rank 0: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = p2p.Join(ctx, j.config(0)) // nobody registers
	if err == nil || !strings.Contains(err.Error(), "1 of 2 ranks registered") {
		t.Fatalf("rank 0 alone: %v", err)
	}
}
