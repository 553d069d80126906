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
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

const (
	dialBackoffMin = 20 * time.Millisecond
	dialBackoffMax = time.Second
	// redialTimeout bounds the one reconnection a call makes after the
	// connection broke.
	redialTimeout = 5 * time.Second
	// clientWriteTimeout drops a connection whose server stopped reading.
	clientWriteTimeout = 30 * time.Second
)

// Client is a connection to an embedded store Server. It implements Store
// and is safe for concurrent use.
//
// All calls share one TCP connection: each request carries an id, a reader
// goroutine hands each answer to the call that waits for it, and the
// server answers Wait and WaitChange from goroutines of their own, so a
// long Wait does not hold up a Set. A call whose ctx ends sends a cancel
// for its id, so the server stops waiting on its behalf.
//
// If the connection breaks, calls in flight fail with an error naming the
// endpoint (Get, Wait and WaitChange, which change nothing, are retried
// once on a new connection) and the next call dials again, once.
type Client struct {
	addr  string
	token auth.Token
	tls   *tls.Config // nil: plain TCP

	// closeCtx ends when Close starts; it aborts a redial in progress.
	closeCtx    context.Context
	closeCancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	cc     *clientConn // nil or dead: the next call dials

	nextID  atomic.Uint64
	readers sync.WaitGroup // every clientConn's reader goroutine
}

var _ Store = (*Client)(nil)

// errPermanent marks a dial failure that retrying will not fix: a wrong
// token or a different protocol version.
type errPermanent struct{ error }

func (e errPermanent) Unwrap() error { return e.error }

// Dial connects to the store at addr, retrying (backoff 20ms to 1s) until
// ctx ends, since the store's launcher may start after this one. A store
// that refuses token fails at once with an error wrapping ErrAuth.
func Dial(ctx context.Context, addr string, token auth.Token) (*Client, error) {
	return DialTLS(ctx, addr, token, nil)
}

// DialTLS is Dial over TLS with cfg (nil: plain TCP, as Dial). The token
// challenge still runs inside TLS: TLS says who the server is, the token
// says the client belongs to the job.
func DialTLS(ctx context.Context, addr string, token auth.Token, cfg *tls.Config) (*Client, error) {
	c := &Client{addr: addr, token: token, tls: cfg}
	c.closeCtx, c.closeCancel = context.WithCancel(context.Background())
	backoff := dialBackoffMin
	var last error
	for {
		conn, err := dialOnce(ctx, addr, token, cfg)
		if err == nil {
			c.cc = c.start(conn)
			return c, nil
		}
		var perm errPermanent
		if errors.As(err, &perm) {
			c.closeCancel()
			return nil, fmt.Errorf("rendezvous store at %s: %w", addr, perm.error)
		}
		if ctx.Err() == nil {
			last = err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.closeCancel()
			if last == nil {
				return nil, fmt.Errorf("rendezvous store at %s unreachable: %w", addr, ctx.Err())
			}
			return nil, fmt.Errorf("rendezvous store at %s unreachable: %w (gave up: %w)", addr, last, ctx.Err())
		}
		backoff = min(2*backoff, dialBackoffMax)
	}
}

// dialOnce makes one connection and runs the greeting and authentication
// on it. Errors that retrying cannot fix come back as errPermanent.
func dialOnce(ctx context.Context, addr string, token auth.Token, tcfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tcfg != nil {
		cfg := tcfg.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var certErr *tls.CertificateVerificationError
			if errors.As(err, &certErr) {
				return nil, errPermanent{fmt.Errorf("TLS: %w", err)}
			}
			return nil, fmt.Errorf("TLS: %w", err)
		}
		conn = tc
	}
	// The handshake sets its own deadlines; closing the connection is
	// what stops it when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = clientHandshake(ctx, conn, token)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return conn, nil
}

func clientHandshake(ctx context.Context, conn net.Conn, token auth.Token) error {
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	if _, err := conn.Write(encodeGreeting(len(token) > 0)); err != nil {
		return err
	}
	g := make([]byte, greetingLen)
	if _, err := io.ReadFull(conn, g); err != nil {
		// A server that is closing, or something else entirely
		// listening there: worth another try either way.
		return fmt.Errorf("reading the store's greeting: %w", err)
	}
	version, flags, err := decodeGreeting(g)
	if err != nil {
		return errPermanent{err}
	}
	if version != ProtocolVersion {
		return errPermanent{fmt.Errorf("the store speaks protocol version %d and this ringo speaks %d: run the same ringo release on every node", version, ProtocolVersion)}
	}
	serverHas, weHave := flags&flagToken != 0, len(token) > 0
	switch {
	case serverHas && !weHave:
		return errPermanent{fmt.Errorf("%w: the store requires a job token and this process was given none", ErrAuth)}
	case !serverHas && weHave:
		return errPermanent{fmt.Errorf("%w: the store runs without a job token and this process has one, so it is not this job's store", ErrAuth)}
	}
	// The server answered our greeting, so it is up and speaks our
	// protocol: a handshake that fails now is a token that differs (the
	// server drops a bad proof without a word), not a network problem.
	if err := auth.Dial(conn, token, deadline); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errPermanent{fmt.Errorf("%w (%w)", ErrAuth, err)}
	}
	return conn.SetDeadline(time.Time{})
}

// Addr is the store's address as given to Dial.
func (c *Client) Addr() string { return c.addr }

