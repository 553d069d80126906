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
	"github.com/ringo-ml/ringo/runtime/rendezvous"
	"github.com/ringo-ml/ringo/topology"
)

// commPeer lets topology.Probe talk through a collective group of the
// launchers.
type commPeer struct {
	c     collective.Comm
	hosts []string
}

func (p commPeer) Rank() int       { return p.c.Rank() }
func (p commPeer) Size() int       { return p.c.Size() }
func (p commPeer) Hosts() []string { return p.hosts }

func bytesBuf(b []byte) (collective.Buffer, error) {
	if len(b)%4 != 0 {
		return collective.Buffer{}, fmt.Errorf("probe message of %d bytes: want a multiple of 4", len(b))
	}
	return collective.BufferOf(collective.Int32, b), nil
}

func (p commPeer) Send(ctx context.Context, peer int, b []byte) error {
	buf, err := bytesBuf(b)
	if err != nil {
		return err
	}
	return p.c.Send(ctx, buf, peer)
}

func (p commPeer) Recv(ctx context.Context, peer int, b []byte) error {
	buf, err := bytesBuf(b)
	if err != nil {
		return err
	}
	return p.c.Recv(ctx, buf, peer)
}

func (p commPeer) Barrier(ctx context.Context) error { return p.c.Barrier(ctx) }

func (p commPeer) AllGather(ctx context.Context, mine []float64) ([][]float64, error) {
	all := make([]float64, len(mine)*p.c.Size())
	if err := p.c.AllGather(ctx, collective.Float64s(mine), collective.Float64s(all)); err != nil {
		return nil, err
	}
	out := make([][]float64, p.c.Size())
	for r := range out {
		out[r] = all[r*len(mine) : (r+1)*len(mine)]
	}
	return out, nil
}

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
	m, err := topology.Probe(pctx, commPeer{c: comm, hosts: hosts}, probeConfig())
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
	a.logf("topology: probed %d nodes in %v; ring %s, slowest link %.0f MB/s (in node-rank order it would be %.0f MB/s)",
		n, time.Since(t0).Round(time.Millisecond), strings.Join(names, " -> "), bottleneck/1e6, topology.Bottleneck(m, naive)/1e6)
	a.board.note("topology", "ring %s, slowest link %.0f MB/s", strings.Join(names, " -> "), bottleneck/1e6)
	return nil
}
