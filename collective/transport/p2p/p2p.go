package p2p

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/ringo-ml/ringo/collective/transport"
)

// smallWrite: payloads up to this are copied behind the header and sent
// with one write (one yamux frame: they carry at most 64 KiB).
const smallWrite = 60 << 10

// Transport is a mesh of libp2p streams: a transport.Mesh of libp2p
// links.
type Transport struct {
	*transport.Mesh
	h     host.Host // nil for a group of one
	gater *gater
	links []*link
	over  chan struct{} // closed once Join is over: later streams are refused
}

// link is the pair of streams with one peer (transport.Link).
type link struct {
	id   peer.ID
	addr string // where the peer listens, with its peer ID

	// ctrl carries fault notices and goodbyes both ways.
	ctrl network.Stream
	// data carries this rank's messages to the peer one way and the
	// peer's messages to this rank the other.
	data network.Stream
	rd   *bufio.Reader // over data

	interrupted atomic.Bool

	// The deadlines last set on data, by the receiving and the sending
	// goroutine respectively.
	rdl, wdl       time.Time
	rdlSet, wdlSet bool

	out []byte // header (+ small payload) staging for sends
	in  [transport.HeaderSize]byte
}

// quietReader hides an error that comes with data: a yamux stream reports
// a failure to send a window update alongside the bytes it read (after
// the peer closed the connection, say). The next Read tells the stream's
// real state (more buffered bytes, EOF, a reset or a timeout).
type quietReader struct{ s network.Stream }

func (q quietReader) Read(p []byte) (int, error) {
	n, err := q.s.Read(p)
	if n > 0 {
		return n, nil
	}
	return n, err
}

// controlStream is a control stream read through quietReader.
type controlStream struct{ network.Stream }

func (c controlStream) Read(p []byte) (int, error) { return quietReader{c.Stream}.Read(p) }

// Join forms the group: it blocks until every rank has joined or ctx ends.
// A group of one needs no network and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{over: make(chan struct{})}
	if cfg.Size == 1 {
		close(t.over)
		t.Mesh = transport.NewMesh(0, 1, nil, transport.MeshConfig{OnFault: cfg.OnFault})
		return t, nil
	}
	if err := t.join(ctx, cfg); err != nil {
		if t.h != nil {
			t.h.Close()
		}
		return nil, err
	}
	return t, nil
}

func (t *Transport) join(ctx context.Context, cfg Config) error {
	defer close(t.over)
	rv, _ := parseRendezvous(cfg.Rendezvous) // checked by Validate
	listen, _ := parseListen(cfg.Listen)
	if cfg.Rank == 0 {
		if port, _ := listen.ValueForProtocol(ma.P_TCP); port == "0" || cfg.Listen == "" {
			listen = rv.Addrs[0]
		}
	}
	t.gater = newGater(cfg.allowlist(), cfg.OnRefuse)
	h, err := newHost(cfg.Identity, cfg.Security, t.gater)
	if err != nil {
		return fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	t.h = h
	accepts := make(chan transport.Accepted[resettable])
	h.SetStreamHandler(ProtocolCollective, collectiveHandler(accepts, t.over))
	var arrivals chan transport.Arrival
	if cfg.Rank == 0 {
		arrivals = make(chan transport.Arrival)
		h.SetStreamHandler(ProtocolBootstrap, bootstrapHandler(arrivals, t.over))
	}
	if err := h.Network().Listen(listen); err != nil {
		what := "its listen address"
		if cfg.Rank == 0 {
			what = "the rendezvous address"
		}
		return fmt.Errorf("rank %d: cannot listen on %s %s: %w", cfg.Rank, what, listen, err)
	}
	addrs, err := h.Network().InterfaceListenAddresses()
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("rank %d: no address to register (listening on %s): %v", cfg.Rank, listen, err)
	}
	o := Offer{ID: h.ID().String()}
	for _, a := range addrs {
		o.Addrs = append(o.Addrs, a.String())
	}
	self := transport.NewMember(cfg.Rank, map[string]any{Name: o})
	var tab *transport.Table
	if cfg.Rank == 0 {
		tab, err = serveRendezvous(ctx, cfg, self, arrivals)
		h.RemoveStreamHandler(ProtocolBootstrap)
	} else {
		tab, err = register(ctx, h, cfg, rv, self)
	}
	if err != nil {
		return err
	}
	ms, err := members(cfg, h.ID(), tab)
	if err != nil {
		return err
	}
	streams, err := connectMesh(ctx, h, cfg.Rank, tab.Nonce, ms, accepts)
	if err != nil {
		return err
	}
	t.links = make([]*link, cfg.Size)
	tl := make([]transport.Link, cfg.Size)
	for p, ss := range streams {
		l := &link{id: ms[p].id, addr: ms[p].name(), ctrl: ss[streamControl], data: ss[streamData],
			rd:  bufio.NewReaderSize(quietReader{ss[streamData]}, 64<<10),
			out: make([]byte, transport.HeaderSize+smallWrite)}
		t.links[p], tl[p] = l, l
	}
	// Closing the host resets every stream, which ends the mesh's
	// readers of the control streams.
	t.Mesh = transport.NewMesh(cfg.Rank, cfg.Size, tl, transport.MeshConfig{OnFault: cfg.OnFault, OnShutdown: func() { h.Close() }})
	return nil
}

