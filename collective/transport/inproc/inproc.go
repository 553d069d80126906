package inproc

import (
	"fmt"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// queueDepth bounds the messages in flight from one rank to another; a
// Send past it blocks, like a full socket buffer.
const queueDepth = 1024

type message struct {
	h       transport.Header
	payload []byte
}

// World is a set of in-process ranks wired to each other.
type World struct {
	ranks []*rankTransport
}

// NewWorld returns a world of n ranks.
func NewWorld(n int) *World {
	w := &World{ranks: make([]*rankTransport, n)}
	for r := range w.ranks {
		rt := &rankTransport{
			world:   w,
			rank:    r,
			inbox:   make([]chan message, n),
			pending: make([]message, n),
			peeked:  make([]*message, n),
			faulted: make(chan struct{}),
			gone:    make(chan struct{}),
		}
		for p := range rt.inbox {
			rt.inbox[p] = make(chan message, queueDepth)
		}
		w.ranks[r] = rt
	}
	return w
}

// Transport returns rank r's end.
func (w *World) Transport(r int) transport.Transport { return w.ranks[r] }

// Kill simulates rank r's process dying: every peer faults at once with a
// lost-peer fault naming r, and r's own calls fail.
func (w *World) Kill(r int) {
	dead := w.ranks[r]
	dead.fail(&transport.Fault{Kind: transport.FaultClosed, Peer: r, Reporter: r,
		Detail: fmt.Sprintf("rank %d was killed", r)})
	dead.goneOnce.Do(func() { close(dead.gone) })
	for p, rt := range w.ranks {
		if p != r {
			rt.fail(&transport.Fault{Kind: transport.FaultPeerLost, Peer: r, Reporter: p,
				Detail: fmt.Sprintf("lost rank %d (in-process peer killed)", r)})
		}
	}
}

type rankTransport struct {
	world *World
	rank  int
	// inbox[p] holds messages from p to this rank.
	inbox   []chan message
	pending []message  // header received, payload not yet
	peeked  []*message // arrived and looked at, not yet received

	mu       sync.Mutex
	fault    *transport.Fault
	faulted  chan struct{} // closed when fault is set
	gone     chan struct{} // closed when this rank closed or was killed
	goneOnce sync.Once
}

func (t *rankTransport) Rank() int { return t.rank }
func (t *rankTransport) Size() int { return len(t.world.ranks) }

func (t *rankTransport) Fault() *transport.Fault {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fault
}

// fail records f unless a fault is already recorded; it reports whether f
// was the first.
func (t *rankTransport) fail(f *transport.Fault) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fault != nil {
		return false
	}
	t.fault = f
	close(t.faulted)
	return true
}

func (t *rankTransport) Abort(f *transport.Fault) {
	if !t.fail(f) {
		return
	}
	for p, rt := range t.world.ranks {
		if p != t.rank {
			rt.fail(f)
		}
	}
}

func (t *rankTransport) Close() error {
	t.fail(&transport.Fault{Kind: transport.FaultClosed, Peer: -1, Reporter: t.rank,
		Detail: fmt.Sprintf("rank %d closed its transport", t.rank)})
	t.goneOnce.Do(func() { close(t.gone) })
	return nil
}

func (t *rankTransport) checkPeer(peer int) error {
	if peer < 0 || peer >= len(t.world.ranks) || peer == t.rank {
		return fmt.Errorf("inproc: rank %d has no peer %d", t.rank, peer)
	}
	return nil
}

func timer(deadline time.Time) (<-chan time.Time, func()) {
	if deadline.IsZero() {
		return nil, func() {}
	}
	tm := time.NewTimer(time.Until(deadline))
	return tm.C, func() { tm.Stop() }
}

func (t *rankTransport) timeout(peer int, what string) error {
	f := &transport.Fault{Kind: transport.FaultTimeout, Peer: peer, Reporter: t.rank,
		Detail: fmt.Sprintf("rank %d did not %s rank %d before the deadline", t.rank, what, peer)}
	return f
}

func (t *rankTransport) Send(peer int, h *transport.Header, payload []byte, deadline time.Time) error {
	if err := t.checkPeer(peer); err != nil {
		return err
	}
	if f := t.Fault(); f != nil {
		return f
	}
	h.From = int32(t.rank)
	h.Length = uint64(len(payload))
	m := message{h: *h, payload: append([]byte(nil), payload...)}
	dst := t.world.ranks[peer]
	tc, stop := timer(deadline)
	defer stop()
	select {
	case dst.inbox[t.rank] <- m:
		return nil
	case <-t.faulted:
		return t.Fault()
	case <-dst.gone:
		return &transport.Fault{Kind: transport.FaultPeerLost, Peer: peer, Reporter: t.rank,
			Detail: fmt.Sprintf("rank %d is gone", peer)}
	case <-tc:
		return t.timeout(peer, "get room to send to")
	}
}

func (t *rankTransport) RecvHeader(peer int, h *transport.Header, deadline time.Time) error {
	if err := t.checkPeer(peer); err != nil {
		return err
	}
	if f := t.Fault(); f != nil {
		return f
	}
	if m := t.peeked[peer]; m != nil {
		t.peeked[peer] = nil
		t.pending[peer] = *m
		*h = m.h
		return nil
	}
	tc, stop := timer(deadline)
	defer stop()
	select {
	case m := <-t.inbox[peer]:
		t.pending[peer] = m
		*h = m.h
		return nil
	case <-t.faulted:
		return t.Fault()
	case <-t.world.ranks[peer].gone:
		// Drain what the peer sent before it left.
		select {
		case m := <-t.inbox[peer]:
			t.pending[peer] = m
			*h = m.h
			return nil
		default:
		}
		return &transport.Fault{Kind: transport.FaultPeerLost, Peer: peer, Reporter: t.rank,
			Detail: fmt.Sprintf("rank %d closed before sending what rank %d waits for", peer, t.rank)}
	case <-tc:
		return t.timeout(peer, "hear from")
	}
}

func (t *rankTransport) RecvPayload(peer int, buf []byte, deadline time.Time) error {
	if err := t.checkPeer(peer); err != nil {
		return err
	}
	m := t.pending[peer]
	t.pending[peer] = message{}
	if uint64(len(buf)) != m.h.Length {
		return fmt.Errorf("inproc: rank %d: payload from rank %d is %d bytes, buffer %d", t.rank, peer, m.h.Length, len(buf))
	}
	copy(buf, m.payload)
	return nil
}

// PeekHeader shows the next message's header from peer if it has arrived
// (transport.Peeker); RecvHeader returns that message next.
func (t *rankTransport) PeekHeader(peer int, h *transport.Header) bool {
	if t.checkPeer(peer) != nil {
		return false
	}
	if t.peeked[peer] == nil {
		select {
		case m := <-t.inbox[peer]:
			t.peeked[peer] = &m
		default:
			return false
		}
	}
	*h = t.peeked[peer].h
	return true
}
