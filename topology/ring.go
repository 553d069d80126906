package topology

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
)

// MaxExact is the largest number of ranks SolveRing solves exactly. The
// exact solver's cost grows as n²·2ⁿ: 12 ranks take about a millisecond,
// 20 about a second and 160 MB.
const MaxExact = 12

// maxExactLimit is where SolveRingExact refuses: beyond it the tables no
// longer fit in memory.
const maxExactLimit = 20

// Bottleneck is the bandwidth of the slowest link of the ring that visits
// order and returns to order[0], each link taken as Matrix.Link (the
// slower direction). A ring of fewer than two ranks has no links: 0.
func Bottleneck(m *Matrix, order []int) float64 {
	return bottleneckOf(linkMatrix(m), order)
}

func bottleneckOf(l [][]float64, order []int) float64 {
	if len(order) < 2 {
		return 0
	}
	b := math.Inf(1)
	for i, a := range order {
		b = math.Min(b, l[a][order[(i+1)%len(order)]])
	}
	return b
}

// linkMatrix is the symmetric matrix of Matrix.Link, computed once so that the
// solvers' inner loops index a slice instead of taking a min.
func linkMatrix(m *Matrix) [][]float64 {
	n := m.Size()
	l := make([][]float64, n)
	for i := range n {
		l[i] = make([]float64, n)
		for j := range n {
			if i != j {
				l[i][j] = m.Link(i, j)
			}
		}
	}
	return l
}

// SolveRing returns the ring order that maximises the bottleneck link
// bandwidth, and that bandwidth. Up to MaxExact ranks the answer is exact
// (SolveRingExact). Beyond, it is the better of SolveRingHeuristic and,
// when Matrix.Hosts puts several ranks on one host, HierarchicalRing.
// It takes each link as the matrix measured it, alone; a ring that
// crosses between hosts more often than HierarchicalRing's shares their
// NICs and may run slower than its bottleneck says.
func SolveRing(m *Matrix) ([]int, float64) {
	if m.Size() <= MaxExact {
		return SolveRingExact(m)
	}
	order, b := SolveRingHeuristic(m)
	if hostOf, hosts := groupByName(m.Hosts); len(m.Hosts) == m.Size() && hosts > 1 && hosts < m.Size() {
		if o, hb := HierarchicalRing(m, hostOf); hb > b {
			order, b = o, hb
		}
	}
	return order, b
}

// groupByName numbers the distinct names in order of first appearance.
func groupByName(names []string) (hostOf []int, hosts int) {
	seen := map[string]int{}
	for _, s := range names {
		if _, ok := seen[s]; !ok {
			seen[s] = len(seen)
		}
		hostOf = append(hostOf, seen[s])
	}
	return hostOf, len(seen)
}

// SolveRingExact finds the ring with the largest bottleneck by binary
// search over the distinct link bandwidths, each step asking whether the
// links at least that fast contain a Hamiltonian cycle (a bitmask dynamic
// programme over the paths from rank 0). Among the rings with that
// bottleneck it returns the one with the largest sum of link bandwidths,
// so that the answer is deterministic and the other links are fast too.
// The ring starts at rank 0 and goes to the smaller of its two
// neighbours first. It panics beyond 20 ranks, where its tables would not
// fit in memory; SolveRing switches to a heuristic long before.
func SolveRingExact(m *Matrix) ([]int, float64) {
	n := m.Size()
	if n > maxExactLimit {
		panic(fmt.Sprintf("topology: SolveRingExact on %d ranks; the most is %d", n, maxExactLimit))
	}
	if n <= 3 {
		order := make([]int, n)
		for i := range order {
			order[i] = i
		}
		return order, Bottleneck(m, order)
	}
	l := linkMatrix(m)
	vals := bottleneckCandidates(l)
	// The smallest value is always feasible: every link is at least as
	// fast, and a complete graph has a Hamiltonian cycle.
	lo, hi := 0, len(vals)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if hamiltonian(l, vals[mid]) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	order := maxSumCycle(l, vals[lo])
	return order, bottleneckOf(l, order)
}

