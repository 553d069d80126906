package collective

import (
	"fmt"
	"strings"
)

// A schedule is what an algorithm produces: the messages one rank sends
// and receives during one call, in program order, with no I/O of its own.
// Offsets are bytes into the call's work buffer (the result being built) or
// into the group's scratch buffer, where a message that must be reduced
// lands first.
//
// The executor runs sends and receives on two lanes so that sending one
// chunk overlaps receiving and reducing the next. The builder records, for
// every transfer, how many transfers of the other lane must have finished
// before it may start: a send waits for the receive that last wrote the
// bytes it reads, and a receive waits for the sends still reading the bytes
// it is about to overwrite. Algorithms therefore describe a plain
// sequential program and get safe pipelining for free. Small calls, and
// paired schedules of calls the transport polls for, run in program order
// on the calling goroutine instead (group.run).
type schedule struct {
	ops     []xfer  // program order
	sends   []int32 // indices into ops, in order
	recvs   []int32
	scratch int // bytes of scratch the receives need
	maxMsg  int // largest single message, bytes
	lends   int // sends marked lend
	// paired: every message belongs to an exchange between two ranks in
	// which the lower sends first and the higher receives first, chunk by
	// chunk, or goes one way only; run in program order on one goroutine
	// it cannot deadlock, whatever the sockets hold.
	paired bool
}

type xferKind uint8

const (
	xSend       xferKind = iota // send work[off:off+n] to peer
	xRecvCopy                   // receive into work[off:off+n]
	xRecvReduce                 // receive into scratch[soff:], then work[off:] = combine
)

type xfer struct {
	kind xferKind
	// recvFirst orders a reduction: work = recv (op) work when true,
	// work = work (op) recv when false. Algorithms pick the order so
	// that every rank combines the same operands the same way.
	recvFirst bool
	peer      int
	off, n    int
	soff      int
	// step numbers the messages between this rank and peer within one
	// call; sender and receiver count alike, and the header carries it.
	step uint32
	// dep is the number of the other lane's transfers that must be done
	// before this one starts.
	dep int32
	// lend (a send): the transport may lend work's bytes instead of
	// copying them (transport.Lender), so that the send is done before
	// the peer has read them. fence (a receive): 1 + the send-lane
	// position of the last lent send whose bytes this receive
	// overwrites; before it writes, the peers must have read every lent
	// send up to there.
	lend  bool
	fence int32
}

type builder struct {
	s                *schedule
	sentTo, recvFrom []uint32
}

func newBuilder(size int) *builder {
	return &builder{s: &schedule{}, sentTo: make([]uint32, size), recvFrom: make([]uint32, size)}
}

func rangesOverlap(a0, an, b0, bn int) bool {
	return an > 0 && bn > 0 && a0 < b0+bn && b0 < a0+an
}

// lastOverlap returns 1 + the lane position of the last transfer in lane
// (indices into ops) whose work region overlaps [off, off+n), or 0.
func (b *builder) lastOverlap(lane []int32, off, n int) int32 {
	for i := len(lane) - 1; i >= 0; i-- {
		if x := &b.s.ops[lane[i]]; rangesOverlap(x.off, x.n, off, n) {
			return int32(i + 1)
		}
	}
	return 0
}

func (b *builder) send(peer, off, n int) {
	x := xfer{kind: xSend, peer: peer, off: off, n: n, step: b.sentTo[peer]}
	b.sentTo[peer]++
	x.dep = b.lastOverlap(b.s.recvs, off, n)
	b.s.sends = append(b.s.sends, int32(len(b.s.ops)))
	b.push(x)
}

// sendLent is send of bytes that this rank's schedule leaves alone until
// the peer has read them, or whose receives over them are fenced: the
// transport may lend them (xfer.lend). Only schedules whose every later
// write to those bytes comes through a receive may use it; the executor
// also waits for the loans before the call returns.
func (b *builder) sendLent(peer, off, n int) {
	b.send(peer, off, n)
	b.s.ops[len(b.s.ops)-1].lend = true
	b.s.lends++
}

// lastLentOverlap is lastOverlap among the lent sends.
func (b *builder) lastLentOverlap(off, n int) int32 {
	for i := len(b.s.sends) - 1; i >= 0; i-- {
		if x := &b.s.ops[b.s.sends[i]]; x.lend && rangesOverlap(x.off, x.n, off, n) {
			return int32(i + 1)
		}
	}
	return 0
}

// sendAfterAllRecvs is send with an explicit order: it starts only after
// every receive appended so far has completed.
func (b *builder) sendAfterAllRecvs(peer, off, n int) {
	b.send(peer, off, n)
	b.s.ops[len(b.s.ops)-1].dep = int32(len(b.s.recvs))
}

// recv appends a receive: it counts its step and waits for the sends still
// reading the bytes it will overwrite.
func (b *builder) recv(x xfer) {
	x.step = b.recvFrom[x.peer]
	b.recvFrom[x.peer]++
	x.dep = b.lastOverlap(b.s.sends, x.off, x.n)
	if b.s.lends > 0 {
		x.fence = b.lastLentOverlap(x.off, x.n)
	}
	b.s.recvs = append(b.s.recvs, int32(len(b.s.ops)))
	b.push(x)
}

func (b *builder) push(x xfer) {
	b.s.ops = append(b.s.ops, x)
	b.s.maxMsg = max(b.s.maxMsg, x.n)
}

func (b *builder) recvCopy(peer, off, n int) {
	b.recv(xfer{kind: xRecvCopy, peer: peer, off: off, n: n})
}

// recvReduce receives n bytes into scratch and combines them into
// work[off:off+n]. Receives run one after another on their lane, so one
// scratch region of the largest message is enough.
func (b *builder) recvReduce(peer, off, n int, recvFirst bool) {
	b.recv(xfer{kind: xRecvReduce, peer: peer, off: off, n: n, recvFirst: recvFirst})
	b.s.scratch = max(b.s.scratch, n)
}

// String prints the schedule, one transfer a line, for debugging and tests.
func (s *schedule) String() string {
	var sb strings.Builder
	for _, x := range s.ops {
		switch x.kind {
		case xSend:
			verb := "send  "
			if x.lend {
				verb = "lend  "
			}
			fmt.Fprintf(&sb, "%s -> %d  work[%d:%d]  step %d  after %d recvs\n", verb, x.peer, x.off, x.off+x.n, x.step, x.dep)
		case xRecvCopy:
			fmt.Fprintf(&sb, "recv   <- %d  work[%d:%d]  step %d  after %d sends", x.peer, x.off, x.off+x.n, x.step, x.dep)
		case xRecvReduce:
			fmt.Fprintf(&sb, "reduce <- %d  work[%d:%d]  step %d  after %d sends", x.peer, x.off, x.off+x.n, x.step, x.dep)
		}
		if x.kind != xSend {
			if x.fence > 0 {
				fmt.Fprintf(&sb, ", loans of the first %d sends read", x.fence)
			}
			sb.WriteByte('\n')
		}
	}
	return sb.String()
}
