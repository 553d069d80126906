package collective

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// The Comm methods: validate locally (an ArgError leaves the group
// usable), then run.

func (g *group) argErr(k opKind, format string, a ...any) error {
	return &ArgError{Op: k.String(), Rank: g.rank, Reason: fmt.Sprintf(format, a...)}
}

func (g *group) checkBuf(k opKind, name string, b Buffer) error {
	if b.dtype.Size() == 0 {
		return g.argErr(k, "%s buffer has no dtype (build it with Float32s, Int64s, ...)", name)
	}
	if len(b.data)%b.dtype.Size() != 0 {
		return g.argErr(k, "%s buffer is %d bytes, not a whole number of %s elements", name, len(b.data), b.dtype)
	}
	return nil
}

func (g *group) checkPair(k opKind, send, recv Buffer) error {
	if err := g.checkBuf(k, "send", send); err != nil {
		return err
	}
	if err := g.checkBuf(k, "recv", recv); err != nil {
		return err
	}
	if send.dtype != recv.dtype {
		return g.argErr(k, "send is %s but recv is %s", send.dtype, recv.dtype)
	}
	return nil
}

// checkSameShape: send and recv have one dtype and length, and are either
// the same memory (in place) or disjoint. where prefixes the messages.
func (g *group) checkSameShape(k opKind, send, recv Buffer, where string) error {
	if err := g.checkPair(k, send, recv); err != nil {
		return err
	}
	if len(send.data) != len(recv.data) {
		return g.argErr(k, "%ssend has %d elements but recv has %d; they must match", where, send.Len(), recv.Len())
	}
	if overlaps(send.data, recv.data) && !sameMemory(send.data, recv.data) {
		return g.argErr(k, "%ssend and recv overlap without being the same buffer; pass one buffer for in place", where)
	}
	return nil
}

func (g *group) checkOp(k opKind, d DType, op Op) error {
	if !Supports(d, op) {
		return g.argErr(k, "reduction %s is not supported for %s", op, d)
	}
	return nil
}

func (g *group) checkRoot(k opKind, root int) error {
	if root < 0 || root >= g.size {
		return g.argErr(k, "root %d is outside the group (ranks 0..%d)", root, g.size-1)
	}
	return nil
}

func (g *group) pickAlgo(bytes int) Algo { return g.algoFor(opBroadcast, bytes) }

func (g *group) checkAllReduce(send, recv Buffer, op Op) (call, error) {
	const k = opAllReduce
	if err := g.checkSameShape(k, send, recv, ""); err != nil {
		return call{}, err
	}
	if err := g.checkOp(k, send.dtype, op); err != nil {
		return call{}, err
	}
	return call{kind: k, dtype: send.dtype, op: op, algo: g.algoFor(k, len(send.data)), root: -1,
		count: send.Len(), send: send.data, recv: recv.data}, nil
}

func (g *group) AllReduce(ctx context.Context, send, recv Buffer, op Op) error {
	c, err := g.checkAllReduce(send, recv, op)
	if err != nil {
		return err
	}
	return g.do(ctx, &c)
}

func (g *group) ReduceScatter(ctx context.Context, send, recv Buffer, op Op) error {
	const k = opReduceScatter
	if err := g.checkPair(k, send, recv); err != nil {
		return err
	}
	if err := g.checkOp(k, send.dtype, op); err != nil {
		return err
	}
	if len(send.data) != g.size*len(recv.data) {
		return g.argErr(k, "send has %d elements; it must be the group size %d times recv's %d", send.Len(), g.size, recv.Len())
	}
	c := call{kind: k, dtype: send.dtype, op: op, algo: g.algoFor(k, len(send.data)), root: -1, count: recv.Len(), send: send.data, recv: recv.data}
	return g.do(ctx, &c)
}

func (g *group) AllGather(ctx context.Context, send, recv Buffer) error {
	const k = opAllGather
	if err := g.checkPair(k, send, recv); err != nil {
		return err
	}
	if len(recv.data) != g.size*len(send.data) {
		return g.argErr(k, "recv has %d elements; it must be the group size %d times send's %d", recv.Len(), g.size, send.Len())
	}
	c := call{kind: k, dtype: send.dtype, algo: g.algoFor(k, len(recv.data)), root: -1, count: send.Len(), send: send.data, recv: recv.data}
	return g.do(ctx, &c)
}

