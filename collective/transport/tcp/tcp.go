package tcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
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

// SpinFor suggests Spin when ranksPerHost ranks share this machine: 200 µs
// while each rank has a core of its own, else none. Measured on 2 cores:
// polling cut a 4 KiB all-reduce between 2 ranks from about 38 to 16 µs,
// but with 4 ranks it made every rank wait longer for the CPU its peers
// held (the same reason MPI libraries stop polling when oversubscribed).
func SpinFor(ranksPerHost int) time.Duration {
	if ranksPerHost <= runtime.NumCPU() {
		return 200 * time.Microsecond
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
	switch {
	case c.Size < 1:
		return fmt.Errorf("tcp: group size %d must be at least 1", c.Size)
	case c.Rank < 0 || c.Rank >= c.Size:
		return fmt.Errorf("tcp: rank %d is outside 0..%d", c.Rank, c.Size-1)
	case c.SocketsPerPeer < 1 || c.SocketsPerPeer > 64:
		return fmt.Errorf("tcp: SocketsPerPeer %d must be 1..64", c.SocketsPerPeer)
	case c.StripeMin < 1:
		return fmt.Errorf("tcp: StripeMin %d must be positive", c.StripeMin)
	case c.Size > 1 && c.Rendezvous == "":
		return fmt.Errorf("tcp: a group of %d ranks needs a rendezvous address", c.Size)
	}
	return nil
}

// deadlineGrain: deadlines are rounded up to this so that consecutive
// calls reuse the timer already armed on a connection.
const deadlineGrain = 50 * time.Millisecond

// smallWrite: payloads up to this are copied behind the header and sent
// with one write.
const smallWrite = 16 << 10

// faultGrace: when a data connection breaks, wait this long for the peer's
// fault notice, which names the real culprit if the peer was only
// reacting to someone else's failure.
const faultGrace = 300 * time.Millisecond

// Transport is a TCP mesh. It implements transport.Transport.
type Transport struct {
	rank, size int
	k          int
	stripeMin  int
	peers      []*peer

	latch transport.FaultLatch // the first fault

	mu      sync.Mutex
	closing bool
	quit    chan struct{} // closed by Close and Kill: helpers exit

	shutOnce sync.Once

	// polling: receives poll before sleeping (see transport.Poller). Set
	// by the caller that owns the calls, before it receives.
	polling bool

	wg sync.WaitGroup
}

type stream struct {
	c      *net.TCPConn
	rdl    time.Time   // deadline last set for reads
	wdl    time.Time   // and for writes
	reader io.Reader   // bufio over spin on stream 0, the conn itself otherwise
	spin   *spinReader // stream 0 only
}

func (s *stream) setRead(d time.Time) error {
	if d != s.rdl {
		s.rdl = d
		return s.c.SetReadDeadline(d)
	}
	return nil
}

func (s *stream) setWrite(d time.Time) error {
	if d != s.wdl {
		s.wdl = d
		return s.c.SetWriteDeadline(d)
	}
	return nil
}

type piece struct {
	buf      []byte
	deadline time.Time
}

type peer struct {
	rank int
	addr string
	ctrl *net.TCPConn
	// ctrlMu serialises writes on ctrl (fault notices and the goodbye).
	ctrlMu  sync.Mutex
	data    []*stream
	goodbye chan struct{} // closed when the peer said goodbye

	out []byte // header (+ small payload) staging for sends
	// iov gathers header and payload for one writev; it lives here so
	// that a send allocates nothing.
	iov    net.Buffers
	iovArr [2][]byte
	in     [transport.HeaderSize]byte
	inN    uint64 // payload length of the header just received
	inOK   bool

	// Helpers for streams 1..k-1: one writer and one reader goroutine each.
	wjobs []chan piece
	rjobs []chan piece
	wdone chan error
	rdone chan error
}

// Join forms the mesh: it blocks until every rank of the group has joined
// or ctx ends. A group of one needs no network and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{rank: cfg.Rank, size: cfg.Size, k: cfg.SocketsPerPeer, stripeMin: cfg.StripeMin,
		peers: make([]*peer, cfg.Size), quit: make(chan struct{})}
	t.latch.Init(cfg.OnFault)
	if cfg.Size == 1 {
		return t, nil
	}
	var serveErr chan error
	if cfg.Rank == 0 {
		ln, err := net.Listen("tcp", cfg.Rendezvous)
		if err != nil {
			return nil, fmt.Errorf("rank 0: cannot listen on the rendezvous address %s: %w", cfg.Rendezvous, err)
		}
		serveErr = make(chan error, 1)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { serveErr <- serveRendezvous(sctx, ln, cfg.Size, cfg.Token, cfg.OnRefuse) }()
	}
	tab, ln, err := register(ctx, cfg)
	if serveErr != nil {
		if serr := <-serveErr; serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		return nil, err
	}
	conns, err := connectMesh(ctx, cfg, tab, ln)
	if err != nil {
		return nil, err
	}
	t.k, t.stripeMin = tab.Sockets, tab.StripeMin
	for p, cs := range conns {
		if p == t.rank {
			continue
		}
		pr := &peer{rank: p, addr: tab.Addrs[p], ctrl: cs[0], goodbye: make(chan struct{}),
			out: make([]byte, transport.HeaderSize+smallWrite)}
		for i, c := range cs[1:] {
			if cfg.SocketBuffer > 0 {
				c.SetReadBuffer(cfg.SocketBuffer)
				c.SetWriteBuffer(cfg.SocketBuffer)
			}
			s := &stream{c: c, reader: c}
			if i == 0 {
				sr, err := newSpinReader(c, cfg.Spin)
				if err != nil {
					return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
				}
				// Header and a small payload usually arrive together: one
				// read gets both.
				s.spin = sr
				s.reader = bufio.NewReaderSize(sr, 64<<10)
			}
			pr.data = append(pr.data, s)
		}
		t.peers[p] = pr
	}
	for _, pr := range t.peers {
		if pr == nil {
			continue
		}
		t.wg.Add(1)
		go t.watch(pr)
		if t.k > 1 {
			pr.wdone = make(chan error, t.k)
			pr.rdone = make(chan error, t.k)
			for i := 1; i < t.k; i++ {
				wj, rj := make(chan piece), make(chan piece)
				pr.wjobs = append(pr.wjobs, wj)
				pr.rjobs = append(pr.rjobs, rj)
				t.wg.Add(2)
				go t.writer(pr, pr.data[i], wj)
				go t.reader(pr, pr.data[i], rj)
			}
		}
	}
	return t, nil
}