// bottleneckCandidates are the distinct link bandwidths up to the bound no ring can
// beat: every rank needs two links on the ring, so the bottleneck is at
// most the second-fastest link of the rank whose second-fastest is
// slowest.
func bottleneckCandidates(l [][]float64) []float64 {
	n := len(l)
	bound := math.Inf(1)
	var vals []float64
	for i := range n {
		row := slices.Clone(l[i])
		row = slices.Delete(row, i, i+1)
		slices.Sort(row)
		bound = math.Min(bound, row[len(row)-2])
		for j := i + 1; j < n; j++ {
			vals = append(vals, l[i][j])
		}
	}
	slices.Sort(vals)
	vals = slices.Compact(vals)
	for len(vals) > 1 && vals[len(vals)-1] > bound {
		vals = vals[:len(vals)-1]
	}
	return vals
}

// hamiltonian reports whether the links of at least t contain a cycle
// through every rank. reach[mask] is the set of ranks at which a path
// from rank 0 through exactly the ranks of mask can end.
func hamiltonian(l [][]float64, t float64) bool {
	n := len(l)
	adj := make([]uint32, n)
	for i := range n {
		for j := range n {
			if i != j && l[i][j] >= t {
				adj[i] |= 1 << j
			}
		}
	}
	full := uint32(1)<<n - 1
	reach := make([]uint32, 1<<n)
	reach[1] = 1
	for mask := uint32(1); mask <= full; mask += 2 { // paths contain rank 0: odd masks
		for ends := reach[mask]; ends != 0; ends &= ends - 1 {
			v := bits.TrailingZeros32(ends)
			for next := adj[v] &^ mask; next != 0; next &= next - 1 {
				w := bits.TrailingZeros32(next)
				reach[mask|1<<w] |= 1 << w
			}
		}
	}
	return reach[full]&adj[0] != 0
}

// maxSumCycle returns the Hamiltonian cycle with the largest sum of
// links among those using only links of at least t (which must exist),
// by the Held-Karp recurrence over paths from rank 0.
func maxSumCycle(l [][]float64, t float64) []int {
	n := len(l)
	full := 1<<n - 1
	best := make([]float64, (1<<n)*n) // best[mask*n+v]: path 0..v through mask
	from := make([]int8, (1<<n)*n)
	for i := range best {
		best[i] = math.Inf(-1)
	}
	best[1*n+0] = 0
	for mask := 1; mask <= full; mask += 2 {
		for v := range n {
			s := best[mask*n+v]
			if math.IsInf(s, -1) {
				continue
			}
			for w := range n {
				if mask&(1<<w) != 0 || l[v][w] < t {
					continue
				}
				next := (mask|1<<w)*n + w
				if s+l[v][w] > best[next] {
					best[next], from[next] = s+l[v][w], int8(v)
				}
			}
		}
	}
	end, total := -1, math.Inf(-1)
	for v := 1; v < n; v++ {
		if s := best[full*n+v]; !math.IsInf(s, -1) && l[v][0] >= t && s+l[v][0] > total {
			end, total = v, s+l[v][0]
		}
	}
	order := make([]int, n)
	for i, mask, v := n-1, full, end; i >= 0; i-- {
		order[i] = v
		v, mask = int(from[mask*n+v]), mask&^(1<<v)
	}
	return canonical(order)
}

// canonical rotates a ring to start at rank 0 and turns it to go to the
// smaller neighbour first: one answer for the 2n ways of writing a ring.
func canonical(order []int) []int {
	n := len(order)
	if n < 3 {
		return order
	}
	z := slices.Index(order, 0)
	out := append(slices.Clone(order[z:]), order[:z]...)
	if out[1] > out[n-1] {
		slices.Reverse(out[1:])
	}
	return out
}

