package shm

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// deadlineGrain: deadlines are rounded up to this so that consecutive
// waits reuse the timer already armed on an eventfd.
const deadlineGrain = 50 * time.Millisecond

// batchBytes is how much a sender copies into the ring before it
// publishes, and a receiver copies out before it releases: small enough
// that the two sides overlap, large enough that the shared counters'
// cache lines do not bounce for every few kilobytes.
const batchBytes = 64 << 10

// Streaming stores. A message of ntMin bytes or more may be written into
// the ring with non-temporal stores, which put the bytes in memory rather
// than in the writer's caches, and need not first fetch the lines that the
// reader still holds from the last lap of the ring. Whether that pays
// depends on the machine, and on a virtual machine it changes while a job
// runs, as the host moves the virtual CPUs. Measured on the 2-core
// development VM: while its two CPUs shared a cache, ordinary stores moved
// a 64 MiB all-reduce between 2 processes in 13.7 ms and streaming stores
// in 18.7; while they did not (a 64 KiB handoff between them took 4 times
// as long), a sender's ordinary copies into the ring ran at 2.4 GB/s
// instead of 14-28, the all-reduce took 50.8 ms, and with streaming stores
// 14.2. So a sender times its ordinary copies into the ring (an average
// over the last few); below slowPut it streams, and after reprobe it
// sends the ordinary way again to see whether the machine has changed.
const (
	ntMin   = 256 << 10
	slowPut = 5000 // MB/s
	reprobe = 200 * time.Millisecond
	// minTimed is the smallest copy that is timed, and maxTimed the
	// longest that counts: a copy that took longer was interrupted (the
	// process lost its core) and says nothing about the memory.
	minTimed = 32 << 10
	maxTimed = int64(500 * time.Microsecond)
)

// lookBurst is how many times a waiter looks at the ring between yields.
const lookBurst = 64

// tightPoll is how long a poll keeps its core before it also yields to
// other processes between bursts (from the start when Config.Yield is
// set). A peer that has not answered by then may be waiting for a core,
// this one included: a machine is rarely as idle as a benchmark's.
const tightPoll = int64(20 * time.Microsecond)

// maxBurst bounds what one burst of looks (and the yield after it) counts
// against the poll's budget.
const maxBurst = int64(20 * time.Microsecond)

// Transport is a shared-memory mesh between processes on one host. It
// implements transport.Transport, transport.Peeker and transport.Addresser.
// It is not a transport.Poller: it polls before every sleep, during bulk
// transfers too (Config.Spin), since on shared memory a poll costs no
// more than the sleep and wake-up it saves, and the waits inside a
// pipelined collective are short.
type Transport struct {
	rank, size int
	host       string
	spin       time.Duration
	yield      bool
	peers      []*peer

	// use guards the mappings: every call holds it for reading while it
	// touches a ring; shutdown takes it for writing to unmap.
	use      sync.RWMutex
	unmapped bool

	faultP  atomic.Pointer[transport.Fault]
	onFault func(*transport.Fault) // Config.OnFault
	mu      sync.Mutex
	closing bool

	shutOnce sync.Once
	wg       sync.WaitGroup
}

type peer struct {
	rank int
	pid  int
	ctrl *net.UnixConn
	// ctrlMu serialises writes on ctrl (fault notices and the goodbye).
	ctrlMu sync.Mutex
	gone   atomic.Bool // the peer said goodbye

	link

	// Sending side (one sender at a time): slots published so far.
	_       [64]byte // the two sides run on different threads
	outHead uint64
	outTail uint64 // last tail seen
	stream  bool   // large messages go in with non-temporal stores
	since   int64  // when stream was last turned on (nanotime)
	putRate int64  // moving average of timed ordinary copies, MB/s (0: none yet)

	// Receiving side (one receiver at a time).
	_       [64]byte
	inTail  uint64 // slots released so far
	inHead  uint64 // last head seen
	pend    bool   // a header was returned, its payload not yet read
	pendAt  uint64 // first slot of that message
	pendLen uint64 // its payload length
}

