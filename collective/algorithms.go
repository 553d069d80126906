package collective

// Algorithms turn a call's shape into a schedule for one rank. They work in
// ring positions (0..n-1); ring[p] is the rank at position p, so a topology
// solver can reorder the ring without touching them.

// blocks splits count elements into n nearly equal blocks: the first
// count%n blocks get one element more. It returns block offsets (elements)
// with a final sentinel, so block i is [off[i], off[i+1]).
func blocks(count, n int) []int {
	off := make([]int, n+1)
	base, extra := count/n, count%n
	for i := 0; i < n; i++ {
		sz := base
		if i < extra {
			sz++
		}
		off[i+1] = off[i] + sz
	}
	return off
}

// forChunks calls f for each pipeline chunk of the element range
// [lo, hi), in bytes.
func forChunks(lo, hi, esize, chunkElems int, f func(off, n int)) {
	for s := lo; s < hi; s += chunkElems {
		e := min(s+chunkElems, hi)
		f(s*esize, (e-s)*esize)
	}
}

type shape struct {
	n, pos     int
	ring       []int
	count      int // elements in the work buffer
	esize      int
	chunkElems int
}

func (sh shape) at(p int) int { return sh.ring[((p%sh.n)+sh.n)%sh.n] }

// ringReduceScatter appends the reduce-scatter half of the ring: after it,
// position p holds the fully reduced block ring[p] (with blocks given by
// off, indexed by rank). Each step sends one block to the next position and
// reduces the block arriving from the previous one; blocks are cut into
// chunks so that the steps pipeline. The ring's sends may be lent
// (lend.go): a rank writes a block it has sent only by a later receive,
// which the executor fences.
func ringReduceScatter(b *builder, sh shape, off []int) {
	next, prev := sh.at(sh.pos+1), sh.at(sh.pos-1)
	for s := 0; s < sh.n-1; s++ {
		sb, rb := sh.at(sh.pos-1-s), sh.at(sh.pos-2-s)
		sendLo, sendHi := off[sb], off[sb+1]
		recvLo, recvHi := off[rb], off[rb+1]
		// Chunk both blocks by the same rule so chunk k of the send block
		// meets chunk k of the receiver's receive block.
		sc := chunkList(sendLo, sendHi, sh.esize, sh.chunkElems)
		rc := chunkList(recvLo, recvHi, sh.esize, sh.chunkElems)
		for k := 0; k < max(len(sc), len(rc)); k++ {
			if k < len(sc) {
				b.sendLent(next, sc[k][0], sc[k][1])
			}
			if k < len(rc) {
				// The partial sum travels around the ring; it is always the
				// left operand, so a block's result has one fixed order.
				b.recvReduce(prev, rc[k][0], rc[k][1], true)
			}
		}
	}
}

// ringAllGather appends the all-gather half: position p starts with block
// ring[p] complete and ends with every block.
func ringAllGather(b *builder, sh shape, off []int) {
	next, prev := sh.at(sh.pos+1), sh.at(sh.pos-1)
	for s := 0; s < sh.n-1; s++ {
		sb, rb := sh.at(sh.pos-s), sh.at(sh.pos-1-s)
		sc := chunkList(off[sb], off[sb+1], sh.esize, sh.chunkElems)
		rc := chunkList(off[rb], off[rb+1], sh.esize, sh.chunkElems)
		for k := 0; k < max(len(sc), len(rc)); k++ {
			if k < len(sc) {
				b.sendLent(next, sc[k][0], sc[k][1])
			}
			if k < len(rc) {
				b.recvCopy(prev, rc[k][0], rc[k][1])
			}
		}
	}
}

func chunkList(lo, hi, esize, chunkElems int) [][2]int {
	var out [][2]int
	forChunks(lo, hi, esize, chunkElems, func(off, n int) { out = append(out, [2]int{off, n}) })
	return out
}

// ringAllReduce: reduce-scatter then all-gather; each rank sends and
// receives 2(n-1)/n of the buffer, the bandwidth optimum.
func ringAllReduce(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	if sh.n > 1 {
		off := blocks(sh.count, sh.n)
		ringReduceScatter(b, sh, off)
		ringAllGather(b, sh, off)
	}
	return b.s
}

// equalBlocks is the block layout of ReduceScatter and AllGather: n blocks
// of per elements each.
func equalBlocks(per, n int) []int {
	off := make([]int, n+1)
	for i := range off {
		off[i] = i * per
	}
	return off
}

func ringReduceScatterOnly(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	if sh.n > 1 {
		ringReduceScatter(b, sh, equalBlocks(sh.count/sh.n, sh.n))
	}
	return b.s
}

