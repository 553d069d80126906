package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

// The hello opens every connection between two ranks, after the token
// handshake (or libp2p's own): 24 bytes, "RGHI", version u32, the group's
// nonce u64, the dialling rank u32, and the connection's index u32 among
// those the pair opens (a TCP pair opens a control and K data sockets; a
// libp2p pair a control and a data stream).
const HelloSize = 24

var helloMagic = [4]byte{'R', 'G', 'H', 'I'}

// Hello names the group, the rank that dialled, and which of the pair's
// connections this is.
type Hello struct {
	Nonce       uint64
	From, Index int
}

// Encode returns the hello's 24 bytes.
func (h Hello) Encode() []byte {
	b := make([]byte, HelloSize)
	copy(b, helloMagic[:])
	binary.LittleEndian.PutUint32(b[4:], BootstrapVersion)
	binary.LittleEndian.PutUint64(b[8:], h.Nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(h.From))
	binary.LittleEndian.PutUint32(b[20:], uint32(h.Index))
	return b
}

// DecodeHello parses a hello; it never panics, and what it accepts
// encodes back to the same bytes. It does not check the nonce.
func DecodeHello(b []byte) (Hello, error) {
	if len(b) != HelloSize || [4]byte(b[:4]) != helloMagic {
		return Hello{}, errors.New("not a ringo hello")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != BootstrapVersion {
		return Hello{}, fmt.Errorf("hello of version %d, this build speaks %d: run the same ringo on every rank", v, BootstrapVersion)
	}
	from, idx := binary.LittleEndian.Uint32(b[16:]), binary.LittleEndian.Uint32(b[20:])
	if from > 1<<30 || idx > 1<<30 {
		return Hello{}, errors.New("hello with an impossible rank or index")
	}
	return Hello{Nonce: binary.LittleEndian.Uint64(b[8:]), From: int(from), Index: int(idx)}, nil
}

// ReadHello reads and decodes the hello at the start of r.
func ReadHello(r io.Reader) (Hello, error) {
	b := make([]byte, HelloSize)
	if _, err := io.ReadFull(r, b); err != nil {
		return Hello{}, err
	}
	return DecodeHello(b)
}

// Accepted is a connection that a peer opened, with its hello.
type Accepted[C any] struct {
	Conn  C
	Hello Hello
}

// MeshPlan says which connections a transport opens: perPeer of them
// between this rank and each rank of Peers. The lower rank of a pair
// accepts and the higher one dials, so each pair opens them once.
type MeshPlan struct {
	Rank    int
	Peers   []int // the ranks this transport joins this rank to
	PerPeer int
	Nonce   uint64
}

// FormMesh opens plan's connections: dial opens connection i to a lower
// rank p (its token challenge and hello included); accepted delivers what
// higher ranks opened, hello read. A connection whose hello is not of this
// group, or from a rank that should not dial this one, is closed and
// forgotten: only the token's holders get that far, but a stale process
// of an earlier group might. It returns conns[p][i] once every one is
// there, or the first failure (closing all it had).
//
// verify, if set, vets each accepted connection once its hello checks
// out: libp2p proves the dialler's peer ID, which must be the rank's.
func FormMesh[C io.Closer](ctx context.Context, plan MeshPlan, dial func(ctx context.Context, p, i int) (C, error), accepted <-chan Accepted[C], verify func(from int, c C) bool) (map[int][]C, error) {
	conns := map[int][]C{}
	want := 0
	for _, p := range plan.Peers {
		conns[p] = make([]C, plan.PerPeer)
		if p > plan.Rank {
			want += plan.PerPeer
		}
	}
	have := map[int][]bool{}
	for p := range conns {
		have[p] = make([]bool, plan.PerPeer)
	}
	var mu sync.Mutex
	put := func(p, i int, c C) error {
		mu.Lock()
		defer mu.Unlock()
		if have[p][i] {
			return fmt.Errorf("rank %d: rank %d opened connection %d twice", plan.Rank, p, i)
		}
		conns[p][i], have[p][i] = c, true
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(plan.Peers)+1)
	var wg sync.WaitGroup
	wg.Go(func() { // accept from higher ranks
		for got := 0; got < want; {
			var a Accepted[C]
			select {
			case a = <-accepted:
			case <-ctx.Done():
				errc <- fmt.Errorf("rank %d: %d of %d connections from higher ranks arrived before %w", plan.Rank, got, want, context.Cause(ctx))
				return
			}
			h := a.Hello
			if h.Nonce != plan.Nonce || h.From <= plan.Rank || h.Index >= plan.PerPeer || !slices.Contains(plan.Peers, h.From) ||
				verify != nil && !verify(h.From, a.Conn) {
				a.Conn.Close()
				continue
			}
			if err := put(h.From, h.Index, a.Conn); err != nil {
				a.Conn.Close()
				errc <- err
				return
			}
			got++
		}
		errc <- nil
	})
	dialers := 0
	for _, p := range plan.Peers {
		if p >= plan.Rank {
			continue
		}
		dialers++
		wg.Go(func() {
			for i := range plan.PerPeer {
				c, err := dial(ctx, p, i)
				if err != nil {
					errc <- err
					return
				}
				put(p, i, c)
			}
			errc <- nil
		})
	}
	var first error
	for range dialers + 1 {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel() // stop the others
		}
	}
	wg.Wait()
	if first != nil {
		for p, cs := range conns {
			for i, c := range cs {
				if have[p][i] {
					c.Close()
				}
			}
		}
		if cause := context.Cause(ctx); ctx.Err() != nil && !errors.Is(first, cause) && cause != context.Canceled {
			first = fmt.Errorf("%w (%v)", first, cause)
		}
		return nil, first
	}
	return conns, nil
}