// SolveRingHeuristic is SolveRingExact's search with a heuristic in place
// of the exact Hamiltonian-cycle check, for rings too large to solve
// exactly. It starts from the greedy-edge ring (fastest links first, no
// rank with three, no early cycle), then binary searches the bottleneck:
// at each threshold an iterated local search (2-opt, and moves of runs of
// up to three ranks, that remove links slower than the threshold, with
// double-bridge kicks from a fixed seed) looks for a ring using only
// faster links. A final 2-opt pass raises the sum of the links without
// lowering the bottleneck. It is deterministic and never worse than the
// greedy ring, but cannot prove a ring optimal: on random matrices of 8
// to 12 ranks it found the exact bottleneck on all but 2 of 3000 (the
// worst at 96% of it), and on 1000 ranks it reaches the upper bound in
// about a second.
func SolveRingHeuristic(m *Matrix) ([]int, float64) {
	n := m.Size()
	if n <= 3 {
		return SolveRingExact(m)
	}
	l := linkMatrix(m)
	tour := greedyTour(l)
	vals := bottleneckCandidates(l)
	at := func(b float64) int { // index of the largest value ≤ b
		i, found := slices.BinarySearch(vals, b)
		if !found {
			i--
		}
		return i
	}
	rng := rand.New(rand.NewPCG(uint64(n), 0x7269_6e67)) // fixed: same matrix, same ring
	var nbr [][]int
	if n > nearFrom {
		nbr = nearLinks(l, nearCount)
	}
	lo, hi := at(bottleneckOf(l, tour)), len(vals)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if t, ok := searchCycle(l, vals[mid], tour, nbr, rng); ok {
			tour, lo = t, max(mid, at(bottleneckOf(l, t)))
		} else {
			hi = mid - 1
		}
	}
	raiseSum(l, bottleneckOf(l, tour), tour)
	return canonical(tour), bottleneckOf(l, tour)
}

// Beyond nearFrom ranks the heuristic's moves only join ranks to their
// nearCount fastest links.
const nearFrom, nearCount = 48, 10

// greedyTour is the greedy-edge ring: take links fastest first whenever
// both ends have fewer than two and the link closes no cycle; on a
// complete graph that ends in one path through every rank, then closed.
func greedyTour(l [][]float64) []int {
	n := len(l)
	type edge struct{ a, b int }
	var edges []edge
	for i := range n {
		for j := i + 1; j < n; j++ {
			edges = append(edges, edge{i, j})
		}
	}
	slices.SortStableFunc(edges, func(x, y edge) int { return cmpFloatDesc(l[x.a][x.b], l[y.a][y.b]) })
	root := make([]int, n)
	for i := range root {
		root[i] = i
	}
	find := func(x int) int {
		for root[x] != x {
			root[x] = root[root[x]]
			x = root[x]
		}
		return x
	}
	nb := make([][]int, n)
	for k := range edges {
		e := edges[k]
		if len(nb[e.a]) < 2 && len(nb[e.b]) < 2 && find(e.a) != find(e.b) {
			root[find(e.a)] = find(e.b)
			nb[e.a], nb[e.b] = append(nb[e.a], e.b), append(nb[e.b], e.a)
		}
	}
	start := 0
	for v := range n {
		if len(nb[v]) < 2 {
			start = v
			break
		}
	}
	tour := []int{start}
	for prev, v := -1, start; len(tour) < n; {
		next := nb[v][0]
		if next == prev {
			next = nb[v][1]
		}
		tour = append(tour, next)
		prev, v = v, next
	}
	return tour
}

func cmpFloatDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// searchCycle looks for a ring whose links are all at least t, starting
// from tour. A link slower than t costs 1 plus how far short it falls, so
// that the local search has a slope to follow even when a move does not
// remove a slow link outright; a ring of cost 0 is the answer.
func searchCycle(l [][]float64, t float64, tour []int, nbr [][]int, rng *rand.Rand) ([]int, bool) {
	n := len(l)
	cost := func(a, b int) float64 {
		if l[a][b] >= t {
			return 0
		}
		return 1 + (t-l[a][b])/t
	}
	total := func(tr []int) float64 {
		s := 0.0
		for i, a := range tr {
			s += cost(a, tr[(i+1)%n])
		}
		return s
	}
	search := &ringSearch{cost: cost, nbr: nbr, pos: make([]int, n)}
	cur := slices.Clone(tour)
	search.improve(cur)
	best := total(cur)
	for kick := 0; best > 0 && kick < min(300+4*n, 600); kick++ {
		cand := doubleBridge(cur, cost, rng)
		search.improve(cand)
		if c := total(cand); c <= best {
			cur, best = cand, c
		}
	}
	return cur, best == 0
}