func ringAllGatherOnly(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	if sh.n > 1 {
		ringAllGather(b, sh, equalBlocks(sh.count/sh.n, sh.n))
	}
	return b.s
}

// fold pairs up the extra positions of a world that is not a power of
// two, for the algorithms that run among a power of two of participants:
// of the first 2*rem positions, the even one hands its whole buffer to
// the odd one before the exchanges and gets the result back after them.
type fold struct {
	sh      shape
	p2, rem int
	idx     int // this position's index among the p2 participants, or -1
	bytes   int
}

func newFold(sh shape) fold {
	p2 := 1
	for p2*2 <= sh.n {
		p2 *= 2
	}
	f := fold{sh: sh, p2: p2, rem: sh.n - p2, idx: -1, bytes: sh.count * sh.esize}
	switch p := sh.pos; {
	case p < 2*f.rem && p%2 == 0:
	case p < 2*f.rem:
		f.idx = p / 2
	default:
		f.idx = p - f.rem
	}
	return f
}

// peer is the rank of participant i.
func (f fold) peer(i int) int {
	if i < f.rem {
		return f.sh.at(2*i + 1)
	}
	return f.sh.at(i + f.rem)
}

// in appends the hand-over before the exchanges.
func (f fold) in(b *builder) {
	switch p := f.sh.pos; {
	case p < 2*f.rem && p%2 == 0:
		b.send(f.sh.at(p+1), 0, f.bytes)
	case p < 2*f.rem:
		b.recvReduce(f.sh.at(p-1), 0, f.bytes, true) // the lower position is the left operand
	}
}

// out appends the hand-back after them.
func (f fold) out(b *builder) {
	switch p := f.sh.pos; {
	case p < 2*f.rem && p%2 == 0:
		b.recvCopy(f.sh.at(p+1), 0, f.bytes)
	case p < 2*f.rem:
		b.send(f.sh.at(p-1), 0, f.bytes)
	}
}

// recursiveDoubling all-reduce: log2(n) exchanges of the whole buffer.
// With n not a power of two, the extra positions fold in first (fold).
func recursiveDoubling(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	if sh.n == 1 || sh.count == 0 {
		return b.s
	}
	f := newFold(sh)
	f.in(b)
	if idx := f.idx; idx >= 0 {
		for mask := 1; mask < f.p2; mask <<= 1 {
			partner := idx ^ mask
			peer := f.peer(partner)
			b.send(peer, 0, f.bytes)
			b.recvReduce(peer, 0, f.bytes, partner < idx)
		}
	}
	f.out(b)
	return b.s
}

// halvingDoubling is Rabenseifner's all-reduce: a reduce-scatter by
// recursive halving (each exchange sends half of what a rank still holds
// to its partner and reduces the other half), then an all-gather by
// recursive doubling. Each rank moves 2(p-1)/p of the buffer, as in the
// ring, but in 2·log2(p) steps instead of 2(p-1), which pays for the mid
// sizes where every step's wake-up still shows. Each block is reduced on
// exactly one rank and copied to the others, so every rank holds the same
// bits. Worlds that are not a power of two fold in first (fold).
func halvingDoubling(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	if sh.n == 1 || sh.count == 0 {
		return b.s
	}
	f := newFold(sh)
	f.in(b)
	if idx := f.idx; idx >= 0 {
		off := blocks(sh.count, f.p2) // participant i ends the halving with block i
		chunks := func(lo, hi int) [][2]int { return chunkList(off[lo], off[hi], sh.esize, sh.chunkElems) }
		// exchange swaps chunk k of send for chunk k of recv with peer, for
		// every k. recvFirst orders the reduction's operands; sendFirst
		// orders the two transfers, and the lower-indexed rank of each pair
		// sends first while the other receives first, so that the schedule
		// run in program order cannot deadlock (schedule.paired).
		exchange := func(peer int, send, recv [][2]int, reduce, recvFirst, sendFirst bool) {
			for k := 0; k < max(len(send), len(recv)); k++ {
				if k < len(send) && sendFirst {
					b.send(peer, send[k][0], send[k][1])
				}
				if k < len(recv) && reduce {
					b.recvReduce(peer, recv[k][0], recv[k][1], recvFirst)
				} else if k < len(recv) {
					b.recvCopy(peer, recv[k][0], recv[k][1])
				}
				if k < len(send) && !sendFirst {
					b.send(peer, send[k][0], send[k][1])
				}
			}
		}
		lo, hi := 0, f.p2 // the blocks this rank still reduces
		for mask := f.p2 / 2; mask >= 1; mask >>= 1 {
			partner := idx ^ mask
			mid := lo + (hi-lo)/2
			keepLo, keepHi, giveLo, giveHi := lo, mid, mid, hi
			if idx&mask != 0 {
				keepLo, keepHi, giveLo, giveHi = mid, hi, lo, mid
			}
			exchange(f.peer(partner), chunks(giveLo, giveHi), chunks(keepLo, keepHi), true, partner < idx, idx < partner)
			lo, hi = keepLo, keepHi
		}
		for mask := 1; mask < f.p2; mask <<= 1 {
			partner := idx ^ mask
			w := hi - lo
			plo, phi := hi, hi+w // the partner's blocks
			if idx&mask != 0 {
				plo, phi = lo-w, lo
			}
			exchange(f.peer(partner), chunks(lo, hi), chunks(plo, phi), false, false, idx < partner)
			lo, hi = min(lo, plo), max(hi, phi)
		}
	}
	f.out(b)
	b.s.paired = true
	return b.s
}

