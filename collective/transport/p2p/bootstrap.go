package p2p

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
)

// Protocol IDs this transport speaks over libp2p.
const (
	// ProtocolBootstrap is the registration at rank 0.
	ProtocolBootstrap = protocol.ID("/ringo/bootstrap/1.0.0")
	// ProtocolCollective carries the control and data streams.
	ProtocolCollective = protocol.ID("/ringo/collective/1.0.0")
)

const bootstrapVersion = 1

// maxBootstrapLine bounds a registration or table line.
const maxBootstrapLine = 1 << 20

type registration struct {
	V     int      `json:"v"`
	Rank  int      `json:"rank"`
	Size  int      `json:"size"`
	Addrs []string `json:"addrs"`
}

type entry struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

type table struct {
	V     int     `json:"v"`
	Error string  `json:"error,omitempty"`
	Nonce uint64  `json:"nonce"`
	Peers []entry `json:"peers,omitempty"`
}

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

// registered is one registration that reached rank 0.
type registered struct {
	s   network.Stream
	id  peer.ID
	reg registration
}

// bootstrapHandler reads one registration per stream and hands it to the
// rendezvous; it gives up on streams once the rendezvous is over.
func bootstrapHandler(regs chan<- registered, over <-chan struct{}) network.StreamHandler {
	return func(s network.Stream) {
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(io.LimitReader(s, maxBootstrapLine)).ReadBytes('\n')
		var reg registration
		if err != nil || json.Unmarshal(line, &reg) != nil || reg.V != bootstrapVersion {
			s.Reset() // not one of ours, or gave up
			return
		}
		s.SetReadDeadline(time.Time{})
		select {
		case regs <- registered{s: s, id: s.Conn().RemotePeer(), reg: reg}:
		case <-over:
			s.Reset()
		}
	}
}

// serveRendezvous runs on rank 0: it collects one registration per rank
// (its own is self) and answers all of them with the table. Every
// registration arrives over a connection the allowlist admitted, and the
// peer ID it is filed under is the one the handshake proved, not one the
// registration claims.
func serveRendezvous(ctx context.Context, cfg Config, self registration, selfID peer.ID, regs <-chan registered) (table, error) {
	size := cfg.Size
	clients := make([]*registered, size)
	clients[0] = &registered{id: selfID, reg: self}
	var all []network.Stream
	defer func() {
		for _, s := range all {
			s.Close()
		}
	}()
	reply := func(t table) {
		b, _ := json.Marshal(t)
		b = append(b, '\n')
		for _, s := range all {
			s.SetWriteDeadline(time.Now().Add(5 * time.Second))
			s.Write(b)
		}
	}
	fail := func(format string, a ...any) (table, error) {
		err := fmt.Errorf(format, a...)
		reply(table{V: bootstrapVersion, Error: err.Error()})
		return table{}, err
	}
	for got := 1; got < size; {
		var m registered
		select {
		case m = <-regs:
		case <-ctx.Done():
			return table{}, fmt.Errorf("rendezvous: %d of %d ranks registered before %w", got, size, context.Cause(ctx))
		}
		r := m.reg.Rank
		where := m.s.Conn().RemoteMultiaddr().String() + "/p2p/" + m.id.String()
		if len(cfg.Peers) != 0 && (r < 0 || r >= size || cfg.Peers[r] != m.id) {
			// With every rank pinned to its identity, an impostor is
			// refused alone: it cannot break the group by racing a rank.
			b, _ := json.Marshal(table{V: bootstrapVersion, Error: fmt.Sprintf("peer %s is not rank %d of this group", m.id, r)})
			m.s.SetWriteDeadline(time.Now().Add(time.Second))
			m.s.Write(append(b, '\n'))
			m.s.Close()
			continue
		}
		all = append(all, m.s)
		switch {
		case m.reg.Size != size:
			return fail("rank %d (%s) says the group has %d ranks, rank 0 says %d", r, where, m.reg.Size, size)
		case r < 0 || r >= size:
			return fail("peer %s registered as rank %d, outside 0..%d", where, r, size-1)
		case clients[r] != nil:
			return fail("rank %d registered twice: peer %s and peer %s", r, clients[r].id, m.id)
		}
		for q, c := range clients {
			if c != nil && c.id == m.id {
				return fail("peer %s registered as rank %d and as rank %d: every rank needs an identity of its own", m.id, q, r)
			}
		}
		clients[r] = &m
		got++
	}
	var nb [8]byte
	rand.Read(nb[:])
	t := table{V: bootstrapVersion, Nonce: binary.LittleEndian.Uint64(nb[:]), Peers: make([]entry, size)}
	for r, c := range clients {
		t.Peers[r] = entry{ID: c.id.String(), Addrs: c.reg.Addrs}
	}
	reply(t)
	return t, nil
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
func register(ctx context.Context, h host.Host, cfg Config, rv *peer.AddrInfo, self registration) (table, error) {
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
			return table{}, fmt.Errorf("rank %d: cannot reach the rendezvous at %s: %v (is rank 0 running, the address right, and this rank's peer ID %s in rank 0's allowlist?)", cfg.Rank, cfg.Rendezvous, err, h.ID())
		case <-time.After(delay):
		}
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, _ := json.Marshal(self)
	if _, err := s.Write(append(b, '\n')); err != nil {
		return table{}, fmt.Errorf("rank %d: registering at %s: %w", cfg.Rank, cfg.Rendezvous, err)
	}
	line, err := bufio.NewReader(io.LimitReader(s, maxBootstrapLine)).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return table{}, fmt.Errorf("rank %d: waiting at the rendezvous %s for all %d ranks: %w", cfg.Rank, cfg.Rendezvous, cfg.Size, err)
	}
	var t table
	if err := json.Unmarshal(line, &t); err != nil {
		return table{}, fmt.Errorf("rank %d: bad answer from the rendezvous %s: %v", cfg.Rank, cfg.Rendezvous, err)
	}
	if t.Error != "" {
		return table{}, fmt.Errorf("rank %d: rendezvous refused the group: %s", cfg.Rank, t.Error)
	}
	return t, nil
}

