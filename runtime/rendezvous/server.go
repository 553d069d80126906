package rendezvous

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

const (
	// handshakeTimeout bounds greeting plus authentication, so that a
	// connection that says nothing cannot hold a goroutine for long.
	handshakeTimeout = 10 * time.Second
	// writeTimeout bounds one answer to a client that stopped reading;
	// past it the connection is dropped rather than the server stalled.
	writeTimeout = 30 * time.Second
	// closingWriteTimeout is how long Close lets a waiter tell its client
	// that the store is closing before giving up on that client.
	closingWriteTimeout = time.Second
	// maxBlocked bounds the Waits and WaitChanges one connection may have
	// outstanding, each of which holds a goroutine on the server.
	maxBlocked = 10000
)

// Server is the embedded rendezvous store: an in-memory key-value store
// served over TCP to the launchers of one job. The launcher on node 0 runs
// it; every launcher, that one included, talks to it through a Client.
type Server struct {
	onRefuse atomic.Pointer[func(remote string, why error)]
	tls      *tls.Config // set before the first connection is handled; guarded by mu
	ln       net.Listener
	token    auth.Token
	kv       *kv

	// ctx ends when Close starts; the goroutines answering blocked
	// requests watch it.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	// conns maps each open connection to whether it is past its
	// handshake (serving requests).
	conns map[net.Conn]bool
	wg    sync.WaitGroup // the accept loop and every connection's handler

	closeOnce sync.Once
}

// NewServer listens on addr (host:port; port 0 picks a free one) and
// serves the store there until Close. Clients must present token; an
// empty token turns authentication off.
func NewServer(addr string, token auth.Token) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("rendezvous: cannot serve the store on %s: the address is in use (is another job or store running there? choose another port): %w", addr, err)
		}
		return nil, fmt.Errorf("rendezvous: cannot serve the store on %s: %w", addr, err)
	}
	return Serve(ln, token), nil
}

// NewServerTLS is NewServer over TLS with cfg, which holds the server's
// certificate and, for mutual TLS, ClientCAs with ClientAuth set.
func NewServerTLS(addr string, token auth.Token, cfg *tls.Config) (*Server, error) {
	s, err := NewServer(addr, token)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.tls = cfg
	s.mu.Unlock()
	return s, nil
}

// Serve serves the store on ln until Close, which also closes ln.
func Serve(ln net.Listener, token auth.Token) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		ln:     ln,
		token:  token,
		kv:     newKV(),
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[net.Conn]bool),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr is the address the server listens on, with the port it got.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Clients is the number of connections being served now.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, serving := range s.conns {
		if serving {
			n++
		}
	}
	return n
}

// OnRefuse sets a function told about every connection the server refused
// (failed greeting or authentication): the remote address and why. The
// launcher logs them. It must not block.
func (s *Server) OnRefuse(f func(remote string, why error)) { s.onRefuse.Store(&f) }

// Close stops the server: it stops accepting, tells clients blocked in
// Wait or WaitChange that the store is closed, drops every connection, and
// returns once every goroutine it started has exited.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		err = s.ln.Close()
		for c, serving := range s.conns {
			if serving {
				// Unblock the reader without closing the socket,
				// so that waiters can still tell their clients the
				// store closed; the handler closes the connection
				// once they are done. Nothing resets a serving
				// connection's read deadline.
				c.SetReadDeadline(time.Now())
			} else {
				// Mid-handshake: the handshake sets its own
				// deadlines, so only closing stops it.
				c.Close()
			}
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return err
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like pass; anything
			// else means the listener is gone. net/http does the same.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
					return
				}
				continue
			}
			return
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *Server) handle(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	// pc carries the protocol: c itself, or TLS over it. The server's
	// bookkeeping (conns, Close's deadlines) stays on c.
	pc := c
	s.mu.Lock()
	tcfg := s.tls
	s.mu.Unlock()
	if tcfg != nil {
		tc := tls.Server(c, tcfg)
		pc = tc
		tc.SetDeadline(time.Now().Add(handshakeTimeout))
		if err := tc.Handshake(); err != nil {
			if f := s.onRefuse.Load(); f != nil && s.ctx.Err() == nil {
				(*f)(c.RemoteAddr().String(), fmt.Errorf("TLS: %w", err))
			}
			return
		}
	}
	if err := s.handshake(pc); err != nil {
		// The connection is closed before a single request byte is read;
		// the peer learns nothing, the operator is told.
		if f := s.onRefuse.Load(); f != nil && s.ctx.Err() == nil {
			(*f)(c.RemoteAddr().String(), err)
		}
		return
	}
	// Become a serving connection, unless Close came first; Close reads
	// this state under the same lock.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.conns[c] = true
	s.mu.Unlock()
	sc := &serverConn{s: s, c: pc, waiting: make(map[uint64]context.CancelFunc)}
	sc.ctx, sc.cancel = context.WithCancel(s.ctx)
	sc.serve()
}