// Trees and chains for rooted collectives work in virtual positions
// relative to the root: vr = (pos - rootPos) mod n.

// binomialBroadcast: the root's data reaches everyone in ceil(log2 n)
// rounds; for small messages.
func binomialBroadcast(sh shape, rootPos int) *schedule {
	b := newBuilder(len(sh.ring))
	n := sh.n
	vr := (sh.pos - rootPos + n) % n
	bytes := sh.count * sh.esize
	if n == 1 || bytes == 0 {
		return b.s
	}
	mask := 1
	for mask < n {
		if vr&mask != 0 {
			b.recvCopy(sh.at(rootPos+vr-mask), 0, bytes)
			break
		}
		mask <<= 1
	}
	for mask >>= 1; mask > 0; mask >>= 1 {
		if vr+mask < n {
			b.send(sh.at(rootPos+vr+mask), 0, bytes)
		}
	}
	return b.s
}

// binomialReduce: the mirror image of binomialBroadcast.
func binomialReduce(sh shape, rootPos int) *schedule {
	b := newBuilder(len(sh.ring))
	n := sh.n
	vr := (sh.pos - rootPos + n) % n
	bytes := sh.count * sh.esize
	if n == 1 || bytes == 0 {
		return b.s
	}
	for mask := 1; mask < n; mask <<= 1 {
		if vr&mask != 0 {
			b.send(sh.at(rootPos+vr-mask), 0, bytes)
			break
		}
		if vr+mask < n {
			// The child holds higher virtual positions: it is the right operand.
			b.recvReduce(sh.at(rootPos+vr+mask), 0, bytes, false)
		}
	}
	return b.s
}

// chainBroadcast: the root streams chunks to the next position, which
// forwards each chunk as soon as it has it; for large messages.
func chainBroadcast(sh shape, rootPos int) *schedule {
	b := newBuilder(len(sh.ring))
	n := sh.n
	vr := (sh.pos - rootPos + n) % n
	if n == 1 {
		return b.s
	}
	forChunks(0, sh.count, sh.esize, sh.chunkElems, func(off, m int) {
		if vr > 0 {
			b.recvCopy(sh.at(sh.pos-1), off, m)
		}
		if vr < n-1 {
			b.send(sh.at(sh.pos+1), off, m)
		}
	})
	return b.s
}

// chainReduce: partial results flow from the position after the root
// around the ring to the root, chunk by chunk.
func chainReduce(sh shape, rootPos int) *schedule {
	b := newBuilder(len(sh.ring))
	n := sh.n
	c := (sh.pos - rootPos - 1 + 2*n) % n // 0 for the first in the chain, n-1 for the root
	if n == 1 {
		return b.s
	}
	forChunks(0, sh.count, sh.esize, sh.chunkElems, func(off, m int) {
		if c > 0 {
			b.recvReduce(sh.at(sh.pos-1), off, m, true)
		}
		if c < n-1 {
			b.send(sh.at(sh.pos+1), off, m)
		}
	})
	return b.s
}

// disseminationBarrier: ceil(log2 n) rounds of empty messages; after round
// k every rank has heard, directly or not, from 2^(k+1) ranks.
func disseminationBarrier(sh shape) *schedule {
	b := newBuilder(len(sh.ring))
	for d := 1; d < sh.n; d <<= 1 {
		// The messages are empty, so no data orders them: each round's
		// send must wait for the previous round's receive by fiat.
		b.sendAfterAllRecvs(sh.at(sh.pos+d), 0, 0)
		b.recvCopy(sh.at(sh.pos-d), 0, 0)
	}
	return b.s
}