// Join forms the group: it blocks until every rank has joined or ctx
// ends. A group of one needs no other process and returns at once.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	id := hostIdentity(cfg.hostID)
	t := &Transport{rank: cfg.Rank, size: cfg.Size, host: id.host, spin: cfg.Spin, yield: cfg.Yield, onFault: cfg.OnFault,
		peers: make([]*peer, cfg.Size)}
	if cfg.Size == 1 {
		return t, nil
	}
	uln, sock, err := listenAbstract()
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", cfg.Rank, err)
	}
	defer uln.Close()
	var serveErr chan error
	if cfg.Rank == 0 {
		ln, err := net.Listen("tcp", cfg.Rendezvous)
		if err != nil {
			return nil, fmt.Errorf("rank 0: cannot listen on the rendezvous address %s: %w", cfg.Rendezvous, err)
		}
		serveErr = make(chan error, 1)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { serveErr <- serveRendezvous(sctx, ln, cfg.Size, cfg.Token) }()
	}
	tab, err := register(ctx, cfg, id, sock)
	if serveErr != nil {
		if serr := <-serveErr; serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		return nil, err
	}
	conns, err := connectMesh(ctx, cfg, tab, uln)
	if err != nil {
		return nil, err
	}
	// A cancelled ctx interrupts the exchanges below. Once they are done,
	// Join stops listening to ctx or, if ctx ended meanwhile, fails.
	canceled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(canceled)
		for _, c := range conns {
			if c != nil {
				c.SetDeadline(time.Unix(1, 0))
			}
		}
	})
	deadline := deadlineOf(ctx)
	for p, c := range conns {
		if p == t.rank {
			continue
		}
		l, xerr := exchange(c, t.rank, p, tab, deadline)
		if xerr != nil {
			err = fmt.Errorf("rank %d: setting up the rings with rank %d (pid %d): %w", t.rank, p, tab.PIDs[p], xerr)
			break
		}
		t.peers[p] = &peer{rank: p, pid: tab.PIDs[p], ctrl: c, link: *l}
	}
	if !stop() {
		<-canceled
		if err == nil {
			err = fmt.Errorf("rank %d: setting up the rings: %w", t.rank, context.Cause(ctx))
		} else {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}
	if err != nil {
		for p, c := range conns {
			if c != nil {
				c.Close()
			}
			if pr := t.peers[p]; pr != nil {
				pr.link.close()
			}
		}
		return nil, err
	}
	for _, pr := range t.peers {
		if pr != nil {
			t.wg.Add(1)
			go t.watch(pr)
		}
	}
	return t, nil
}

func (t *Transport) Rank() int { return t.rank }
func (t *Transport) Size() int { return t.size }

// PeerAddr says where peer runs, for error messages (transport.Addresser).
func (t *Transport) PeerAddr(p int) string {
	if p >= 0 && p < len(t.peers) && t.peers[p] != nil {
		return fmt.Sprintf("pid %d on %s", t.peers[p].pid, t.host)
	}
	return ""
}

func (t *Transport) Fault() *transport.Fault { return t.faultP.Load() }

// record stores f as the fault unless one is set, and wakes every waiting
// call. It reports whether f was the first.
func (t *Transport) record(f *transport.Fault) bool {
	t.mu.Lock()
	if t.faultP.Load() != nil {
		t.mu.Unlock()
		return false
	}
	t.faultP.Store(f)
	t.mu.Unlock()
	if t.onFault != nil {
		t.onFault(f)
	}
	for _, pr := range t.peers {
		if pr != nil {
			pr.myData.wake()
			pr.mySpace.wake()
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
			h := transport.Header{Kind: kind, From: int32(t.rank), Length: uint64(len(payload))}
			b := make([]byte, transport.HeaderSize+len(payload))
			h.Encode(b)
			copy(b[transport.HeaderSize:], payload)
			pr.ctrlMu.Lock()
			defer pr.ctrlMu.Unlock()
			pr.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
			pr.ctrl.Write(b)
		}()
	}
	wg.Wait()
}