// ringSearch is the local search of searchCycle.
type ringSearch struct {
	cost func(a, b int) float64
	nbr  [][]int // each rank's fastest links; nil: try every link
	pos  []int   // pos[rank]: its index in the ring being improved
}

// nearLinks are the fastest few links of each rank. Beyond a few dozen
// ranks the local search only tries moves that join a rank to one of
// these, which turns its O(n) scans into O(1) at little loss: a move
// that removes a slow link must add fast ones.
func nearLinks(l [][]float64, k int) [][]int {
	nbr := make([][]int, len(l))
	for i := range l {
		others := make([]int, 0, len(l)-1)
		for j := range l {
			if j != i {
				others = append(others, j)
			}
		}
		slices.SortStableFunc(others, func(a, b int) int { return cmpFloatDesc(l[i][a], l[i][b]) })
		nbr[i] = others[:min(k, len(others))]
	}
	return nbr
}

// linksNear lists the ring positions j (the link tour[j]→tour[j+1]) worth
// trying to join to the ranks us: every one without neighbour lists,
// else the links at each side of the ranks' fastest neighbours.
func (s *ringSearch) linksNear(tour []int, us ...int) []int {
	n := len(tour)
	var js []int
	if s.nbr == nil {
		for j := range n {
			js = append(js, j)
		}
		return js
	}
	for _, u := range us {
		for _, w := range s.nbr[u] {
			js = append(js, (s.pos[w]+n-1)%n, s.pos[w])
		}
	}
	return js
}

// improve applies 2-opt moves and moves of runs of up to three ranks that
// remove a costly link, until there are none. Only moves that take out a
// link of positive cost can lower the total, so only those are tried: a
// pass costs O(slow links · n) without neighbour lists, not O(n²).
func (s *ringSearch) improve(tour []int) {
	n := len(tour)
	const eps = 1e-12
	for improved := true; improved; {
		improved = false
		if s.nbr != nil {
			for i, v := range tour {
				s.pos[v] = i
			}
		}
		for i := 0; i < n && !improved; i++ {
			a, b := tour[i], tour[(i+1)%n]
			ab := s.cost(a, b)
			if ab == 0 {
				continue
			}
			// 2-opt: links (a,b) and (c,d) become (a,c) and (b,d).
			for _, j := range s.linksNear(tour, a, b) {
				if j == i || (j+1)%n == i || (i+1)%n == j {
					continue
				}
				c, d := tour[j], tour[(j+1)%n]
				if s.cost(a, c)+s.cost(b, d) < ab+s.cost(c, d)-eps {
					lo, hi := min(i, j), max(i, j)
					slices.Reverse(tour[lo+1 : hi+1])
					improved = true
					break
				}
			}
			// Move a run that starts at b or ends at a elsewhere.
			for length := 1; length <= 3 && !improved && length <= n-3; length++ {
				for _, start := range []int{(i + 1) % n, (i - length + 1 + n) % n} {
					if s.orMove(tour, start, length) {
						improved = true
						break
					}
				}
			}
		}
	}
}

// orMove moves the run of length ranks from tour[start] on (cyclically)
// to the link outside it where that lowers the total cost most, either
// way round, and reports whether any did.
func (s *ringSearch) orMove(tour []int, start, length int) bool {
	n := len(tour)
	at := func(i int) int { return tour[i%n] }
	first, last := at(start), at(start+length-1)
	prev, next := at(start+n-1), at(start+length)
	gain := s.cost(prev, first) + s.cost(last, next) - s.cost(prev, next)
	bestK, bestRev, bestDelta := -1, false, -1e-12
	for _, k := range s.linksNear(tour, first, last) {
		// Only links with both ends outside the run, and not (prev, next)
		// where it came from: k - (start-1) mod n in [length+1, n-1].
		if off := (k - start + 1 + n) % n; off <= length {
			continue
		}
		x, y := at(k), at(k+1)
		if d := s.cost(x, first) + s.cost(last, y) - s.cost(x, y) - gain; d < bestDelta {
			bestK, bestRev, bestDelta = k, false, d
		}
		if d := s.cost(x, last) + s.cost(first, y) - s.cost(x, y) - gain; d < bestDelta {
			bestK, bestRev, bestDelta = k, true, d
		}
	}
	if bestK < 0 {
		return false
	}
	run := make([]int, length)
	for i := range run {
		run[i] = at(start + i)
	}
	if bestRev {
		slices.Reverse(run)
	}
	out := make([]int, 0, n)
	for k := start + length; k < start+n; k++ {
		out = append(out, at(k))
		if k%n == bestK {
			out = append(out, run...)
		}
	}
	copy(tour, out)
	return true
}

