package tcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// joinAll forms a group of n with the given token per rank.
func joinAll(t *testing.T, addr string, toks []auth.Token, timeout time.Duration) ([]*Transport, []error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n := len(toks)
	tts, errs := make([]*Transport, n), make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := DefaultConfig()
			c.Rendezvous, c.Rank, c.Size, c.Token = addr, r, n, toks[r]
			tts[r], errs[r] = Join(ctx, c)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, tt := range tts {
			if tt != nil {
				tt.Close()
			}
		}
	})
	return tts, errs
}

// joinTwo forms a group of two ranks on loopback, or fails the test.
func joinTwo(t *testing.T) []*Transport {
	tok := auth.NewToken()
	tts, errs := joinAll(t, proctest.FreeAddr(t), []auth.Token{tok, tok}, 10*time.Second)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return tts
}

func TestTokenGroupWorks(t *testing.T) {
	tok := auth.NewToken()
	tts, errs := joinAll(t, proctest.FreeAddr(t), []auth.Token{tok, tok, tok}, 10*time.Second)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	// One message each way proves the mesh is usable after the handshakes.
	var h transport.Header
	go tts[1].Send(2, &transport.Header{Kind: transport.KindData, Seq: 7}, []byte("hello"), time.Time{})
	if err := tts[2].RecvHeader(1, &h, time.Now().Add(5*time.Second)); err != nil || h.Seq != 7 {
		t.Fatalf("recv header: %v %+v", err, h)
	}
	buf := make([]byte, h.Length)
	if err := tts[2].RecvPayload(1, buf, time.Now().Add(5*time.Second)); err != nil || string(buf) != "hello" {
		t.Fatalf("recv payload %q: %v", buf, err)
	}
}

func TestWrongTokenRefusedAtBootstrap(t *testing.T) {
	tok := auth.NewToken()
	_, errs := joinAll(t, proctest.FreeAddr(t), []auth.Token{tok, auth.NewToken()}, 2*time.Second)
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "refused") {
		t.Fatalf("rank 1 with another job's token: %v", errs[1])
	}
	if !errors.Is(errs[1], auth.ErrDenied) && !strings.Contains(errs[1].Error(), "token") {
		t.Fatalf("error does not say it was the token: %v", errs[1])
	}
	if errs[0] == nil {
		t.Fatal("rank 0 formed a group with a rank that has another token")
	}
}

// An intruder that reaches a rank's data listener during mesh formation
// without the token must not take a peer's place: the rank drops it and
// the real group still forms.
func TestIntruderCannotTakeAPeersPlace(t *testing.T) {
	tok := auth.NewToken()
	addr := proctest.FreeAddr(t)
	// The intruder floods rank 0's rendezvous with fake registrations
	// while the real ranks join.
	stop := make(chan struct{})
	var iwg sync.WaitGroup
	iwg.Add(1)
	go func() {
		defer iwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			fmt.Fprintf(c, `{"v":%d,"rank":1,"size":2,"offers":{"tcp":{"addr":"127.0.0.1:1","sockets":1,"stripe_min":1}}}`+"\n", transport.BootstrapVersion)
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			b := make([]byte, 256)
			n, _ := c.Read(b)
			if strings.Contains(string(b[:n]), "members") {
				t.Errorf("intruder read the group table: %q", b[:n])
			}
			c.Close()
		}
	}()
	defer func() { close(stop); iwg.Wait() }()
	time.Sleep(20 * time.Millisecond)
	_, errs := joinAll(t, addr, []auth.Token{tok, tok}, 20*time.Second)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d failed beside an intruder: %v", r, err)
		}
	}
}
