package shm

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// deadlineGrain: deadlines are rounded up to this so that consecutive
// waits reuse the timer already armed on an eventfd.
const deadlineGrain = 50 * time.Millisecond

// batchBytes is how much a sender copies into the ring before it
// publishes, and a receiver copies out before it releases: small enough
// that the two sides overlap, large enough that the shared counters'
// cache lines do not bounce for every few kilobytes.
const batchBytes = 64 << 10

// Streaming stores. A message of ntMin bytes or more may be written into
// the ring with non-temporal stores, which put the bytes in memory rather
// than in the writer's caches, and need not first fetch the lines that the
// reader still holds from the last lap of the ring. Whether that pays
// depends on the machine, and on a virtual machine it changes while a job
// runs, as the host moves the virtual CPUs. Measured on the 2-core
// development VM: while its two CPUs shared a cache, ordinary stores moved
// a 64 MiB all-reduce between 2 processes in 13.7 ms and streaming stores
// in 18.7; while they did not (a 64 KiB handoff between them took 4 times
// as long), a sender's ordinary copies into the ring ran at 2.4 GB/s
// instead of 14-28, the all-reduce took 50.8 ms, and with streaming stores
// 14.2. So a sender times its ordinary copies into the ring (an average
// over the last few); below slowPut it streams, and after reprobe it
// sends the ordinary way again to see whether the machine has changed.
const (
	ntMin   = 256 << 10
	slowPut = 5000 // MB/s
	reprobe = 200 * time.Millisecond
	// minTimed is the smallest copy that is timed, and maxTimed the
	// longest that counts: a copy that took longer was interrupted (the
	// process lost its core) and says nothing about the memory.
	minTimed = 32 << 10
	maxTimed = int64(500 * time.Microsecond)
)

// Lending (window.go). A payload of lendMin bytes or more that lies in a
// Window goes to a peer that can map it as a reference, not a copy:
// below that, one copy through the ring costs no more than the
// reference's bookkeeping. lentMark, in the byte after a message's
// header, says its body is a reference.
const (
	lendMin  = batchBytes
	lentMark = 0x4c
	// loanYield is how long AwaitLent yields between looks before it
	// sleeps loanSleep between them.
	loanYield = 2 * time.Millisecond
	loanSleep = 50 * time.Microsecond
)

// lookBurst is how many times a waiter looks at the ring between yields.
const lookBurst = 64

// tightPoll is how long a poll keeps its core before it also yields to
// other processes between bursts (from the start when Config.Yield is
// set). A peer that has not answered by then may be waiting for a core,
// this one included: a machine is rarely as idle as a benchmark's.
const tightPoll = int64(20 * time.Microsecond)

// maxBurst bounds what one burst of looks (and the yield after it) counts
// against the poll's budget.
const maxBurst = int64(20 * time.Microsecond)

// Name is the shm transport's name in the rendezvous table.
const Name = "shm"

// Offer is what a rank tells its peers so that they can reach it over
// shared memory: its abstract unix socket, and its ring shape (rank 0's
// wins, so the group agrees).
type Offer struct {
	Sock      string `json:"sock"` // abstract unix socket name, without the leading NUL
	SlotBytes int    `json:"slot_bytes"`
	Slots     int    `json:"slots"`
}

// Transport is a shared-memory mesh between processes on one host: a
// transport.Mesh of shm links. It is not a transport.Poller: it polls
// before every sleep, during bulk transfers too (Config.Spin), since on
// shared memory a poll costs no more than the sleep and wake-up it saves,
// and the waits inside a pipelined collective are short.
type Transport struct {
	*transport.Mesh
}

// Join forms the group: it blocks until every rank has joined or ctx
// ends. A group of one needs no other process and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{}
	if cfg.Size == 1 {
		t.Mesh = transport.NewMesh(0, 1, nil, transport.MeshConfig{OnFault: cfg.OnFault})
		return t, nil
	}
	ep, err := Listen(cfg)
	if err != nil {
		return nil, err
	}
	defer ep.Close()
	rv := transport.RendezvousConfig{Addr: cfg.Rendezvous, Rank: cfg.Rank, Size: cfg.Size, Token: cfg.Token,
		Check: transport.SameHostAsRankZero("shared-memory")}
	tab, err := transport.Rendezvous(ctx, rv, func(net.Addr) (transport.Member, error) {
		return ep.Member(), nil
	})
	if err != nil {
		return nil, err
	}
	links, err := ep.Links(ctx, tab, tab.Peers(cfg.Rank, nil))
	if err != nil {
		return nil, err
	}
	tl := make([]transport.Link, cfg.Size)
	for p, l := range links {
		if l != nil {
			tl[p] = l
		}
	}
	t.Mesh = transport.NewMesh(cfg.Rank, cfg.Size, tl, transport.MeshConfig{OnFault: cfg.OnFault})
	return t, nil
}

