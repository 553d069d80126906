package tcp

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// pattern fills n bytes that differ by rank and position.
func pattern(rank, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + rank*131 + i>>12)
	}
	return b
}

// While polling, two ranks that send each other more than their sockets
// hold at once, each receiving on another goroutine (as the executor's two
// lanes do), both get every byte: a write with no room polls, yields to
// the receive, and finishes once the peer has read.
func TestPollingSendsWaitForRoom(t *testing.T) {
	tts := joinTwo(t)
	for _, size := range []int{0, 100, 20 << 10, 300 << 10, 16 << 20} {
		type result struct {
			rank int
			got  []byte
			err  error
		}
		res := make(chan result, 4)
		for r, tt := range tts {
			tt.Poll(true)
			go func() {
				err := tt.Send(1-r, &transport.Header{Kind: transport.KindData, Seq: 1}, pattern(r, size), time.Now().Add(10*time.Second))
				res <- result{rank: r, err: err}
			}()
			go func() {
				var h transport.Header
				deadline := time.Now().Add(10 * time.Second)
				if err := tt.RecvHeader(1-r, &h, deadline); err != nil {
					res <- result{rank: r, err: err}
					return
				}
				buf := make([]byte, h.Length)
				res <- result{rank: r, got: buf, err: tt.RecvPayload(1-r, buf, deadline)}
			}()
		}
		for range 4 {
			x := <-res
			if x.err != nil {
				t.Fatalf("%d bytes: rank %d: %v", size, x.rank, x.err)
			}
			if x.got != nil && !bytes.Equal(x.got, pattern(1-x.rank, size)) {
				t.Fatalf("%d bytes: rank %d received other bytes than rank %d sent", size, x.rank, 1-x.rank)
			}
		}
	}
}

// A polling send that never gets room (the peer does not read) fails at
// its deadline instead of polling on.
func TestPollingSendStopsAtItsDeadline(t *testing.T) {
	tts := joinTwo(t)
	tts[0].Poll(true)
	start := time.Now()
	err := tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: 1}, make([]byte, 256<<20), start.Add(300*time.Millisecond))
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "rank 1") || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("send to a peer that does not read: %v, want an error naming rank 1 and the deadline", err)
	}
	if took > 2*time.Second {
		t.Errorf("the send failed %v after it started, its deadline was 300ms", took)
	}
}