// members checks the table against this rank's configuration and decodes
// it: the size, this rank's own place, the allowlist and the pins.
func members(cfg Config, self peer.ID, t table) ([]member, error) {
	if len(t.Peers) != cfg.Size {
		return nil, fmt.Errorf("rank %d: rendezvous answered a table of %d ranks for a group of %d", cfg.Rank, len(t.Peers), cfg.Size)
	}
	allow := cfg.allowlist()
	ms := make([]member, cfg.Size)
	for r, e := range t.Peers {
		id, err := peer.Decode(e.ID)
		if err != nil {
			return nil, fmt.Errorf("rank %d: the rendezvous table names rank %d as %q: %v", cfg.Rank, r, e.ID, err)
		}
		if !slices.Contains(allow, id) && id != self {
			return nil, fmt.Errorf("rank %d: rank %d of the group is peer %s, which this rank's allowlist does not name", cfg.Rank, r, id)
		}
		if len(cfg.Peers) != 0 && cfg.Peers[r] != id {
			return nil, fmt.Errorf("rank %d: the rendezvous table names peer %s as rank %d, pinned to %s", cfg.Rank, id, r, cfg.Peers[r])
		}
		ms[r].id = id
		for _, s := range e.Addrs {
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

// Each collective stream opens with a 24-byte hello, written by the rank
// that opened it: "RGP2", version u32, nonce u64, from u32, kind u32.
const helloSize = 24

var helloMagic = [4]byte{'R', 'G', 'P', '2'}

const (
	kindControl = 0
	kindData    = 1
)

func encodeHello(nonce uint64, from, kind int) []byte {
	b := make([]byte, helloSize)
	copy(b, helloMagic[:])
	binary.LittleEndian.PutUint32(b[4:], bootstrapVersion)
	binary.LittleEndian.PutUint64(b[8:], nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(from))
	binary.LittleEndian.PutUint32(b[20:], uint32(kind))
	return b
}

// checkHello validates a hello that arrived on a stream from peer id.
func checkHello(b []byte, nonce uint64, self int, ms []member, id peer.ID) (from, kind int, err error) {
	if len(b) != helloSize || [4]byte(b[:4]) != helloMagic || binary.LittleEndian.Uint32(b[4:]) != bootstrapVersion {
		return 0, 0, errors.New("not a ringo hello")
	}
	if binary.LittleEndian.Uint64(b[8:]) != nonce {
		return 0, 0, errors.New("hello from another group (stale process?)")
	}
	f, k := binary.LittleEndian.Uint32(b[16:]), binary.LittleEndian.Uint32(b[20:])
	if f <= uint32(self) || f >= uint32(len(ms)) {
		return 0, 0, fmt.Errorf("hello from rank %d, which does not dial rank %d", f, self)
	}
	if ms[f].id != id {
		return 0, 0, fmt.Errorf("peer %s claims to be rank %d, which is peer %s", id, f, ms[f].id)
	}
	if k != kindControl && k != kindData {
		return 0, 0, fmt.Errorf("unknown stream kind %d", k)
	}
	return int(f), int(k), nil
}

// hello is a stream that a peer opened, with its first 24 bytes.
type hello struct {
	s network.Stream
	b []byte
}

// collectiveHandler reads the hello of each stream a peer opens and hands
// it to the mesh; once the mesh is formed (or failed), it resets every
// stream: the group's set of streams is fixed.
func collectiveHandler(accepts chan<- hello, over <-chan struct{}) network.StreamHandler {
	return func(s network.Stream) {
		select {
		case <-over:
			s.Reset()
			return
		default:
		}
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, helloSize)
		if _, err := io.ReadFull(s, b); err != nil {
			s.Reset()
			return
		}
		s.SetReadDeadline(time.Time{})
		select {
		case accepts <- hello{s, b}:
		case <-over:
			s.Reset()
		}
	}
}

// link is the pair of streams between this rank and one peer.
type link struct {
	ctrl, data network.Stream
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
	s.SetDeadline(deadlineOf(ctx))
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

// deadlineOf bounds a handshake by ctx's deadline, or 10 s without one.
func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Second)
}

// connectMesh dials every lower rank and opens a control and a data
// stream to it; it accepts the same two streams from every higher rank.
// links[p] are the streams with rank p.
func connectMesh(ctx context.Context, h host.Host, rank int, nonce uint64, ms []member, accepts <-chan hello) ([]link, error) {
	n := len(ms)
	links := make([]link, n)
	var mu sync.Mutex
	put := func(p, kind int, s network.Stream) error {
		mu.Lock()
		defer mu.Unlock()
		slot := &links[p].ctrl
		if kind == kindData {
			slot = &links[p].data
		}
		if *slot != nil {
			return fmt.Errorf("rank %d opened a second %s stream", p, map[int]string{kindControl: "control", kindData: "data"}[kind])
		}
		*slot = s
		if l := links[p]; l.ctrl != nil && l.data != nil && l.ctrl.Conn().ID() != l.data.Conn().ID() {
			return fmt.Errorf("rank %d opened its streams on two different connections", p)
		}
		return nil
	}
	resetAll := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range links {
			for _, s := range []network.Stream{l.ctrl, l.data} {
				if s != nil {
					s.Reset()
				}
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, n)
	go func() { // accept from higher ranks
		want := 2 * (n - 1 - rank)
		for got := 0; got < want; {
			var a hello
			select {
			case a = <-accepts:
			case <-ctx.Done():
				errc <- fmt.Errorf("rank %d: waiting for %d streams from higher ranks (%d arrived): %w", rank, want, got, context.Cause(ctx))
				return
			}
			from, kind, err := checkHello(a.b, nonce, rank, ms, a.s.Conn().RemotePeer())
			if err != nil {
				a.s.Reset() // a stranger to this group learns nothing
				continue
			}
			if err := put(from, kind, a.s); err != nil {
				a.s.Reset()
				errc <- fmt.Errorf("rank %d: %v", rank, err)
				return
			}
			got++
		}
		errc <- nil
	}()
	for p := 0; p < rank; p++ { // dial lower ranks
		go func() {
			errc <- func() error {
				h.Peerstore().AddAddrs(ms[p].id, ms[p].addrs, peerstore.PermanentAddrTTL)
				if err := h.Connect(ctx, peer.AddrInfo{ID: ms[p].id, Addrs: ms[p].addrs}); err != nil {
					return fmt.Errorf("rank %d: connecting to rank %d (%s): %v", rank, p, ms[p].name(), err)
				}
				conns := h.Network().ConnsToPeer(ms[p].id)
				if len(conns) == 0 {
					return fmt.Errorf("rank %d: the connection to rank %d (%s) closed at once", rank, p, ms[p].name())
				}
				for _, kind := range []int{kindControl, kindData} {
					s, err := openStream(ctx, conns[0], encodeHello(nonce, rank, kind))
					if err != nil {
						return fmt.Errorf("rank %d: opening a stream to rank %d (%s): %v", rank, p, ms[p].name(), err)
					}
					if err := put(p, kind, s); err != nil {
						s.Reset()
						return fmt.Errorf("rank %d: %v", rank, err)
					}
				}
				return nil
			}()
		}()
	}
	var first error
	for range rank + 1 {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel() // stop the others
		}
	}
	if first != nil {
		resetAll()
		return nil, first
	}
	return links, nil
}
