package shm

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// link is the rings with one peer and the unix socket beside them
// (transport.Link).
type link struct {
	addr  string // "pid P on host"
	ctrl  *net.UnixConn
	spin  time.Duration
	yield bool

	rings

	interrupted atomic.Bool // a fault was recorded: waits end
	gone        atomic.Bool // the peer said goodbye

	// use guards the mappings: every call holds it for reading while it
	// touches a ring; Close takes it for writing to unmap.
	use      sync.RWMutex
	unmapped bool

	hdr  [transport.HeaderSize]byte // the header last received
	peek [transport.HeaderSize]byte // and peeked at

	// Sending side (one sender at a time): slots published so far.
	_       [64]byte // the two sides run on different threads
	outHead uint64
	outTail uint64 // last tail seen
	ref     [refBytes]byte
	stream  bool  // large messages go in with non-temporal stores
	since   int64 // when stream was last turned on (nanotime)
	putRate int64 // moving average of timed ordinary copies, MB/s (0: none yet)

	// Receiving side (one receiver at a time).
	_       [64]byte
	inTail  uint64 // slots released so far
	inHead  uint64 // last head seen
	pend    bool   // a header was returned, its payload not yet read
	pendAt  uint64 // first slot of that message
	pendLen uint64 // its payload length
	pendEnd uint64 // the slot after it
	// pendLent: its body is pendRef, a reference to the payload in one of
	// the peer's windows.
	pendLent bool
	pendRef  windowRef

	closeOnce sync.Once
}

func (l *link) Addr() string               { return l.addr }
func (l *link) Control() transport.Control { return l.ctrl }

// CloseWrite does nothing: what was published stays in the ring.
func (l *link) CloseWrite() {}

// Interrupt wakes every wait: it sees the flag and returns.
func (l *link) Interrupt() {
	l.interrupted.Store(true)
	l.wakeAll()
}

// PeerLeft wakes a call waiting on the peer: it must not wait for a rank
// that has left.
func (l *link) PeerLeft() {
	l.gone.Store(true)
	l.wakeAll()
}

func (l *link) wakeAll() {
	l.use.RLock()
	defer l.use.RUnlock()
	if !l.unmapped {
		l.myData.wake()
		l.mySpace.wake()
	}
}

// enter begins a call that touches the rings; leave ends it.
func (l *link) enter() error {
	l.use.RLock()
	// Checked under the lock: Close interrupts before it unmaps.
	if l.interrupted.Load() || l.unmapped {
		l.use.RUnlock()
		return transport.ErrInterrupted
	}
	return nil
}

func (l *link) leave() { l.use.RUnlock() }

func roundDeadline(d time.Time) time.Time {
	if d.IsZero() {
		return d
	}
	g := int64(deadlineGrain)
	return time.Unix(0, (d.UnixNano()/g+1)*g)
}

func nanotime() int64 { return time.Now().UnixNano() }

// protocolError is a peer that broke the ring's rules.
func protocolError(format string, a ...any) error {
	return &transport.ProtocolError{Msg: "ring: " + fmt.Sprintf(format, a...)}
}

// slotsFor is how many slots a message with n payload bytes takes.
func (r *ring) slotsFor(n uint64) uint64 { return (hdrArea + n + r.slotBytes - 1) / r.slotBytes }

func (l *link) RecvHeader(deadline time.Time) ([]byte, error) {
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.leave()
	if l.pend {
		// A header whose payload was never asked for: skip the message.
		if err := l.consume(nil, nil, deadline); err != nil {
			return nil, err
		}
	}
	if err := l.awaitData(l.inTail+1, deadline); err != nil {
		return nil, err
	}
	r := l.in
	copy(l.hdr[:], r.span(l.inTail*r.slotBytes, transport.HeaderSize))
	var h transport.Header
	if err := h.Decode(l.hdr[:]); err != nil {
		return nil, protocolError("bad message: %v", err)
	}
	l.pend, l.pendAt, l.pendLen, l.pendLent = true, l.inTail, h.Length, false
	l.pendEnd = l.pendAt + r.slotsFor(h.Length)
	if r.span(l.inTail*r.slotBytes, hdrArea)[transport.HeaderSize] == lentMark {
		// A lent payload: the body is a reference into one of the peer's
		// windows, in the message's only slot, published with it.
		ref, err := decodeRef(r.span(l.inTail*r.slotBytes+hdrArea, refBytes))
		if err != nil {
			return nil, protocolError("bad lent message: %v", err)
		}
		l.pendLent, l.pendRef, l.pendEnd = true, ref, l.pendAt+r.slotsFor(refBytes)
	}
	return l.hdr[:], nil
}