// doubleBridge cuts a window of the ring around a slow link into four
// arcs A B C D and joins them as A C B D: a change 2-opt cannot undo in
// one step, so the search leaves its local optimum. The window keeps the
// kick near where the ring needs to change, whatever its size.
func doubleBridge(tour []int, cost func(a, b int) float64, rng *rand.Rand) []int {
	n := len(tour)
	var bad []int
	for i, a := range tour {
		if cost(a, tour[(i+1)%n]) > 0 {
			bad = append(bad, i)
		}
	}
	w := min(n, 40)
	out := make([]int, n) // the ring rotated so the window is out[:w]
	from := bad[rng.IntN(len(bad))] - w/2 + n
	for i := range out {
		out[i] = tour[(from+i)%n]
	}
	if w < 8 {
		i, j := rng.IntN(w), rng.IntN(w)
		out[i], out[j] = out[j], out[i]
		return out
	}
	p0 := 1 + rng.IntN(w-3)
	p1 := p0 + 1 + rng.IntN(w-p0-2)
	p2 := p1 + 1 + rng.IntN(w-p1-1)
	win := make([]int, 0, w)
	win = append(win, out[:p0]...)
	win = append(win, out[p1:p2]...)
	win = append(win, out[p0:p1]...)
	win = append(win, out[p2:w]...)
	copy(out, win)
	return out
}

// raiseSum applies 2-opt moves that raise the sum of the links and keep
// every link at least t, for a bounded number of passes.
func raiseSum(l [][]float64, t float64, tour []int) {
	n := len(tour)
	for pass := 0; pass < 20; pass++ {
		improved := false
		for i := 0; i < n-1; i++ {
			for j := i + 2; j < n; j++ {
				a, b, c, d := tour[i], tour[i+1], tour[j], tour[(j+1)%n]
				if d == a || l[a][c] < t || l[b][d] < t {
					continue
				}
				if l[a][c]+l[b][d] > l[a][b]+l[c][d]+1e-9*(l[a][b]+l[c][d]) {
					slices.Reverse(tour[i+1 : j+1])
					improved = true
				}
			}
		}
		if !improved {
			return
		}
	}
}

// HierarchicalRing orders a ring for ranks grouped on hosts (hostOf[r] is
// rank r's host, any numbering): the ranks of each host go consecutively,
// over the fast intra-host links, and the ring leaves each host once, so
// it crosses the network once between each pair of neighbouring hosts.
//
// Within a host, the path from the rank where the ring enters to the
// rank where it leaves is, for every such pair, the path with the largest
// bottleneck (exact up to MaxExact ranks a host; beyond, the host's own
// heuristic ring cut at one link). A dynamic programme around the ring of
// hosts then picks each host's entry and exit to maximise the bottleneck
// of the whole, for a given order of the hosts. Up to 7 hosts every order
// is tried; beyond, the order starts as SolveRing on the host-to-host
// matrix (each pair's fastest rank-to-rank link) and improves by local
// search (reversing runs of hosts, a bounded number of orders), because
// which crossing is fastest depends on which ranks the rest of the ring
// leaves free. The cost grows polynomially with the number of hosts.
//
// A ring free to cross the network more often can show a larger
// bottleneck in the matrix (A→B→A→C→A avoids a slow B–C link), but the
// matrix measures each link alone, and extra crossings share the hosts'
// NICs, so they would run slower than it says. This ring crosses once
// between neighbouring hosts by design. When network bandwidth depends
// only on the pair of hosts (one NIC each, as usual) and intra-host links
// are faster, its bottleneck is that of the best ring of hosts (exact up
// to 7 hosts; the tests check this).
//
// It panics if len(hostOf) is not m.Size().
func HierarchicalRing(m *Matrix, hostOf []int) ([]int, float64) {
	n := m.Size()
	if len(hostOf) != n {
		panic(fmt.Sprintf("topology: HierarchicalRing: %d hosts for %d ranks", len(hostOf), n))
	}
	l := linkMatrix(m)
	var groups [][]int // ranks of each host, hosts in order of first rank
	index := map[int]int{}
	for r, h := range hostOf {
		g, ok := index[h]
		if !ok {
			g = len(groups)
			index[h] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], r)
	}
	if len(groups) == 1 {
		return SolveRing(m)
	}
	// The hosts' ring, on each pair's fastest link.
	hm := NewMatrix(len(groups))
	for a, ga := range groups {
		for b, gb := range groups {
			for _, i := range ga {
				for _, j := range gb {
					if a != b {
						hm.Bandwidth[a][b] = math.Max(hm.Bandwidth[a][b], l[i][j])
					}
				}
			}
		}
	}
	paths := make([][]hostPath, len(groups))
	for g, ranks := range groups {
		paths[g] = hostPaths(l, ranks)
	}
	eval := func(hostOrder []int) ([]int, float64) {
		ps := make([][]hostPath, len(hostOrder))
		for k, g := range hostOrder {
			ps[k] = paths[g]
		}
		order := chainHosts(l, ps)
		return order, bottleneckOf(l, order)
	}
	if len(groups) <= exhaustiveHosts {
		return bestHostOrder(len(groups), eval)
	}
	hostOrder, _ := SolveRing(hm)
	return improveHostOrder(hostOrder, eval)
}

