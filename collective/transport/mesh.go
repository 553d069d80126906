package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Link is what a transport implements per peer: the data path both ways,
// a control channel beside it, and the steps of its lifecycle. Mesh does
// the rest (the fault latch, fault notices, goodbyes, turning I/O errors
// into faults that name the peer), the same way for every transport, so
// that one Mesh can hold links of several transports.
//
// The data calls are made by one goroutine per direction, as Transport's
// are. Their errors are plain: a deadline that passed (os.ErrDeadlineExceeded
// or a net.Error that says Timeout), ErrInterrupted, ErrPeerLeft, a
// *ProtocolError, or whatever broke the connection.
type Link interface {
	// Send writes h (From and Length set) and then payload.
	Send(h *Header, payload []byte, deadline time.Time) error
	// RecvHeader reads the next message's header and returns its
	// HeaderSize bytes, valid until the next call on the receiving side.
	RecvHeader(deadline time.Time) ([]byte, error)
	// RecvPayload reads the payload of that message into buf, whose
	// length Mesh has checked against the header.
	RecvPayload(buf []byte, deadline time.Time) error
	// PeekHeader returns the next header if it has already arrived,
	// without consuming it, or nil (Peeker).
	PeekHeader() []byte
	// Addr says where the peer is, for messages.
	Addr() string

	// Control is the channel for fault notices and goodbyes. It is read by
	// one goroutine of Mesh's and written under Mesh's lock.
	Control() Control
	// Interrupt is called once a fault is recorded: blocked data calls
	// return ErrInterrupted (or a deadline error) at once, and so do later
	// ones.
	Interrupt()
	// PeerLeft is called when the peer said goodbye: a data call that
	// waits for it must not wait for ever (ErrPeerLeft).
	PeerLeft()
	// CloseWrite ends this rank's half of the data path, before its
	// goodbye: the peer can still read what was sent.
	CloseWrite()
	// Close releases everything the link holds, once; the data calls
	// have returned (they were interrupted) or will fail.
	Close()
}

// InPlaceLink is implemented by links that can hand some payloads to a
// function where they lie (InPlaceReceiver).
type InPlaceLink interface {
	// InPlaceFor says whether a payload of n bytes can be received with
	// RecvPayloadFunc.
	InPlaceFor(n int) bool
	// RecvPayloadFunc is RecvPayload of an n-byte payload handed to fn
	// piece by piece; Mesh has checked n against the header.
	RecvPayloadFunc(n int, fn func(off int, part []byte), deadline time.Time) error
}

// LendingLink is implemented by links that can lend payloads (Lender).
type LendingLink interface {
	SendLent(h *Header, payload []byte, deadline time.Time) (uint64, error)
	AwaitLent(ticket uint64, deadline time.Time) error
	Lends() bool // the peer takes loans
}

// Control is a link's control channel: a net.Conn, a unix socket or a
// libp2p stream.
type Control interface {
	io.Reader
	io.Writer
	SetWriteDeadline(time.Time) error
	CloseWrite() error
}

var (
	// ErrInterrupted: the link's data call was woken by Interrupt.
	ErrInterrupted = errors.New("interrupted by a fault")
	// ErrPeerLeft: the peer said goodbye while this rank waited for it.
	ErrPeerLeft = errors.New("peer left the group")
)

// ProtocolError is a link's finding that the peer broke its rules.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return e.Msg }

// MeshConfig tunes a Mesh.
type MeshConfig struct {
	// OnFault, if set, is called once, synchronously, with the first
	// fault (FaultLatch.Init).
	OnFault func(*Fault)
	// OnShutdown, if set, runs after every link is closed and before
	// Close or Kill waits for the mesh's goroutines (libp2p closes its
	// host there).
	OnShutdown func()
}

// faultGrace: when a link breaks, wait this long for the peer's fault
// notice, which names the real culprit if the peer was only reacting to
// someone else's failure.
const faultGrace = 300 * time.Millisecond