// handshake runs the server side of the greeting and authentication.
func (s *Server) handshake(c net.Conn) error {
	deadline := time.Now().Add(handshakeTimeout)
	c.SetDeadline(deadline)
	g := make([]byte, greetingLen)
	if _, err := io.ReadFull(c, g); err != nil {
		return err
	}
	version, flags, err := decodeGreeting(g)
	if err != nil {
		return err // say nothing to something that is not our client
	}
	// Answer with our version even when it differs, so the client can
	// tell its user which side to upgrade.
	if _, err := c.Write(encodeGreeting(len(s.token) > 0)); err != nil {
		return err
	}
	if version != ProtocolVersion {
		return fmt.Errorf("client speaks protocol version %d", version)
	}
	if (flags&flagToken != 0) != (len(s.token) > 0) {
		return errors.New("client and server disagree on whether the job has a token")
	}
	if err := auth.Accept(c, s.token, deadline); err != nil {
		return err
	}
	return c.SetDeadline(time.Time{})
}

// serverConn serves one authenticated connection. Its reader goroutine
// answers quick requests in order; each Wait or WaitChange gets its own
// goroutine, so one blocked request does not hold up the connection.
type serverConn struct {
	s      *Server
	c      net.Conn
	ctx    context.Context // ends when the connection or the server does
	cancel context.CancelFunc

	wmu  sync.Mutex // one frame at a time on the wire
	wbuf []byte

	mu      sync.Mutex
	waiting map[uint64]context.CancelFunc // blocked requests by id
	wg      sync.WaitGroup                // their goroutines
}

func (sc *serverConn) serve() {
	defer func() {
		sc.cancel()
		sc.wg.Wait()
	}()
	r := bufio.NewReaderSize(sc.c, 64<<10)
	for {
		f, err := readFrame(r)
		if err != nil {
			return
		}
		if !sc.dispatch(f) {
			return
		}
	}
}

// dispatch handles one request. It returns false if the request breaks
// the protocol (the connection is then dropped) or the answer could not
// be written.
func (sc *serverConn) dispatch(f *frame) bool {
	nk, nv := len(f.Keys), len(f.Vals)
	shape := func(keys, vals int) bool { return nk == keys && nv == vals }
	reply := func(r *frame) bool {
		r.ID = f.ID
		return sc.send(r) == nil
	}
	switch f.Op {
	case opCancel:
		if !shape(0, 0) {
			return false
		}
		sc.mu.Lock()
		if cancel, ok := sc.waiting[f.ID]; ok {
			cancel()
		}
		sc.mu.Unlock()
		return true
	case opSet:
		if !shape(1, 1) {
			return false
		}
	case opGet, opAdd, opDelete:
		if !shape(1, 0) {
			return false
		}
	case opWait:
		if nk == 0 || nv != 0 {
			return false
		}
	case opWaitChange:
		if !shape(1, 1) {
			return false
		}
	case opCAS:
		if !shape(1, 2) {
			return false
		}
	default:
		return false
	}
	// The frame is well formed; what remains are request errors, which
	// are answered, not punished.
	for _, k := range f.Keys {
		if err := checkKey(k); err != nil {
			return reply(errorFrame(err))
		}
	}
	for _, v := range f.Vals {
		if len(v) > MaxValueSize {
			return reply(errorFrame(valueTooLarge(f.Keys[0], len(v))))
		}
	}
	kv := sc.s.kv
	key := f.Keys[0]
	switch f.Op {
	case opSet:
		kv.set(key, f.Vals[0])
		return reply(&frame{Op: statusOK})
	case opGet:
		v, ok := kv.get(key)
		if !ok {
			return reply(&frame{Op: statusNotFound})
		}
		return reply(&frame{Op: statusOK, Vals: [][]byte{v}})
	case opDelete:
		kv.del(key)
		return reply(&frame{Op: statusOK})
	case opAdd:
		n, err := kv.add(key, f.Num)
		if err != nil {
			return reply(errorFrame(err))
		}
		return reply(&frame{Op: statusOK, Num: n})
	case opCAS:
		cur, swapped := kv.cas(key, f.Vals[0], f.Vals[1])
		r := &frame{Op: statusOK, Vals: [][]byte{cur}}
		if swapped {
			r.Num = 1
		}
		return reply(r)
	}
	return sc.block(f)
}

