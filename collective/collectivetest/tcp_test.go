package collectivetest_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// freePort returns a loopback address that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free loopback port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// tcpGroup forms a group of n ranks over real loopback TCP sockets, every
// rank joining from its own goroutine. Messages from 1000 bytes up are
// striped over three sockets per peer, so that the striping paths (and
// stripes that do not divide the message evenly) meet the whole matrix.
func tcpGroup(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
	t.Helper()
	addr := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tts := make([]*tcp.Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tcp.DefaultConfig()
			c.Rendezvous, c.Rank, c.Size = addr, r, n
			c.SocketsPerPeer, c.StripeMin = 3, 1000
			tts[r], errs[r] = tcp.Join(ctx, c)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			for _, tt := range tts {
				if tt != nil {
					tt.Close()
				}
			}
			t.Fatalf("rank %d: tcp.Join(%s, size %d): %v", r, addr, n, err)
		}
	}
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	return collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
}

func TestTCP(t *testing.T) {
	collectivetest.RunQuick(t, tcpGroup)
}