func (l *link) RecvPayload(buf []byte, deadline time.Time) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	return l.consume(buf, nil, deadline)
}

// InPlaceFor is true: every payload can be read where it lies in the ring
// (transport.InPlaceLink).
func (l *link) InPlaceFor(int) bool { return true }

// RecvPayloadFunc is RecvPayload without the copy (transport.InPlaceLink):
// it hands fn the payload where it lies in the shared ring, piece by
// piece in order, and frees each piece's slots once fn returns. Pieces
// end where a batch or the ring's end does, at offsets that are
// multiples of 8 in the payload (hdrArea, the slots and batchBytes are).
// The length is the one in the ring's header, which Mesh has checked.
func (l *link) RecvPayloadFunc(_ int, fn func(off int, part []byte), deadline time.Time) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	return l.consume(nil, fn, deadline)
}

// PeekHeader returns the header of the next message if it has already
// arrived, without consuming it. A faulted link can still show what has
// arrived: this is for explaining a failure.
func (l *link) PeekHeader() []byte {
	l.use.RLock()
	defer l.use.RUnlock()
	if l.unmapped {
		return nil
	}
	r := l.in
	at := l.inTail
	if l.pend {
		at = l.pendEnd
	}
	if v := r.head.Load(); v <= at || v-l.inTail > r.slots {
		return nil
	}
	copy(l.peek[:], r.span(at*r.slotBytes, transport.HeaderSize))
	return l.peek[:]
}

// Close closes the socket, waits for calls in flight to leave the rings
// (they have been interrupted) and unmaps them.
func (l *link) Close() {
	l.closeOnce.Do(func() {
		l.ctrl.Close()
		l.use.Lock()
		l.unmapped = true
		l.rings.close()
		l.use.Unlock()
	})
}

var (
	_ transport.Link        = (*link)(nil)
	_ transport.LendingLink = (*link)(nil)
)

type waitKind uint8

const (
	waitData waitKind = iota // receiver: for head
	waitRoom                 // sender: for tail
)

// wait blocks until the peer's counter reaches target. It polls first,
// for up to Spin: bursts of looks, with a yield to this process's other
// goroutines between bursts (with one P, the other lane of a collective
// may be the one that must run) and, once the poll has run tightPoll (or
// from the start with Config.Yield), to other processes too (the peer may
// be waiting for this very core). Then it raises its waiting flag, looks
// once more (the peer checks the flag after every publish or release, so
// a change between the two looks is never missed) and sleeps on its
// eventfd.
func (l *link) wait(kind waitKind, target uint64, deadline time.Time) (uint64, error) {
	var ctr *atomic.Uint64
	var flag *atomic.Uint32
	var ev *evfd
	if kind == waitData {
		ctr, flag, ev = l.in.head, l.in.cwait, l.myData
	} else {
		ctr, flag, ev = l.out.tail, l.out.pwait, l.mySpace
	}
	if v := ctr.Load(); v >= target {
		return v, nil
	}
	deadline = roundDeadline(deadline)
	// Look in bursts: between bursts, check for a fault, the deadline
	// and the budget, and yield. The budget counts time spent looking,
	// not time a yield let other goroutines run: a rank whose other lane
	// is copying is not idle.
	var spent, last int64
	for burst := 0; l.spin > 0 || burst == 0; burst++ {
		for range lookBurst {
			if v := ctr.Load(); v >= target {
				return v, nil
			}
		}
		if l.interrupted.Load() {
			return 0, transport.ErrInterrupted
		}
		now := nanotime()
		if burst > 0 {
			spent += min(now-last, maxBurst)
		}
		last = now
		if spent >= int64(l.spin) || !deadline.IsZero() && now > deadline.UnixNano() {
			break
		}
		runtime.Gosched()
		if l.yield || spent > tightPoll {
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
	}
	for {
		flag.Store(1)
		if v := ctr.Load(); v >= target {
			flag.Store(0)
			return v, nil
		}
		if l.interrupted.Load() {
			flag.Store(0)
			return 0, transport.ErrInterrupted
		}
		if l.gone.Load() {
			flag.Store(0)
			if v := ctr.Load(); v >= target {
				return v, nil
			}
			return 0, transport.ErrPeerLeft
		}
		err := ev.sleep(deadline)
		flag.Store(0)
		if err != nil {
			if v := ctr.Load(); v >= target {
				return v, nil
			}
			if l.interrupted.Load() {
				return 0, transport.ErrInterrupted
			}
			if os.IsTimeout(err) {
				// Not aborted here: the caller may find a better
				// explanation (PeekHeader) before it aborts the group.
				return 0, os.ErrDeadlineExceeded
			}
			return 0, fmt.Errorf("shm: waiting on an eventfd: %w", err)
		}
	}
}

func (l *link) Send(h *transport.Header, payload []byte, deadline time.Time) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	return l.put(h, payload, false, deadline)
}