// block starts the goroutine that answers a Wait or WaitChange.
func (sc *serverConn) block(f *frame) bool {
	ctx, cancel := context.WithCancel(sc.ctx)
	sc.mu.Lock()
	if _, dup := sc.waiting[f.ID]; dup {
		sc.mu.Unlock()
		cancel()
		return false // ids of blocked requests must be unique
	}
	if len(sc.waiting) >= maxBlocked {
		sc.mu.Unlock()
		cancel()
		r := errorFrame(fmt.Errorf("%d blocked requests on one connection is the limit", maxBlocked))
		r.ID = f.ID
		return sc.send(r) == nil
	}
	sc.waiting[f.ID] = cancel
	sc.mu.Unlock()
	sc.wg.Add(1)
	go func() {
		defer sc.wg.Done()
		defer func() {
			sc.mu.Lock()
			delete(sc.waiting, f.ID)
			sc.mu.Unlock()
			cancel()
		}()
		var vals [][]byte
		var err error
		if f.Op == opWait {
			vals, err = sc.s.kv.wait(ctx, f.Keys)
		} else {
			var v []byte
			v, err = sc.s.kv.waitChange(ctx, f.Keys[0], f.Vals[0])
			vals = [][]byte{v}
		}
		switch {
		case err == nil:
			sc.send(&frame{Op: statusOK, ID: f.ID, Vals: vals})
		case sc.s.ctx.Err() != nil:
			sc.send(&frame{Op: statusClosed, ID: f.ID})
		}
		// Otherwise the client cancelled or the connection is gone:
		// nobody is listening for an answer.
	}()
	return true
}

// send writes one frame. An answer too large for a frame becomes an
// error answer; a failed write drops the connection, since a partial
// frame leaves the stream unusable.
func (sc *serverConn) send(f *frame) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	b, err := appendFrame(sc.wbuf[:0], f)
	if err != nil {
		b, _ = appendFrame(sc.wbuf[:0], &frame{Op: statusError, ID: f.ID, Vals: [][]byte{[]byte("answer too large: " + err.Error())}})
	}
	timeout := writeTimeout
	if sc.s.ctx.Err() != nil {
		timeout = closingWriteTimeout
	}
	sc.c.SetWriteDeadline(time.Now().Add(timeout))
	_, err = sc.c.Write(b)
	// Keep a small buffer for the next answer, not a 16 MiB one.
	if cap(b) <= 64<<10 {
		sc.wbuf = b[:0]
	}
	if err != nil {
		sc.c.Close()
	}
	return err
}

func errorFrame(err error) *frame {
	return &frame{Op: statusError, Vals: [][]byte{[]byte(err.Error())}}
}

// checkKey enforces the key rules both backends share.
func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("key %.32q... is %d bytes, over the %d-byte limit", key, len(key), MaxKeyLen)
	}
	return nil
}

func valueTooLarge(key string, n int) error {
	return fmt.Errorf("value for key %q is %d bytes, over the %d-byte (%d MiB) limit", key, n, MaxValueSize, MaxValueSize>>20)
}
