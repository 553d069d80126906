package p2p

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	mss "github.com/multiformats/go-multistream"

	"github.com/ringo-ml/ringo/collective/transport"
)

// Protocol IDs this transport speaks over libp2p.
const (
	// ProtocolBootstrap is the registration at rank 0.
	ProtocolBootstrap = protocol.ID("/ringo/bootstrap/2.0.0")
	// ProtocolCollective carries the control and data streams.
	ProtocolCollective = protocol.ID("/ringo/collective/2.0.0")
)

// Name is the libp2p transport's name in the rendezvous table.
const Name = "libp2p"

// Offer is what a rank tells its peers so that they can reach it over
// libp2p. Rank 0 files ID as the one the connection's handshake proved,
// whatever the registration claims.
type Offer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// Indexes of the two streams of a pair, in their hellos.
const (
	streamControl = 0
	streamData    = 1
)

// member is one rank of the group as the table describes it.
type member struct {
	id    peer.ID
	addrs []ma.Multiaddr
}

// name is how messages refer to a rank's host: its first address and
// peer ID, as a multiaddr one could dial.
func (m member) name() string {
	if len(m.addrs) == 0 {
		return "/p2p/" + m.id.String()
	}
	return m.addrs[0].String() + "/p2p/" + m.id.String()
}

// bootstrapHandler reads one registration per stream and hands it to the
// rendezvous, filed under the peer ID the stream's connection proved; it
// gives up on streams once the rendezvous is over.
func bootstrapHandler(arrivals chan<- transport.Arrival, over <-chan struct{}) network.StreamHandler {
	return func(s network.Stream) {
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		size, m, ok := transport.ReadRegistration(s)
		var o Offer
		if !ok || m.Offer(Name, &o) != nil {
			s.Reset() // not one of ours, or gave up
			return
		}
		s.SetReadDeadline(time.Time{})
		o.ID = s.Conn().RemotePeer().String()
		m.Offers = transport.NewMember(m.Rank, map[string]any{Name: o}).Offers
		where := s.Conn().RemoteMultiaddr().String() + "/p2p/" + o.ID
		select {
		case arrivals <- transport.Arrival{Size: size, Member: m, Where: where, Reply: s}:
		case <-over:
			s.Reset()
		}
	}
}

// serveRendezvous runs on rank 0: it collects one registration per rank
// (its own is self) and answers all of them with the table. Every
// registration arrives over a connection the allowlist admitted.
func serveRendezvous(ctx context.Context, cfg Config, self transport.Member, arrivals <-chan transport.Arrival) (*transport.Table, error) {
	admit := func(a transport.Arrival) error {
		if len(cfg.Peers) == 0 {
			return nil
		}
		// With every rank pinned to its identity, an impostor is refused
		// alone: it cannot break the group by racing a rank.
		var o Offer
		a.Member.Offer(Name, &o)
		if r := a.Member.Rank; r < 0 || r >= cfg.Size || cfg.Peers[r].String() != o.ID {
			return fmt.Errorf("peer %s is not rank %d of this group", o.ID, r)
		}
		return nil
	}
	check := func(t *transport.Table) error {
		seen := map[string]int{}
		for r, m := range t.Members {
			var o Offer
			if err := m.Offer(Name, &o); err != nil {
				return err
			}
			if q, ok := seen[o.ID]; ok {
				return fmt.Errorf("peer %s registered as rank %d and as rank %d: every rank needs an identity of its own", o.ID, q, r)
			}
			seen[o.ID] = r
		}
		return nil
	}
	return transport.GatherTable(ctx, transport.GatherConfig{Size: cfg.Size, Self: &self, Admit: admit, Check: check}, arrivals)
}

// clearBackoff forgets failed dials to id, so that a retry dials at once
// (libp2p otherwise refuses to redial an address for seconds).
func clearBackoff(h host.Host, id peer.ID) {
	if s, ok := h.Network().(*swarm.Swarm); ok {
		s.Backoff().Clear(id)
	}
}

// register connects to rank 0 (retrying until ctx ends, since rank 0 may
// start later), registers this rank and returns the group's table.
func register(ctx context.Context, h host.Host, cfg Config, rv *peer.AddrInfo, self transport.Member) (*transport.Table, error) {
	var s network.Stream
	var err error
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		clearBackoff(h, rv.ID)
		if err = h.Connect(ctx, *rv); err == nil {
			// The dialer's half of the handshake can succeed although rank
			// 0 then drops the connection (its allowlist does not name
			// this rank): only a stream proves that it was let in.
			s, err = h.NewStream(network.WithNoDial(ctx, "registering"), rv.ID, ProtocolBootstrap)
			if err == nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rank %d: cannot reach the rendezvous at %s: %v (is rank 0 running, the address right, and this rank's peer ID %s in rank 0's allowlist?)", cfg.Rank, cfg.Rendezvous, err, h.ID())
		case <-time.After(delay):
		}
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	return transport.Register(ctx, s, cfg.Size, self, cfg.Rendezvous)
}

