package p2p

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"

	"github.com/ringo-ml/ringo/internal/tcptest"
)

// slowPipe is a pair of loopback TCP connections joined by a relay that
// holds every chunk for delay in each direction, so that yamux measures a
// round trip of about twice delay.
func slowPipe(t *testing.T, delay time.Duration) (net.Conn, net.Conn) {
	t.Helper()
	a, relayA := tcptest.Pair(t)
	relayB, b := tcptest.Pair(t)
	relay := func(dst, src net.Conn) {
		type chunk struct {
			at   time.Time
			data []byte
		}
		q := make(chan chunk, 1<<16)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 64<<10)
				n, err := src.Read(buf)
				if n > 0 {
					q <- chunk{time.Now().Add(delay), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			defer dst.Close()
			for c := range q {
				time.Sleep(time.Until(c.at))
				if _, err := dst.Write(c.data); err != nil {
					return
				}
			}
		}()
	}
	relay(relayB, relayA)
	relay(relayA, relayB)
	return a, b
}

// After a receiver has read everything sent on a stream, the sender has at
// least half the stream's window to write into before the receiver reads
// again: the credit yamux's flow control promises, and what a rank relies
// on when it sends before it receives. A link with a long round trip makes
// a growing window grow to its largest. Then messages of several sizes
// are each read in full, and after each the sender writes half the window
// into a receiver that does not read. With go-libp2p's default yamux (its
// windows grow, losing credit: see muxer) the sender could not, five runs
// out of five: it had 196,572 bytes or one byte less than half.
func TestMuxerKeepsItsCredit(t *testing.T) {
	if n := keptCredit(t, muxer); n >= 0 {
		t.Fatalf("the sender could write only %d of %d bytes (half the window) after the receiver had read everything", n, muxer.Config().MaxStreamWindowSize/2)
	}
}

// keptCredit runs TestMuxerKeepsItsCredit's exchange over mux; it returns
// -1 if the sender could always write half the window, and otherwise how
// much it could write when it could not.
func keptCredit(t *testing.T, mux *yamux.Transport) int {
	a, b := slowPipe(t, 10*time.Millisecond)
	ca, err := mux.NewConn(a, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := mux.NewConn(b, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	time.Sleep(100 * time.Millisecond) // the sessions measure their round trip
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ca.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	in, err := cb.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(in, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	half := int(mux.Config().MaxStreamWindowSize / 2)
	buf := make([]byte, 64<<20)
	for _, n := range []int{64 << 20, half - 64<<10, 3 << 20, 1 << 20, half + 1<<20} {
		// n bytes, read as they come.
		wrote := make(chan error, 1)
		go func() { _, err := out.Write(buf[:n]); wrote <- err }()
		if _, err := io.ReadFull(in, buf[:n]); err != nil {
			t.Fatal(err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the last window update arrives
		// Half the window into a receiver that does not read.
		out.SetWriteDeadline(time.Now().Add(time.Second))
		m, err := out.Write(make([]byte, half))
		if err != nil {
			return m
		}
		out.SetWriteDeadline(time.Time{})
		if _, err := io.ReadFull(in, buf[:half]); err != nil {
			t.Fatal(err)
		}
	}
	return -1
}