// exhaustiveHosts is the most hosts whose every order HierarchicalRing
// tries: (h-1)! orders, 720 at 7.
const exhaustiveHosts = 7

// hostOrderBudget bounds the orders the local search tries beyond that.
const hostOrderBudget = 3000

// bestHostOrder tries every ring of h hosts that starts at host 0.
func bestHostOrder(h int, eval func([]int) ([]int, float64)) ([]int, float64) {
	hostOrder := make([]int, h)
	for i := range hostOrder {
		hostOrder[i] = i
	}
	best, bestB := eval(hostOrder)
	var permute func(k int)
	permute = func(k int) {
		if k == h {
			if order, b := eval(hostOrder); b > bestB {
				best, bestB = order, b
			}
			return
		}
		for i := k; i < h; i++ {
			hostOrder[k], hostOrder[i] = hostOrder[i], hostOrder[k]
			permute(k + 1)
			hostOrder[k], hostOrder[i] = hostOrder[i], hostOrder[k]
		}
	}
	permute(1)
	return best, bestB
}

// improveHostOrder takes any reversal of a run of hosts that raises the
// whole ring's bottleneck, until none does or the budget of orders is
// spent.
func improveHostOrder(hostOrder []int, eval func([]int) ([]int, float64)) ([]int, float64) {
	best, bestB := eval(hostOrder)
	h, tried := len(hostOrder), 1
	for improved := true; improved && tried < hostOrderBudget; {
		improved = false
		for i := 1; i < h-1 && !improved && tried < hostOrderBudget; i++ {
			for j := i + 1; j < h && tried < hostOrderBudget; j++ {
				cand := slices.Clone(hostOrder)
				slices.Reverse(cand[i : j+1])
				tried++
				if order, b := eval(cand); b > bestB {
					best, bestB, hostOrder, improved = order, b, cand, true
					break
				}
			}
		}
	}
	return best, bestB
}

// hostPath is one way through a host's ranks: in at entry, out at exit.
type hostPath struct {
	entry, exit int
	bottleneck  float64 // +Inf for a single rank
	ranks       []int
}