// goodbyeWait bounds how long Close waits for its peers to acknowledge
// its goodbye.
const goodbyeWait = time.Second

// maxControl bounds a control message's payload.
const maxControl = 1 << 16

// Mesh is a Transport made of one Link per peer, each of whatever
// transport reaches that peer best. It implements Transport, Peeker,
// Addresser, InPlaceReceiver and Lender (for the peers whose links do).
type Mesh struct {
	rank, size int
	peers      []*meshPeer // nil for this rank
	latch      FaultLatch
	onShutdown func()

	mu      sync.Mutex
	closing bool

	shutOnce sync.Once
	wg       sync.WaitGroup
}

type meshPeer struct {
	rank int
	link Link

	ctrlMu    sync.Mutex    // serialises writes on the control channel
	goodbye   chan struct{} // closed when the peer said goodbye
	watchDone chan struct{} // closed when watch has returned

	// The receiving side: the length of the header just returned.
	inN  uint64
	inOK bool
}

// NewMesh makes a mesh of rank in a group of size from links (indexed
// by rank, nil for this rank) and starts watching their control channels.
func NewMesh(rank, size int, links []Link, cfg MeshConfig) *Mesh {
	m := &Mesh{rank: rank, size: size, peers: make([]*meshPeer, size), onShutdown: cfg.OnShutdown}
	m.latch.Init(cfg.OnFault)
	for p, l := range links {
		if l == nil || p == rank {
			continue
		}
		m.peers[p] = &meshPeer{rank: p, link: l, goodbye: make(chan struct{}), watchDone: make(chan struct{})}
	}
	for _, pr := range m.peers {
		if pr != nil {
			m.wg.Add(1)
			go m.watch(pr)
		}
	}
	return m
}

func (m *Mesh) Rank() int { return m.rank }
func (m *Mesh) Size() int { return m.size }

// Link returns the link to peer p, or nil.
func (m *Mesh) Link(p int) Link {
	if p >= 0 && p < m.size && m.peers[p] != nil {
		return m.peers[p].link
	}
	return nil
}

// Socketer is implemented by links that run over kernel sockets (TCP's),
// so that the layer above can read what the kernel measured of them
// (TCP_INFO: delivery rate, busy time, retransmits) without sending
// anything.
type Socketer interface {
	Sockets() []syscall.Conn
}

// Sockets returns the data sockets of the link to peer p, or nil where
// that link has none (shared memory, this rank). Reading their state is
// safe while calls run; reading or writing their data is not.
func (m *Mesh) Sockets(p int) []syscall.Conn {
	if s, ok := m.Link(p).(Socketer); ok {
		return s.Sockets()
	}
	return nil
}

// ConnEnds are the two addresses of one TCP connection, this rank's end
// first.
type ConnEnds struct{ Local, Remote netip.AddrPort }

// Ender is implemented by links whose TCP connection lives inside a
// library that keeps its socket to itself (libp2p's), so that the layer
// above can find the connection by its addresses instead
// (topology.ReadTCPInfoByAddr) and read what the kernel measured of it.
type Ender interface {
	Ends() []ConnEnds
}

// Ends returns the addresses of the TCP connections of the link to peer
// p where the link has them (Ender), else nil.
func (m *Mesh) Ends(p int) []ConnEnds {
	if e, ok := m.Link(p).(Ender); ok {
		return e.Ends()
	}
	return nil
}

// PeerAddr says where peer p is (Addresser).
func (m *Mesh) PeerAddr(p int) string {
	if l := m.Link(p); l != nil {
		return l.Addr()
	}
	return ""
}

func (m *Mesh) Fault() *Fault { return m.latch.Fault() }

// record stores f unless a fault is set and interrupts every link. It
// reports whether f was the first.
func (m *Mesh) record(f *Fault) bool {
	if !m.latch.Record(f) {
		return false
	}
	for _, pr := range m.peers {
		if pr != nil {
			pr.link.Interrupt()
		}
	}
	return true
}