// members checks the table against this rank's configuration and decodes
// it: this rank's own place, the allowlist and the pins.
func members(cfg Config, self peer.ID, t *transport.Table) ([]member, error) {
	allow := cfg.allowlist()
	ms := make([]member, cfg.Size)
	for r, m := range t.Members {
		var o Offer
		if err := m.Offer(Name, &o); err != nil {
			return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
		}
		id, err := peer.Decode(o.ID)
		if err != nil {
			return nil, fmt.Errorf("rank %d: the rendezvous table names rank %d as %q: %v", cfg.Rank, r, o.ID, err)
		}
		if !slices.Contains(allow, id) && id != self {
			return nil, fmt.Errorf("rank %d: rank %d of the group is peer %s, which this rank's allowlist does not name", cfg.Rank, r, id)
		}
		if len(cfg.Peers) != 0 && cfg.Peers[r] != id {
			return nil, fmt.Errorf("rank %d: the rendezvous table names peer %s as rank %d, pinned to %s", cfg.Rank, id, r, cfg.Peers[r])
		}
		ms[r].id = id
		for _, s := range o.Addrs {
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return nil, fmt.Errorf("rank %d: the rendezvous table gives rank %d the address %q: %v", cfg.Rank, r, s, err)
			}
			ms[r].addrs = append(ms[r].addrs, a)
		}
		if r != cfg.Rank && len(ms[r].addrs) == 0 {
			return nil, fmt.Errorf("rank %d: rank %d (peer %s) registered no address", cfg.Rank, r, id)
		}
	}
	if ms[cfg.Rank].id != self {
		return nil, fmt.Errorf("rank %d: the rendezvous placed peer %s at this rank, whose identity is %s", cfg.Rank, ms[cfg.Rank].id, self)
	}
	return ms, nil
}

// ---- the mesh ----

// collectiveHandler reads the hello of each stream a peer opens and hands
// it to the mesh; once the mesh is formed (or failed), it resets every
// stream: the group's set of streams is fixed.
func collectiveHandler(accepts chan<- transport.Accepted[resettable], over <-chan struct{}) network.StreamHandler {
	return func(s network.Stream) {
		select {
		case <-over:
			s.Reset()
			return
		default:
		}
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		h, err := transport.ReadHello(s)
		if err != nil {
			s.Reset()
			return
		}
		s.SetReadDeadline(time.Time{})
		select {
		case accepts <- transport.Accepted[resettable]{Conn: resettable{s}, Hello: h}:
		case <-over:
			s.Reset()
		}
	}
}

// openStream opens a collective stream on c itself (not on whichever
// connection libp2p would pick), so that both streams of a pair share one
// connection and the order in which their frames are sent holds between
// them too (Close relies on it), and writes its hello.
func openStream(ctx context.Context, c network.Conn, hello []byte) (network.Stream, error) {
	s, err := c.NewStream(ctx)
	if err != nil {
		return nil, err
	}
	s.SetDeadline(transport.DeadlineOf(ctx))
	if err := mss.SelectProtoOrFail(ProtocolCollective, s); err != nil {
		s.Reset()
		return nil, err
	}
	if err := s.SetProtocol(ProtocolCollective); err != nil {
		s.Reset()
		return nil, err
	}
	if _, err := s.Write(hello); err != nil {
		s.Reset()
		return nil, err
	}
	s.SetDeadline(time.Time{})
	return s, nil
}

// resettable lets FormMesh close a stream: a reset, so that the peer
// learns at once.
type resettable struct{ network.Stream }

func (r resettable) Close() error { return r.Reset() }

// connectMesh connects to every lower rank and opens a control and a
// data stream to it on that one connection; it accepts the same two
// streams from every higher rank, whose peer ID must be the rank's.
// streams[p] are the streams with rank p, control first.
func connectMesh(ctx context.Context, h host.Host, rank int, nonce uint64, ms []member, accepts <-chan transport.Accepted[resettable]) (map[int][]network.Stream, error) {
	var mu sync.Mutex
	conns := map[int]network.Conn{} // the connection to each lower rank
	dial := func(ctx context.Context, p, i int) (resettable, error) {
		mu.Lock()
		c := conns[p]
		mu.Unlock()
		if c == nil {
			h.Peerstore().AddAddrs(ms[p].id, ms[p].addrs, peerstore.PermanentAddrTTL)
			if err := h.Connect(ctx, peer.AddrInfo{ID: ms[p].id, Addrs: ms[p].addrs}); err != nil {
				return resettable{}, fmt.Errorf("rank %d: connecting to rank %d (%s): %v", rank, p, ms[p].name(), err)
			}
			cs := h.Network().ConnsToPeer(ms[p].id)
			if len(cs) == 0 {
				return resettable{}, fmt.Errorf("rank %d: the connection to rank %d (%s) closed at once", rank, p, ms[p].name())
			}
			c = cs[0]
			mu.Lock()
			conns[p] = c
			mu.Unlock()
		}
		s, err := openStream(ctx, c, transport.Hello{Nonce: nonce, From: rank, Index: i}.Encode())
		if err != nil {
			return resettable{}, fmt.Errorf("rank %d: opening a stream to rank %d (%s): %v", rank, p, ms[p].name(), err)
		}
		return resettable{s}, nil
	}
	// A stranger to this group (another peer ID than the rank's) learns
	// nothing.
	verify := func(from int, s resettable) bool { return s.Conn().RemotePeer() == ms[from].id }
	var peers []int
	for p := range ms {
		if p != rank {
			peers = append(peers, p)
		}
	}
	plan := transport.MeshPlan{Rank: rank, Peers: peers, PerPeer: 2, Nonce: nonce}
	got, err := transport.FormMesh(ctx, plan, dial, accepts, verify)
	if err != nil {
		return nil, err
	}
	out := map[int][]network.Stream{}
	for p, ss := range got {
		out[p] = []network.Stream{ss[streamControl].Stream, ss[streamData].Stream}
	}
	for p, ss := range out {
		if ss[0].Conn().ID() != ss[1].Conn().ID() {
			for _, ss := range out {
				ss[0].Reset()
				ss[1].Reset()
			}
			return nil, fmt.Errorf("rank %d: rank %d opened its streams on two different connections", rank, p)
		}
	}
	return out, nil
}
