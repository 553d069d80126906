package runtime

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/topology"
)

// Re-planning: the launcher probes the links between nodes when the job
// forms (--topology probe) and orders ranks along the best ring; it hands
// that matrix to the workers. While training runs, Replan reads what the
// kernel measured of the job's own TCP connections (by socket, or by
// address where libp2p keeps the socket), folds it into the matrix
// (topology.Live) and, where another order of the hosts is predicted
// faster by the margin in windows in a row, moves the ring at that step
// boundary (collective.Reorderer): no restart, no new connections.
// Where the launcher runs eBPF (root), it also counts every program's
// connections between the nodes (EnvLinksFile): traffic of others over a
// link the ring leaves idle lowers that link's estimate, so the ring does
// not move onto a link another job is filling.
//
// Every rank all-gathers the same counters and feeds the same Live, so
// every rank reaches the same decision at the same call; Reorder checks
// that they did.

const (
	// EnvTopologyFile names the matrix the launcher probed when the job
	// formed, one row per node in node-rank (GROUP_RANK) order; with it,
	// Replan can move the ring while the job runs.
	EnvTopologyFile = "RINGO_TOPOLOGY_FILE"
	// EnvLinksFile names the file where the launcher keeps its eBPF
	// counters of every program's connections from this node to each
	// other (topology.KernelLinks), rewritten twice a second; a node's
	// first worker hands them to Replan, which lowers the links others
	// are using. Unset where the launcher may not load eBPF (not root).
	EnvLinksFile = "RINGO_LINKS_FILE"
	// EnvReplanIgnoreOthers=1 makes Replan ignore EnvLinksFile, as if the
	// launcher had no eBPF counters: the ring may then move onto links
	// other programs fill (for comparison, or where their traffic is
	// known to pass before the next check).
	EnvReplanIgnoreOthers = "RINGO_REPLAN_IGNORE_OTHERS"
	// EnvReplanEvery is how many steps apart the Trainer calls Replan (0
	// or unset: DefaultReplanEvery; negative: never).
	EnvReplanEvery = "RINGO_REPLAN_EVERY"
	// DefaultReplanEvery is the Trainer's cadence of Replan.
	DefaultReplanEvery = 20
)

// replanner is a Group's re-planning state; nil where there is nothing
// to re-plan (one node, no matrix, a fixed RingOrder).
type replanner struct {
	hosts  int
	live   *topology.Live
	hostOf []int // each rank's node, learnt at the first Replan
	// diag asks the kernel about connections by address (libp2p's),
	// opened at the first such question and kept for the next checks.
	diag *topology.SockDiag
	// linksFile is the launcher's eBPF counters of this node's links
	// (EnvLinksFile), read by the node's first worker; "" without.
	linksFile string

	mu      sync.Mutex // guards what report reads, below
	ring    []int
	windows int
	replans []topology.Replan
	matrix  *topology.Matrix
	rtt     [][]float64 // µs, host to host, at the last window
	retrans [][]uint64
	others  [][]float64 // other programs' bytes/s over idle links; nil: no node counts them
}

// newReplanner reads the launcher's matrix, if any. The ring in use is
// the node-rank order: the launcher assigned ranks along the solved ring.
func newReplanner(e workerEnv, ccfg collective.Config) (*replanner, error) {
	path := os.Getenv(EnvTopologyFile)
	if path == "" || e.nodes < 2 || ccfg.RingOrder != nil {
		return nil, nil
	}
	m, err := topology.ReadMatrix(path)
	if err != nil {
		return nil, fmt.Errorf("rank %d: %s: %w (ringo launch --topology probe writes this file; unset %s to run without re-planning)", e.rank, EnvTopologyFile, err, EnvTopologyFile)
	}
	if m.Size() != e.nodes {
		return nil, fmt.Errorf("rank %d: %s=%s has %d hosts, the job %d nodes: it belongs to another job or generation (unset it, or let ringo launch --topology probe set it)", e.rank, EnvTopologyFile, path, m.Size(), e.nodes)
	}
	ring := make([]int, e.nodes)
	for i := range ring {
		ring[i] = i
	}
	live, err := topology.NewLive(m, ring, topology.DefaultLiveConfig())
	if err != nil {
		return nil, fmt.Errorf("rank %d: %s=%s: %w", e.rank, EnvTopologyFile, path, err)
	}
	p := &replanner{hosts: e.nodes, live: live, ring: ring, matrix: live.Matrix(), linksFile: os.Getenv(EnvLinksFile)}
	if os.Getenv(EnvReplanIgnoreOthers) == "1" {
		p.linksFile = ""
	}
	return p, nil
}

