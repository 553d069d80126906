package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// startServer starts an embedded store on a free loopback port, closed
// when t ends.
func startServer(t *testing.T, token auth.Token) *Server {
	t.Helper()
	srv, err := NewServer("127.0.0.1:0", token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func dialTest(t *testing.T, addr string, token auth.Token) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// embeddedOpener gives runStoreSuite one server per test and a new client
// of it per call.
func embeddedOpener(token auth.Token) func(t *testing.T) Store {
	var mu sync.Mutex
	servers := make(map[*testing.T]*Server)
	return func(t *testing.T) Store {
		mu.Lock()
		srv, ok := servers[t]
		if !ok {
			srv = startServer(t, token)
			servers[t] = srv
			t.Cleanup(func() {
				mu.Lock()
				delete(servers, t)
				mu.Unlock()
			})
		}
		mu.Unlock()
		return dialTest(t, srv.Addr(), token)
	}
}

func TestEmbeddedSuite(t *testing.T) {
	runStoreSuite(t, embeddedOpener(auth.NewToken()))
}

func TestEmbeddedSuiteNoToken(t *testing.T) {
	runStoreSuite(t, embeddedOpener(nil))
}

func TestEmbeddedWrongToken(t *testing.T) {
	tok := auth.NewToken()
	srv := startServer(t, tok)
	for _, tc := range []struct {
		name  string
		token auth.Token
	}{
		{"other token", auth.NewToken()},
		{"no token", nil},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		c, err := Dial(ctx, srv.Addr(), tc.token)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("%s: dial succeeded", tc.name)
		}
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("%s: %v, want ErrAuth", tc.name, err)
		}
		if !strings.Contains(err.Error(), srv.Addr()) {
			t.Fatalf("%s: error does not name the endpoint: %v", tc.name, err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("%s: refused after %v, not promptly", tc.name, took)
		}
		for _, secret := range []auth.Token{tok, tc.token} {
			if len(secret) > 0 && strings.Contains(err.Error(), string(secret)) {
				t.Fatalf("%s: error shows a token: %v", tc.name, err)
			}
		}
	}
	// A client with a token refuses a store without one: it is not this
	// job's store.
	open := startServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := Dial(ctx, open.Addr(), tok); !errors.Is(err, ErrAuth) {
		t.Fatalf("token client to tokenless store: %v, want ErrAuth", err)
	}
	// The server still serves the right token.
	c := dialTest(t, srv.Addr(), tok)
	mustSet(t, c, "k", "v")
}

// readUntilClosed reads what the server sends until it closes the
// connection, failing if it does not within a few seconds.
func readUntilClosed(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server kept the connection open; it sent %q", got)
	}
	return got
}

func TestEmbeddedRawClientReadsNothing(t *testing.T) {
	tok := auth.NewToken()
	srv := startServer(t, tok)
	good := dialTest(t, srv.Addr(), tok)
	secret := "the-secret-master-address"
	mustSet(t, good, "master", secret)

	getReq, err := appendFrame(nil, &frame{Op: opGet, ID: 1, Keys: []string{"master"}})
	if err != nil {
		t.Fatal(err)
	}
	setReq, _ := appendFrame(nil, &frame{Op: opSet, ID: 2, Keys: []string{"master"}, Vals: [][]byte{[]byte("evil")}})
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"http", []byte("GET /master HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"frame without greeting", getReq},
		// Claims a token, then skips the handshake and asks.
		{"greeting then get", append(encodeGreeting(true), getReq...)},
		{"greeting then set", append(encodeGreeting(true), bytes.Repeat(setReq, 4)...)},
		// Claims to have no token, hoping the server skips auth.
		{"tokenless greeting then get", append(encodeGreeting(false), getReq...)},
		{"bad version", append([]byte("RDZV\x00\x09\x01\x00"), getReq...)},
	} {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(tc.send)
		// Done sending: a server still waiting for handshake bytes
		// sees the end instead of waiting out its timeout.
		c.(*net.TCPConn).CloseWrite()
		got := readUntilClosed(t, c)
		c.Close()
		if bytes.Contains(got, []byte(secret)) {
			t.Fatalf("%s: server sent the value: %q", tc.name, got)
		}
		// At most our greeting and the handshake's challenge.
		if len(got) > greetingLen+32 {
			t.Fatalf("%s: server sent %d bytes: %q", tc.name, len(got), got)
		}
	}
	if got := mustGet(t, good, "master"); got != secret {
		t.Fatalf("value changed to %q by an unauthenticated client", got)
	}
}

