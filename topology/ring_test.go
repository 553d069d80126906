package topology

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// randomMatrix draws bandwidths from kind: "uniform" (all distinct),
// "ties" (a few integer levels, so many rings share the optimum) or
// "hosts" (ranks in groups of four with fast links inside a group).
func randomMatrix(rng *rand.Rand, n int, kind string) *Matrix {
	m := NewMatrix(n)
	for i := range n {
		for j := range n {
			if i == j {
				continue
			}
			switch kind {
			case "uniform":
				m.Bandwidth[i][j] = 1e9 * (0.1 + rng.Float64())
			case "ties":
				m.Bandwidth[i][j] = 1e9 * float64(1+rng.IntN(4))
			case "hosts":
				m.Bandwidth[i][j] = 1e9 * (1 + rng.Float64())
				if i/4 == j/4 {
					m.Bandwidth[i][j] *= 20
				}
			}
		}
	}
	return m
}

func isRing(order []int, n int) bool {
	s := slices.Clone(order)
	slices.Sort(s)
	for i, v := range s {
		if v != i {
			return false
		}
	}
	return len(s) == n
}

// bruteForce tries every ring through rank 0: the best bottleneck, and
// the best sum of links among the rings with it.
func bruteForce(m *Matrix) (bottleneck, sum float64) {
	n := m.Size()
	rest := make([]int, n-1)
	for i := range rest {
		rest[i] = i + 1
	}
	bottleneck, sum = -1, -1
	var permute func(k int)
	permute = func(k int) {
		if k == len(rest) {
			order := append([]int{0}, rest...)
			b, s := Bottleneck(m, order), ringSum(m, order)
			if b > bottleneck || (b == bottleneck && s > sum) {
				bottleneck, sum = b, s
			}
			return
		}
		for i := k; i < len(rest); i++ {
			rest[k], rest[i] = rest[i], rest[k]
			permute(k + 1)
			rest[k], rest[i] = rest[i], rest[k]
		}
	}
	permute(0)
	return bottleneck, sum
}

func ringSum(m *Matrix, order []int) float64 {
	s := 0.0
	for i, a := range order {
		s += m.Link(a, order[(i+1)%len(order)])
	}
	return s
}

func TestBottleneck(t *testing.T) {
	m := NewMatrix(3)
	m.Bandwidth = [][]float64{{0, 5, 9}, {7, 0, 3}, {9, 4, 0}}
	// Links: 0-1 min(5,7)=5, 1-2 min(3,4)=3, 2-0 9.
	if b := Bottleneck(m, []int{0, 1, 2}); b != 3 {
		t.Errorf("Bottleneck = %v, want 3", b)
	}
	if b := Bottleneck(m, []int{0}); b != 0 {
		t.Errorf("one rank: %v, want 0", b)
	}
	if b := Bottleneck(m, []int{0, 2}); b != 9 {
		t.Errorf("two ranks: %v, want 9", b)
	}
}

func TestSolveRingSmall(t *testing.T) {
	for n := 1; n <= 3; n++ {
		m := randomMatrix(rand.New(rand.NewPCG(1, uint64(n))), n, "uniform")
		order, b := SolveRing(m)
		if !isRing(order, n) || b != Bottleneck(m, order) {
			t.Errorf("n=%d: %v, %v", n, order, b)
		}
	}
}

func TestSolveRingExactAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	for _, kind := range []string{"uniform", "ties", "hosts"} {
		for n := 4; n <= 8; n++ {
			for trial := 0; trial < 5; trial++ {
				m := randomMatrix(rng, n, kind)
				order, b := SolveRingExact(m)
				wantB, wantSum := bruteForce(m)
				if !isRing(order, n) || order[0] != 0 || order[1] > order[n-1] {
					t.Fatalf("%s n=%d: %v is not a canonical ring", kind, n, order)
				}
				if b != Bottleneck(m, order) || b != wantB {
					t.Errorf("%s n=%d: bottleneck %v (ring says %v), brute force %v", kind, n, b, Bottleneck(m, order), wantB)
				}
				if s := ringSum(m, order); math.Abs(s-wantSum) > 1e-6*wantSum {
					t.Errorf("%s n=%d: sum %v, the best with that bottleneck is %v", kind, n, s, wantSum)
				}
				if again, _ := SolveRingExact(m); !slices.Equal(again, order) {
					t.Errorf("%s n=%d: %v then %v: not deterministic", kind, n, order, again)
				}
			}
		}
	}
}