// replanEvery is the Trainer's cadence: cfg's, else the environment's,
// else DefaultReplanEvery.
func replanEvery(cfg int64) (int64, error) {
	if cfg != 0 {
		return cfg, nil
	}
	if v := os.Getenv(EnvReplanEvery); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s=%q is not a number of steps (want an integer: 0 for the default %d, negative for never)", EnvReplanEvery, v, DefaultReplanEvery)
		}
		if n != 0 {
			return n, nil
		}
	}
	return DefaultReplanEvery, nil
}

// socketer and ender are what Replan needs of a transport: the data
// sockets to a peer (TCP's, read by getsockopt), or where a library keeps
// them to itself (libp2p's) the addresses of its connections, which the
// kernel is asked about by address. transport.Mesh has both; the
// transports embed one.
type (
	socketer interface {
		Sockets(peer int) []syscall.Conn
	}
	ender interface {
		Ends(peer int) []transport.ConnEnds
	}
)

// linkInfo reads TCP_INFO of the connections to peer: none for shared
// memory, this rank, or a connection closing (the next collective
// reports why).
func (g *Group) linkInfo(peer int) []topology.TCPInfo {
	var out []topology.TCPInfo
	if s, ok := g.tr.(socketer); ok {
		for _, c := range s.Sockets(peer) {
			if info, err := topology.ReadTCPInfo(c); err == nil {
				out = append(out, info)
			}
		}
	}
	if e, ok := g.tr.(ender); ok && len(out) == 0 {
		ends := e.Ends(peer)
		if len(ends) > 0 && g.replan.diag == nil {
			d, err := topology.OpenSockDiag()
			if err != nil {
				return nil // the window goes without this link's counters
			}
			g.replan.diag = d
		}
		for _, c := range ends {
			if info, err := g.replan.diag.TCPInfo(c.Local, c.Remote); err == nil {
				out = append(out, info)
			}
		}
	}
	return out
}

// close releases what the re-planner holds open.
func (p *replanner) close() {
	if p != nil && p.diag != nil {
		p.diag.Close()
	}
}

// Replan is a step-boundary check of the ring against what the job's
// links carry: every rank calls it at the same step, and it returns true
// where the ring moved. It costs an all-gather of a few numbers per rank;
// outside a multi-node job launched with --topology probe it does
// nothing. The Trainer calls it every ReplanEvery steps.
func (g *Group) Replan(ctx context.Context, step int64) (bool, error) {
	p := g.replan
	if p == nil {
		return false, nil
	}
	if p.hostOf == nil {
		// Nodes may run different numbers of ranks: ask each its node.
		var err error
		if p.hostOf, err = g.gatherNodes(ctx, p.hosts); err != nil {
			return false, fmt.Errorf("replan at step %d: %w", step, err)
		}
	}
	// Mine: per host, of my sockets to ranks there: bytes acknowledged,
	// busy time (the longest), smoothed RTT (the longest) and segments
	// retransmitted, and how many sockets. Then, from a node's first
	// worker, its launcher's kernel counters (kernelPart).
	const per = 5
	mine := make([]float64, per*p.hosts+kernelPart(p.hosts))
	if g.LocalRank == 0 {
		p.readKernel(mine[per*p.hosts:])
	}
	for peer := range g.Size() {
		for _, info := range g.linkInfo(peer) {
			h := p.hostOf[peer]
			v := mine[per*h : per*h+per]
			v[0] += float64(info.BytesAcked)
			v[1] = max(v[1], float64(info.BusyTime))
			v[2] = max(v[2], float64(info.RTT))
			v[3] += float64(info.Retransmits)
			v[4]++
		}
	}
	all := make([]float64, len(mine)*g.Size())
	if err := g.AllGather(ctx, collective.Float64s(mine), collective.Float64s(all)); err != nil {
		return false, fmt.Errorf("replan at step %d: %w", step, err)
	}
	total := make([][]topology.LinkWindow, p.hosts)
	rtt, retrans := make([][]float64, p.hosts), make([][]uint64, p.hosts)
	for i := range total {
		total[i] = make([]topology.LinkWindow, p.hosts)
		rtt[i], retrans[i] = make([]float64, p.hosts), make([]uint64, p.hosts)
	}
	var kernel []topology.KernelLinks
	for r := range g.Size() {
		v, a := all[r*len(mine):(r+1)*len(mine)], p.hostOf[r]
		if k, ok := kernelFrom(v[per*p.hosts:], p.hosts); ok {
			if kernel == nil {
				kernel = make([]topology.KernelLinks, p.hosts)
			}
			if kernel[a].At.IsZero() {
				kernel[a] = k
			}
		}
		for b := range p.hosts {
			x, w := v[per*b:per*b+per], &total[a][b]
			w.Bytes += uint64(x[0])
			w.Busy = max(w.Busy, time.Duration(x[1]))
			rtt[a][b] = max(rtt[a][b], time.Duration(x[2]).Seconds()*1e6)
			retrans[a][b] += uint64(x[3])
			w.Conns += int(x[4])
		}
	}
	d := p.live.Observe(total, kernel)
	p.mu.Lock()
	p.windows++
	p.matrix, p.rtt, p.retrans = d.Matrix, rtt, retrans
	if kernel != nil {
		p.others = p.live.Others()
	}
	if n := len(p.replans); n > 0 && p.replans[n-1].Measured == 0 && d.RingMeasured {
		last := &p.replans[n-1]
		last.Measured = d.Current
		last.MeasuredGain = d.Current/last.Before - 1
	}
	p.mu.Unlock()
	if !d.Move {
		return false, nil
	}
	from := p.live.Ring()
	ranks := make([]int, 0, g.Size())
	for _, h := range d.Ring {
		for r := range g.Size() {
			if p.hostOf[r] == h {
				ranks = append(ranks, r)
			}
		}
	}
	if err := g.Comm.(collective.Reorderer).Reorder(ctx, ranks); err != nil {
		return false, fmt.Errorf("replan at step %d: %w", step, err)
	}
	p.live.Adopt(d.Ring)
	ev := topology.Replan{Step: step, Time: time.Now().UTC(), From: from, To: slices.Clone(d.Ring), Before: d.Current, Predicted: d.Best, PredictedGain: d.Gain}
	p.mu.Lock()
	p.replans = append(p.replans, ev)
	p.ring = slices.Clone(d.Ring)
	p.mu.Unlock()
	return true, nil
}

