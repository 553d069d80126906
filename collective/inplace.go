package collective

import (
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
)

// Reducing in place: where the peer's message already lies in memory this
// rank can read (over shared memory, the ring the peer wrote it to; over
// TCP, the socket's 64 KiB read buffer, unless the message is striped), a
// reduction reads it there, piece by piece as it arrives, into its bytes
// of work, instead of copying all of it into scratch and then reading
// scratch again. The operands and their order are the same as
// combineInto's, so the result is the same, bit for bit.

// canReduceInPlace says whether x, a reduction, can read its message
// where the transport holds it.
func (g *group) canReduceInPlace(x *xfer) bool {
	return g.inPlace != nil && g.inPlace.InPlace(x.peer, x.n)
}

// recvReduceInPlace receives x's message and reduces it into work as its
// pieces come. Its caller has made sure no send still reads x's bytes of
// work.
func (g *group) recvReduceInPlace(x *xfer, want *transport.Header, dt DType, op Op, work []byte, deadline time.Time) error {
	got := &g.gotHdr
	if err := g.tr.RecvHeader(x.peer, got, deadline); err != nil {
		return err
	}
	if err := g.checkHeader(x.peer, got, want, x.step, x.n); err != nil {
		return err
	}
	p := &g.piece
	p.w, p.dt, p.op, p.recvFirst, p.es, p.held = work[x.off:x.off+x.n], dt, op, x.recvFirst, dt.Size(), 0
	err := g.inPlace.RecvPayloadFunc(x.peer, x.n, p.fn, deadline)
	p.w = nil
	return err
}

// inPlaceReduce is the state of one in-place reduction, kept in the group
// so that handing its method to the transport allocates nothing.
type inPlaceReduce struct {
	fn        func(off int, part []byte) // reduce, bound once
	w         []byte                     // the message's bytes of work
	dt        DType
	op        Op
	recvFirst bool
	es        int
	// carry holds the first bytes of an element that a piece ended in
	// the middle of (the transport's pieces end on 8-byte boundaries, so
	// this is for safety, not speed).
	carry [16]byte
	held  int
}

// reduce combines one piece of the message, at offset off, into w.
func (p *inPlaceReduce) reduce(off int, part []byte) {
	if p.held > 0 {
		k := min(p.es-p.held, len(part))
		copy(p.carry[p.held:], part[:k])
		p.held += k
		part, off = part[k:], off+k
		if p.held < p.es {
			return
		}
		combineOrdered(p.recvFirst, p.dt, p.op, p.w[off-p.es:off], p.carry[:p.es])
		p.held = 0
	}
	whole := len(part) - len(part)%p.es
	if whole > 0 {
		combineOrdered(p.recvFirst, p.dt, p.op, p.w[off:off+whole], part[:whole])
	}
	p.held = copy(p.carry[:], part[whole:])
}