// Endpoint is this rank's side of a shared-memory mesh while it forms:
// the abstract unix socket that peers dial, and what the rank offers
// them. A mixed transport uses it for the peers on this host.
type Endpoint struct {
	cfg   Config
	ln    *net.UnixListener
	offer Offer
}

// Listen opens this rank's abstract unix socket.
func Listen(cfg Config) (*Endpoint, error) {
	ln, sock, err := listenAbstract()
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	return &Endpoint{cfg: cfg, ln: ln, offer: Offer{Sock: sock, SlotBytes: cfg.SlotBytes, Slots: cfg.Slots}}, nil
}

// Offer is what this rank registers under Name.
func (e *Endpoint) Offer() Offer { return e.offer }

// Member describes this rank with its shm offer alone.
func (e *Endpoint) Member() transport.Member {
	m := transport.NewMember(e.cfg.Rank, map[string]any{Name: e.offer})
	e.cfg.overrideHost(&m.Host)
	return m
}

// Close stops listening.
func (e *Endpoint) Close() { e.ln.Close() }

// Links connects this rank to peers (which must run on this host, in
// this network namespace) and sets up the rings with each; it returns a
// link per peer, indexed by rank.
func (e *Endpoint) Links(ctx context.Context, tab *transport.Table, peers []int) ([]*link, error) {
	cfg := e.cfg
	var first Offer
	if err := tab.Members[0].Offer(Name, &first); err != nil {
		return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	probe := cfg
	probe.SlotBytes, probe.Slots = first.SlotBytes, first.Slots
	if err := probe.Validate(); err != nil {
		return nil, fmt.Errorf("rank %d: rank 0's ring shape: %w", cfg.Rank, err)
	}
	sh := shape{Nonce: tab.Nonce, SlotBytes: first.SlotBytes, Slots: first.Slots}
	offers := make([]Offer, len(tab.Members))
	for _, p := range peers {
		if err := tab.Members[p].Offer(Name, &offers[p]); err != nil {
			return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
		}
	}
	acc := transport.Accept(e.ln, cfg.Token, nil)
	defer acc.Stop()
	dial := func(ctx context.Context, p, i int) (net.Conn, error) {
		c, err := transport.DialHello(ctx, "unix", "@"+offers[p].Sock, cfg.Token, transport.Hello{Nonce: tab.Nonce, From: cfg.Rank, Index: i})
		if err != nil {
			return nil, fmt.Errorf("rank %d: connecting to rank %d (%s) at @%s: %v (every rank must run on one host, in one network namespace)", cfg.Rank, p, tab.Members[p].Host, offers[p].Sock, err)
		}
		return c, nil
	}
	plan := transport.MeshPlan{Rank: cfg.Rank, Peers: peers, PerPeer: 1, Nonce: tab.Nonce}
	conns, err := transport.FormMesh(ctx, plan, dial, acc.C, nil)
	if err != nil {
		return nil, err
	}
	// A cancelled ctx interrupts the exchanges below. Once they are done,
	// Links stops listening to ctx or, if ctx ended meanwhile, fails.
	canceled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(canceled)
		for _, cs := range conns {
			cs[0].SetDeadline(time.Unix(1, 0))
		}
	})
	deadline := transport.DeadlineOf(ctx)
	links := make([]*link, len(tab.Members))
	for _, p := range peers {
		c := conns[p][0].(*net.UnixConn)
		rs, xerr := exchange(c, cfg.Rank, p, sh, !cfg.NoLend, deadline)
		if xerr != nil {
			err = fmt.Errorf("rank %d: setting up the rings with rank %d (%s): %w", cfg.Rank, p, tab.Members[p].Host, xerr)
			break
		}
		links[p] = &link{addr: tab.Members[p].Host.String(), ctrl: c, spin: cfg.Spin, yield: cfg.Yield, rings: *rs}
	}
	if !stop() {
		<-canceled
		if err == nil {
			err = fmt.Errorf("rank %d: setting up the rings: %w", cfg.Rank, context.Cause(ctx))
		} else {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}
	if err != nil {
		for _, p := range peers {
			if links[p] != nil {
				links[p].Close()
			} else {
				conns[p][0].Close()
			}
		}
		return nil, err
	}
	return links, nil
}