// Acceptor greets the connections that arrive on a listener, each on a
// goroutine of its own (so that a stray one that never speaks holds up
// nobody): the token challenge, then the hello. Greeted connections come
// out of C. Stop closes the listener, drops what has not been taken, and
// waits for its goroutines.
type Acceptor struct {
	C <-chan Accepted[net.Conn]

	ln      net.Listener
	done    chan struct{}
	mu      sync.Mutex
	pending map[net.Conn]bool
	wg      sync.WaitGroup
}

// Accept starts greeting connections on ln. onRefuse (may be nil) hears
// of each one that failed the token challenge.
func Accept(ln net.Listener, token auth.Token, onRefuse func(remote string, why error)) *Acceptor {
	out := make(chan Accepted[net.Conn])
	a := &Acceptor{C: out, ln: ln, done: make(chan struct{}), pending: map[net.Conn]bool{}}
	a.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.pending[c] = true
			a.mu.Unlock()
			a.wg.Go(func() {
				h, err := greet(c, token)
				if err != nil {
					if onRefuse != nil && errors.Is(err, errRefused) {
						onRefuse(c.RemoteAddr().String(), err)
					}
					a.drop(c)
					return
				}
				a.mu.Lock()
				delete(a.pending, c) // from here on, closed below or the taker's
				a.mu.Unlock()
				select {
				case out <- Accepted[net.Conn]{c, h}:
				case <-a.done:
					c.Close()
				}
			})
		}
	})
	return a
}

var errRefused = errors.New("failed the token challenge")

func greet(c net.Conn, token auth.Token) (Hello, error) {
	if err := auth.Accept(c, token, time.Now().Add(10*time.Second)); err != nil {
		return Hello{}, fmt.Errorf("%w: %v", errRefused, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ReadHello(c)
	c.SetReadDeadline(time.Time{})
	return h, err
}

func (a *Acceptor) drop(c net.Conn) {
	a.mu.Lock()
	delete(a.pending, c)
	a.mu.Unlock()
	c.Close()
}

// Stop ends the acceptor; connections already taken from C are the
// taker's.
func (a *Acceptor) Stop() {
	a.ln.Close()
	close(a.done)
	a.mu.Lock()
	for c := range a.pending {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// DialHello dials addr over network, passes the token challenge and
// writes h: one connection of a mesh, from its dialling side.
func DialHello(ctx context.Context, network, addr string, token auth.Token, h Hello) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if err := auth.Dial(c, token, DeadlineOf(ctx)); err != nil {
		c.Close()
		return nil, fmt.Errorf("it refused this rank's token: %w", err)
	}
	if _, err := c.Write(h.Encode()); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting it: %w", err)
	}
	return c, nil
}