// SendLent is Send of a payload that the caller will not change until
// AwaitLent of the returned ticket (transport.LendingLink): where the
// payload lies in a Window and the peer can map it, the ring carries a
// reference and the peer reads the payload in place. Elsewhere it is
// Send, and the ticket is 0.
func (l *link) SendLent(h *transport.Header, payload []byte, deadline time.Time) (uint64, error) {
	if err := l.enter(); err != nil {
		return 0, err
	}
	defer l.leave()
	if !l.lend || len(payload) < lendMin {
		return 0, l.put(h, payload, false, deadline)
	}
	w, off, ok := windows.find(payload)
	if !ok {
		return 0, l.put(h, payload, false, deadline)
	}
	windowRef{id: w.id, fd: w.fd, off: off}.encode(l.ref[:])
	if err := l.put(h, l.ref[:], true, deadline); err != nil {
		return 0, err
	}
	return l.outHead, nil
}

// Lends says whether the peer takes loans (it can map this process's
// windows, and did not turn lending off).
func (l *link) Lends() bool { return l.lend }

// AwaitLent returns once the peer has read the payload of the lent
// message whose ticket SendLent returned: it has released the message's
// slots. It may run beside Send, which may be asleep on the eventfd of
// room, so it does not sleep on that eventfd: it polls, yielding its core
// between looks, and only after loanYield does it sleep between looks.
// A loan is waited for inside a collective whose peer is reading it now,
// so the wait is mostly short; a Go sleep of a few microseconds can
// last a millisecond, which at 1 MiB took the flat ring between 2
// processes from 0.27 to 0.69-0.99 ms.
func (l *link) AwaitLent(ticket uint64, deadline time.Time) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	tail := l.out.tail
	var since int64
	for looks := 0; tail.Load() < ticket; looks++ {
		if looks < lookBurst {
			runtime.Gosched()
			continue
		}
		now := nanotime()
		if since == 0 {
			since = now
		}
		switch {
		case l.interrupted.Load():
			return transport.ErrInterrupted
		case l.gone.Load():
			if tail.Load() >= ticket {
				return nil
			}
			return transport.ErrPeerLeft
		case !deadline.IsZero() && now > deadline.UnixNano():
			return os.ErrDeadlineExceeded
		case now-since < int64(loanYield):
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		default:
			time.Sleep(loanSleep)
		}
	}
	return nil
}

// put writes one message into the ring: h, then body, which is the
// payload, or a window reference where lent (h.Length is then the
// payload's length, not the body's).
func (l *link) put(h *transport.Header, payload []byte, lent bool, deadline time.Time) error {
	if l.gone.Load() {
		return transport.ErrPeerLeft
	}
	r := l.out
	sb := r.slotBytes
	start := l.outHead
	nt := false
	if len(payload) >= ntMin {
		nt = l.streamTo()
	}
	base := start * sb // stream byte position of the message
	total := hdrArea + uint64(len(payload))
	last := start + r.slotsFor(uint64(len(payload)))
	var w uint64 // bytes of the message written
	for w < total {
		// The slot holding byte w must be free: its index < tail + slots.
		need := (base+w)/sb + 1
		if need > l.outTail+r.slots {
			l.outTail = r.tail.Load()
			if need > l.outTail+r.slots {
				v, err := l.wait(waitRoom, need-r.slots, deadline)
				if err != nil {
					return err
				}
				l.outTail = v
			}
			if l.outTail > l.outHead {
				return protocolError("the reader released %d slots, only %d were published", l.outTail, l.outHead)
			}
		}
		limit := (l.outTail+r.slots)*sb - base // writable up to here
		end := min(total, limit, w+batchBytes)
		if w == 0 {
			hb := r.span(base, hdrArea)
			h.Encode(hb)
			// The byte after the header says whether the body is a
			// window reference; it is always written, since the slot
			// holds whatever an older message left there.
			hb[transport.HeaderSize] = 0
			if lent {
				hb[transport.HeaderSize] = lentMark
			}
			w = hdrArea
		}
		if end > w {
			b := payload[w-hdrArea : end-hdrArea]
			switch {
			case nt:
				r.putNT(base+w, b)
			case len(payload) >= ntMin:
				l.timedPut(base+w, b)
			default:
				r.put(base+w, b)
			}
			w = end
		}
		pub := (base + w) / sb
		if w == total {
			pub = last
		}
		if pub > l.outHead {
			l.outHead = pub
			r.head.Store(pub)
			if r.cwait.Load() != 0 && r.cwait.CompareAndSwap(1, 0) {
				l.peerData.wake()
			}
		}
	}
	return nil
}

