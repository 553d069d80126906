package collective

import (
	"fmt"

	"github.com/ringo-ml/ringo/collective/transport"
)

// Hierarchical algorithms, for a group whose ranks sit on several hosts
// with several ranks each: the traffic inside a host goes over its fast
// links (shared memory), and only a 1/L share of the buffer per rank
// crosses between hosts, where L is the number of ranks per host.
//
// All-reduce of a buffer cut into L local blocks:
//
//  1. intra-host reduce-scatter: local rank j ends with its host's sum of
//     block j;
//  2. inter-host all-reduce of block j among the ranks of local index j on
//     every host (one "column" per j, all columns at once): a ring, or
//     recursive doubling when block j is below Config.SmallBytes;
//  3. intra-host all-gather of the blocks.
//
// Reduce-scatter is phases 1 and 2 (reduce-scatter only) with the blocks
// of the ranks of column j gathered in local block j; all-gather is the
// mirror image. Every block's final value is computed on one rank and
// copied to the others, so every rank gets the same bits, and the
// schedule depends only on the call and the layout, so a run repeats
// exactly.
//
// The layout comes from Config.Hosts, or from the transport (package mix
// reports which ranks share a host). Hosts are taken in the order the ring
// (Config.RingOrder, which the topology solver fills) first meets them,
// and so are the ranks within a host: the inter-host rings follow the
// solver's order. A layout with one host, one rank per host, or hosts of
// different sizes has no hierarchical form; the flat algorithms run
// instead.

// hostReporter is implemented by transports that know which ranks share a
// host (mix.Transport): one host number per rank.
type hostReporter interface {
	Hosts() []int
}

// hierLayout is the group seen as hosts × local ranks.
type hierLayout struct {
	hosts [][]int // hosts[h][j]: the rank of local index j on host h
	h, j  int     // this rank's host and local index
}

// newHierLayout builds the layout from hosts (a host label per rank, nil:
// ask tr) and the ring order. It returns nil when there is no hierarchy.
func newHierLayout(hosts []int, tr transport.Transport, ring []int, rank int) (*hierLayout, error) {
	n := len(ring)
	if hosts == nil {
		if hr, ok := tr.(hostReporter); ok {
			hosts = hr.Hosts()
		}
	}
	if hosts == nil {
		return nil, nil
	}
	if len(hosts) != n {
		return nil, fmt.Errorf("collective: Hosts has %d entries, the group has %d ranks", len(hosts), n)
	}
	idx := map[int]int{}
	var l hierLayout
	for _, r := range ring {
		h, ok := idx[hosts[r]]
		if !ok {
			h = len(l.hosts)
			idx[hosts[r]] = h
			l.hosts = append(l.hosts, nil)
		}
		if r == rank {
			l.h, l.j = h, len(l.hosts[h])
		}
		l.hosts[h] = append(l.hosts[h], r)
	}
	if len(l.hosts) < 2 || len(l.hosts[0]) < 2 {
		return nil, nil
	}
	for _, m := range l.hosts {
		if len(m) != len(l.hosts[0]) {
			return nil, nil
		}
	}
	return &l, nil
}

// column returns the ranks of local index j, one per host, in host order.
func (l *hierLayout) column(j int) []int {
	out := make([]int, len(l.hosts))
	for h, m := range l.hosts {
		out[h] = m[j]
	}
	return out
}

// algoFor picks the algorithm of a call of kind k over bytes: the
// hierarchical one where the layout allows it and Config asks for it
// (AlgoHier), or AlgoAuto finds the buffer at least HierBytes; else the
// flat choice (a ring for ReduceScatter and AllGather).
func (g *group) algoFor(k opKind, bytes int) Algo {
	hierOp := k == opAllReduce || k == opReduceScatter || k == opAllGather
	a := g.cfg.Algo
	if hierOp && g.hasHier && (a == AlgoHier || a == AlgoAuto && bytes >= g.cfg.HierBytes) {
		return AlgoHier
	}
	if k == opReduceScatter || k == opAllGather {
		return AlgoRing
	}
	if a == AlgoHier {
		a = AlgoAuto
	}
	c := g.cfg
	c.Algo = a
	a = c.AlgoFor(bytes, g.size)
	if a == AlgoHalvingDoubling && (k == opBroadcast || k == opReduce) {
		// Halving-doubling has no rooted form; the rooted schedules are a
		// binomial tree (RD) or a pipelined chain, and the chain is what
		// the mid sizes get. Naming it ring keeps logs and the mismatch
		// fingerprint saying what ran.
		a = AlgoRing
	}
	return a
}