// rawAuthed opens a connection that has passed the handshake, to speak
// frames by hand.
func rawAuthed(t *testing.T, addr string, tok auth.Token) net.Conn {
	t.Helper()
	c, err := dialOnce(context.Background(), addr, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEmbeddedMalformedFrameDropsOnlyThatConnection(t *testing.T) {
	tok := auth.NewToken()
	srv := startServer(t, tok)
	good := dialTest(t, srv.Addr(), tok)
	valid, _ := appendFrame(nil, &frame{Op: opGet, ID: 1, Keys: []string{"k"}})
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"unknown op", mustFrame(t, &frame{Op: 99, ID: 1, Keys: []string{"k"}})},
		{"wrong arity", mustFrame(t, &frame{Op: opSet, ID: 1, Keys: []string{"k"}})},
		{"wait without keys", mustFrame(t, &frame{Op: opWait, ID: 1})},
		{"status as request", mustFrame(t, &frame{Op: statusOK, ID: 1})},
		{"length over limit", []byte{0xff, 0xff, 0xff, 0xff}},
		{"truncated body", append([]byte{0, 0, 0, 5}, 1, 2, 3, 4, 5)},
		{"trailing bytes", append(append([]byte{0, 0, 0, byte(len(valid) - 4 + 1)}, valid[4:]...), 0)},
	} {
		c := rawAuthed(t, srv.Addr(), tok)
		c.Write(tc.send)
		if got := readUntilClosed(t, c); len(got) != 0 {
			t.Fatalf("%s: server answered %q instead of closing", tc.name, got)
		}
	}
	mustSet(t, good, "k", "still serving")
}

