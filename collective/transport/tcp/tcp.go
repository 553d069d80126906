package tcp

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/internal/auth"
)

// Config says how to join a group. Build it with DefaultConfig.
type Config struct {
	// Rendezvous is rank 0's bootstrap address, host:port. Rank 0 listens
	// there; the others connect to it.
	Rendezvous string
	Rank, Size int
	// SocketsPerPeer is the number of data connections to each peer that
	// large messages are striped across. Rank 0's value wins.
	SocketsPerPeer int
	// StripeMin is the smallest payload that is striped. Rank 0's wins.
	StripeMin int
	// SocketBuffer sets SO_SNDBUF and SO_RCVBUF on data connections; 0
	// leaves the kernel's autotuning on.
	SocketBuffer int
	// Spin is how long waiting for a message header polls the socket
	// before sleeping in Go's network poller (0: never polls). Polling
	// trades CPU for latency; see SpinFor.
	Spin time.Duration
	// ListenHost is the address this rank listens on and advertises; empty
	// means the local address of the connection to the rendezvous.
	ListenHost string
	// Token, when set, is the job's secret: every connection of the group,
	// the bootstrap included, starts with an HMAC challenge–response on it
	// (package internal/auth), so a process without it can neither join
	// nor inject bytes into a collective.
	Token auth.Token
	// OnFault, if set, is called once, synchronously, when the transport
	// records its first fault (before any call returns it), so that a
	// worker can tell its launcher whom it blames even if it exits right
	// after. It must not block.
	OnFault func(*transport.Fault)
	// OnRefuse, if set, is told about each connection this rank refused
	// during the bootstrap and mesh formation (it failed the token
	// challenge or was not a ringo hello): the remote address and why.
	OnRefuse func(remote string, why error)
}

// Environment variables read by FromEnv.
const (
	EnvSockets   = "RINGO_SOCKETS_PER_PEER"
	EnvStripeMin = "RINGO_STRIPE_MIN"
	EnvSockBuf   = "RINGO_SOCKET_BUFFER"
	EnvSpin      = "RINGO_SPIN" // a Go duration, e.g. 200us; 0 turns polling off
)

// DefaultConfig returns SocketsFor(1) sockets per peer, SpinFor(1) of
// polling, striping from 256 KiB, and the kernel's socket buffer
// autotuning. A launcher that knows how many ranks share the host should
// use SocketsFor and SpinFor with that number instead.
func DefaultConfig() Config {
	return Config{SocketsPerPeer: SocketsFor(1), Spin: SpinFor(1), StripeMin: 256 << 10}
}

// SpinFor suggests Spin when ranksPerHost ranks share this machine:
// 200 µs while each rank has a core of its own, 1 ms while they are up to
// three times as many as the cores, none beyond that. A polling rank
// yields its core (sched_yield) between looks, so with a few ranks per
// core the peer it waits for gets to run and the message is seen without
// a wake-up through the poller; with more, the pollers take turns on the
// core that the one rank with work needs. Measured on 2 cores, 4 KiB
// all-reduce (BENCHMARKS.md): 3 ranks 96 µs without polling, 41–51 µs
// with 1 ms; 4 ranks 172–201 against 99–107 µs (Open MPI 103–109 µs in
// the same run). Since sends poll beside receives (spinWriter), 5 and 6
// ranks gain too: medians of 5 alternating runs, 0.59–0.72x the time
// without polling from 4 to 64 KiB, within noise from 256 KiB up. 8 ranks
// lose: 593–651 µs without, 1087–1442 µs with.
func SpinFor(ranksPerHost int) time.Duration {
	switch cores := runtime.NumCPU(); {
	case ranksPerHost <= cores:
		return 200 * time.Microsecond
	case ranksPerHost <= 3*cores:
		return time.Millisecond
	}
	return 0
}