// HierarchicalLayout returns the hosts the hierarchical algorithms see,
// each a list of ranks in ring order, or nil when the group has no
// hierarchy (one host, one rank per host, or uneven hosts).
func HierarchicalLayout(c Comm) [][]int {
	g, ok := c.(*group)
	if !ok {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hier == nil {
		return nil
	}
	out := make([][]int, len(g.hier.hosts))
	for h, m := range g.hier.hosts {
		out[h] = append([]int(nil), m...)
	}
	return out
}

// hierSchedule builds the hierarchical schedule of c on this rank.
func (g *group) hierSchedule(c *call, esize int) *schedule {
	l := g.hier
	b := newBuilder(g.size)
	chunk := max(1, g.cfg.ChunkBytes/esize)
	nl, nh := len(l.hosts[0]), len(l.hosts)
	// The intra-host rings may lend their sends (lend.go): every later
	// write to a block a rank has sent comes through a receive, which
	// the executor fences.
	local := segRing{peers: l.hosts[l.h], pos: l.j, esize: esize, chunk: chunk, lend: true}
	inter := segRing{peers: l.column(l.j), pos: l.h, esize: esize, chunk: chunk}
	switch c.kind {
	case opAllReduce:
		lb := blocks(c.count, nl)
		local.segs = func(i int) [][2]int { return [][2]int{{lb[i], lb[i+1]}} }
		local.reduceScatter(b)
		lo, hi := lb[l.j], lb[l.j+1]
		if (hi-lo)*esize < g.cfg.SmallBytes {
			rdRange(b, inter.peers, l.h, lo*esize, (hi-lo)*esize)
		} else {
			ib := blocks(hi-lo, nh)
			inter.segs = func(i int) [][2]int { return [][2]int{{lo + ib[i], lo + ib[i+1]}} }
			inter.reduceScatter(b)
			inter.allGather(b)
		}
		local.allGather(b)
	case opReduceScatter, opAllGather:
		// Rank r's block is [r*count, (r+1)*count); local block i is the
		// blocks of column i, inter-host block h the one of host h's rank.
		blk := func(r int) [2]int { return [2]int{r * c.count, (r + 1) * c.count} }
		local.segs = func(i int) [][2]int {
			out := make([][2]int, nh)
			for h, m := range l.hosts {
				out[h] = blk(m[i])
			}
			return out
		}
		inter.segs = func(h int) [][2]int { return [][2]int{blk(l.hosts[h][l.j])} }
		if c.kind == opReduceScatter {
			local.reduceScatter(b)
			inter.reduceScatter(b)
		} else {
			inter.allGather(b)
			local.allGather(b)
		}
	}
	return b.s
}

// segRing is a ring over a subset of the ranks: peers[i] is the rank at
// position i, and block i (in position terms) is the element ranges
// segs(i), so that a block may be scattered over the buffer.
type segRing struct {
	peers        []int
	pos          int
	segs         func(i int) [][2]int
	esize, chunk int
	lend         bool // sends may be lent (builder.sendLent)
}

func (r segRing) send(b *builder, peer int, c [2]int) {
	if r.lend {
		b.sendLent(peer, c[0], c[1])
	} else {
		b.send(peer, c[0], c[1])
	}
}

func (r segRing) at(i int) int {
	m := len(r.peers)
	return ((i % m) + m) % m
}

// chunks cuts block i into pipeline chunks, as byte ranges. Sender and
// receiver cut one block alike, so chunk k meets chunk k.
func (r segRing) chunks(i int) [][2]int {
	var out [][2]int
	for _, s := range r.segs(i) {
		out = append(out, chunkList(s[0], s[1], r.esize, r.chunk)...)
	}
	return out
}

// reduceScatter: afterwards position p holds the reduced block p. The
// partial sum travelling around the ring is always the left operand.
func (r segRing) reduceScatter(b *builder) {
	m := len(r.peers)
	if m < 2 {
		return
	}
	next, prev := r.peers[r.at(r.pos+1)], r.peers[r.at(r.pos-1)]
	for s := 0; s < m-1; s++ {
		sc, rc := r.chunks(r.at(r.pos-1-s)), r.chunks(r.at(r.pos-2-s))
		for k := 0; k < max(len(sc), len(rc)); k++ {
			if k < len(sc) {
				r.send(b, next, sc[k])
			}
			if k < len(rc) {
				b.recvReduce(prev, rc[k][0], rc[k][1], true)
			}
		}
	}
}

// allGather: position p starts with block p complete and ends with all.
func (r segRing) allGather(b *builder) {
	m := len(r.peers)
	if m < 2 {
		return
	}
	next, prev := r.peers[r.at(r.pos+1)], r.peers[r.at(r.pos-1)]
	for s := 0; s < m-1; s++ {
		sc, rc := r.chunks(r.at(r.pos-s)), r.chunks(r.at(r.pos-1-s))
		for k := 0; k < max(len(sc), len(rc)); k++ {
			if k < len(sc) {
				r.send(b, next, sc[k])
			}
			if k < len(rc) {
				b.recvCopy(prev, rc[k][0], rc[k][1])
			}
		}
	}
}

// rdRange is recursive doubling (see recursiveDoubling) among peers, this
// rank at position p, over the n bytes of the work buffer from off.
func rdRange(b *builder, peers []int, p, off, n int) {
	m := len(peers)
	if m < 2 || n == 0 {
		return
	}
	p2 := 1
	for p2*2 <= m {
		p2 *= 2
	}
	rem := m - p2
	idx := -1
	switch {
	case p < 2*rem && p%2 == 0:
		b.send(peers[p+1], off, n)
	case p < 2*rem:
		b.recvReduce(peers[p-1], off, n, true)
		idx = p / 2
	default:
		idx = p - rem
	}
	posOf := func(i int) int {
		if i < rem {
			return 2*i + 1
		}
		return i + rem
	}
	if idx >= 0 {
		for mask := 1; mask < p2; mask <<= 1 {
			partner := idx ^ mask
			peer := peers[posOf(partner)]
			b.send(peer, off, n)
			b.recvReduce(peer, off, n, partner < idx)
		}
	}
	switch {
	case p < 2*rem && p%2 == 0:
		b.recvCopy(peers[p+1], off, n)
	case p < 2*rem:
		b.send(peers[p-1], off, n)
	}
}

// DefaultHierBytes is Config.HierBytes by default: from this size up,
// AlgoAuto runs all-reduce, reduce-scatter and all-gather hierarchically
// where the group spans hosts of several ranks each.
const DefaultHierBytes = 64 << 10
