package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ringo-ml/ringo/collective/transport"
)

// smallWrite: payloads up to this are copied behind the header and sent
// with one write (one yamux frame: they carry at most 64 KiB).
const smallWrite = 60 << 10

// faultGrace: when a data stream breaks, wait this long for the peer's
// fault notice, which names the real culprit if the peer was only
// reacting to someone else's failure.
const faultGrace = 300 * time.Millisecond

// goodbyeWait bounds how long Close waits for its peers to acknowledge
// its goodbye.
const goodbyeWait = time.Second

// Transport is a mesh of libp2p streams. It implements
// transport.Transport, transport.Peeker and transport.Addresser.
type Transport struct {
	rank, size int
	h          host.Host // nil for a group of one
	gater      *gater
	peers      []*peerLink
	over       chan struct{} // closed once Join is over: later streams are refused

	latch transport.FaultLatch // the first fault

	mu      sync.Mutex
	closing bool

	shutOnce sync.Once
	wg       sync.WaitGroup
}

var (
	_ transport.Transport = (*Transport)(nil)
	_ transport.Peeker    = (*Transport)(nil)
	_ transport.Addresser = (*Transport)(nil)
)

type peerLink struct {
	rank int
	id   peer.ID
	addr string // where the peer listens, with its peer ID

	// ctrl carries fault notices and goodbyes both ways: this rank writes
	// its own (under ctrlMu), watch reads the peer's.
	ctrl   network.Stream
	ctrlMu sync.Mutex
	// data carries this rank's messages to the peer one way and the
	// peer's messages to this rank the other.
	data network.Stream
	rd   *bufio.Reader // over data

	goodbye   chan struct{} // closed when the peer said goodbye
	watchDone chan struct{} // closed when watch has returned

	// The deadlines last set on data, by the receiving and the sending
	// goroutine respectively.
	rdl, wdl       time.Time
	rdlSet, wdlSet bool

	out  []byte // header (+ small payload) staging for sends
	in   [transport.HeaderSize]byte
	inN  uint64 // payload length of the header just received
	inOK bool
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

// Join forms the group: it blocks until every rank has joined or ctx ends.
// A group of one needs no network and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{rank: cfg.Rank, size: cfg.Size, peers: make([]*peerLink, cfg.Size),
		over: make(chan struct{})}
	t.latch.Init(cfg.OnFault)
	if cfg.Size == 1 {
		close(t.over)
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
	t.gater = newGater(cfg.allowlist())
	h, err := newHost(cfg.Identity, cfg.Security, t.gater)
	if err != nil {
		return fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	t.h = h
	accepts := make(chan hello)
	h.SetStreamHandler(ProtocolCollective, collectiveHandler(accepts, t.over))
	var regs chan registered
	if cfg.Rank == 0 {
		regs = make(chan registered)
		h.SetStreamHandler(ProtocolBootstrap, bootstrapHandler(regs, t.over))
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
	self := registration{V: bootstrapVersion, Rank: cfg.Rank, Size: cfg.Size}
	for _, a := range addrs {
		self.Addrs = append(self.Addrs, a.String())
	}
	var tab table
	if cfg.Rank == 0 {
		tab, err = serveRendezvous(ctx, cfg, self, h.ID(), regs)
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
	links, err := connectMesh(ctx, h, cfg.Rank, tab.Nonce, ms, accepts)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		return err
	}
	for p, l := range links {
		if p == t.rank {
			continue
		}
		t.peers[p] = &peerLink{rank: p, id: ms[p].id, addr: ms[p].name(), ctrl: l.ctrl, data: l.data,
			rd:      bufio.NewReaderSize(quietReader{l.data}, 64<<10),
			goodbye: make(chan struct{}), watchDone: make(chan struct{}),
			out: make([]byte, transport.HeaderSize+smallWrite)}
	}
	for _, pr := range t.peers {
		if pr != nil {
			t.wg.Add(1)
			go t.watch(pr)
		}
	}
	return nil
}

func (t *Transport) Rank() int { return t.rank }
func (t *Transport) Size() int { return t.size }

// ID returns this rank's peer ID ("" in a group of one).
func (t *Transport) ID() peer.ID {
	if t.h == nil {
		return ""
	}
	return t.h.ID()
}

// PeerID returns the peer ID of rank p.
func (t *Transport) PeerID(p int) peer.ID {
	if p >= 0 && p < len(t.peers) && t.peers[p] != nil {
		return t.peers[p].id
	}
	return ""
}

// ConnSecurity returns the security protocol of the connection to rank p
// (/noise or /tls/1.0.0).
func (t *Transport) ConnSecurity(p int) protocol.ID {
	if p >= 0 && p < len(t.peers) && t.peers[p] != nil {
		return t.peers[p].data.Conn().ConnState().Security
	}
	return ""
}

// PeerAddr returns where rank p listens, as a multiaddr with its peer ID
// (transport.Addresser).
func (t *Transport) PeerAddr(p int) string {
	if p >= 0 && p < len(t.peers) && t.peers[p] != nil {
		return t.peers[p].addr
	}
	return ""
}

func (t *Transport) Fault() *transport.Fault { return t.latch.Fault() }

// record stores f as the fault unless one is set, and wakes every blocked
// call by moving the data streams' deadlines into the past. It reports
// whether f was the first.
func (t *Transport) record(f *transport.Fault) bool {
	if !t.latch.Record(f) {
		return false
	}
	past := time.Unix(1, 0)
	for _, pr := range t.peers {
		if pr != nil {
			pr.data.SetDeadline(past)
		}
	}
	return true
}

func (t *Transport) Abort(f *transport.Fault) {
	if !t.record(f) {
		return
	}
	t.notify(transport.KindFault, transport.EncodeFault(f), false)
}

// notify writes a control message to every peer, in parallel and bounded
// in time, since a peer may be gone or stuck. With last, it also closes
// this rank's side of each control stream.
func (t *Transport) notify(kind transport.Kind, payload []byte, last bool) {
	var wg sync.WaitGroup
	for _, pr := range t.peers {
		if pr == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := transport.ControlMessage(kind, t.rank, payload)
			pr.ctrlMu.Lock()
			defer pr.ctrlMu.Unlock()
			pr.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
			pr.ctrl.Write(b)
			if last {
				pr.ctrl.CloseWrite()
			}
		}()
	}
	wg.Wait()
}

// watch reads peer's control stream: fault notices, the goodbye, and the
// reset that tells of a dead process (libp2p resets every stream of a
// connection that breaks).
func (t *Transport) watch(pr *peerLink) {
	defer t.wg.Done()
	defer close(pr.watchDone)
	r := quietReader{pr.ctrl}
	var hb [transport.HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			select {
			case <-pr.goodbye:
				return
			default:
			}
			t.mu.Lock()
			closing := t.closing
			t.mu.Unlock()
			if closing {
				return
			}
			t.Abort(&transport.Fault{Kind: transport.FaultPeerLost, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("lost rank %d (%s): its control stream ended without a goodbye (%v); the process died, was killed, or the network cut it", pr.rank, pr.addr, err)})
			return
		}
		var h transport.Header
		if err := h.Decode(hb[:]); err != nil || h.Length > 1<<16 {
			if err == nil {
				err = fmt.Errorf("a control message of %d bytes", h.Length)
			}
			t.Abort(&transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("garbage on the control stream from rank %d (%s): %v", pr.rank, pr.addr, err)})
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r, payload); err != nil {
			continue // the next read reports the broken stream
		}
		switch h.Kind {
		case transport.KindGoodbye:
			close(pr.goodbye)
			// Acknowledge: the peer waits for this end of the stream before
			// it closes its connections, so that nothing it sent before
			// its goodbye is lost.
			pr.ctrlMu.Lock()
			pr.ctrl.CloseWrite()
			pr.ctrlMu.Unlock()
			return
		case transport.KindFault:
			f, err := transport.DecodeFault(payload)
			if err != nil {
				f = &transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
					Detail: fmt.Sprintf("unreadable fault notice from rank %d (%s): %v", pr.rank, pr.addr, err)}
			}
			t.record(f)
		}
	}
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// linkError turns an I/O error on the data stream with pr into a Fault.
func (t *Transport) linkError(pr *peerLink, dir string, err error) error {
	if f := t.Fault(); f != nil {
		return f
	}
	if isTimeout(err) {
		what := "heard nothing from"
		if dir == "send" {
			what = "could not send to (it stopped reading)"
		}
		return transport.TimeoutFault(t.rank, pr.rank, pr.addr, what)
	}
	return t.latch.LinkBroken(t.Abort, pr.goodbye, t.rank, pr.rank, pr.addr, dir, err, faultGrace)
}