// SocketsFor suggests SocketsPerPeer when ranksPerHost ranks share this
// machine: one stream per core each rank can call its own, from 1 to 4.
// Extra streams only help while there are idle cores to copy in parallel;
// on 2 cores with 2 or 4 ranks, 1 socket beat 2 by a fifth at 64 MiB.
func SocketsFor(ranksPerHost int) int {
	return min(4, max(1, runtime.NumCPU()/max(1, ranksPerHost)))
}

// FromEnv overrides SocketsPerPeer and StripeMin from the environment.
func (c Config) FromEnv() (Config, error) {
	if v := os.Getenv(EnvSockets); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: not a number", EnvSockets, v)
		}
		c.SocketsPerPeer = n
	}
	if v := os.Getenv(EnvStripeMin); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: not a number of bytes", EnvStripeMin, v)
		}
		c.StripeMin = n
	}
	if v := os.Getenv(EnvSpin); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return c, fmt.Errorf("%s=%q: not a duration (e.g. 200us, or 0)", EnvSpin, v)
		}
		c.Spin = d
	}
	if v := os.Getenv(EnvSockBuf); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return c, fmt.Errorf("%s=%q: not a number of bytes", EnvSockBuf, v)
		}
		c.SocketBuffer = n
	}
	return c, nil
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	if err := transport.CheckRank("tcp", c.Rank, c.Size); err != nil {
		return err
	}
	switch {
	case c.SocketsPerPeer < 1 || c.SocketsPerPeer > 64:
		return fmt.Errorf("tcp: SocketsPerPeer %d must be 1..64", c.SocketsPerPeer)
	case c.StripeMin < 1:
		return fmt.Errorf("tcp: StripeMin %d must be positive", c.StripeMin)
	case c.Size > 1 && c.Rendezvous == "":
		return fmt.Errorf("tcp: a group of %d ranks needs a rendezvous address", c.Size)
	}
	return nil
}

// Name is the tcp transport's name in the rendezvous table.
const Name = "tcp"

// Offer is what a rank tells its peers so that they can reach it over
// TCP: its data listener, and its striping settings (the lowest rank's
// win, so the group agrees).
type Offer struct {
	Addr      string `json:"addr"`
	Sockets   int    `json:"sockets"`
	StripeMin int    `json:"stripe_min"`
}

// Transport is a TCP mesh: a transport.Mesh of TCP links, plus polling
// (transport.Poller).
type Transport struct {
	*transport.Mesh
	k    int
	spin time.Duration
	// polling: receives poll before sleeping (see transport.Poller). Set
	// by the caller that owns the calls, before it receives; every link
	// reads it.
	polling bool
}

// Join forms the mesh: it blocks until every rank of the group has joined
// or ctx ends. A group of one needs no network and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{k: cfg.SocketsPerPeer, spin: cfg.Spin}
	if cfg.Size == 1 {
		t.Mesh = transport.NewMesh(0, 1, nil, transport.MeshConfig{OnFault: cfg.OnFault})
		return t, nil
	}
	var ep *Endpoint
	tab, err := transport.Rendezvous(ctx, cfg.rendezvous(), func(local net.Addr) (transport.Member, error) {
		var err error
		if ep, err = Listen(cfg, local); err != nil {
			return transport.Member{}, err
		}
		return transport.NewMember(cfg.Rank, map[string]any{Name: ep.Offer()}), nil
	})
	if ep != nil {
		defer ep.Close()
	}
	if err != nil {
		return nil, err
	}
	links, err := ep.Links(ctx, tab, tab.Peers(cfg.Rank, nil), &t.polling)
	if err != nil {
		return nil, err
	}
	t.k = ep.sockets
	t.Mesh = transport.NewMesh(cfg.Rank, cfg.Size, links, transport.MeshConfig{OnFault: cfg.OnFault})
	return t, nil
}

// rendezvous is how cfg meets its group.
func (c Config) rendezvous() transport.RendezvousConfig {
	return transport.RendezvousConfig{Addr: c.Rendezvous, Rank: c.Rank, Size: c.Size, Token: c.Token, OnRefuse: c.OnRefuse}
}