// streamTo decides whether the next large message to pr is written with
// non-temporal stores (see ntMin).
func (l *link) streamTo() bool {
	if !haveNT {
		return false
	}
	if forceStream {
		return true
	}
	if l.stream {
		if nanotime()-l.since < int64(reprobe) {
			return true
		}
		// Send this one the ordinary way, and look again.
		l.stream, l.putRate = false, 0
	}
	return false
}

// forceStream makes every large message stream (tests of that path).
var forceStream bool

// timedPut is put for a large message sent the ordinary way: it times
// the copy and, once the average says copies into this ring are slow,
// turns streaming on.
func (l *link) timedPut(pos uint64, b []byte) {
	t0 := nanotime()
	l.out.put(pos, b)
	d := nanotime() - t0
	if len(b) < minTimed || d <= 0 || d > maxTimed {
		return
	}
	rate := int64(len(b)) * 1000 / d
	if l.putRate == 0 {
		l.putRate = rate
	} else {
		l.putRate += (rate - l.putRate) / 4
	}
	if l.putRate < slowPut {
		l.stream, l.since = true, nanotime()
	}
}

// await returns once slot index need-1 has been published.
func (l *link) awaitData(need uint64, deadline time.Time) error {
	if need <= l.inHead {
		return nil
	}
	v := l.in.head.Load()
	if v < need {
		var err error
		if v, err = l.wait(waitData, need, deadline); err != nil {
			return err
		}
	}
	if v-l.inTail > l.in.slots || v < l.inHead {
		return protocolError("head moved from %d to %d with %d slots released and %d in the ring", l.inHead, v, l.inTail, l.in.slots)
	}
	l.inHead = v
	return nil
}

// release frees the ring's slots up to (not including) slot index upto.
func (l *link) release(upto uint64) {
	if upto <= l.inTail {
		return
	}
	l.inTail = upto
	r := l.in
	r.tail.Store(upto)
	if r.pwait.Load() != 0 && r.pwait.CompareAndSwap(1, 0) {
		l.peerSpace.wake()
	}
}

// consume reads the pending message's payload into buf, or hands it to fn,
// or (both nil) skips it, releasing slots as it goes.
func (l *link) consume(buf []byte, fn func(int, []byte), deadline time.Time) error {
	if l.pendLent {
		return l.consumeLent(buf, fn)
	}
	r := l.in
	sb := r.slotBytes
	base := l.pendAt * sb
	total := hdrArea + l.pendLen
	last := l.pendAt + r.slotsFor(l.pendLen)
	for rd := uint64(hdrArea); rd < total; {
		// The slot holding byte rd must be published; the last slot of
		// the message is published only once it is complete.
		if err := l.awaitData((base+rd)/sb+1, deadline); err != nil {
			return err
		}
		end := min(total, l.inHead*sb-base, rd+batchBytes)
		switch {
		case buf != nil:
			r.get(base+rd, buf[rd-hdrArea:end-hdrArea])
		case fn != nil:
			for off := rd; off < end; {
				part := r.span(base+off, end-off)
				fn(int(off-hdrArea), part)
				off += uint64(len(part))
			}
		}
		rd = end
		if rd < total {
			l.release((base + rd) / sb)
		}
	}
	l.pend = false
	l.release(last)
	return nil
}

// consumeLent is consume of a lent payload: it is read in the peer's
// window, and the reference's slot released after, which tells the peer
// (AwaitLent) that it may change those bytes again.
func (l *link) consumeLent(buf []byte, fn func(int, []byte)) error {
	if buf != nil || fn != nil {
		data, err := l.theirs.lookup(l.pendRef)
		if err != nil {
			// The peer would only lend again: fail the group, and say
			// how to run without loans.
			return protocolError("%v (%s=0 on every rank turns lending off)", err, EnvLend)
		}
		off, n := l.pendRef.off, l.pendLen
		if off > uint64(len(data)) || n > uint64(len(data))-off {
			return protocolError("lent %d bytes at %d of a %d-byte window", n, off, len(data))
		}
		src := data[off : off+n]
		if buf != nil {
			copy(buf, src)
		} else if n > 0 {
			fn(0, src)
		}
	}
	l.pend, l.pendLent = false, false
	l.release(l.pendEnd)
	return nil
}