func (g *group) Broadcast(ctx context.Context, send, recv Buffer, root int) error {
	const k = opBroadcast
	if err := g.checkRoot(k, root); err != nil {
		return err
	}
	if err := g.checkBuf(k, "recv", recv); err != nil {
		return err
	}
	if g.rank == root {
		if err := g.checkSameShape(k, send, recv, "on the root, "); err != nil {
			return err
		}
	}
	c := call{kind: k, dtype: recv.dtype, algo: g.pickAlgo(len(recv.data)), root: root, count: recv.Len(), send: send.data, recv: recv.data}
	return g.do(ctx, &c)
}

func (g *group) Reduce(ctx context.Context, send, recv Buffer, op Op, root int) error {
	const k = opReduce
	if err := g.checkRoot(k, root); err != nil {
		return err
	}
	if err := g.checkBuf(k, "send", send); err != nil {
		return err
	}
	if err := g.checkOp(k, send.dtype, op); err != nil {
		return err
	}
	if g.rank == root {
		if err := g.checkSameShape(k, send, recv, "on the root, "); err != nil {
			return err
		}
	}
	c := call{kind: k, dtype: send.dtype, op: op, algo: g.pickAlgo(len(send.data)), root: root, count: send.Len(), send: send.data, recv: recv.data}
	return g.do(ctx, &c)
}

func (g *group) Barrier(ctx context.Context) error {
	c := call{kind: opBarrier, root: -1}
	return g.do(ctx, &c)
}

func (g *group) checkPeer(k string, peer int) error {
	if peer < 0 || peer >= g.size || peer == g.rank {
		return &ArgError{Op: k, Rank: g.rank, Reason: fmt.Sprintf("peer %d is not another rank of the group (ranks 0..%d, this is %d)", peer, g.size-1, g.rank)}
	}
	return nil
}

func (g *group) Send(ctx context.Context, buf Buffer, peer int) error {
	if err := g.checkPeer("Send", peer); err != nil {
		return err
	}
	if err := g.checkBuf(opSend, "send", buf); err != nil {
		return err
	}
	data := buf.data
	if data == nil {
		data = []byte{} // non-nil marks the sending side
	}
	c := call{kind: opSend, dtype: buf.dtype, root: -1, peer: peer, count: buf.Len(), send: data}
	return g.do(ctx, &c)
}

func (g *group) Recv(ctx context.Context, buf Buffer, peer int) error {
	if err := g.checkPeer("Recv", peer); err != nil {
		return err
	}
	if err := g.checkBuf(opSend, "recv", buf); err != nil {
		return err
	}
	c := call{kind: opSend, dtype: buf.dtype, root: -1, peer: peer, count: buf.Len(), recv: buf.data}
	return g.do(ctx, &c)
}

// ---- failures ----

// describe renders a message header's fingerprint as the call that made it.
func describe(h *transport.Header, from int) string {
	k := opKind(h.Op)
	d := DType(h.DType)
	switch k {
	case opSend:
		return fmt.Sprintf("rank %d's Send(%s ×%d) #%d", from, d, h.Count, h.Seq)
	case opBarrier:
		return fmt.Sprintf("rank %d's Barrier call #%d", from, h.Seq)
	}
	s := fmt.Sprintf("rank %d's %s(%s ×%d", from, k, d, h.Count)
	if k == opAllReduce || k == opReduceScatter || k == opReduce {
		s += ", " + Op(h.RedOp).String()
	}
	if k == opBroadcast || k == opReduce {
		s += fmt.Sprintf(", root %d", h.Root)
	}
	if k == opAllReduce || k == opBroadcast || k == opReduce {
		s += ", " + Algo(h.Algo).String()
	}
	return s + fmt.Sprintf(") call #%d", h.Seq)
}

