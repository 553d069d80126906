package collectivetest_test

import (
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

// hierHosts lays n ranks out as H hosts of n/H ranks each, H the smallest
// divisor of n that leaves at least two ranks a host, with the hosts
// interleaved (rank r on host r%H) so that no host is a run of ranks. A
// prime n has no such layout: nil, and the flat algorithms run.
func hierHosts(n int) []int {
	for h := 2; h*2 <= n; h++ {
		if n%h == 0 {
			hosts := make([]int, n)
			for r := range hosts {
				hosts[r] = r % h
			}
			return hosts
		}
	}
	return nil
}

// hierConfig turns the suite's configurations into hierarchical ones: the
// forced ring becomes the forced hierarchical algorithm with rings between
// hosts, and auto goes hierarchical at every size, recursive doubling
// between hosts below SmallBytes.
func hierConfig(n int, cfg collective.Config) collective.Config {
	cfg.Hosts = hierHosts(n)
	switch cfg.Algo {
	case collective.AlgoRing:
		cfg.Algo, cfg.SmallBytes = collective.AlgoHier, 0
	case collective.AlgoAuto:
		cfg.HierBytes = 0
	}
	return cfg
}

func TestInprocHier(t *testing.T) {
	collectivetest.RunOptions(t, func(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
		w := inproc.NewWorld(n)
		trs := make([]transport.Transport, n)
		for r := range trs {
			trs[r] = w.Transport(r)
		}
		g := collectivetest.Form(t, hierConfig(n, cfg), trs, w.Kill)
		if hierHosts(n) != nil && collective.HierarchicalLayout(g.Comms[0]) == nil {
			t.Fatalf("world %d: hosts %v give no hierarchical layout", n, hierHosts(n))
		}
		return g
	}, collectivetest.Options{Worlds: []int{1, 2, 4, 6, 8, 9}})
}
