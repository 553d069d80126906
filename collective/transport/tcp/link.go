package tcp

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// deadlineGrain: deadlines are rounded up to this so that consecutive
// calls reuse the timer already armed on a connection.
const deadlineGrain = 50 * time.Millisecond

// smallWrite: payloads up to this are copied behind the header and sent
// with one write.
const smallWrite = 16 << 10

// readBuffer is stream 0's read buffer: headers and small payloads are
// read through it, and so are payloads handed over in place, a buffer at
// a time (RecvPayloadFunc), so that it is also the most a reduction reads
// of its input before the next piece.
const readBuffer = 64 << 10

// link is the TCP connections with one peer: a control connection and k
// data connections (transport.Link).
type link struct {
	addr      string
	ctrl      *net.TCPConn
	data      []*stream
	k         int
	stripeMin int
	polling   *bool // the owner's Poller switch

	interrupted atomic.Bool

	out []byte // header (+ small payload) staging for sends
	in  [transport.HeaderSize]byte

	// Helpers for streams 1..k-1: one writer and one reader goroutine each.
	wjobs []chan piece
	rjobs []chan piece
	wdone chan error
	rdone chan error
	quit  chan struct{}
	wg    sync.WaitGroup

	closeOnce sync.Once
}

type stream struct {
	c      *net.TCPConn
	rdl    time.Time     // deadline last set for reads
	wdl    time.Time     // and for writes
	reader io.Reader     // bufio over spin on stream 0, the conn itself otherwise
	buf    *bufio.Reader // that bufio, on stream 0 only
	spin   *spinReader   // stream 0 only
	wspin  *spinWriter   // stream 0 only
}

type piece struct {
	buf      []byte
	deadline time.Time
}

// newLink makes the link over conns (conns[0] the control connection)
// and starts its stripe helpers.
func newLink(cfg Config, addr string, conns []net.Conn, k, stripeMin int, polling *bool) (*link, error) {
	l := &link{addr: addr, ctrl: conns[0].(*net.TCPConn), k: k, stripeMin: stripeMin, polling: polling,
		out: make([]byte, transport.HeaderSize+smallWrite), quit: make(chan struct{})}
	for i, nc := range conns[1:] {
		c := nc.(*net.TCPConn)
		if cfg.SocketBuffer > 0 {
			c.SetReadBuffer(cfg.SocketBuffer)
			c.SetWriteBuffer(cfg.SocketBuffer)
		}
		s := &stream{c: c, reader: c}
		if i == 0 {
			sr, err := newSpinReader(c, cfg.Spin)
			if err != nil {
				return nil, err
			}
			// Header and a small payload usually arrive together: one
			// read gets both.
			s.spin = sr
			if s.wspin, err = newSpinWriter(c, cfg.Spin); err != nil {
				return nil, err
			}
			s.buf = bufio.NewReaderSize(sr, readBuffer)
			s.reader = s.buf
		}
		l.data = append(l.data, s)
	}
	if k > 1 {
		l.wdone = make(chan error, k)
		l.rdone = make(chan error, k)
		for i := 1; i < k; i++ {
			wj, rj := make(chan piece), make(chan piece)
			l.wjobs = append(l.wjobs, wj)
			l.rjobs = append(l.rjobs, rj)
			l.wg.Add(2)
			go l.writer(l.data[i], wj)
			go l.reader(l.data[i], rj)
		}
	}
	return l, nil
}

func (l *link) Addr() string               { return l.addr }
func (l *link) Control() transport.Control { return l.ctrl }
func (l *link) PeerLeft()                  {}

// CloseWrite does nothing: TCP delivers what was written before a close.
func (l *link) CloseWrite() {}

// Sockets returns the data streams' connections (transport.Socketer).
func (l *link) Sockets() []syscall.Conn {
	out := make([]syscall.Conn, len(l.data))
	for i, s := range l.data {
		out[i] = s.c
	}
	return out
}

// Interrupt moves every data deadline into the past; setRead and setWrite
// look at the flag after they set one, so no call outlives it.
func (l *link) Interrupt() {
	l.interrupted.Store(true)
	past := time.Unix(1, 0)
	for _, s := range l.data {
		s.c.SetDeadline(past)
	}
}

func (l *link) setRead(s *stream, d time.Time) error {
	if d != s.rdl {
		s.rdl = d
		if err := s.c.SetReadDeadline(d); err != nil {
			return err
		}
	}
	if l.interrupted.Load() {
		return transport.ErrInterrupted
	}
	return nil
}

func (l *link) setWrite(s *stream, d time.Time) error {
	if d != s.wdl {
		s.wdl = d
		if err := s.c.SetWriteDeadline(d); err != nil {
			return err
		}
	}
	if l.interrupted.Load() {
		return transport.ErrInterrupted
	}
	return nil
}

func roundDeadline(d time.Time) time.Time {
	if d.IsZero() {
		return d
	}
	g := int64(deadlineGrain)
	return time.Unix(0, (d.UnixNano()/g+1)*g)
}

// pieceBounds cuts a striped payload of n bytes into k pieces; piece i is
// [lo, hi). Both ends compute the same cut.
func pieceBounds(n, k, i int) (int, int) {
	per := (n + k - 1) / k
	per = (per + 63) &^ 63 // cache-line aligned pieces
	lo, hi := min(i*per, n), min((i+1)*per, n)
	return lo, hi
}

func (l *link) striped(n int) bool { return l.k > 1 && n >= l.stripeMin }