// Poll turns polling on or off for the receives that follow (it has effect
// only when Config.Spin is positive).
func (t *Transport) Poll(on bool) { t.polling = on }

func (t *Transport) Rank() int { return t.rank }
func (t *Transport) Size() int { return t.size }

// SocketsPerPeer is the number of data connections per peer in use.
func (t *Transport) SocketsPerPeer() int { return t.k }

// PeerAddr returns the address peer listens on.
func (t *Transport) PeerAddr(p int) string {
	if p >= 0 && p < len(t.peers) && t.peers[p] != nil {
		return t.peers[p].addr
	}
	return ""
}

func (t *Transport) Fault() *transport.Fault { return t.latch.Fault() }

// record stores f as the fault unless one is set, and wakes every blocked
// call by moving all deadlines into the past. It reports whether f was the
// first.
func (t *Transport) record(f *transport.Fault) bool {
	if !t.latch.Record(f) {
		return false
	}
	past := time.Unix(1, 0)
	for _, pr := range t.peers {
		if pr == nil {
			continue
		}
		for _, s := range pr.data {
			s.c.SetDeadline(past)
		}
	}
	return true
}

func (t *Transport) Abort(f *transport.Fault) {
	if !t.record(f) {
		return
	}
	t.notify(transport.KindFault, transport.EncodeFault(f))
}

// notify writes a control message to every peer, in parallel and bounded
// in time, since a peer may be gone or stuck.
func (t *Transport) notify(kind transport.Kind, payload []byte) {
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
		}()
	}
	wg.Wait()
}

// watch reads peer's control connection: fault notices, the goodbye, and
// the EOF that tells of a dead process.
func (t *Transport) watch(pr *peer) {
	defer t.wg.Done()
	var hb [transport.HeaderSize]byte
	for {
		if _, err := io.ReadFull(pr.ctrl, hb[:]); err != nil {
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
				Detail: fmt.Sprintf("lost rank %d (%s): its control connection ended without a goodbye (%v); the process died, was killed, or the network cut it", pr.rank, pr.addr, err)})
			return
		}
		var h transport.Header
		if err := h.Decode(hb[:]); err != nil || h.Length > 1<<16 {
			t.Abort(&transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("garbage on the control connection from rank %d (%s): %v", pr.rank, pr.addr, err)})
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(pr.ctrl, payload); err != nil {
			continue // the next read reports the broken connection
		}
		switch h.Kind {
		case transport.KindGoodbye:
			close(pr.goodbye)
			return
		case transport.KindFault:
			f, err := transport.DecodeFault(payload)
			if err != nil {
				f = &transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
					Detail: fmt.Sprintf("unreadable fault notice from rank %d: %v", pr.rank, err)}
			}
			t.record(f)
		}
	}
}