func TestSolveRingExactRefusesHuge(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic on 21 ranks")
		}
	}()
	SolveRingExact(NewMatrix(21))
}

// TestHeuristicGap measures the heuristic against the exact answer on
// random 8 to 12 rank matrices and fails if it falls clearly behind.
func TestHeuristicGap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	trials := 30
	if testing.Short() {
		trials = 5
	}
	for _, kind := range []string{"uniform", "ties", "hosts"} {
		exact, worst, sumRatio, count := 0, 1.0, 0.0, 0
		for n := 8; n <= 12; n++ {
			for range trials {
				m := randomMatrix(rng, n, kind)
				_, want := SolveRingExact(m)
				order, got := SolveRingHeuristic(m)
				if !isRing(order, n) || got != Bottleneck(m, order) {
					t.Fatalf("%s n=%d: %v, %v is not a ring and its bottleneck", kind, n, order, got)
				}
				if got > want {
					t.Fatalf("%s n=%d: heuristic %v beats exact %v", kind, n, got, want)
				}
				r := got / want
				sumRatio += r
				worst = min(worst, r)
				count++
				if got == want {
					exact++
				}
			}
		}
		mean := sumRatio / float64(count)
		t.Logf("%-7s: heuristic optimal on %d/%d matrices of 8-12 ranks, mean bottleneck ratio %.4f, worst %.4f", kind, exact, count, mean, worst)
		if mean < 0.98 || worst < 0.85 {
			t.Errorf("%s: heuristic too far from exact: mean %.4f, worst %.4f", kind, mean, worst)
		}
	}
}

// TestHeuristicFindsPlantedRing hides one fast ring among slow links on
// matrices too large to solve exactly: the heuristic must find a ring as
// fast.
func TestHeuristicFindsPlantedRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for _, n := range []int{13, 40, 150} {
		m := NewMatrix(n)
		for i := range n {
			for j := range n {
				if i != j {
					m.Bandwidth[i][j] = 1e8 * (1 + rng.Float64()) // slow: 0.1-0.2 GB/s
				}
			}
		}
		hidden := rng.Perm(n)
		for i, a := range hidden {
			b := hidden[(i+1)%n]
			m.Bandwidth[a][b] = 1e9 * (1 + rng.Float64())
			m.Bandwidth[b][a] = 1e9 * (1 + rng.Float64())
		}
		order, b := SolveRing(m)
		if !isRing(order, n) {
			t.Fatalf("n=%d: %v is not a ring", n, order)
		}
		if b < 1e9 {
			t.Errorf("n=%d: bottleneck %.3g, but a ring of at least 1e9 exists", n, b)
		}
	}
}

// hostMatrix has hosts of per ranks each: intra-host links near intra;
// network links near inter, the same for every pair of ranks of two
// hosts when perPair, else drawn for each pair of ranks (±50%).
func hostMatrix(rng *rand.Rand, hosts, per int, intra, inter float64, perPair bool) (*Matrix, []int) {
	n := hosts * per
	net := make([][]float64, hosts)
	for a := range net {
		net[a] = make([]float64, hosts)
		for b := range net[a] {
			net[a][b] = inter * (0.5 + rng.Float64())
		}
	}
	m := NewMatrix(n)
	hostOf := make([]int, n)
	for i := range n {
		hostOf[i] = i / per
		for j := range n {
			switch {
			case i == j:
			case i/per == j/per:
				m.Bandwidth[i][j] = intra * (0.5 + rng.Float64())
			case perPair:
				m.Bandwidth[i][j] = net[i/per][j/per]
			default:
				m.Bandwidth[i][j] = inter * (0.5 + rng.Float64())
			}
		}
	}
	return m, hostOf
}

func crossings(order, hostOf []int) int {
	c := 0
	for i, a := range order {
		if hostOf[a] != hostOf[order[(i+1)%len(order)]] {
			c++
		}
	}
	return c
}