func (l *link) Send(h *transport.Header, payload []byte, deadline time.Time) error {
	deadline = roundDeadline(deadline)
	s0 := l.data[0]
	if err := l.setWrite(s0, deadline); err != nil {
		return err
	}
	h.Encode(l.out)
	w, polling := s0.wspin, *l.polling
	striped := l.striped(len(payload))
	switch {
	case !striped && len(payload) <= smallWrite:
		n := copy(l.out[transport.HeaderSize:], payload)
		return w.write(polling, l.out[:transport.HeaderSize+n], nil)
	case !striped:
		return w.write(polling, l.out[:transport.HeaderSize], payload)
	}
	if err := w.write(polling, l.out[:transport.HeaderSize], nil); err != nil {
		return err
	}
	sent := l.dispatch(l.wjobs, payload, deadline)
	lo, hi := pieceBounds(len(payload), l.k, 0)
	err := w.write(polling, payload[lo:hi], nil)
	return collect(l.wdone, sent, err)
}

func (l *link) RecvHeader(deadline time.Time) ([]byte, error) {
	s0 := l.data[0]
	if err := l.setRead(s0, roundDeadline(deadline)); err != nil {
		return nil, err
	}
	s0.spin.armed = *l.polling
	_, err := io.ReadFull(s0.reader, l.in[:])
	s0.spin.armed = false
	return l.in[:], err
}

func (l *link) RecvPayload(buf []byte, deadline time.Time) error {
	deadline = roundDeadline(deadline)
	s0 := l.data[0]
	if err := l.setRead(s0, deadline); err != nil {
		return err
	}
	if !l.striped(len(buf)) {
		s0.spin.armed = *l.polling
		_, err := io.ReadFull(s0.reader, buf)
		s0.spin.armed = false
		return err
	}
	sent := l.dispatch(l.rjobs, buf, deadline)
	lo, hi := pieceBounds(len(buf), l.k, 0)
	_, err := io.ReadFull(s0.reader, buf[lo:hi])
	return collect(l.rdone, sent, err)
}

// InPlaceFor: a payload that is not striped comes over stream 0, through
// its read buffer, where a reduction can read it (transport.InPlaceLink).
func (l *link) InPlaceFor(n int) bool { return !l.striped(n) }

// RecvPayloadFunc hands an unstriped payload of n bytes to fn where it
// lands, stream 0's read buffer, a piece at a time: whatever has arrived,
// up to the buffer's size, cut to a multiple of 8 bytes but at the
// payload's end (transport.InPlaceLink). Against RecvPayload into scratch
// and a reduction from there, this skips a copy of each byte and reads it
// while it is still in the cache the kernel wrote it to; a received
// chunk larger than the core's cache (1 MiB against 512 KiB of L2) would
// otherwise be read back from further out.
func (l *link) RecvPayloadFunc(n int, fn func(off int, part []byte), deadline time.Time) error {
	if l.striped(n) {
		return fmt.Errorf("a striped payload of %d bytes cannot be received in place (ask InPlaceFor first; RecvPayload receives it)", n)
	}
	s0 := l.data[0]
	if err := l.setRead(s0, roundDeadline(deadline)); err != nil {
		return err
	}
	s0.spin.armed = *l.polling
	defer func() { s0.spin.armed = false }()
	for off := 0; off < n; {
		// Wait for one 8-byte unit (or the payload's end), then take all
		// that has come.
		if _, err := s0.buf.Peek(min(n-off, 8)); err != nil {
			return err
		}
		k := min(n-off, s0.buf.Buffered())
		if k < n-off {
			k &^= 7
		}
		part, _ := s0.buf.Peek(k)
		fn(off, part)
		s0.buf.Discard(k)
		off += k
	}
	return nil
}

// dispatch hands pieces 1..k-1 of buf to the stream helpers and returns
// how many it handed out (fewer if the link is closing).
func (l *link) dispatch(jobs []chan piece, buf []byte, deadline time.Time) int {
	for i := 1; i < l.k; i++ {
		lo, hi := pieceBounds(len(buf), l.k, i)
		select {
		case jobs[i-1] <- piece{buf: buf[lo:hi], deadline: deadline}:
		case <-l.quit:
			return i - 1
		}
	}
	return l.k - 1
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

// PeekHeader returns the header of the next message if it has already
// arrived, without consuming it. It is for explaining a failure, and
// leaves the stream's deadline to be reset.
func (l *link) PeekHeader() []byte {
	s0 := l.data[0]
	br := s0.buf
	s0.c.SetReadDeadline(time.Now().Add(peekWait))
	s0.rdl = time.Time{} // force the next receive to set its own deadline
	b, err := br.Peek(transport.HeaderSize)
	if err != nil {
		return nil
	}
	return b
}

// writer and reader move one stream's pieces of striped messages. A helper
// that took a piece always answers, so collect never waits in vain.
func (l *link) writer(s *stream, jobs <-chan piece) {
	defer l.wg.Done()
	for {
		select {
		case j := <-jobs:
			err := l.setWrite(s, j.deadline)
			if err == nil {
				_, err = s.c.Write(j.buf)
			}
			l.wdone <- err
		case <-l.quit:
			return
		}
	}
}

func (l *link) reader(s *stream, jobs <-chan piece) {
	defer l.wg.Done()
	for {
		select {
		case j := <-jobs:
			err := l.setRead(s, j.deadline)
			if err == nil {
				_, err = io.ReadFull(s.reader, j.buf)
			}
			l.rdone <- err
		case <-l.quit:
			return
		}
	}
}

// Close closes every connection and waits for the stripe helpers.
func (l *link) Close() {
	l.closeOnce.Do(func() {
		l.ctrl.Close()
		for _, s := range l.data {
			s.c.Close()
		}
		close(l.quit)
		l.wg.Wait()
	})
}

var _ transport.Link = (*link)(nil)