func (t *Transport) peer(p int) (*peerLink, error) {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return nil, fmt.Errorf("p2p: rank %d has no peer %d", t.rank, p)
	}
	if f := t.Fault(); f != nil {
		return nil, f
	}
	return t.peers[p], nil
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

// armRead sets the read deadline of pr's data stream, then looks for a
// fault once more: record moves deadlines into the past after it stores
// the fault, so either this sees the fault or record overrides deadline.
func (t *Transport) armRead(pr *peerLink, deadline time.Time) error {
	if d := roundDeadline(deadline); !pr.rdlSet || !d.Equal(pr.rdl) {
		pr.data.SetReadDeadline(d)
		pr.rdl, pr.rdlSet = d, true
	}
	if f := t.Fault(); f != nil {
		return f
	}
	return nil
}

func (t *Transport) armWrite(pr *peerLink, deadline time.Time) error {
	if d := roundDeadline(deadline); !pr.wdlSet || !d.Equal(pr.wdl) {
		pr.data.SetWriteDeadline(d)
		pr.wdl, pr.wdlSet = d, true
	}
	if f := t.Fault(); f != nil {
		return f
	}
	return nil
}

func (t *Transport) Send(p int, h *transport.Header, payload []byte, deadline time.Time) error {
	pr, err := t.peer(p)
	if err != nil {
		return err
	}
	if err := t.armWrite(pr, deadline); err != nil {
		return err
	}
	h.From = int32(t.rank)
	h.Length = uint64(len(payload))
	h.Encode(pr.out)
	if len(payload) <= smallWrite {
		n := copy(pr.out[transport.HeaderSize:], payload)
		if _, err := pr.data.Write(pr.out[:transport.HeaderSize+n]); err != nil {
			return t.linkError(pr, "send", err)
		}
		return nil
	}
	// The header shares its frame with the first part of the payload.
	n := copy(pr.out[transport.HeaderSize:], payload)
	if _, err := pr.data.Write(pr.out[:transport.HeaderSize+n]); err != nil {
		return t.linkError(pr, "send", err)
	}
	if _, err := pr.data.Write(payload[n:]); err != nil {
		return t.linkError(pr, "send", err)
	}
	return nil
}

