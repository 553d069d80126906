package collective

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// opKind is the collective kind carried in every message header.
type opKind uint8

const (
	opAllReduce opKind = 1 + iota
	opReduceScatter
	opAllGather
	opBroadcast
	opReduce
	opBarrier
	opSend // point-to-point; the receiver expects this kind from its Recv
)

func (k opKind) String() string {
	switch k {
	case opAllReduce:
		return "AllReduce"
	case opReduceScatter:
		return "ReduceScatter"
	case opAllGather:
		return "AllGather"
	case opBroadcast:
		return "Broadcast"
	case opReduce:
		return "Reduce"
	case opBarrier:
		return "Barrier"
	case opSend:
		return "Send"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// inlineMax is the largest message the executor sends from the calling
// goroutine while it still has receives to make. Below it a socket buffer
// always has room, so sending first and receiving after cannot deadlock, and
// skipping the hand-off to the send lane saves microseconds per message.
const inlineMax = 64 << 10

// maxCachedSchedules bounds the schedule cache; training loops repeat a
// few shapes, so this is only a guard against unbounded growth.
const maxCachedSchedules = 512

type schedKey struct {
	kind  opKind
	algo  Algo
	count int
	esize int
	root  int
}

// call is one collective or point-to-point call, validated.
type call struct {
	kind  opKind
	dtype DType
	op    Op
	algo  Algo
	root  int
	peer  int
	count int // the fingerprint's count (see fingerprint)
	send  []byte
	recv  []byte
}

type group struct {
	tr     transport.Transport
	poller transport.Poller // tr, if it can poll; else nil
	// inPlace is tr, if it can hand some peers' payloads over where they
	// lie (shared memory); else nil. A reduction from such a peer reads
	// its data there instead of from a copy in scratch (inplace.go).
	inPlace transport.InPlaceReceiver
	// lender is tr, if it can lend payloads to some peer (shared memory,
	// for buffers in an shm.Window); else nil, as it is where no link
	// lends, which formation settled (lend.go).
	lender transport.Lender
	rank   int
	size   int
	cfg    Config
	ring   []int       // ring[p] is the rank at ring position p
	pos    int         // this rank's position
	hier   *hierLayout // nil: no hierarchy (hier.go)
	// hasHier is hier != nil, which no Reorder changes (the layout's
	// shape comes from the hosts, not the order): calls read it before
	// their turn, when hier may be changing.
	hasHier bool

	// Calls run one at a time in the order they were made: each takes a
	// ticket and waits for its turn. mu guards everything down to err.
	mu      sync.Mutex
	turn    *sync.Cond
	next    uint64 // next ticket to hand out
	done    uint64 // tickets completed
	collSeq uint64 // collective calls made
	sendSeq []uint64
	recvSeq []uint64
	queue   []*asyncCall
	closed  bool
	err     error // sticky: the first failure

	// Only the goroutine whose turn it is touches these.
	cache   map[schedKey]*schedule
	scratch []byte
	work    []byte
	piece   inPlaceReduce // the reduction in place under way (inplace.go)
	loans   loans         // the call's lent sends (lend.go)
	// Headers live here rather than on the stack: handed to a Transport
	// (an interface), a stack variable would escape and cost an
	// allocation per message.
	hdr     transport.Header // the call's fingerprint
	sendHdr transport.Header // what the send lane (or the inline path) sends
	gotHdr  transport.Header // what the receive side last read

	// The send lane: a goroutine that runs a schedule's sends while the
	// caller runs its receives.
	laneStart chan laneJob
	laneDone  chan error
	sendsDone atomic.Int32
	recvsDone atomic.Int32
	laneFail  atomic.Bool
	sendKick  chan struct{}
	recvKick  chan struct{}

	workers sync.WaitGroup

	stats [opSend + 1]opCounters // by kind; read by Stats from any goroutine
}

type laneJob struct {
	s        *schedule
	hdr      transport.Header
	work     []byte
	deadline time.Time
}

type asyncCall struct {
	ctx    context.Context
	c      call
	ticket uint64
	seq    uint64
	req    *Request
}

// New forms a group over a connected transport. Every rank of the
// transport must call it with an equivalent Config.
func New(tr transport.Transport, cfg Config) (Comm, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := tr.Size()
	ring := cfg.RingOrder
	if ring == nil {
		ring = make([]int, n)
		for i := range ring {
			ring[i] = i
		}
	}
	pos, err := ringPosition(ring, n, tr.Rank())
	if err != nil {
		return nil, err
	}
	g := &group{
		tr:        tr,
		rank:      tr.Rank(),
		size:      n,
		cfg:       cfg,
		ring:      ring,
		pos:       pos,
		sendSeq:   make([]uint64, n),
		recvSeq:   make([]uint64, n),
		cache:     make(map[schedKey]*schedule),
		laneStart: make(chan laneJob),
		laneDone:  make(chan error, 1),
		sendKick:  make(chan struct{}, 1),
		recvKick:  make(chan struct{}, 1),
	}
	g.poller, _ = tr.(transport.Poller)
	g.inPlace, _ = tr.(transport.InPlaceReceiver)
	if l, ok := tr.(transport.Lender); ok && l.Lends() {
		g.lender = l
	}
	g.piece.fn = g.piece.reduce // bound once: a method value made per call would allocate
	if g.hier, err = newHierLayout(cfg.Hosts, tr, ring, g.rank); err != nil {
		return nil, err
	}
	g.hasHier = g.hier != nil
	g.turn = sync.NewCond(&g.mu)
	g.workers.Add(2)
	go g.sendLane()
	go g.asyncWorker()
	return g, nil
}

func (g *group) Rank() int { return g.rank }
func (g *group) Size() int { return g.size }

// begin takes a ticket and waits for its turn. Collective calls get the
// next group-wide sequence number; point-to-point calls count per peer.
// On a closed group it takes no ticket (ticketed is false), so that the
// caller must not call end.
func (g *group) begin(c *call) (seq uint64, ticketed bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, false, &PeerError{Rank: -1, Op: c.kind.String(), Err: fmt.Errorf("rank %d: group is %w", g.rank, ErrClosed)}
	}
	t := g.next
	g.next++
	seq = g.nextSeq(c)
	for g.done != t {
		g.turn.Wait()
	}
	return seq, true, g.err
}

// nextSeq assigns c's sequence number; mu must be held.
func (g *group) nextSeq(c *call) uint64 {
	switch {
	case c.kind == opSend && c.send != nil:
		g.sendSeq[c.peer]++
		return g.sendSeq[c.peer]
	case c.kind == opSend:
		g.recvSeq[c.peer]++
		return g.recvSeq[c.peer]
	}
	g.collSeq++
	return g.collSeq
}

func (g *group) end() {
	g.mu.Lock()
	g.done++
	g.turn.Broadcast()
	g.mu.Unlock()
}

// do runs one validated call synchronously.
func (g *group) do(ctx context.Context, c *call) error {
	seq, ticketed, err := g.begin(c)
	if err == nil {
		err = g.exec(ctx, c, seq)
	}
	if ticketed {
		g.end()
	}
	return err
}

func (g *group) AllReduceAsync(ctx context.Context, send, recv Buffer, op Op) *Request {
	req := &Request{done: make(chan struct{})}
	c, err := g.checkAllReduce(send, recv, op)
	if err != nil {
		req.err = err
		close(req.done)
		return req
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		req.err = &PeerError{Rank: -1, Op: "AllReduce", Err: fmt.Errorf("rank %d: group is %w", g.rank, ErrClosed)}
		close(req.done)
		return req
	}
	a := &asyncCall{ctx: ctx, c: c, ticket: g.next, req: req}
	g.next++
	a.seq = g.nextSeq(&a.c)
	g.queue = append(g.queue, a)
	g.turn.Broadcast()
	g.mu.Unlock()
	return req
}

// asyncWorker runs queued calls in ticket order until the group closes and
// the queue is empty.
func (g *group) asyncWorker() {
	defer g.workers.Done()
	g.mu.Lock()
	for {
		for len(g.queue) == 0 && !g.closed {
			g.turn.Wait()
		}
		if len(g.queue) == 0 {
			g.mu.Unlock()
			return
		}
		a := g.queue[0]
		g.queue[0] = nil
		g.queue = g.queue[1:]
		for g.done != a.ticket {
			g.turn.Wait()
		}
		err := g.err
		g.mu.Unlock()
		if err == nil {
			err = g.exec(a.ctx, &a.c, a.seq)
		}
		a.req.err = err
		close(a.req.done)
		g.mu.Lock()
		g.done++
		g.turn.Broadcast()
	}
}

func (g *group) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.turn.Broadcast()
	// Wait for every call already made (queued async ones included).
	t := g.next
	g.next++
	for g.done != t {
		g.turn.Wait()
	}
	g.mu.Unlock()
	close(g.laneStart)
	err := g.tr.Close()
	g.workers.Wait()
	return err
}