// linkError turns an I/O error on a data connection with pr into a Fault.
func (t *Transport) linkError(pr *peer, dir string, err error) error {
	if f := t.Fault(); f != nil {
		return f
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		what := "heard nothing from"
		if dir == "send" {
			what = "could not send to (it stopped reading)"
		}
		return transport.TimeoutFault(t.rank, pr.rank, pr.addr, what)
	}
	return t.latch.LinkBroken(t.Abort, pr.goodbye, t.rank, pr.rank, pr.addr, dir, err, faultGrace)
}

func (t *Transport) peer(p int) (*peer, error) {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return nil, fmt.Errorf("tcp: rank %d has no peer %d", t.rank, p)
	}
	if f := t.Fault(); f != nil {
		return nil, f
	}
	return t.peers[p], nil
}

func roundDeadline(d time.Time) time.Time {
	if d.IsZero() {
		return d
	}
	g := int64(deadlineGrain)
	return time.Unix(0, (d.UnixNano()/g+1)*g)
}

// pieces cuts a striped payload of n bytes into k pieces; piece i is
// [off(i), off(i+1)). Both ends compute the same cut.
func pieceBounds(n, k, i int) (int, int) {
	per := (n + k - 1) / k
	per = (per + 63) &^ 63 // cache-line aligned pieces
	lo, hi := min(i*per, n), min((i+1)*per, n)
	return lo, hi
}

func (t *Transport) Send(p int, h *transport.Header, payload []byte, deadline time.Time) error {
	pr, err := t.peer(p)
	if err != nil {
		return err
	}
	deadline = roundDeadline(deadline)
	h.From = int32(t.rank)
	h.Length = uint64(len(payload))
	s0 := pr.data[0]
	if err := s0.setWrite(deadline); err != nil {
		return t.linkError(pr, "send", err)
	}
	striped := t.k > 1 && len(payload) >= t.stripeMin
	if !striped && len(payload) <= smallWrite {
		h.Encode(pr.out)
		n := copy(pr.out[transport.HeaderSize:], payload)
		if _, err := s0.c.Write(pr.out[:transport.HeaderSize+n]); err != nil {
			return t.linkError(pr, "send", err)
		}
		return nil
	}
	h.Encode(pr.out)
	if !striped {
		// One writev: a header alone in its own segment would wake the
		// receiver before its payload arrives.
		pr.iovArr = [2][]byte{pr.out[:transport.HeaderSize], payload}
		pr.iov = pr.iovArr[:]
		_, err := pr.iov.WriteTo(s0.c)
		pr.iovArr = [2][]byte{}
		if err != nil {
			return t.linkError(pr, "send", err)
		}
		return nil
	}
	if _, err := s0.c.Write(pr.out[:transport.HeaderSize]); err != nil {
		return t.linkError(pr, "send", err)
	}
	sent := t.dispatch(pr.wjobs, payload, deadline)
	lo, hi := pieceBounds(len(payload), t.k, 0)
	_, err = s0.c.Write(payload[lo:hi])
	err = collect(pr.wdone, sent, err)
	if err != nil {
		return t.linkError(pr, "send", err)
	}
	return nil
}