func (t *Transport) RecvHeader(p int, h *transport.Header, deadline time.Time) error {
	pr, err := t.peer(p)
	if err != nil {
		return err
	}
	if err := t.armRead(pr, deadline); err != nil {
		return err
	}
	if _, err := io.ReadFull(pr.rd, pr.in[:]); err != nil {
		return t.linkError(pr, "receive", err)
	}
	if err := h.Decode(pr.in[:]); err != nil || h.Kind != transport.KindData {
		if err == nil {
			err = fmt.Errorf("a %v message on a data stream", h.Kind)
		}
		t.Abort(&transport.Fault{Kind: transport.FaultProtocol, Peer: p, Reporter: t.rank,
			Detail: fmt.Sprintf("rank %d got a bad message from rank %d (%s): %v", t.rank, p, pr.addr, err)})
		return t.Fault()
	}
	pr.inN, pr.inOK = h.Length, true
	return nil
}

func (t *Transport) RecvPayload(p int, buf []byte, deadline time.Time) error {
	pr, err := t.peer(p)
	if err != nil {
		return err
	}
	if !pr.inOK || uint64(len(buf)) != pr.inN {
		return fmt.Errorf("p2p: rank %d: payload of %d bytes asked from rank %d, header said %d", t.rank, len(buf), p, pr.inN)
	}
	pr.inOK = false
	if err := t.armRead(pr, deadline); err != nil {
		return err
	}
	if _, err := io.ReadFull(pr.rd, buf); err != nil {
		return t.linkError(pr, "receive", err)
	}
	return nil
}

// peekWait bounds how long PeekHeader waits for bytes already on their way.
const peekWait = 2 * time.Millisecond

// PeekHeader reports the header of the next message from p if it has
// already arrived, without consuming it (transport.Peeker). It is for
// explaining a failure; the next receive sets its own deadline.
func (t *Transport) PeekHeader(p int, h *transport.Header) bool {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return false
	}
	pr := t.peers[p]
	if t.Fault() != nil {
		return false
	}
	pr.data.SetReadDeadline(time.Now().Add(peekWait))
	pr.rdlSet = false // the next receive sets its own
	b, err := pr.rd.Peek(transport.HeaderSize)
	if err != nil {
		return false
	}
	return h.Decode(b) == nil && h.Kind == transport.KindData
}

// Close says goodbye to every peer, waits (briefly) for each to
// acknowledge, closes the libp2p host and waits for the transport's
// goroutines.
//
// The order matters because closing a libp2p connection discards what the
// peer has received but not yet read, unlike closing a TCP socket: this
// rank first ends its half of every data stream (the peer can then read
// what is buffered to its end even after the connection goes), then
// sends its goodbye on the control stream of the same connection, which
// the peer acknowledges once it has read it, and so everything before it.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil
	}
	t.closing = true
	t.mu.Unlock()
	t.record(transport.ClosedFault(t.rank))
	if t.h == nil {
		return nil
	}
	for _, pr := range t.peers {
		if pr != nil {
			pr.data.CloseWrite()
		}
	}
	t.notify(transport.KindGoodbye, nil, true)
	tm := time.NewTimer(goodbyeWait)
	defer tm.Stop()
wait:
	for _, pr := range t.peers {
		if pr == nil {
			continue
		}
		select {
		case <-pr.watchDone:
		case <-tm.C:
			break wait
		}
	}
	t.shutdown()
	return nil
}

// Kill drops every connection without a goodbye, as a crashed process
// would. It exists for tests of peers' failure handling.
func (t *Transport) Kill() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
	t.record(transport.KilledFault(t.rank))
	t.shutdown()
}

func (t *Transport) shutdown() {
	t.shutOnce.Do(func() {
		if t.h != nil {
			t.h.Close() // resets every stream; watch returns
		}
		t.wg.Wait()
	})
}