// hostPaths lists, for each entry and exit rank of a host, the path
// through all its ranks with the largest bottleneck.
func hostPaths(l [][]float64, ranks []int) []hostPath {
	k := len(ranks)
	if k == 1 {
		return []hostPath{{ranks[0], ranks[0], math.Inf(1), ranks}}
	}
	if k > MaxExact {
		// Cut the host's own ring at each link, in both directions.
		sub := subMatrix(l, ranks)
		ring, _ := SolveRingHeuristic(sub)
		var out []hostPath
		for i := range k {
			p := make([]int, k)
			for j := range k {
				p[j] = ranks[ring[(i+1+j)%k]]
			}
			b := math.Inf(1)
			for j := 0; j+1 < k; j++ {
				b = math.Min(b, l[p[j]][p[j+1]])
			}
			out = append(out, hostPath{p[0], p[k-1], b, p})
			out = append(out, hostPath{p[k-1], p[0], b, reversed(p)})
		}
		return out
	}
	// bn[mask*k+v]: the best bottleneck of a path from s through mask
	// ending at v, for each start s in turn.
	var out []hostPath
	full := 1<<k - 1
	bn := make([]float64, (1<<k)*k)
	from := make([]int8, (1<<k)*k)
	for s := range k {
		for i := range bn {
			bn[i] = -1
		}
		bn[(1<<s)*k+s] = math.Inf(1)
		for mask := 1; mask <= full; mask++ {
			for v := range k {
				b := bn[mask*k+v]
				if b < 0 {
					continue
				}
				for w := range k {
					if mask&(1<<w) != 0 {
						continue
					}
					next := (mask|1<<w)*k + w
					if nb := math.Min(b, l[ranks[v]][ranks[w]]); nb > bn[next] {
						bn[next], from[next] = nb, int8(v)
					}
				}
			}
		}
		for e := range k {
			if e == s {
				continue
			}
			p := make([]int, k)
			for i, mask, v := k-1, full, e; i >= 0; i-- {
				p[i] = ranks[v]
				v, mask = int(from[mask*k+v]), mask&^(1<<v)
			}
			out = append(out, hostPath{ranks[s], ranks[e], bn[full*k+e], p})
		}
	}
	return out
}

func subMatrix(l [][]float64, ranks []int) *Matrix {
	m := NewMatrix(len(ranks))
	for i, a := range ranks {
		for j, b := range ranks {
			m.Bandwidth[i][j] = l[a][b]
		}
	}
	return m
}

func reversed(p []int) []int {
	q := slices.Clone(p)
	slices.Reverse(q)
	return q
}

// chainHosts picks one path per host, hosts in the given ring order, to
// maximise the smallest of the paths' bottlenecks and the links from each
// host's exit to the next host's entry. For each entry rank of the first
// host it runs a dynamic programme whose state is the exit rank of the
// host reached so far; the ring closes back to that entry.
func chainHosts(l [][]float64, paths [][]hostPath) []int {
	h := len(paths)
	bestB, bestOrder := math.Inf(-1), []int(nil)
	entries := map[int]bool{}
	for _, p0 := range paths[0] {
		if entries[p0.entry] {
			continue
		}
		entries[p0.entry] = true
		// value[k][c]: best bottleneck of hosts 0..k with host k on path c;
		// prev[k][c]: the path of host k-1 it came from.
		value := make([][]float64, h)
		prev := make([][]int, h)
		value[0] = make([]float64, len(paths[0]))
		for c, p := range paths[0] {
			value[0][c] = math.Inf(-1)
			if p.entry == p0.entry {
				value[0][c] = p.bottleneck
			}
		}
		for k := 1; k < h; k++ {
			value[k] = make([]float64, len(paths[k]))
			prev[k] = make([]int, len(paths[k]))
			// The best way to arrive at each entry rank of host k.
			arrive := map[int]struct {
				v float64
				c int
			}{}
			for c, p := range paths[k] {
				a, ok := arrive[p.entry]
				if !ok {
					a.v, a.c = math.Inf(-1), -1
					for pc, pp := range paths[k-1] {
						if v := math.Min(value[k-1][pc], l[pp.exit][p.entry]); v > a.v {
							a.v, a.c = v, pc
						}
					}
					arrive[p.entry] = a
				}
				value[k][c], prev[k][c] = math.Min(a.v, p.bottleneck), a.c
			}
		}
		for c, p := range paths[h-1] {
			v := math.Min(value[h-1][c], l[p.exit][p0.entry])
			if v <= bestB {
				continue
			}
			bestB = v
			chosen := make([]int, h)
			chosen[h-1] = c
			for k := h - 1; k > 0; k-- {
				chosen[k-1] = prev[k][chosen[k]]
			}
			bestOrder = bestOrder[:0]
			for k, ck := range chosen {
				bestOrder = append(bestOrder, paths[k][ck].ranks...)
			}
		}
	}
	return canonical(bestOrder)
}