// kernelPart is how many numbers of a rank's share of Replan's
// all-gather carry its launcher's kernel counters: a flag (1: present),
// the time they were read (Unix ns), then per host the bytes
// acknowledged and the busy connections. float64 holds both counts
// exactly up to 2^53 and the time to a quarter of a microsecond.
func kernelPart(hosts int) int { return 2 + 2*hosts }

// readKernel fills x (kernelPart numbers) from the launcher's file, or
// leaves it zero where there is none or it cannot be read now (the next
// window tries again).
func (p *replanner) readKernel(x []float64) {
	if p.linksFile == "" {
		return
	}
	k, err := topology.ReadKernelLinks(p.linksFile, p.hosts)
	if err != nil {
		return
	}
	x[0], x[1] = 1, float64(k.At.UnixNano())
	for j := range p.hosts {
		x[2+2*j], x[3+2*j] = float64(k.BytesAcked[j]), float64(k.Busy[j])
	}
}

// kernelFrom decodes what readKernel filled, if it did.
func kernelFrom(x []float64, hosts int) (topology.KernelLinks, bool) {
	if len(x) < kernelPart(hosts) || x[0] != 1 {
		return topology.KernelLinks{}, false
	}
	k := topology.KernelLinks{At: time.Unix(0, int64(x[1])), BytesAcked: make([]uint64, hosts), Busy: make([]int, hosts)}
	for j := range hosts {
		k.BytesAcked[j], k.Busy[j] = uint64(x[2+2*j]), int(x[3+2*j])
	}
	return k, true
}

// gatherNodes returns every rank's node rank, checked against nodes.
func (g *Group) gatherNodes(ctx context.Context, nodes int) ([]int, error) {
	all := make([]int32, g.Size())
	if err := g.AllGather(ctx, collective.Int32s([]int32{int32(g.NodeRank)}), collective.Int32s(all)); err != nil {
		return nil, err
	}
	out := make([]int, len(all))
	for r, a := range all {
		if a < 0 || int(a) >= nodes {
			return nil, fmt.Errorf("rank %d says it is on node %d, the job has %d", r, a, nodes)
		}
		out[r] = int(a)
	}
	return out, nil
}

// Replans returns the moves of the ring so far, oldest first.
func (g *Group) Replans() []topology.Replan {
	if g.replan == nil {
		return nil
	}
	g.replan.mu.Lock()
	defer g.replan.mu.Unlock()
	return slices.Clone(g.replan.replans)
}

// topologyReport is the live view for the worker's Report, or nil. Every
// rank holds the same view; only a node's first worker sends it, since
// its size grows with the square of the hosts.
func (g *Group) topologyReport() *topology.LiveView {
	p := g.replan
	if p == nil || g.LocalRank != 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &topology.LiveView{Ring: slices.Clone(p.ring), Matrix: p.matrix, RTTUS: p.rtt, Retransmits: p.retrans, Others: p.others,
		Windows: p.windows, Replans: slices.Clone(p.replans)}
}