// TestHierarchicalRingMatchesHostRing: with one network speed per pair
// of hosts and faster links inside hosts, the bottleneck is the best ring
// of hosts'.
func TestHierarchicalRingMatchesHostRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, shape := range [][2]int{{2, 2}, {3, 4}, {4, 3}, {2, 6}, {6, 2}, {5, 2}, {7, 2}, {3, 3}, {9, 3}} {
		for range 5 {
			hosts, per := shape[0], shape[1]
			m, hostOf := hostMatrix(rng, hosts, per, 100e9, 10e9, true)
			order, b := HierarchicalRing(m, hostOf)
			if !isRing(order, m.Size()) || b != Bottleneck(m, order) {
				t.Fatalf("%v: %v, %v", shape, order, b)
			}
			hm := NewMatrix(hosts)
			for a := range hosts {
				for c := range hosts {
					hm.Bandwidth[a][c] = m.Bandwidth[a*per][c*per]
				}
			}
			if _, want := SolveRingExact(hm); b != want {
				t.Errorf("%d hosts × %d: hierarchical %.4g, best ring of hosts %.4g", hosts, per, b, want)
			}
			if c := crossings(order, hostOf); c != hosts {
				t.Errorf("%d hosts × %d: %d network crossings, want one per host", hosts, per, c)
			}
		}
	}
}

// TestHierarchicalRingPerRankLinks: with a network speed for each pair
// of ranks, the answer is the best ring among those crossing once per
// host (brute force); the exact ring, free to cross more, may be faster.
func TestHierarchicalRingPerRankLinks(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	sumRatio, count := 0.0, 0
	for _, shape := range [][2]int{{2, 3}, {3, 2}, {3, 3}, {4, 2}, {2, 4}} {
		for range 4 {
			m, hostOf := hostMatrix(rng, shape[0], shape[1], 100e9, 10e9, false)
			order, b := HierarchicalRing(m, hostOf)
			if c := crossings(order, hostOf); c != shape[0] {
				t.Errorf("%v: %d crossings", shape, c)
			}
			if want := bestWithCrossings(m, hostOf, shape[0]); b != want {
				t.Errorf("%v: hierarchical %.4g, best ring crossing once per host %.4g", shape, b, want)
			}
			_, exact := SolveRingExact(m)
			sumRatio += b / exact
			count++
		}
	}
	t.Logf("per-rank network links: hierarchical/exact bottleneck %.4f on average", sumRatio/float64(count))
}

func bestWithCrossings(m *Matrix, hostOf []int, want int) float64 {
	n := m.Size()
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	best := -1.0
	var permute func(k int)
	permute = func(k int) {
		if k == n {
			if crossings(perm, hostOf) == want {
				best = max(best, Bottleneck(m, perm))
			}
			return
		}
		for i := k; i < n; i++ {
			perm[k], perm[i] = perm[i], perm[k]
			permute(k + 1)
			perm[k], perm[i] = perm[i], perm[k]
		}
	}
	permute(1)
	return best
}

func TestHierarchicalRingLarge(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for _, shape := range [][2]int{{16, 8}, {3, 20}} {
		m, hostOf := hostMatrix(rng, shape[0], shape[1], 100e9, 10e9, false)
		// Shuffle which rank is on which host: grouping must not depend
		// on ranks being numbered host by host.
		perm := rng.Perm(m.Size())
		pm := NewMatrix(m.Size())
		ph := make([]int, m.Size())
		for i := range perm {
			ph[perm[i]] = hostOf[i]
			for j := range perm {
				pm.Bandwidth[perm[i]][perm[j]] = m.Bandwidth[i][j]
			}
		}
		order, b := HierarchicalRing(pm, ph)
		if !isRing(order, pm.Size()) || b != Bottleneck(pm, order) {
			t.Fatalf("%v: not a ring", shape)
		}
		if c := crossings(order, ph); c != shape[0] {
			t.Errorf("%v: %d crossings, want %d", shape, c, shape[0])
		}
		if b < 5e9 {
			t.Errorf("%v: bottleneck %.3g below every network link", shape, b)
		}
		if testing.Short() {
			continue
		}
		pm.Hosts = make([]string, pm.Size())
		for i, h := range ph {
			pm.Hosts[i] = string(rune('a' + h))
		}
		if _, sb := SolveRing(pm); sb < b {
			t.Errorf("%v: SolveRing %.4g is below HierarchicalRing %.4g", shape, sb, b)
		}
	}
}

func BenchmarkSolveRingExact12(b *testing.B) {
	m := randomMatrix(rand.New(rand.NewPCG(7, 7)), 12, "uniform")
	for b.Loop() {
		SolveRingExact(m)
	}
}

func BenchmarkSolveRingHeuristic64(b *testing.B) {
	m := randomMatrix(rand.New(rand.NewPCG(8, 8)), 64, "uniform")
	for b.Loop() {
		SolveRingHeuristic(m)
	}
}