func (t *Transport) RecvHeader(p int, h *transport.Header, deadline time.Time) error {
	pr, err := t.peer(p)
	if err != nil {
		return err
	}
	s0 := pr.data[0]
	if err := s0.setRead(roundDeadline(deadline)); err != nil {
		return t.linkError(pr, "receive", err)
	}
	s0.spin.armed = t.polling
	_, err = io.ReadFull(s0.reader, pr.in[:])
	s0.spin.armed = false
	if err != nil {
		return t.linkError(pr, "receive", err)
	}
	if err := h.Decode(pr.in[:]); err != nil || h.Kind != transport.KindData {
		if err == nil {
			err = fmt.Errorf("a %v message on a data connection", h.Kind)
		}
		f := &transport.Fault{Kind: transport.FaultProtocol, Peer: p, Reporter: t.rank,
			Detail: fmt.Sprintf("rank %d got a bad message from rank %d (%s): %v", t.rank, p, pr.addr, err)}
		t.Abort(f)
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
		return fmt.Errorf("tcp: rank %d: payload of %d bytes asked from rank %d, header said %d", t.rank, len(buf), p, pr.inN)
	}
	pr.inOK = false
	deadline = roundDeadline(deadline)
	s0 := pr.data[0]
	if err := s0.setRead(deadline); err != nil {
		return t.linkError(pr, "receive", err)
	}
	if t.k == 1 || len(buf) < t.stripeMin {
		s0.spin.armed = t.polling
		_, err := io.ReadFull(s0.reader, buf)
		s0.spin.armed = false
		if err != nil {
			return t.linkError(pr, "receive", err)
		}
		return nil
	}
	sent := t.dispatch(pr.rjobs, buf, deadline)
	lo, hi := pieceBounds(len(buf), t.k, 0)
	_, err = io.ReadFull(s0.reader, buf[lo:hi])
	err = collect(pr.rdone, sent, err)
	if err != nil {
		return t.linkError(pr, "receive", err)
	}
	return nil
}

// dispatch hands pieces 1..k-1 of buf to the stream helpers and returns
// how many it handed out (fewer if the transport is shutting down).
func (t *Transport) dispatch(jobs []chan piece, buf []byte, deadline time.Time) int {
	for i := 1; i < t.k; i++ {
		lo, hi := pieceBounds(len(buf), t.k, i)
		select {
		case jobs[i-1] <- piece{buf: buf[lo:hi], deadline: deadline}:
		case <-t.quit:
			return i - 1
		}
	}
	return t.k - 1
}

// collect waits for n helpers and returns the first error, err first.
func collect(done <-chan error, n int, err error) error {
	for range n {
		if e := <-done; e != nil && err == nil {
			err = e
		}
	}
	if err == nil && n < cap(done)-1 {
		err = net.ErrClosed
	}
	return err
}

// peekWait bounds how long PeekHeader waits for bytes already on their way.
const peekWait = 2 * time.Millisecond

// PeekHeader reports the header of the next message from p if it has
// already arrived, without consuming it (transport.Peeker). It is for
// explaining a failure, and leaves the stream's deadline to be reset.
func (t *Transport) PeekHeader(p int, h *transport.Header) bool {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return false
	}
	s0 := t.peers[p].data[0]
	br, ok := s0.reader.(*bufio.Reader)
	if !ok {
		return false
	}
	s0.setRead(time.Now().Add(peekWait))
	s0.rdl = time.Time{} // force the next receive to set its own deadline
	b, err := br.Peek(transport.HeaderSize)
	if err != nil {
		return false
	}
	return h.Decode(b) == nil && h.Kind == transport.KindData
}

// writer and reader move one stream's pieces of striped messages. A helper
// that took a piece always answers, so collect never waits in vain.
func (t *Transport) writer(pr *peer, s *stream, jobs <-chan piece) {
	defer t.wg.Done()
	for {
		select {
		case j := <-jobs:
			err := s.setWrite(j.deadline)
			if err == nil {
				_, err = s.c.Write(j.buf)
			}
			pr.wdone <- err
		case <-t.quit:
			return
		}
	}
}

func (t *Transport) reader(pr *peer, s *stream, jobs <-chan piece) {
	defer t.wg.Done()
	for {
		select {
		case j := <-jobs:
			err := s.setRead(j.deadline)
			if err == nil {
				_, err = io.ReadFull(s.reader, j.buf)
			}
			pr.rdone <- err
		case <-t.quit:
			return
		}
	}
}

// Close says goodbye to every peer, closes every connection and waits for
// the transport's goroutines.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil
	}
	t.closing = true
	t.mu.Unlock()
	t.record(transport.ClosedFault(t.rank))
	t.notify(transport.KindGoodbye, nil)
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
	t.shutOnce.Do(t.doShutdown)
}

func (t *Transport) doShutdown() {
	for _, pr := range t.peers {
		if pr == nil {
			continue
		}
		pr.ctrl.Close()
		for _, s := range pr.data {
			s.c.Close()
		}
	}
	close(t.quit)
	t.wg.Wait()
}