// checkHeader compares a received header with the call this rank is making.
func (g *group) checkHeader(peer int, got, want *transport.Header, step uint32, n int) error {
	same := got.Op == want.Op && got.DType == want.DType && got.RedOp == want.RedOp &&
		got.Algo == want.Algo && got.Count == want.Count && got.Root == want.Root && got.Seq == want.Seq
	if !same {
		mine := describe(want, g.rank)
		if opKind(want.Op) == opSend {
			mine = fmt.Sprintf("rank %d's Recv(%s ×%d) #%d from rank %d", g.rank, DType(want.DType), want.Count, want.Seq, peer)
		}
		return &transport.Fault{Kind: transport.FaultMismatch, Peer: peer, Reporter: g.rank, Op: want.Op, Seq: want.Seq,
			Detail: fmt.Sprintf("ranks disagree: %s met %s; every rank must make the same calls in the same order with the same dtype, count, op and root",
				mine, describe(got, peer))}
	}
	if got.Step != step || got.Length != uint64(n) {
		return &transport.Fault{Kind: transport.FaultProtocol, Peer: peer, Reporter: g.rank, Op: want.Op, Seq: want.Seq,
			Detail: fmt.Sprintf("rank %d expected message %d of %d bytes from rank %d in %s, got message %d of %d bytes (do all ranks use the same ring order and chunk size?)",
				g.rank, step, n, peer, describe(want, g.rank), got.Step, got.Length)}
	}
	return nil
}

func (g *group) canceled(kind opKind, seq uint64, ctx context.Context) *transport.Fault {
	return &transport.Fault{Kind: transport.FaultCanceled, Peer: g.rank, Reporter: g.rank, Op: uint8(kind), Seq: seq,
		Detail: fmt.Sprintf("rank %d's context ended during %s #%d (%v); the group is aborted", g.rank, kind, seq, context.Cause(ctx))}
}

// explain improves on a timeout: if another peer has already sent a
// message of this very call with another fingerprint (ranks that disagree
// on the root wait on different peers, so neither side ever reads the
// other's message), that disagreement is the real cause.
func (g *group) explain(err error) error {
	f, ok := err.(*transport.Fault)
	pk, can := g.tr.(transport.Peeker)
	if !ok || !can || f.Kind != transport.FaultTimeout || f.Reporter != g.rank || g.tr.Fault() != nil {
		return err
	}
	var h transport.Header
	for p := 0; p < g.size; p++ {
		if p == g.rank || p == f.Peer || !pk.PeekHeader(p, &h) {
			continue
		}
		if h.Seq != g.hdr.Seq || h.Op == uint8(opSend) || g.hdr.Op == uint8(opSend) {
			continue // another call (or point-to-point traffic): no evidence
		}
		if mm := g.checkHeader(p, &h, &g.hdr, h.Step, int(h.Length)); mm != nil {
			mf := mm.(*transport.Fault)
			mf.Detail += fmt.Sprintf(" (found while rank %d waited in vain for rank %d)", g.rank, f.Peer)
			return mf
		}
	}
	// Ranks blocked on one another time out together. Give a peer's
	// notice, which may carry the cause, a moment to arrive before
	// publishing a bare timeout.
	for range timeoutGrace / (10 * time.Millisecond) {
		if first := g.tr.Fault(); first != nil {
			return first
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// timeoutGrace: how long a rank that timed out waits for a better
// explanation from its peers before it reports the timeout itself.
const timeoutGrace = 300 * time.Millisecond

// asFault turns any transport error into a Fault.
func (g *group) asFault(err error) *transport.Fault {
	var f *transport.Fault
	if errors.As(err, &f) {
		return f
	}
	return &transport.Fault{Kind: transport.FaultProtocol, Peer: -1, Reporter: g.rank, Detail: err.Error()}
}

// fail aborts the group with err's fault (telling every peer), records the
// first failure and returns it as a *PeerError.
func (g *group) fail(err error, c *call, seq uint64) error {
	if errors.Is(err, errLaneStopped) {
		err = g.tr.Fault()
	}
	f := g.asFault(g.explain(err))
	g.tr.Abort(f)
	if first := g.tr.Fault(); first != nil {
		f = first
	}
	pe := &PeerError{Rank: f.Peer, Op: c.kind.String(), Seq: seq, Err: f}
	g.mu.Lock()
	if g.err == nil {
		g.err = pe
	}
	g.mu.Unlock()
	return pe
}
