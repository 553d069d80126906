package launch

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	ringo "github.com/ringo-ml/ringo/runtime"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
	"github.com/ringo-ml/ringo/topology"
)

// The kernel's view of the links reaches the workers' re-planning
// through a file: at every monitor tick the launcher sums its eBPF
// per-connection counters by peer node (every program's connections,
// not only the job's) and rewrites the file; a node's first worker reads
// it at each Replan and all-gathers it with the job's TCP_INFO, so every
// rank folds the same counters into the same matrix (topology.Live).

// busyConnBytes is what a connection must have had acknowledged since
// the launcher's previous read to count as sending (KernelLinks.Busy): a
// bulk flow moves far more in half a second, a heartbeat far less.
const busyConnBytes = 64 << 10

// wantsKernelCounters says whether this launcher loads the eBPF counters:
// for its metrics, or for its workers' re-planning.
func (a *agent) wantsKernelCounters() bool {
	return a.cfg.MetricsAddr != "" || a.cfg.Topology == "probe"
}

// startKernelCounters loads the eBPF counters where it may (root); where
// not, it says so once and the job goes on without them.
func (b *board) startKernelCounters(logf func(string, ...any)) {
	c, err := topology.StartTCPCounters()
	if err != nil {
		logf("no eBPF TCP counters: %v", err)
		return
	}
	b.tcp = c
	b.tcp0, _ = c.Read()
	if err := c.ConnsErr(); err != nil {
		logf("eBPF TCP counters: %v", err)
	} else if err := c.AckedErr(); err != nil {
		logf("eBPF TCP counters: %v (re-planning will not see other programs' traffic)", err)
	}
}

// prepareLinksFile names this round's file of kernel counters for the
// workers (RINGO_LINKS_FILE), where the workers can re-plan and the
// counters run; "" otherwise.
func (a *agent) prepareLinksFile(r *rendezvous.Round) {
	a.linksFile, a.lastAcked = "", nil
	b := a.board
	if a.topoFile == "" || b == nil || b.tcp == nil || b.tcp.ConnsErr() != nil || b.tcp.AckedErr() != nil {
		return
	}
	a.linksFile = filepath.Join(a.privDir, fmt.Sprintf("links-gen%d.json", r.Gen))
	conns, _ := b.tcp.Conns()
	a.writeLinks(r, conns)
}

// writeLinks rewrites the workers' file of kernel counters from conns
// (the per-connection counters as just read).
func (a *agent) writeLinks(r *rendezvous.Round, conns map[topology.TCPConn]topology.TCPCounts) {
	if a.linksFile == "" || conns == nil {
		return // nil: unread; the file keeps the last counters, the workers' next window waits
	}
	n := len(r.Nodes)
	k := topology.KernelLinks{At: time.Now(), BytesAcked: make([]uint64, n), Busy: make([]int, n)}
	acked := make(map[topology.TCPConn]uint64, len(conns))
	peerNodes(a.cfg.Host, r, conns, func(node int, c topology.TCPConn, v topology.TCPCounts) {
		k.BytesAcked[node] += v.BytesAcked
		acked[c] = v.BytesAcked
		if prev, ok := a.lastAcked[c]; ok && v.BytesAcked >= prev+busyConnBytes {
			k.Busy[node]++
		}
	})
	a.lastAcked = acked
	if err := topology.WriteKernelLinks(a.linksFile, k); err != nil {
		a.logf("kernel counters for re-planning: %v (the workers go on without them)", err)
		a.linksFile = ""
	}
}

// peerNodes calls f for each of conns that runs from host, this node's
// address, to another node of round r, with that node's rank.
func peerNodes(host string, r *rendezvous.Round, conns map[topology.TCPConn]topology.TCPCounts, f func(node int, c topology.TCPConn, v topology.TCPCounts)) {
	me, err := netip.ParseAddr(host)
	if err != nil || len(r.Nodes) < 2 {
		return
	}
	node := map[netip.Addr]int{}
	for i, n := range r.Nodes {
		if addr, err := netip.ParseAddr(n.Host); err == nil && i != r.NodeRank {
			node[addr.Unmap()] = i
		}
	}
	for c, v := range conns {
		if i, ok := node[c.Remote.Addr()]; ok && c.Local.Addr() == me.Unmap() {
			f(i, c, v)
		}
	}
}

// linksEnv is the workers' environment for the file, if any.
func (a *agent) linksEnv(set map[string]string) {
	if a.linksFile != "" {
		set[ringo.EnvLinksFile] = a.linksFile
	}
}