// exec runs c and counts it; it is called only by the goroutine whose
// turn it is.
func (g *group) exec(ctx context.Context, c *call, seq uint64) error {
	t0 := time.Now()
	err := g.execCall(ctx, c, seq)
	st := &g.stats[c.kind]
	st.calls.Add(1)
	st.bytes.Add(int64(max(len(c.send), len(c.recv))))
	st.nanos.Add(int64(time.Since(t0)))
	return err
}

func (g *group) execCall(ctx context.Context, c *call, seq uint64) error {
	// Empty collectives need no messages; point-to-point ones are still
	// sent, so that both sides count them.
	if c.kind != opSend && (g.size == 1 || c.count == 0 && c.kind != opBarrier) {
		g.local(c)
		return nil
	}
	deadline := time.Now().Add(g.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if ctx.Done() != nil {
		kind := c.kind
		if ctx.Err() != nil {
			return g.fail(g.canceled(kind, seq, ctx), c, seq)
		}
		stop := context.AfterFunc(ctx, func() { g.tr.Abort(g.canceled(kind, seq, ctx)) })
		defer stop()
	}
	g.hdr = transport.Header{
		Kind:  transport.KindData,
		Op:    uint8(c.kind),
		DType: uint8(c.dtype),
		RedOp: uint8(c.op),
		Algo:  uint8(c.algo),
		Seq:   seq,
		Count: uint64(c.count),
		Root:  int32(c.root),
	}
	hdr := &g.hdr
	var err error
	switch c.kind {
	case opSend:
		n := max(len(c.send), len(c.recv))
		g.poll(n <= inlineMax || g.cfg.polls(n))
		if c.send != nil {
			g.sendHdr = *hdr
			err = g.tr.Send(c.peer, &g.sendHdr, c.send, deadline)
		} else {
			err = g.recvInto(c.peer, hdr, 0, c.recv, deadline)
		}
	default:
		work := g.prepare(c)
		s := g.schedule(c)
		err = g.run(s, hdr, c.dtype, c.op, work, deadline)
		if err == nil {
			g.finish(c, work)
		}
	}
	if err != nil {
		return g.fail(err, c, seq)
	}
	return nil
}

// local completes a call that needs no communication: a group of one, or
// an empty buffer.
func (g *group) local(c *call) {
	switch c.kind {
	case opAllReduce, opBroadcast:
		copy(c.recv, c.send)
	case opReduce:
		if g.rank == c.root {
			copy(c.recv, c.send)
		}
	case opReduceScatter:
		copy(c.recv, c.send[g.rank*len(c.recv):])
	case opAllGather:
		copy(c.recv[g.rank*len(c.send):], c.send)
	}
	// Avg over one rank is the identity.
}

// prepare returns the buffer the schedule works in, holding this rank's
// input laid out as the algorithm expects.
func (g *group) prepare(c *call) []byte {
	switch c.kind {
	case opAllReduce:
		if !sameMemory(c.send, c.recv) {
			copy(c.recv, c.send)
		}
		return c.recv
	case opReduceScatter:
		// Partial sums are built in a private copy so that send is left as
		// the caller gave it.
		w := g.workBuf(len(c.send))
		copy(w, c.send)
		return w
	case opAllGather:
		copy(c.recv[g.rank*len(c.send):], c.send)
		return c.recv
	case opBroadcast:
		if g.rank == c.root && !sameMemory(c.send, c.recv) {
			copy(c.recv, c.send)
		}
		return c.recv
	case opReduce:
		if g.rank == c.root {
			if !sameMemory(c.send, c.recv) {
				copy(c.recv, c.send)
			}
			return c.recv
		}
		w := g.workBuf(len(c.send))
		copy(w, c.send)
		return w
	}
	return nil
}

// finish copies results out of a private work buffer and completes Avg.
func (g *group) finish(c *call, work []byte) {
	switch c.kind {
	case opReduceScatter:
		copy(c.recv, work[g.rank*len(c.recv):])
		if c.op == Avg {
			scaleForAvg(c.dtype, c.recv, g.size)
		}
	case opAllReduce:
		if c.op == Avg {
			scaleForAvg(c.dtype, c.recv, g.size)
		}
	case opReduce:
		if c.op == Avg && g.rank == c.root {
			scaleForAvg(c.dtype, c.recv, g.size)
		}
	}
}

func (g *group) workBuf(n int) []byte {
	if cap(g.work) < n {
		g.work = make([]byte, n)
	}
	return g.work[:n]
}

func (g *group) scratchBuf(n int) []byte {
	if cap(g.scratch) < n {
		g.scratch = make([]byte, n)
	}
	return g.scratch[:n]
}

// schedule returns the (cached) schedule for c on this rank.
func (g *group) schedule(c *call) *schedule {
	esize := max(1, c.dtype.Size()) // Barrier has no dtype
	key := schedKey{kind: c.kind, algo: c.algo, count: c.count, esize: esize, root: c.root}
	if s, ok := g.cache[key]; ok {
		return s
	}
	if c.algo == AlgoHier {
		s := g.hierSchedule(c, esize)
		if len(g.cache) >= maxCachedSchedules {
			clear(g.cache)
		}
		g.cache[key] = s
		return s
	}
	sh := shape{n: g.size, pos: g.pos, ring: g.ring, esize: esize, chunkElems: max(1, g.cfg.ChunkBytes/esize)}
	rootPos := 0
	if c.root >= 0 {
		for p, r := range g.ring {
			if r == c.root {
				rootPos = p
			}
		}
	}
	var s *schedule
	switch c.kind {
	case opAllReduce:
		sh.count = c.count
		s = allReduceSchedule(c.algo, sh)
	case opReduceScatter:
		sh.count = c.count * g.size
		s = ringReduceScatterOnly(sh)
	case opAllGather:
		sh.count = c.count * g.size
		s = ringAllGatherOnly(sh)
	case opBroadcast:
		sh.count = c.count
		if c.algo == AlgoRecursiveDoubling {
			s = binomialBroadcast(sh, rootPos)
		} else {
			s = chainBroadcast(sh, rootPos)
		}
	case opReduce:
		sh.count = c.count
		if c.algo == AlgoRecursiveDoubling {
			s = binomialReduce(sh, rootPos)
		} else {
			s = chainReduce(sh, rootPos)
		}
	case opBarrier:
		s = disseminationBarrier(sh)
	}
	if len(g.cache) >= maxCachedSchedules {
		clear(g.cache)
	}
	g.cache[key] = s
	return s
}

// run executes s: inline when every message is small, or when s is paired
// and the transport polls for the call, otherwise on two lanes (sends on
// the lane goroutine, receives here).
func (g *group) run(s *schedule, hdr *transport.Header, dt DType, op Op, work []byte, deadline time.Time) error {
	scratch := g.scratchBuf(s.scratch)
	small := s.maxMsg <= inlineMax
	mid := g.cfg.polls(len(work))
	polling := g.poll(small || mid)
	// A paired schedule (halving-doubling) cannot deadlock in program
	// order, so up to PollBytes it runs inline too, where the transport
	// polls: at 4 ranks on 2 cores, 2 MiB took 3.24 against 3.81 ms on two
	// lanes (medians of 7 alternating runs; Open MPI 3.39). From there up
	// the two lanes' overlap of the two directions wins (4 MiB: 8.20
	// against 7.64 ms), and so it does where waits sleep (8 ranks on 2
	// cores: 1.03-1.15x the lanes' time from 128 KiB to 2 MiB).
	inline := small || len(s.sends) == 0 || len(s.recvs) == 0 || s.paired && mid && polling
	g.loans.start(g, s, len(work))
	if inline {
		sent := 0
		for i := range s.ops {
			x := &s.ops[i]
			var err error
			if x.kind == xSend {
				g.sendHdr = *hdr
				g.sendHdr.Step = x.step
				err = g.sendXfer(sent, x, work, deadline)
				sent++
			} else {
				err = g.recvXfer(x, hdr, dt, op, work, scratch, deadline)
			}
			if err != nil {
				return err
			}
		}
		return g.awaitLoans(int32(len(s.sends)), deadline)
	}
	g.sendsDone.Store(0)
	g.recvsDone.Store(0)
	g.laneFail.Store(false)
	g.laneStart <- laneJob{s: s, hdr: *hdr, work: work, deadline: deadline}
	rerr := g.runRecvs(s, hdr, dt, op, work, scratch, deadline)
	if rerr != nil {
		rerr = g.explain(rerr)
		g.stopLanes(rerr)
	}
	serr := <-g.laneDone
	if rerr != nil {
		return rerr
	}
	if serr != nil {
		return serr
	}
	return g.awaitLoans(int32(len(s.sends)), deadline)
}

// poll asks the transport to poll while it waits to receive or to send:
// for small messages that nothing else runs beside, and for the calls up
// to Config.PollBytes on both lanes. Both lanes poll together or neither:
// a receive that polls with runtime.Gosched keeps Go's scheduler from
// reaching the network poller, so a send parked there would not learn its
// socket has room until the receive gave up polling.
func (g *group) poll(on bool) bool {
	return g.poller != nil && g.poller.Poll(on)
}

// stopLanes makes the other lane give up: the transport is aborted (so a
// blocked send or receive returns) and a lane waiting for its turn wakes.
func (g *group) stopLanes(err error) {
	g.laneFail.Store(true)
	g.tr.Abort(g.asFault(err))
	kick(g.sendKick)
	kick(g.recvKick)
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// errLaneStopped is what a lane returns when the other lane failed first;
// the other lane's error is the one reported.
var errLaneStopped = fmt.Errorf("lane stopped: %w", ErrCanceled)

func (g *group) sendLane() {
	defer g.workers.Done()
	for job := range g.laneStart {
		g.laneDone <- g.runSends(&job)
	}
}

func (g *group) runSends(job *laneJob) error {
	s := job.s
	for i, idx := range s.sends {
		x := &s.ops[idx]
		for g.recvsDone.Load() < x.dep {
			if g.laneFail.Load() {
				return errLaneStopped
			}
			<-g.sendKick
		}
		g.sendHdr = job.hdr
		g.sendHdr.Step = x.step
		if err := g.sendXfer(i, x, job.work, job.deadline); err != nil {
			g.stopLanes(err)
			return err
		}
		g.sendsDone.Store(int32(i + 1))
		kick(g.recvKick)
	}
	return nil
}

func (g *group) runRecvs(s *schedule, hdr *transport.Header, dt DType, op Op, work, scratch []byte, deadline time.Time) error {
	for i, idx := range s.recvs {
		x := &s.ops[idx]
		// A message to be reduced lands in scratch, which no send reads,
		// so it is received before waiting for the sends still reading its
		// bytes of work: only the combine must wait for them. Waiting
		// first deadlocks when both ends of a link send a message larger
		// than the socket buffers and then receive over the same bytes
		// (recursive doubling of a large buffer): each send waits for the
		// peer to read, and each read would wait for its own send.
		if x.kind == xRecvReduce && g.canReduceInPlace(x) && g.sendsDone.Load() >= x.dep {
			// Nothing left to wait for: reduce straight from the peer's
			// ring into work (the wait above is what forbids this while
			// sends still read those bytes).
			if err := g.awaitLoans(x.fence, deadline); err != nil {
				return err
			}
			if err := g.recvReduceInPlace(x, hdr, dt, op, work, deadline); err != nil {
				return err
			}
			g.recvsDone.Store(int32(i + 1))
			kick(g.sendKick)
			continue
		}
		if x.kind == xRecvReduce {
			if err := g.recvInto(x.peer, hdr, x.step, scratch[:x.n], deadline); err != nil {
				return err
			}
		}
		for g.sendsDone.Load() < x.dep {
			if g.laneFail.Load() {
				return errLaneStopped
			}
			<-g.recvKick
		}
		if err := g.awaitLoans(x.fence, deadline); err != nil {
			return err
		}
		var err error
		if x.kind == xRecvReduce {
			g.combineInto(x, dt, op, work, scratch[:x.n])
		} else {
			err = g.recvInto(x.peer, hdr, x.step, work[x.off:x.off+x.n], deadline)
		}
		if err != nil {
			return err
		}
		g.recvsDone.Store(int32(i + 1))
		kick(g.sendKick)
	}
	return nil
}

// recvXfer receives one scheduled message and applies it.
func (g *group) recvXfer(x *xfer, hdr *transport.Header, dt DType, op Op, work, scratch []byte, deadline time.Time) error {
	if err := g.awaitLoans(x.fence, deadline); err != nil {
		return err
	}
	if x.kind != xRecvReduce {
		return g.recvInto(x.peer, hdr, x.step, work[x.off:x.off+x.n], deadline)
	}
	if g.canReduceInPlace(x) {
		return g.recvReduceInPlace(x, hdr, dt, op, work, deadline)
	}
	if err := g.recvInto(x.peer, hdr, x.step, scratch[:x.n], deadline); err != nil {
		return err
	}
	g.combineInto(x, dt, op, work, scratch[:x.n])
	return nil
}

// combineInto reduces a received message (in) into its bytes of work, in
// the operand order the schedule gave.
func (g *group) combineInto(x *xfer, dt DType, op Op, work, in []byte) {
	combineOrdered(x.recvFirst, dt, op, work[x.off:x.off+x.n], in)
}

// combineOrdered reduces in into w: in as the left operand where recvFirst.
func combineOrdered(recvFirst bool, dt DType, op Op, w, in []byte) {
	if op == Avg {
		op = Sum
	}
	if recvFirst {
		reduceBytes(dt, op, w, in, w)
	} else {
		reduceBytes(dt, op, w, w, in)
	}
}

// recvInto receives the next message from peer into dst after checking that
// its header matches what this rank expects (want, at message step).
func (g *group) recvInto(peer int, want *transport.Header, step uint32, dst []byte, deadline time.Time) error {
	got := &g.gotHdr
	if err := g.tr.RecvHeader(peer, got, deadline); err != nil {
		return err
	}
	if err := g.checkHeader(peer, got, want, step, len(dst)); err != nil {
		return err
	}
	return g.tr.RecvPayload(peer, dst, deadline)
}
