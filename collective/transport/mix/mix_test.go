package mix_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/mix"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// pairs stands in for hosts of two ranks each: ranks 2h and 2h+1 share a
// "host" and talk shm, every other pair TCP, so every group of three or
// more ranks mixes both kinds, and a ring crosses kinds at every hop.
var pairs = hostsOf(2)

// hostsOf stands in for hosts of k ranks each: ranks kh to kh+k-1.
func hostsOf(k int) func(a, b transport.Member) string {
	return func(a, b transport.Member) string {
		if a.Rank/k == b.Rank/k {
			return shm.Name
		}
		return tcp.Name
	}
}

func join(t testing.TB, n int, choose func(a, b transport.Member) string) []*mix.Transport {
	t.Helper()
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tts := make([]*mix.Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := mix.Config{TCP: tcp.DefaultConfig(), SHM: shm.DefaultConfig(), Choose: choose}
			c.TCP.Spin, c.SHM.Yield = tcp.SpinFor(n), shm.YieldFor(n)
			c.SHM.SlotBytes, c.SHM.Slots = 4<<10, 64 // small rings wrap often
			c.TCP.Rendezvous, c.TCP.Rank, c.TCP.Size = addr, r, n
			tts[r], errs[r] = mix.Join(ctx, c)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			for _, tt := range tts {
				if tt != nil {
					tt.Close()
				}
			}
			t.Fatalf("rank %d: mix.Join(size %d): %v", r, n, err)
		}
	}
	return tts
}

func TestConformance(t *testing.T) {
	collectivetest.RunQuick(t, func(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
		tts := join(t, n, pairs)
		trs := make([]transport.Transport, n)
		for r, tt := range tts {
			trs[r] = tt
		}
		return collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
	})
}

// Each pair gets the kind Choose names, seen the same from both ends, and
// the default puts every rank of one host on shared memory.
func TestKinds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		choose func(a, b transport.Member) string
		want   func(r, p int) string
	}{
		{"pairs", pairs, func(r, p int) string { return pairs(transport.Member{Rank: r}, transport.Member{Rank: p}) }},
		{"default", nil, func(int, int) string { return shm.Name }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tts := join(t, 4, tc.choose)
			defer func() {
				for _, tt := range tts {
					tt.Close()
				}
			}()
			for r, tt := range tts {
				for p := range tts {
					want := ""
					if p != r {
						want = tc.want(r, p)
					}
					if got := tt.Kind(p); got != want {
						t.Errorf("rank %d's link to rank %d is %q, want %q", r, p, got, want)
					}
				}
			}
		})
	}
}

// A Choose that names no kind fails the join with a message naming it,
// on every rank, instead of leaving a pair half-connected.
func TestChooseUnknownKind(t *testing.T) {
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := mix.Config{TCP: tcp.DefaultConfig(), SHM: shm.DefaultConfig(), Choose: func(a, b transport.Member) string { return "rdma" }}
			c.TCP.Rendezvous, c.TCP.Rank, c.TCP.Size = addr, r, 2
			tr, err := mix.Join(ctx, c)
			if tr != nil {
				tr.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), `"rdma"`) {
			t.Errorf("rank %d: err = %v, want one naming the kind \"rdma\"", r, err)
		}
	}
}

// The hierarchical algorithms over mix: hosts of two ranks (pairs), so
// that phases inside a host run over shm and the ones between hosts over
// TCP. The layout comes from the transport (Hosts), not from the config.
// The forced ring becomes the forced hierarchical algorithm with rings
// between hosts, and auto goes hierarchical at every size.
func TestConformanceHier(t *testing.T) {
	collectivetest.RunOptions(t, func(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
		switch cfg.Algo {
		case collective.AlgoRing:
			cfg.Algo, cfg.SmallBytes = collective.AlgoHier, 0
		case collective.AlgoAuto:
			cfg.HierBytes = 0
		}
		tts := join(t, n, pairs)
		trs := make([]transport.Transport, n)
		for r, tt := range tts {
			trs[r] = tt
		}
		g := collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
		if l := collective.HierarchicalLayout(g.Comms[0]); n%2 == 0 && n > 2 && len(l) != n/2 {
			t.Fatalf("world %d over pairs: hierarchical layout %v, want %d hosts of 2", n, l, n/2)
		}
		return g
	}, collectivetest.Options{Worlds: []int{2, 4, 6}, Quick: true})
}

// Hosts groups the ranks that Choose joins by shm, the same on every rank.
func TestHosts(t *testing.T) {
	tts := join(t, 5, pairs)
	defer func() {
		for _, tt := range tts {
			tt.Close()
		}
	}()
	want := []int{0, 0, 1, 1, 2}
	for r, tt := range tts {
		if got := tt.Hosts(); !slices.Equal(got, want) {
			t.Errorf("rank %d: Hosts() = %v, want %v", r, got, want)
		}
	}
}