// ID returns this rank's peer ID ("" in a group of one).
func (t *Transport) ID() peer.ID {
	if t.h == nil {
		return ""
	}
	return t.h.ID()
}

func (t *Transport) link(p int) *link {
	if p >= 0 && p < len(t.links) {
		return t.links[p]
	}
	return nil
}

// PeerID returns the peer ID of rank p.
func (t *Transport) PeerID(p int) peer.ID {
	if l := t.link(p); l != nil {
		return l.id
	}
	return ""
}

// ConnSecurity returns the security protocol of the connection to rank p
// (/noise or /tls/1.0.0).
func (t *Transport) ConnSecurity(p int) protocol.ID {
	if l := t.link(p); l != nil {
		return l.data.Conn().ConnState().Security
	}
	return ""
}

// Ends returns the addresses of the TCP connection under the link's
// streams (both streams share it), or nil where they are not TCP over IP.
func (l *link) Ends() []transport.ConnEnds {
	c := l.data.Conn()
	local, err1 := tcpAddrPort(c.LocalMultiaddr())
	remote, err2 := tcpAddrPort(c.RemoteMultiaddr())
	if err1 != nil || err2 != nil {
		return nil
	}
	return []transport.ConnEnds{{Local: local, Remote: remote}}
}

// tcpAddrPort turns /ip4|ip6/.../tcp/port into an address and port.
func tcpAddrPort(a ma.Multiaddr) (netip.AddrPort, error) {
	na, err := manet.ToNetAddr(a)
	if err != nil {
		return netip.AddrPort{}, err
	}
	t, ok := na.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%s is not a TCP address", a)
	}
	return t.AddrPort(), nil
}

func (l *link) Addr() string               { return l.addr }
func (l *link) Control() transport.Control { return controlStream{l.ctrl} }
func (l *link) PeerLeft()                  {}

// CloseWrite ends this rank's half of the data stream: the peer can read
// what is buffered to its end even after the connection goes.
func (l *link) CloseWrite() { l.data.CloseWrite() }

// Close does nothing: the host's close resets every stream.
func (l *link) Close() {}

// Interrupt moves the data stream's deadlines into the past; armRead and
// armWrite look at the flag after they set one.
func (l *link) Interrupt() {
	l.interrupted.Store(true)
	l.data.SetDeadline(time.Unix(1, 0))
}

// deadlineGrain: deadlines are rounded up to this, so that consecutive
// calls reuse the deadline already set on a stream (setting one arms a
// new timer, an allocation).
const deadlineGrain = 50 * time.Millisecond

func roundDeadline(d time.Time) time.Time {
	if d.IsZero() {
		return d
	}
	g := int64(deadlineGrain)
	return time.Unix(0, (d.UnixNano()/g+1)*g)
}

func (l *link) armRead(deadline time.Time) error {
	if d := roundDeadline(deadline); !l.rdlSet || !d.Equal(l.rdl) {
		l.data.SetReadDeadline(d)
		l.rdl, l.rdlSet = d, true
	}
	if l.interrupted.Load() {
		return transport.ErrInterrupted
	}
	return nil
}

func (l *link) armWrite(deadline time.Time) error {
	if d := roundDeadline(deadline); !l.wdlSet || !d.Equal(l.wdl) {
		l.data.SetWriteDeadline(d)
		l.wdl, l.wdlSet = d, true
	}
	if l.interrupted.Load() {
		return transport.ErrInterrupted
	}
	return nil
}

func (l *link) Send(h *transport.Header, payload []byte, deadline time.Time) error {
	if err := l.armWrite(deadline); err != nil {
		return err
	}
	h.Encode(l.out)
	// The header shares its frame with the (first part of the) payload.
	n := copy(l.out[transport.HeaderSize:], payload)
	if _, err := l.data.Write(l.out[:transport.HeaderSize+n]); err != nil {
		return err
	}
	if n < len(payload) {
		_, err := l.data.Write(payload[n:])
		return err
	}
	return nil
}

func (l *link) RecvHeader(deadline time.Time) ([]byte, error) {
	if err := l.armRead(deadline); err != nil {
		return nil, err
	}
	_, err := io.ReadFull(l.rd, l.in[:])
	return l.in[:], err
}

func (l *link) RecvPayload(buf []byte, deadline time.Time) error {
	if err := l.armRead(deadline); err != nil {
		return err
	}
	_, err := io.ReadFull(l.rd, buf)
	return err
}

// peekWait bounds how long PeekHeader waits for bytes already on their way.
const peekWait = 2 * time.Millisecond

// PeekHeader returns the header of the next message if it has already
// arrived, without consuming it. It is for explaining a failure; the next
// receive sets its own deadline.
func (l *link) PeekHeader() []byte {
	if l.interrupted.Load() {
		return nil
	}
	l.data.SetReadDeadline(time.Now().Add(peekWait))
	l.rdlSet = false // the next receive sets its own
	b, err := l.rd.Peek(transport.HeaderSize)
	if err != nil {
		return nil
	}
	return b
}

var (
	_ transport.Transport = (*Transport)(nil)
	_ transport.Peeker    = (*Transport)(nil)
	_ transport.Addresser = (*Transport)(nil)
	_ transport.Link      = (*link)(nil)
	_ transport.Ender     = (*link)(nil)
)