// Abort records f as this rank's fault and tells every peer. The notices
// go out first, as watch passes on a peer's: once f is recorded this
// rank's calls fail and its process may exit before a notice sent after
// it is written, and a peer that then hears this rank's connections end
// would blame this rank instead of the one f names.
func (m *Mesh) Abort(f *Fault) {
	if m.Fault() != nil {
		return
	}
	m.notify(KindFault, EncodeFault(f), false)
	m.record(f)
}

// notify writes a control message to every peer, in parallel and bounded
// in time, since a peer may be gone or stuck. With last, it also ends
// this rank's half of each control channel.
func (m *Mesh) notify(kind Kind, payload []byte, last bool) {
	b := ControlMessage(kind, m.rank, payload)
	var wg sync.WaitGroup
	for _, pr := range m.peers {
		if pr == nil {
			continue
		}
		wg.Go(func() {
			c := pr.link.Control()
			pr.ctrlMu.Lock()
			defer pr.ctrlMu.Unlock()
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(b)
			if last {
				c.CloseWrite()
			}
		})
	}
	wg.Wait()
}

// watch reads a peer's control channel: fault notices, the goodbye, and
// the end of the channel that tells of a dead process (the kernel, or
// libp2p, closes a process's connections however it ends).
func (m *Mesh) watch(pr *meshPeer) {
	defer m.wg.Done()
	defer close(pr.watchDone)
	c := pr.link.Control()
	var hb [HeaderSize]byte
	for {
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			m.mu.Lock()
			closing := m.closing
			m.mu.Unlock()
			if !closing {
				m.Abort(&Fault{Kind: FaultPeerLost, Peer: pr.rank, Reporter: m.rank,
					Detail: fmt.Sprintf("lost rank %d (%s): its control channel ended without a goodbye (%v); the process died, was killed, or the network cut it", pr.rank, pr.link.Addr(), err)})
			}
			return
		}
		var h Header
		if err := h.Decode(hb[:]); err != nil || h.Length > maxControl {
			if err == nil {
				err = fmt.Errorf("a control message of %d bytes", h.Length)
			}
			m.Abort(&Fault{Kind: FaultProtocol, Peer: pr.rank, Reporter: m.rank,
				Detail: fmt.Sprintf("garbage on the control channel from rank %d (%s): %v", pr.rank, pr.link.Addr(), err)})
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(c, payload); err != nil {
			continue // the next read reports the broken channel
		}
		switch h.Kind {
		case KindGoodbye:
			close(pr.goodbye)
			pr.link.PeerLeft()
			// Acknowledge: the peer waits for this end of the channel
			// before it closes its connections, so that nothing it sent
			// before its goodbye is lost (closing a libp2p connection
			// drops what the other side has not read yet).
			pr.ctrlMu.Lock()
			c.CloseWrite()
			pr.ctrlMu.Unlock()
			return
		case KindFault:
			f, err := DecodeFault(payload)
			if err != nil {
				f = &Fault{Kind: FaultProtocol, Peer: pr.rank, Reporter: m.rank,
					Detail: fmt.Sprintf("unreadable fault notice from rank %d (%s): %v", pr.rank, pr.link.Addr(), err)}
			}
			if m.Fault() == nil {
				// Pass the notice on before this rank acts on it: once
				// recorded, the rank's calls fail and its process may
				// exit, and a peer that hears this rank's connections end
				// before the reporter's own notice reaches it would blame
				// this rank instead of the one that failed.
				m.notify(KindFault, EncodeFault(f), false)
			}
			m.record(f)
		}
	}
}