func mustFrame(t *testing.T, f *frame) []byte {
	t.Helper()
	b, err := appendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The server enforces the limits itself, for clients that do not check.
func TestEmbeddedServerLimits(t *testing.T) {
	srv := startServer(t, nil)
	c := rawAuthed(t, srv.Addr(), nil)
	ask := func(f *frame) *frame {
		t.Helper()
		if _, err := c.Write(mustFrame(t, f)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		r, err := readFrame(c)
		if err != nil {
			t.Fatalf("no answer to op %d: %v", f.Op, err)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		req  *frame
		want string
	}{
		{"long key", &frame{Op: opGet, ID: 1, Keys: []string{strings.Repeat("k", MaxKeyLen+1)}}, "4096-byte limit"},
		{"empty key", &frame{Op: opGet, ID: 2, Keys: []string{""}}, "empty key"},
		{"big value", &frame{Op: opSet, ID: 3, Keys: []string{"big"}, Vals: [][]byte{make([]byte, MaxValueSize+1)}}, "16 MiB"},
		{"big old", &frame{Op: opCAS, ID: 4, Keys: []string{"big"}, Vals: [][]byte{make([]byte, MaxValueSize+1), nil}}, "16 MiB"},
	} {
		r := ask(tc.req)
		if r.Op != statusError || r.ID != tc.req.ID || len(r.Vals) != 1 || !strings.Contains(string(r.Vals[0]), tc.want) {
			t.Fatalf("%s: answer %#x id %d %q, want an error with %q", tc.name, r.Op, r.ID, r.Vals, tc.want)
		}
	}
	// The connection survives request errors.
	if r := ask(&frame{Op: opGet, ID: 9, Keys: []string{"big"}}); r.Op != statusNotFound || r.ID != 9 {
		t.Fatalf("get after request errors: %#x id %d", r.Op, r.ID)
	}
	// Exactly the limit is fine.
	cl := dialTest(t, srv.Addr(), nil)
	max := bytes.Repeat([]byte{7}, MaxValueSize)
	if err := cl.Set(ctxFor(t), "max", max); err != nil {
		t.Fatal(err)
	}
	if got, err := cl.Get(ctxFor(t), "max"); err != nil || !bytes.Equal(got, max) {
		t.Fatalf("get of a %d-byte value: %d bytes, %v", len(max), len(got), err)
	}
}

func TestDialUnreachable(t *testing.T) {
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, addr, auth.NewToken())
	took := time.Since(start)
	if err == nil {
		t.Fatal("dial to nothing succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("dial to nothing: %v", err)
	}
	if took > 1500*time.Millisecond {
		t.Fatalf("dial with a 300ms deadline took %v", took)
	}
}

func TestDialWaitsForServer(t *testing.T) {
	tok := auth.NewToken()
	addr := proctest.FreeAddr(t)
	started := make(chan *Server, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		srv, err := NewServer(addr, tok)
		if err != nil {
			t.Error(err)
		}
		started <- srv
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, tok)
	srv := <-started
	if srv != nil {
		defer srv.Close()
	}
	if err != nil {
		t.Fatalf("dial before the server started: %v", err)
	}
	defer c.Close()
	mustSet(t, c, "k", "v")
}

func TestPortInUse(t *testing.T) {
	srv := startServer(t, nil)
	_, err := NewServer(srv.Addr(), nil)
	if err == nil || !strings.Contains(err.Error(), srv.Addr()) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second server on %s: %v", srv.Addr(), err)
	}
}

func TestClientReconnects(t *testing.T) {
	tok := auth.NewToken()
	srv, err := NewServer("127.0.0.1:0", tok)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	c := dialTest(t, addr, tok)
	mustSet(t, c, "k", "v")
	srv.Close()
	// The store is gone: the call fails, naming it.
	_, err = c.Get(ctxFor(t), "k")
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("get from a closed server: %v", err)
	}
	// A new store on the same address: the client dials again.
	srv2, err := NewServer(addr, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	mustSet(t, c, "k", "v2")
	if got := mustGet(t, c, "k"); got != "v2" {
		t.Fatalf("get after reconnect = %q", got)
	}
}

func TestServerCloseTellsWaiters(t *testing.T) {
	srv := startServer(t, nil)
	c := dialTest(t, srv.Addr(), nil)
	w := async(func() ([][]byte, error) { return c.Wait(ctxFor(t), "never") })
	stillBlocked(t, w, "wait")
	srv.Close()
	r := await(t, w, "wait across server close")
	if !errors.Is(r.err, ErrClosed) || !strings.Contains(r.err.Error(), srv.Addr()) {
		t.Fatalf("wait across server close: %v, want ErrClosed naming %s", r.err, srv.Addr())
	}
}

func TestServerCloseDuringHandshake(t *testing.T) {
	srv, err := NewServer("127.0.0.1:0", auth.NewToken())
	if err != nil {
		t.Fatal(err)
	}
	// Connected, silent: the server sits in its handshake.
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(encodeGreeting(true))
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	srv.Close()
	if took := time.Since(start); took > time.Second {
		t.Fatalf("close with a connection in its handshake took %v", took)
	}
}

func TestVersionMismatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, greetingLen))
		c.Write([]byte("RDZV\x00\x02\x00\x00"))
		io.Copy(io.Discard, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = Dial(ctx, ln.Addr().String(), nil)
	if err == nil || !strings.Contains(err.Error(), "protocol version 2") || ctx.Err() != nil {
		t.Fatalf("dial to a v2 store: %v", err)
	}
	<-done
}

// TestNoGoroutinesLeft closes a busy server and its clients and checks
// that nothing of this package is still running.
func TestNoGoroutinesLeft(t *testing.T) {
	srv, err := NewServer("127.0.0.1:0", auth.NewToken())
	if err != nil {
		t.Fatal(err)
	}
	tok := srv.token
	var clients []*Client
	var waits []<-chan result
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := Dial(ctx, srv.Addr(), tok)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		waits = append(waits, async(func() ([][]byte, error) { return c.Wait(context.Background(), "never") }))
		mustSet(t, c, "k", "v")
	}
	// One that never finishes its handshake.
	raw, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stillBlocked(t, waits[0], "wait")
	srv.Close()
	for _, w := range waits {
		await(t, w, "wait across close")
	}
	for _, c := range clients {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var left []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "rendezvous.(*") && !strings.Contains(g, "TestNoGoroutinesLeft") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