// Close closes the connection. Calls in progress, and calls after it,
// return an error wrapping ErrClosed. It returns once the reader goroutine
// has exited.
func (c *Client) Close() error {
	c.closeCancel()
	c.mu.Lock()
	c.closed = true
	cc := c.cc
	c.cc = nil
	c.mu.Unlock()
	if cc != nil {
		cc.kill(ErrClosed)
	}
	c.readers.Wait()
	return nil
}

// conn returns the live connection, dialling once if the last one broke.
// Its errors, like call's, leave naming the endpoint to the caller.
func (c *Client) conn(ctx context.Context) (*clientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.cc != nil && !c.cc.isDead() {
		return c.cc, nil
	}
	// Holding mu while dialling makes other callers wait for this
	// connection instead of racing to make their own; closeCtx lets
	// Close cut it short.
	dctx, cancel := context.WithTimeout(ctx, redialTimeout)
	defer cancel()
	stop := context.AfterFunc(c.closeCtx, cancel)
	defer stop()
	conn, err := dialOnce(dctx, c.addr, c.token, c.tls)
	if err != nil {
		var perm errPermanent
		switch {
		case c.closeCtx.Err() != nil:
			return nil, ErrClosed
		case ctx.Err() != nil:
			return nil, fmt.Errorf("reconnecting: %w", ctx.Err())
		case errors.As(err, &perm):
			return nil, perm.error
		}
		return nil, fmt.Errorf("connection lost and reconnecting failed: %w", err)
	}
	c.cc = c.start(conn)
	return c.cc, nil
}

func (c *Client) start(conn net.Conn) *clientConn {
	cc := &clientConn{
		conn:    conn,
		pending: make(map[uint64]chan *frame),
		dead:    make(chan struct{}),
	}
	c.readers.Add(1)
	go func() {
		defer c.readers.Done()
		cc.read()
	}()
	return cc
}

var (
	// errLost says the connection broke under a call.
	errLost = errors.New("connection lost")
	// errEncode says a request could not be put in a frame; nothing
	// was sent and the connection is fine.
	errEncode = errors.New("request does not fit the store protocol")
)

// call sends req and waits for its answer. retry: the request changes
// nothing, so it may be sent again on a new connection if this one broke.
func (c *Client) call(ctx context.Context, req *frame, retry bool) (*frame, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		cc, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.roundTrip(ctx, cc, req)
		if errors.Is(err, errLost) {
			if c.closeCtx.Err() != nil {
				return nil, ErrClosed
			}
			if retry && attempt == 0 {
				continue
			}
			return nil, err
		}
		return resp, err
	}
}

func (c *Client) roundTrip(ctx context.Context, cc *clientConn, req *frame) (*frame, error) {
	id := c.nextID.Add(1)
	req.ID = id
	ch := make(chan *frame, 1)
	if !cc.register(id, ch) {
		return nil, cc.lostErr()
	}
	if err := cc.write(req); err != nil {
		cc.unregister(id)
		if errors.Is(err, errEncode) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errLost, err)
	}
	select {
	case f := <-ch:
		return f, nil
	case <-cc.dead:
		return nil, cc.lostErr()
	case <-ctx.Done():
		cc.unregister(id)
		if req.Op == opWait || req.Op == opWaitChange {
			// Best effort: if this fails the connection is dead
			// and the server stops waiting anyway.
			cc.write(&frame{Op: opCancel, ID: id})
		}
		return nil, ctx.Err()
	}
}

// clientConn is one authenticated connection and its pending calls.
type clientConn struct {
	conn net.Conn
	wmu  sync.Mutex
	wbuf []byte

	mu      sync.Mutex
	pending map[uint64]chan *frame
	dead    chan struct{} // closed when the reader stops
	err     error         // why, set before dead is closed
}

func (cc *clientConn) isDead() bool {
	select {
	case <-cc.dead:
		return true
	default:
		return false
	}
}

func (cc *clientConn) lostErr() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return fmt.Errorf("%w: %w", errLost, cc.err)
}

func (cc *clientConn) register(id uint64, ch chan *frame) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return false
	}
	cc.pending[id] = ch
	return true
}

func (cc *clientConn) unregister(id uint64) {
	cc.mu.Lock()
	delete(cc.pending, id)
	cc.mu.Unlock()
}

// kill closes the connection; the reader then records why and stops.
func (cc *clientConn) kill(why error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = why
	}
	cc.mu.Unlock()
	cc.conn.Close()
}

func (cc *clientConn) write(f *frame) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	b, err := appendFrame(cc.wbuf[:0], f)
	if err != nil {
		return fmt.Errorf("%w: %w", errEncode, err)
	}
	cc.conn.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	_, err = cc.conn.Write(b)
	if cap(b) <= 64<<10 {
		cc.wbuf = b[:0]
	}
	if err != nil {
		// Part of a frame may be out: nothing after it would line up.
		cc.kill(err)
	}
	return err
}

func (cc *clientConn) read() {
	r := bufio.NewReaderSize(cc.conn, 64<<10)
	for {
		f, err := readFrame(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the store closed the connection")
			}
			cc.kill(err)
			cc.mu.Lock()
			cc.pending = nil
			cc.mu.Unlock()
			close(cc.dead)
			return
		}
		cc.mu.Lock()
		ch, ok := cc.pending[f.ID]
		delete(cc.pending, f.ID)
		cc.mu.Unlock()
		if ok {
			ch <- f // buffered; the caller may have gone
		}
	}
}