// IsTimeout reports whether err is a deadline that passed.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// linkError turns an error of pr's link into the Fault every call
// returns (or, for a timeout, the one the caller may still explain).
func (m *Mesh) linkError(pr *meshPeer, dir string, err error) error {
	if f := m.Fault(); f != nil {
		return f
	}
	var f *Fault
	var pe *ProtocolError
	switch {
	case errors.As(err, &f):
		return f
	case errors.As(err, &pe):
		m.Abort(&Fault{Kind: FaultProtocol, Peer: pr.rank, Reporter: m.rank,
			Detail: fmt.Sprintf("rank %d got a bad message from rank %d (%s): %s", m.rank, pr.rank, pr.link.Addr(), pe.Msg)})
		return m.Fault()
	case IsTimeout(err):
		what := "heard nothing from"
		if dir == "send" {
			what = "could not send to (it stopped reading)"
		}
		return TimeoutFault(m.rank, pr.rank, pr.link.Addr(), what)
	}
	// ErrInterrupted comes after a fault is recorded, so it was returned
	// above; ErrPeerLeft finds goodbye closed.
	return m.latch.LinkBroken(m.Abort, pr.goodbye, m.rank, pr.rank, pr.link.Addr(), dir, err, faultGrace)
}

// LinkError is what a call on peer p's link that failed with err
// returns: the Fault that names the peer. dir is "send" or "receive".
// It is for calls a transport adds beside Transport's own.
func (m *Mesh) LinkError(p int, dir string, err error) error {
	return m.linkError(m.peers[p], dir, err)
}

func (m *Mesh) peer(p int) (*meshPeer, error) {
	if p < 0 || p >= m.size || m.peers[p] == nil {
		return nil, fmt.Errorf("transport: rank %d has no peer %d", m.rank, p)
	}
	if f := m.Fault(); f != nil {
		return nil, f
	}
	return m.peers[p], nil
}

func (m *Mesh) Send(p int, h *Header, payload []byte, deadline time.Time) error {
	pr, err := m.peer(p)
	if err != nil {
		return err
	}
	h.From = int32(m.rank)
	h.Length = uint64(len(payload))
	if err := pr.link.Send(h, payload, deadline); err != nil {
		return m.linkError(pr, "send", err)
	}
	return nil
}

func (m *Mesh) RecvHeader(p int, h *Header, deadline time.Time) error {
	pr, err := m.peer(p)
	if err != nil {
		return err
	}
	b, err := pr.link.RecvHeader(deadline)
	if err != nil {
		return m.linkError(pr, "receive", err)
	}
	if err := h.Decode(b); err != nil || h.Kind != KindData {
		if err == nil {
			err = fmt.Errorf("a %v message on the data path", h.Kind)
		}
		return m.linkError(pr, "receive", &ProtocolError{err.Error()})
	}
	pr.inN, pr.inOK = h.Length, true
	return nil
}

func (m *Mesh) RecvPayload(p int, buf []byte, deadline time.Time) error {
	pr, err := m.payloadFrom(p, len(buf))
	if err != nil {
		return err
	}
	if err := pr.link.RecvPayload(buf, deadline); err != nil {
		return m.linkError(pr, "receive", err)
	}
	return nil
}

// payloadFrom checks that a payload of n bytes is what the header just
// read from p announced, and marks it taken.
func (m *Mesh) payloadFrom(p, n int) (*meshPeer, error) {
	pr, err := m.peer(p)
	if err != nil {
		return nil, err
	}
	if !pr.inOK || uint64(n) != pr.inN {
		return nil, fmt.Errorf("transport: rank %d: payload of %d bytes asked from rank %d, header said %d", m.rank, n, p, pr.inN)
	}
	pr.inOK = false
	return pr, nil
}

// SendLent lends payload to p where p's link can (Lender), and sends it
// otherwise, with ticket 0.
func (m *Mesh) SendLent(p int, h *Header, payload []byte, deadline time.Time) (uint64, error) {
	pr, err := m.peer(p)
	if err != nil {
		return 0, err
	}
	ll, ok := pr.link.(LendingLink)
	if !ok {
		return 0, m.Send(p, h, payload, deadline)
	}
	h.From = int32(m.rank)
	h.Length = uint64(len(payload))
	t, err := ll.SendLent(h, payload, deadline)
	if err != nil {
		return 0, m.linkError(pr, "send", err)
	}
	return t, nil
}

