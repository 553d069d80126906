package tcp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/tcptest"
)

// linkOver builds a link over a control connection and k data connections
// on loopback and returns it with the data connections' other ends, which
// the test writes to as a peer would.
func linkOver(t *testing.T, k, stripeMin int, polling bool) (*link, []*net.TCPConn) {
	t.Helper()
	var conns []net.Conn
	var peers []*net.TCPConn
	for range k + 1 {
		a, b := tcptest.Pair(t)
		conns, peers = append(conns, a), append(peers, b)
	}
	p := polling
	cfg := DefaultConfig()
	cfg.Spin = time.Millisecond
	l, err := newLink(cfg, "127.0.0.1:0", conns, k, stripeMin, &p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, peers[1:]
}

// writeInBursts writes b to c in bursts of uneven sizes, pausing now and
// then, so that the reader finds anything from a byte to a full buffer
// waiting.
func writeInBursts(c *net.TCPConn, b []byte) error {
	bursts := []int{1, 3, 13, 1000, 70_000, 5, 64 << 10, 8, 200_001}
	for i := 0; len(b) > 0; i++ {
		k := min(len(b), bursts[i%len(bursts)])
		if _, err := c.Write(b[:k]); err != nil {
			return err
		}
		b = b[k:]
		if i%4 == 3 {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// An in-place receive hands over every byte of the payload, in order, in
// pieces no larger than the read buffer whose offsets and lengths are
// multiples of 8 but at the payload's end, however the bytes trickle in;
// and the message behind it, part of which the buffer already holds, is
// received whole.
func TestRecvPayloadFuncHandsOverEveryByte(t *testing.T) {
	for _, polling := range []bool{false, true} {
		l, peers := linkOver(t, 1, 256<<10, polling)
		for _, size := range []int{1, 7, 8, 9, 4093, 64<<10 - 1, 64 << 10, 64<<10 + 3, 1<<20 + 5} {
			name := fmt.Sprintf("polling %v, %d bytes", polling, size)
			payload, next := pattern(0, size), pattern(1, 100)
			werr := make(chan error, 1)
			go func() { werr <- writeInBursts(peers[0], append(append([]byte(nil), payload...), next...)) }()
			if !l.InPlaceFor(size) {
				t.Fatalf("%s: InPlaceFor is false on an unstriped link", name)
			}
			var got []byte
			err := l.RecvPayloadFunc(size, func(off int, part []byte) {
				switch {
				case off != len(got):
					t.Errorf("%s: piece at %d after %d bytes", name, off, len(got))
				case len(part) == 0 || len(part) > readBuffer:
					t.Errorf("%s: piece of %d bytes at %d", name, len(part), off)
				case off%8 != 0 || len(part)%8 != 0 && off+len(part) != size:
					t.Errorf("%s: piece [%d, %d) is not cut at multiples of 8", name, off, off+len(part))
				}
				got = append(got, part...)
			}, time.Now().Add(10*time.Second))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%s: the pieces are not the payload (%d bytes handed over)", name, len(got))
			}
			after := make([]byte, len(next))
			if err := l.RecvPayload(after, time.Now().Add(10*time.Second)); err != nil || !bytes.Equal(after, next) {
				t.Fatalf("%s: the message after it: %v (same bytes: %v)", name, err, bytes.Equal(after, next))
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A peer that stops halfway through a payload fails the in-place receive
// at its deadline, after the bytes that did come were handed over.
func TestRecvPayloadFuncStopsAtItsDeadline(t *testing.T) {
	l, peers := linkOver(t, 1, 256<<10, true)
	const size = 1 << 20
	if _, err := peers[0].Write(pattern(0, size/2)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	handed := 0
	err := l.RecvPayloadFunc(size, func(_ int, part []byte) { handed += len(part) }, start.Add(300*time.Millisecond))
	took := time.Since(start)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("in-place receive of a payload that stops halfway: %v, want the deadline", err)
	}
	if took > 2*time.Second {
		t.Errorf("it failed %v after it started, its deadline was 300ms", took)
	}
	if handed == 0 || handed > size/2 {
		t.Errorf("%d bytes handed over, %d were sent", handed, size/2)
	}
}

// Striped payloads arrive over several connections at once, not through
// one read buffer: they are not received in place, and asking anyway is
// an error, not a wrong result.
func TestStripedPayloadsAreNotInPlace(t *testing.T) {
	l, _ := linkOver(t, 2, 4<<10, false)
	if !l.InPlaceFor(4<<10-1) || l.InPlaceFor(4<<10) {
		t.Fatalf("InPlaceFor(4 KiB - 1) = %v, InPlaceFor(4 KiB) = %v with striping from 4 KiB; want true, false",
			l.InPlaceFor(4<<10-1), l.InPlaceFor(4<<10))
	}
	if err := l.RecvPayloadFunc(8<<10, func(int, []byte) { t.Error("a striped payload was handed over") }, time.Now().Add(time.Second)); err == nil {
		t.Fatal("in-place receive of a striped payload succeeded")
	}
}
