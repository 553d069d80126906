package collective_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

func reorderConfig() collective.Config {
	cfg := collective.DefaultConfig()
	cfg.Algo, cfg.ChunkBytes, cfg.Timeout = collective.AlgoRing, 64, 5*time.Second
	return cfg
}

// sumOnAll all-reduces rank-dependent floats whose sum rounds by the
// order of additions, and returns every rank's result.
func sumOnAll(t *testing.T, comms []collective.Comm, count int) [][]float32 {
	t.Helper()
	out := make([][]float32, len(comms))
	errs := each(comms, func(c collective.Comm) error {
		rng := rand.New(rand.NewPCG(uint64(c.Rank()), 7))
		buf := make([]float32, count)
		for i := range buf {
			buf[i] = rng.Float32() * float32(1+i%5) * 1e3
		}
		out[c.Rank()] = buf
		return c.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out
}

func reorderAll(t *testing.T, comms []collective.Comm, ring func(rank int) []int) []error {
	t.Helper()
	return each(comms, func(c collective.Comm) error {
		return c.(collective.Reorderer).Reorder(context.Background(), ring(c.Rank()))
	})
}

// After Reorder, a group computes what a group formed with that ring
// order computes, bit for bit, on every rank.
func TestReorderMatchesFormation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []int
		algo  collective.Algo
		ring  []int
	}{
		{"flat-ring", nil, collective.AlgoRing, []int{3, 0, 4, 1, 2}},
		{"flat-auto", nil, collective.AlgoAuto, []int{4, 3, 2, 1, 0}},
		{"hier", []int{0, 0, 1, 1, 2, 2}, collective.AlgoHier, []int{4, 5, 0, 1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.ring)
			cfg := reorderConfig()
			cfg.Algo, cfg.Hosts = tc.algo, tc.hosts
			moved := inprocGroup(t, n, cfg)
			sumOnAll(t, moved, 1001) // schedules of the old order are cached now
			for r, err := range reorderAll(t, moved, func(int) []int { return tc.ring }) {
				if err != nil {
					t.Fatalf("rank %d: Reorder: %v", r, err)
				}
			}
			fresh := cfg
			fresh.RingOrder = tc.ring
			want := sumOnAll(t, inprocGroup(t, n, fresh), 1001)
			got := sumOnAll(t, moved, 1001)
			for r := range got {
				if !slices.Equal(got[r], want[0]) {
					t.Fatalf("rank %d after Reorder differs from a group formed with ring %v", r, tc.ring)
				}
				if o := moved[r].(collective.Reorderer).RingOrder(); !slices.Equal(o, tc.ring) {
					t.Fatalf("rank %d: RingOrder() = %v, want %v", r, o, tc.ring)
				}
			}
			if tc.hosts != nil {
				l := collective.HierarchicalLayout(moved[0])
				if len(l) != 3 || !slices.Equal(l[0], []int{4, 5}) {
					t.Fatalf("hierarchical layout after Reorder: %v, want host of ranks 4,5 first", l)
				}
			}
		})
	}
}

// Ranks that pass different orders all fail with ErrMismatch, and the
// group goes on in its old order.
func TestReorderMismatch(t *testing.T) {
	comms := inprocGroup(t, 4, reorderConfig())
	errs := reorderAll(t, comms, func(rank int) []int {
		if rank == 2 {
			return []int{1, 0, 2, 3}
		}
		return []int{0, 1, 3, 2}
	})
	for r, err := range errs {
		if !errors.Is(err, collective.ErrMismatch) {
			t.Fatalf("rank %d: got %v, want ErrMismatch", r, err)
		}
		if o := comms[r].(collective.Reorderer).RingOrder(); !slices.Equal(o, []int{0, 1, 2, 3}) {
			t.Fatalf("rank %d changed its order to %v after a failed Reorder", r, o)
		}
	}
	got := sumOnAll(t, comms, 100)
	for r := range got {
		if !slices.Equal(got[r], got[0]) {
			t.Fatalf("rank %d disagrees with rank 0 after a failed Reorder", r)
		}
	}
}

func TestReorderRefusesNonPermutation(t *testing.T) {
	comms := inprocGroup(t, 3, reorderConfig())
	for _, ring := range [][]int{{0, 1}, {0, 1, 1}, {0, 1, 3}} {
		err := comms[0].(collective.Reorderer).Reorder(context.Background(), ring)
		if err == nil {
			t.Fatalf("Reorder(%v) succeeded", ring)
		}
	}
}
