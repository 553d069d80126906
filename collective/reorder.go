package collective

import (
	"context"
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Reorderer is implemented by the groups New makes: their ring order
// (Config.RingOrder at formation) can change between calls, so that a job
// that measured a slower link can move its ring off it without forming
// a new group (runtime's re-planning does this at a step boundary).
type Reorderer interface {
	// RingOrder returns the ranks in ring order.
	RingOrder() []int
	// Reorder makes ring the ring order of every call made after it. It
	// is a collective call: every rank makes it at the same point with
	// the same ring, which it checks with an all-reduce over the old
	// order, failing with ErrMismatch (and changing nothing) where ranks
	// disagree. Results stay bit-identical across ranks; a given order
	// gives the same bits on every run, but a different order may round
	// differently, as RingOrder at formation would.
	Reorder(ctx context.Context, ring []int) error
}

// ringPosition checks that ring is a permutation of 0..n-1 and returns
// rank's place in it.
func ringPosition(ring []int, n, rank int) (int, error) {
	if len(ring) != n {
		return -1, fmt.Errorf("collective: RingOrder has %d ranks, the group has %d", len(ring), n)
	}
	pos, seen := -1, make([]bool, n)
	for p, r := range ring {
		if r < 0 || r >= n || seen[r] {
			return -1, fmt.Errorf("collective: RingOrder %v is not a permutation of 0..%d", ring, n-1)
		}
		seen[r] = true
		if r == rank {
			pos = p
		}
	}
	return pos, nil
}

func (g *group) RingOrder() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.ring)
}

func (g *group) Reorder(ctx context.Context, ring []int) error {
	ring = slices.Clone(ring)
	pos, err := ringPosition(ring, g.size, g.rank)
	if err != nil {
		return err
	}
	hier, err := newHierLayout(g.cfg.Hosts, g.tr, ring, g.rank)
	if err != nil {
		return err
	}
	// Every rank learns the largest hash and the largest complement:
	// both are its own only if every rank passed the same ring.
	var b []byte
	for _, r := range ring {
		b = fmt.Appendf(b, "%d,", r)
	}
	h := xxhash.Sum64(b)
	v := []int64{int64(h), int64(^h)}
	if err := g.AllReduce(ctx, Int64s(v), Int64s(v), Max); err != nil {
		return fmt.Errorf("reorder: %w", err)
	}
	if uint64(v[0]) != h || uint64(v[1]) != ^h {
		return &PeerError{Rank: -1, Op: "Reorder", Err: fmt.Errorf("rank %d: ranks passed different ring orders (this one %v): %w", g.rank, ring, ErrMismatch)}
	}
	// The change takes a turn of its own, so that no call runs with half
	// of it; schedules were built for the old order.
	c := call{kind: opBarrier}
	_, ticketed, err := g.begin(&c)
	if ticketed {
		defer g.end()
	}
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.ring, g.pos, g.hier = ring, pos, hier
	g.mu.Unlock()
	clear(g.cache)
	return nil
}