// Poll turns polling on or off for the receives and sends that follow (it
// has effect only when Config.Spin is positive, and says so).
func (t *Transport) Poll(on bool) bool {
	t.polling = on
	return on && t.spin > 0
}

// SocketsPerPeer is the number of data connections per peer in use.
func (t *Transport) SocketsPerPeer() int { return t.k }

// Endpoint is this rank's side of a TCP mesh while it forms: the data
// listener that peers dial, and what the rank offers them. A mixed
// transport uses it for the peers it reaches over TCP.
type Endpoint struct {
	cfg     Config
	ln      net.Listener
	offer   Offer
	sockets int // the group's, once Links has read the table
}

// Listen opens this rank's data listener on cfg.ListenHost, or else on
// the interface of local (the local address of the connection that
// reached the rendezvous).
func Listen(cfg Config, local net.Addr) (*Endpoint, error) {
	host := cfg.ListenHost
	if host == "" {
		if ta, ok := local.(*net.TCPAddr); ok {
			host = ta.IP.String()
		} else {
			host = "127.0.0.1"
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("rank %d: listening on %s: %w", cfg.Rank, host, err)
	}
	return &Endpoint{cfg: cfg, ln: ln, offer: Offer{Addr: ln.Addr().String(), Sockets: cfg.SocketsPerPeer, StripeMin: cfg.StripeMin}}, nil
}

// Offer is what this rank registers under Name.
func (e *Endpoint) Offer() Offer { return e.offer }

// Close stops listening.
func (e *Endpoint) Close() { e.ln.Close() }

// Links connects this rank to peers over TCP, K+1 connections per pair
// (a control connection and K data ones), and returns a link per peer,
// indexed by rank. polling is the owner's Poller switch.
func (e *Endpoint) Links(ctx context.Context, tab *transport.Table, peers []int, polling *bool) ([]transport.Link, error) {
	cfg := e.cfg
	var first Offer
	if err := tab.Members[0].Offer(Name, &first); err != nil {
		return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	if first.Sockets < 1 || first.Sockets > 64 || first.StripeMin < 1 {
		return nil, fmt.Errorf("rank %d: rank 0 offers %d sockets per peer, striping from %d bytes", cfg.Rank, first.Sockets, first.StripeMin)
	}
	k := first.Sockets
	e.sockets = k
	offers := make([]Offer, len(tab.Members))
	for _, p := range peers {
		if err := tab.Members[p].Offer(Name, &offers[p]); err != nil {
			return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
		}
	}
	acc := transport.Accept(e.ln, cfg.Token, cfg.OnRefuse)
	defer acc.Stop()
	dial := func(ctx context.Context, p, i int) (net.Conn, error) {
		c, err := transport.DialHello(ctx, "tcp", offers[p].Addr, cfg.Token, transport.Hello{Nonce: tab.Nonce, From: cfg.Rank, Index: i})
		if err != nil {
			return nil, fmt.Errorf("rank %d: connecting to rank %d at %s: %v", cfg.Rank, p, offers[p].Addr, err)
		}
		return c, nil
	}
	plan := transport.MeshPlan{Rank: cfg.Rank, Peers: peers, PerPeer: k + 1, Nonce: tab.Nonce}
	conns, err := transport.FormMesh(ctx, plan, dial, acc.C, nil)
	if err != nil {
		return nil, err
	}
	links := make([]transport.Link, len(tab.Members))
	for _, p := range peers {
		l, err := newLink(cfg, offers[p].Addr, conns[p], k, first.StripeMin, polling)
		if err != nil {
			for _, q := range peers {
				if links[q] != nil {
					links[q].Close()
				} else {
					for _, c := range conns[q] {
						c.Close()
					}
				}
			}
			return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
		}
		links[p] = l
	}
	return links, nil
}
