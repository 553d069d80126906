package collective

import (
	"fmt"
	"testing"

	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

// The hierarchical all-reduce sends each rank's share across hosts once:
// per rank, 2(H-1)/H of its local block leaves the host (the ring between
// hosts) and everything else stays on it; the flat ring over the same
// ranks sends 2(n-1)/n of the whole buffer, much of it across hosts.
func TestHierScheduleTraffic(t *testing.T) {
	for _, tc := range []struct{ hosts, local, count int }{{2, 2, 1 << 16}, {3, 2, 3000}, {2, 3, 999}, {3, 3, 10007}} {
		t.Run(fmt.Sprintf("%dx%d", tc.hosts, tc.local), func(t *testing.T) {
			n := tc.hosts * tc.local
			hosts := make([]int, n)
			for r := range hosts {
				hosts[r] = r / tc.local
			}
			w := inproc.NewWorld(n)
			cfg := DefaultConfig()
			cfg.Hosts, cfg.Algo, cfg.SmallBytes, cfg.ChunkBytes = hosts, AlgoHier, 0, 1<<10
			for r := range n {
				c, err := New(w.Transport(r), cfg)
				if err != nil {
					t.Fatal(err)
				}
				g := c.(*group)
				s := g.schedule(&call{kind: opAllReduce, algo: AlgoHier, dtype: Float32, count: tc.count, root: -1})
				var cross, within int
				for _, x := range s.ops {
					if x.kind != xSend {
						continue
					}
					if hosts[x.peer] == hosts[r] {
						within += x.n
					} else {
						cross += x.n
					}
				}
				// Each ring half sends every block of its ring but one:
				// reduce-scatter all but the block it ends with, all-gather
				// all but the one it receives last.
				sz := func(off []int, i int) int { i %= len(off) - 1; return (off[i+1] - off[i]) * 4 }
				lb := blocks(tc.count, tc.local)
				ib := blocks(sz(lb, g.hier.j)/4, tc.hosts)
				wantWithin := 2*tc.count*4 - sz(lb, g.hier.j) - sz(lb, g.hier.j+1)
				wantCross := 2*sz(lb, g.hier.j) - sz(ib, g.hier.h) - sz(ib, g.hier.h+1)
				if cross != wantCross || within != wantWithin {
					t.Errorf("rank %d: sends %d bytes across hosts and %d within, want %d and %d\n%s", r, cross, within, wantCross, wantWithin, s)
				}
				c.Close()
			}
		})
	}
}

// Auto goes hierarchical from HierBytes up, for the three ops that have a
// hierarchical form; a forced AlgoHier leaves the rooted ops to auto, and
// a group without hosts never goes hierarchical.
func TestHierAlgoChoice(t *testing.T) {
	if a, err := ParseAlgo("hier"); err != nil || a != AlgoHier || a.String() != "hier" {
		t.Fatalf("ParseAlgo(hier) = %v, %v", a, err)
	}
	if err := (Config{Timeout: 1, ChunkBytes: 64, Algo: AlgoHier + 1}).Validate(); err == nil {
		t.Error("Validate accepted an unknown Algo after AlgoHier")
	}
	t.Setenv(EnvHierThreshold, "1M")
	if c, err := DefaultConfig().FromEnv(); err != nil || c.HierBytes != 1<<20 {
		t.Errorf("%s=1M: HierBytes %d, %v", EnvHierThreshold, c.HierBytes, err)
	}
	form := func(hosts []int, algo Algo) *group {
		w := inproc.NewWorld(4)
		cfg := DefaultConfig()
		cfg.Hosts, cfg.Algo, cfg.HierBytes = hosts, algo, 1000
		c, err := New(w.Transport(0), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*group)
	}
	two := []int{7, 7, 9, 9}
	for _, tc := range []struct {
		hosts []int
		algo  Algo
		k     opKind
		bytes int
		want  Algo
	}{
		{two, AlgoAuto, opAllReduce, 999, AlgoRecursiveDoubling},
		{two, AlgoAuto, opAllReduce, 1000, AlgoHier},
		{two, AlgoAuto, opReduceScatter, 999, AlgoRing},
		{two, AlgoAuto, opAllGather, 4000, AlgoHier},
		{two, AlgoAuto, opBroadcast, 1 << 20, AlgoRing},
		{two, AlgoHier, opAllReduce, 4, AlgoHier},
		{two, AlgoHier, opBroadcast, 4, AlgoRecursiveDoubling},
		{two, AlgoRing, opAllReduce, 1 << 20, AlgoRing},
		{two, AlgoHalvingDoubling, opBroadcast, 1 << 20, AlgoRing}, // no rooted hd
		// Without a hierarchy, auto's flat choice: 1 MiB on 4 ranks is
		// under MidBytes, so halving-doubling; 16 MiB is past it, so ring.
		{nil, AlgoHier, opAllReduce, 1 << 20, AlgoHalvingDoubling},
		{nil, AlgoHier, opAllReduce, 16 << 20, AlgoRing},
		{[]int{0, 0, 0, 1}, AlgoHier, opAllReduce, 1 << 20, AlgoHalvingDoubling}, // uneven hosts
		{[]int{0, 1, 2, 3}, AlgoAuto, opAllReduce, 16 << 20, AlgoRing},           // one rank a host
	} {
		if got := form(tc.hosts, tc.algo).algoFor(tc.k, tc.bytes); got != tc.want {
			t.Errorf("hosts %v, %v, %v of %d bytes: %v, want %v", tc.hosts, tc.algo, tc.k, tc.bytes, got, tc.want)
		}
	}
}