// watch reads peer's control connection: fault notices, the goodbye, and
// the end of the connection that tells of a dead process. The kernel
// closes a process's sockets however it ends (SIGKILL included), so a
// peer's death is seen here at once, whether or not data is flowing.
func (t *Transport) watch(pr *peer) {
	defer t.wg.Done()
	var hb [transport.HeaderSize]byte
	for {
		if _, err := io.ReadFull(pr.ctrl, hb[:]); err != nil {
			if pr.gone.Load() {
				return
			}
			t.mu.Lock()
			closing := t.closing
			t.mu.Unlock()
			if closing {
				return
			}
			t.Abort(&transport.Fault{Kind: transport.FaultPeerLost, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("lost rank %d (pid %d on %s): its control socket closed without a goodbye (%v); the process died or was killed", pr.rank, pr.pid, t.host, err)})
			return
		}
		var h transport.Header
		if err := h.Decode(hb[:]); err != nil || h.Length > 1<<16 {
			t.Abort(&transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("garbage on the control socket from rank %d (pid %d): %v", pr.rank, pr.pid, err)})
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(pr.ctrl, payload); err != nil {
			continue // the next read reports the broken connection
		}
		switch h.Kind {
		case transport.KindGoodbye:
			pr.gone.Store(true)
			// Wake a call waiting on this peer: it must not wait for a
			// rank that has left.
			pr.myData.wake()
			pr.mySpace.wake()
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

func (t *Transport) peer(p int) (*peer, error) {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return nil, fmt.Errorf("shm: rank %d has no peer %d", t.rank, p)
	}
	if f := t.Fault(); f != nil {
		return nil, f
	}
	return t.peers[p], nil
}

// enter begins a call that touches p's rings; leave ends it.
func (t *Transport) enter(p int) (*peer, error) {
	pr, err := t.peer(p)
	if err != nil {
		return nil, err
	}
	t.use.RLock()
	// Checked under the lock: shutdown records a fault before it unmaps.
	if f := t.Fault(); f != nil || t.unmapped {
		t.use.RUnlock()
		if f == nil {
			return nil, fmt.Errorf("shm: rank %d: transport %w", t.rank, transport.ErrClosed)
		}
		return nil, f
	}
	return pr, nil
}

func (t *Transport) leave() { t.use.RUnlock() }

func roundDeadline(d time.Time) time.Time {
	if d.IsZero() {
		return d
	}
	g := int64(deadlineGrain)
	return time.Unix(0, (d.UnixNano()/g+1)*g)
}

// A wait is for the peer's counter (head for a receiver, tail for a
// sender) to reach a target.
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
func (t *Transport) wait(pr *peer, kind waitKind, target uint64, deadline time.Time) (uint64, error) {
	var ctr *atomic.Uint64
	var flag *atomic.Uint32
	var ev *evfd
	if kind == waitData {
		ctr, flag, ev = pr.in.head, pr.in.cwait, pr.myData
	} else {
		ctr, flag, ev = pr.out.tail, pr.out.pwait, pr.mySpace
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
	for burst := 0; t.spin > 0 || burst == 0; burst++ {
		for range lookBurst {
			if v := ctr.Load(); v >= target {
				return v, nil
			}
		}
		if f := t.Fault(); f != nil {
			return 0, f
		}
		now := nanotime()
		if burst > 0 {
			spent += min(now-last, maxBurst)
		}
		last = now
		if spent >= int64(t.spin) || !deadline.IsZero() && now > deadline.UnixNano() {
			break
		}
		runtime.Gosched()
		if t.yield || spent > tightPoll {
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
	}
	for {
		flag.Store(1)
		if v := ctr.Load(); v >= target {
			flag.Store(0)
			return v, nil
		}
		if f := t.Fault(); f != nil {
			flag.Store(0)
			return 0, f
		}
		if pr.gone.Load() {
			flag.Store(0)
			if v := ctr.Load(); v >= target {
				return v, nil
			}
			f := &transport.Fault{Kind: transport.FaultPeerLost, Peer: pr.rank, Reporter: t.rank,
				Detail: fmt.Sprintf("rank %d (pid %d) closed its group while rank %d was still in a call with it", pr.rank, pr.pid, t.rank)}
			t.Abort(f)
			return 0, t.Fault()
		}
		err := ev.sleep(deadline)
		flag.Store(0)
		if err != nil {
			if v := ctr.Load(); v >= target {
				return v, nil
			}
			if f := t.Fault(); f != nil {
				return 0, f
			}
			if os.IsTimeout(err) {
				what := "heard nothing from"
				if kind == waitRoom {
					what = "could not send to (it stopped reading)"
				}
				// Not aborted here: the caller may find a better
				// explanation (PeekHeader) before it aborts the group.
				return 0, &transport.Fault{Kind: transport.FaultTimeout, Peer: pr.rank, Reporter: t.rank,
					Detail: fmt.Sprintf("rank %d %s rank %d (pid %d) before the deadline: rank %d is stuck, stopped, or slower than the call's timeout (RINGO_TIMEOUT)", t.rank, what, pr.rank, pr.pid, pr.rank)}
			}
			return 0, fmt.Errorf("shm: rank %d: waiting for rank %d: %w", t.rank, pr.rank, err)
		}
	}
}

func nanotime() int64 { return time.Now().UnixNano() }

// protocolFault aborts the group over a peer that broke the ring's rules.
func (t *Transport) protocolFault(pr *peer, format string, a ...any) error {
	t.Abort(&transport.Fault{Kind: transport.FaultProtocol, Peer: pr.rank, Reporter: t.rank,
		Detail: fmt.Sprintf("rank %d: ring from rank %d (pid %d): ", t.rank, pr.rank, pr.pid) + fmt.Sprintf(format, a...)})
	return t.Fault()
}

// slotsFor is how many slots a message with n payload bytes takes.
func (r *ring) slotsFor(n uint64) uint64 { return (hdrArea + n + r.slotBytes - 1) / r.slotBytes }

func (t *Transport) Send(p int, h *transport.Header, payload []byte, deadline time.Time) error {
	pr, err := t.enter(p)
	if err != nil {
		return err
	}
	defer t.leave()
	if pr.gone.Load() {
		t.Abort(&transport.Fault{Kind: transport.FaultPeerLost, Peer: p, Reporter: t.rank,
			Detail: fmt.Sprintf("rank %d (pid %d) closed its group while rank %d was still sending to it", p, pr.pid, t.rank)})
		return t.Fault()
	}
	h.From = int32(t.rank)
	h.Length = uint64(len(payload))
	r := pr.out
	sb := r.slotBytes
	start := pr.outHead
	nt := false
	if len(payload) >= ntMin {
		nt = t.streamTo(pr)
	}
	base := start * sb // stream byte position of the message
	total := hdrArea + uint64(len(payload))
	last := start + r.slotsFor(uint64(len(payload)))
	var w uint64 // bytes of the message written
	for w < total {
		// The slot holding byte w must be free: its index < tail + slots.
		need := (base+w)/sb + 1
		if need > pr.outTail+r.slots {
			pr.outTail = r.tail.Load()
			if need > pr.outTail+r.slots {
				v, err := t.wait(pr, waitRoom, need-r.slots, deadline)
				if err != nil {
					return err
				}
				pr.outTail = v
			}
			if pr.outTail > pr.outHead {
				return t.protocolFault(pr, "the reader released %d slots, only %d were published", pr.outTail, pr.outHead)
			}
		}
		limit := (pr.outTail+r.slots)*sb - base // writable up to here
		end := min(total, limit, w+batchBytes)
		if w == 0 {
			h.Encode(r.span(base, transport.HeaderSize))
			w = hdrArea
		}
		if end > w {
			b := payload[w-hdrArea : end-hdrArea]
			switch {
			case nt:
				r.putNT(base+w, b)
			case len(payload) >= ntMin:
				t.timedPut(pr, base+w, b)
			default:
				r.put(base+w, b)
			}
			w = end
		}
		pub := (base + w) / sb
		if w == total {
			pub = last
		}
		if pub > pr.outHead {
			pr.outHead = pub
			r.head.Store(pub)
			if r.cwait.Load() != 0 && r.cwait.CompareAndSwap(1, 0) {
				pr.peerData.wake()
			}
		}
	}
	return nil
}

// streamTo decides whether the next large message to pr is written with
// non-temporal stores (see ntMin).
func (t *Transport) streamTo(pr *peer) bool {
	if !haveNT {
		return false
	}
	if forceStream {
		return true
	}
	if pr.stream {
		if nanotime()-pr.since < int64(reprobe) {
			return true
		}
		// Send this one the ordinary way, and look again.
		pr.stream, pr.putRate = false, 0
	}
	return false
}

// forceStream makes every large message stream (tests of that path).
var forceStream bool

// timedPut is put for a large message sent the ordinary way: it times
// the copy and, once the average says copies into this ring are slow,
// turns streaming on.
func (t *Transport) timedPut(pr *peer, pos uint64, b []byte) {
	t0 := nanotime()
	pr.out.put(pos, b)
	d := nanotime() - t0
	if len(b) < minTimed || d <= 0 || d > maxTimed {
		return
	}
	rate := int64(len(b)) * 1000 / d
	if pr.putRate == 0 {
		pr.putRate = rate
	} else {
		pr.putRate += (rate - pr.putRate) / 4
	}
	if pr.putRate < slowPut {
		pr.stream, pr.since = true, nanotime()
	}
}

// await returns once slot index need-1 has been published.
func (t *Transport) awaitData(pr *peer, need uint64, deadline time.Time) error {
	if need <= pr.inHead {
		return nil
	}
	v := pr.in.head.Load()
	if v < need {
		var err error
		if v, err = t.wait(pr, waitData, need, deadline); err != nil {
			return err
		}
	}
	if v-pr.inTail > pr.in.slots || v < pr.inHead {
		return t.protocolFault(pr, "head moved from %d to %d with %d slots released and %d in the ring", pr.inHead, v, pr.inTail, pr.in.slots)
	}
	pr.inHead = v
	return nil
}

// release frees the ring's slots up to (not including) slot index upto.
func (t *Transport) release(pr *peer, upto uint64) {
	if upto <= pr.inTail {
		return
	}
	pr.inTail = upto
	r := pr.in
	r.tail.Store(upto)
	if r.pwait.Load() != 0 && r.pwait.CompareAndSwap(1, 0) {
		pr.peerSpace.wake()
	}
}

func (t *Transport) RecvHeader(p int, h *transport.Header, deadline time.Time) error {
	pr, err := t.enter(p)
	if err != nil {
		return err
	}
	defer t.leave()
	if pr.pend {
		// A header whose payload was never asked for: skip the message.
		if err := t.consume(pr, nil, nil, deadline); err != nil {
			return err
		}
	}
	if err := t.awaitData(pr, pr.inTail+1, deadline); err != nil {
		return err
	}
	r := pr.in
	if err := h.Decode(r.span(pr.inTail*r.slotBytes, transport.HeaderSize)); err != nil || h.Kind != transport.KindData {
		if err == nil {
			err = fmt.Errorf("a %v message in a data ring", h.Kind)
		}
		return t.protocolFault(pr, "bad message: %v", err)
	}
	pr.pend, pr.pendAt, pr.pendLen = true, pr.inTail, h.Length
	return nil
}

func (t *Transport) RecvPayload(p int, buf []byte, deadline time.Time) error {
	pr, err := t.enter(p)
	if err != nil {
		return err
	}
	defer t.leave()
	if !pr.pend || uint64(len(buf)) != pr.pendLen {
		return fmt.Errorf("shm: rank %d: payload of %d bytes asked from rank %d, header said %d", t.rank, len(buf), p, pr.pendLen)
	}
	return t.consume(pr, buf, nil, deadline)
}

// RecvPayloadFunc is RecvPayload without the copy: it hands fn the payload
// of the message whose header RecvHeader just returned where it lies in
// the shared ring, piece by piece in order (off is each piece's offset in
// the payload), and frees each piece's slots once fn returns. fn must not
// keep part. n must equal the header's Length. It lets a reduction read
// the peer's data straight out of the ring instead of from a copy.
func (t *Transport) RecvPayloadFunc(p int, n int, fn func(off int, part []byte), deadline time.Time) error {
	pr, err := t.enter(p)
	if err != nil {
		return err
	}
	defer t.leave()
	if !pr.pend || uint64(n) != pr.pendLen {
		return fmt.Errorf("shm: rank %d: payload of %d bytes asked from rank %d, header said %d", t.rank, n, p, pr.pendLen)
	}
	return t.consume(pr, nil, fn, deadline)
}

// consume reads the pending message's payload into buf, or hands it to fn,
// or (both nil) skips it, releasing slots as it goes.
func (t *Transport) consume(pr *peer, buf []byte, fn func(int, []byte), deadline time.Time) error {
	r := pr.in
	sb := r.slotBytes
	base := pr.pendAt * sb
	total := hdrArea + pr.pendLen
	last := pr.pendAt + r.slotsFor(pr.pendLen)
	for rd := uint64(hdrArea); rd < total; {
		// The slot holding byte rd must be published; the last slot of
		// the message is published only once it is complete.
		if err := t.awaitData(pr, (base+rd)/sb+1, deadline); err != nil {
			return err
		}
		end := min(total, pr.inHead*sb-base, rd+batchBytes)
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
			t.release(pr, (base+rd)/sb)
		}
	}
	pr.pend = false
	t.release(pr, last)
	return nil
}

// PeekHeader reports the header of the next message from p if it has
// already arrived, without consuming it (transport.Peeker).
func (t *Transport) PeekHeader(p int, h *transport.Header) bool {
	if p < 0 || p >= t.size || t.peers[p] == nil {
		return false
	}
	// A faulted transport can still show what has arrived: this is for
	// explaining a failure.
	t.use.RLock()
	defer t.use.RUnlock()
	if t.unmapped {
		return false
	}
	pr := t.peers[p]
	r := pr.in
	at := pr.inTail
	if pr.pend {
		at = pr.pendAt + r.slotsFor(pr.pendLen)
	}
	if v := r.head.Load(); v <= at || v-pr.inTail > r.slots {
		return false
	}
	return h.Decode(r.span(at*r.slotBytes, transport.HeaderSize)) == nil && h.Kind == transport.KindData
}

// Close says goodbye to every peer, releases the rings and eventfds, and
// waits for the transport's goroutines.
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

// Kill drops everything without a goodbye, as a crashed process would:
// its peers see the control sockets close. It exists for tests of peers'
// failure handling.
func (t *Transport) Kill() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
	t.record(transport.KilledFault(t.rank))
	t.shutdown()
}

func (t *Transport) shutdown() { t.shutOnce.Do(t.doShutdown) }

func (t *Transport) doShutdown() {
	for _, pr := range t.peers {
		if pr != nil {
			pr.ctrl.Close()
		}
	}
	t.wg.Wait()
	// Calls in flight have been woken by the recorded fault; wait for
	// them to leave the rings before unmapping.
	t.use.Lock()
	t.unmapped = true
	for _, pr := range t.peers {
		if pr != nil {
			pr.link.close()
		}
	}
	t.use.Unlock()
}
