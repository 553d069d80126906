package launch

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
	ringo "github.com/ringo-ml/ringo/runtime"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
	"github.com/ringo-ml/ringo/topology"
)

// probeConfig is lighter than topology's default: it runs at every
// (re)formation, with training waiting, and 8 MiB each way is enough to
// tell a 200 Mbit/s link from a 10 Gbit/s one within a few per cent.
func probeConfig() topology.ProbeConfig {
	return topology.ProbeConfig{MessageBytes: 1 << 20, Iterations: 8, Warmup: 1, PingPongs: 20, PairTimeout: 20 * time.Second}
}

// solveTopology measures the links between the round's nodes and puts
// the nodes in the order of the ring that avoids the slowest links, so
// that global ranks, assigned node by node, run along that ring. Every
// node gets the same matrix and solves the same way, so all agree on the
// order without another round through the store.
func (a *agent) solveTopology(ctx context.Context, r *rendezvous.Round) error {
	n := len(r.Nodes)
	hosts := make([]string, n)
	for i, nd := range r.Nodes {
		hosts[i] = nd.Host
	}
	t0 := time.Now()
	tcfg := tcp.DefaultConfig()
	tcfg.Rendezvous = net.JoinHostPort(r.Nodes[0].Host, strconv.Itoa(r.Nodes[0].ProbePort))
	tcfg.Rank, tcfg.Size, tcfg.Token, tcfg.ListenHost = r.NodeRank, n, a.cfg.Token, a.cfg.Host
	tcfg.SocketsPerPeer = 1
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	comm, err := collective.NewTCP(pctx, tcfg, collective.DefaultConfig())
	if err != nil {
		return fmt.Errorf("topology probe: joining the other nodes: %w", err)
	}
	defer comm.Close()
	m, err := topology.Probe(pctx, ringo.ProbePeer(comm, hosts), probeConfig())
	if m == nil {
		return fmt.Errorf("topology probe: %w", err)
	}
	if err != nil {
		a.logf("topology probe: %v (going on with the links that were measured)", err)
	}
	naive := make([]int, n)
	for i := range naive {
		naive[i] = i
	}
	order, bottleneck := topology.SolveRing(m)
	if a.cfg.LogDir != "" {
		dir := filepath.Join(a.cfg.LogDir, a.cfg.RunID)
		if err := os.MkdirAll(dir, 0o755); err == nil {
			topology.WriteMatrix(filepath.Join(dir, fmt.Sprintf("topology-gen%d.json", r.Gen)), m)
		}
	}
	names := make([]string, n)
	nodes := make([]rendezvous.Node, n)
	me := r.Nodes[r.NodeRank].ID
	for i, idx := range order {
		nodes[i] = r.Nodes[idx]
		names[i] = r.Nodes[idx].Host
		if nodes[i].ID == me {
			r.NodeRank = i
		}
	}
	r.Nodes = nodes
	if err := a.writeWorkerMatrix(m, order, r.Gen); err != nil {
		a.logf("topology: %v (the workers will not re-plan)", err)
	}
	a.logf("topology: probed %d nodes in %v; ring %s, slowest link %.0f MB/s (in node-rank order it would be %.0f MB/s)",
		n, time.Since(t0).Round(time.Millisecond), strings.Join(names, " -> "), bottleneck/1e6, topology.Bottleneck(m, naive)/1e6)
	a.board.note("topology", "ring %s, slowest link %.0f MB/s", strings.Join(names, " -> "), bottleneck/1e6)
	return nil
}

// writeWorkerMatrix saves m with its rows and columns in the node ranks
// of the solved order, for the workers to re-plan from while they run.
func (a *agent) writeWorkerMatrix(m *topology.Matrix, order []int, gen int) error {
	if err := a.ensurePrivDir(); err != nil {
		return err
	}
	n := len(order)
	w := topology.NewMatrix(n)
	w.Time = m.Time
	for i, oi := range order {
		w.Hosts[i] = m.Hosts[oi]
		for j, oj := range order {
			w.Bandwidth[i][j], w.LatencyUS[i][j] = m.Bandwidth[oi][oj], m.LatencyUS[oi][oj]
		}
	}
	path := filepath.Join(a.privDir, fmt.Sprintf("topology-gen%d.json", gen))
	if err := topology.WriteMatrix(path, w); err != nil {
		return err
	}
	a.topoFile = path
	return nil
}