// AwaitLent waits until p has read what it was lent up to ticket (Lender).
func (m *Mesh) AwaitLent(p int, ticket uint64, deadline time.Time) error {
	if ticket == 0 {
		return nil
	}
	pr, err := m.peer(p)
	if err != nil {
		return err
	}
	ll, ok := pr.link.(LendingLink)
	if !ok {
		return fmt.Errorf("transport: rank %d: ticket %d for rank %d, whose link lends nothing", m.rank, ticket, p)
	}
	if err := ll.AwaitLent(ticket, deadline); err != nil {
		return m.linkError(pr, "send", err)
	}
	return nil
}

// Lends says whether some peer's link lends (Lender).
func (m *Mesh) Lends() bool {
	for _, pr := range m.peers {
		if pr == nil {
			continue
		}
		if ll, ok := pr.link.(LendingLink); ok && ll.Lends() {
			return true
		}
	}
	return false
}

// InPlace says whether peer p's link hands payloads of n bytes over where
// they lie (InPlaceReceiver).
func (m *Mesh) InPlace(p, n int) bool {
	if p < 0 || p >= m.size || m.peers[p] == nil {
		return false
	}
	l, ok := m.peers[p].link.(InPlaceLink)
	return ok && l.InPlaceFor(n)
}

// RecvPayloadFunc hands the payload of the message whose header RecvHeader
// just returned for p to fn where it lies (InPlaceReceiver).
func (m *Mesh) RecvPayloadFunc(p, n int, fn func(off int, part []byte), deadline time.Time) error {
	if !m.InPlace(p, n) {
		return fmt.Errorf("transport: rank %d: the link to rank %d cannot hand payloads over in place (ask InPlace first)", m.rank, p)
	}
	pr, err := m.payloadFrom(p, n)
	if err != nil {
		return err
	}
	if err := pr.link.(InPlaceLink).RecvPayloadFunc(n, fn, deadline); err != nil {
		return m.linkError(pr, "receive", err)
	}
	return nil
}

// PeekHeader reports the header of the next message from p if it has
// already arrived, without consuming it (Peeker). It is for explaining a
// failure.
func (m *Mesh) PeekHeader(p int, h *Header) bool {
	if p < 0 || p >= m.size || m.peers[p] == nil {
		return false
	}
	b := m.peers[p].link.PeekHeader()
	return b != nil && h.Decode(b) == nil && h.Kind == KindData
}

// Close says goodbye to every peer, waits (briefly) for each to
// acknowledge, closes every link and waits for the mesh's goroutines.
//
// The order matters where closing a connection discards what the peer
// has received but not yet read (libp2p): this rank first ends its half
// of every data path (the peer can then read what is buffered), then
// sends its goodbye on the control channel, which the peer acknowledges
// once it has read it, and so everything before it.
func (m *Mesh) Close() error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.closing = true
	m.mu.Unlock()
	m.record(ClosedFault(m.rank))
	for _, pr := range m.peers {
		if pr != nil {
			pr.link.CloseWrite()
		}
	}
	m.notify(KindGoodbye, nil, true)
	tm := time.NewTimer(goodbyeWait)
	defer tm.Stop()
wait:
	for _, pr := range m.peers {
		if pr == nil {
			continue
		}
		select {
		case <-pr.watchDone:
		case <-tm.C:
			break wait
		}
	}
	m.shutdown()
	return nil
}

// Kill drops every link without a goodbye, as a crashed process would. It
// exists for tests of peers' failure handling.
func (m *Mesh) Kill() {
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	m.record(KilledFault(m.rank))
	m.shutdown()
}

func (m *Mesh) shutdown() {
	m.shutOnce.Do(func() {
		for _, pr := range m.peers {
			if pr != nil {
				pr.link.Close()
			}
		}
		if m.onShutdown != nil {
			m.onShutdown()
		}
		m.wg.Wait()
	})
}

var (
	_ Transport = (*Mesh)(nil)
	_ Peeker    = (*Mesh)(nil)
	_ Addresser = (*Mesh)(nil)
)
