package runtime

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
	"github.com/ringo-ml/ringo/internal/auth"
)

// Group is a worker's place in the job: its collective group, its ranks,
// and the launcher's restart count.
type Group struct {
	collective.Comm
	// LocalRank and LocalSize are this worker's place on its node.
	LocalRank, LocalSize int
	// NodeRank is its node's rank (torchrun's GROUP_RANK), Nodes the
	// number of nodes.
	NodeRank, Nodes int
	// Restarts is how often the job has restarted after a failure
	// (TORCHELASTIC_RESTART_COUNT); Generation counts every re-formation.
	Restarts, Generation int
	// RunID names the job (TORCHELASTIC_RUN_ID).
	RunID string
	// Site is the label of this worker's site (RINGO_SITE; unset, its
	// node's, "node-N"): the unit NewOuter synchronises between.
	Site string
	// Launched is true under `ringo launch`, false for a group of one
	// made because the program ran alone.
	Launched bool
	// Transport is what the collectives run over: "tcp", "shm", "mix"
	// (shared memory to this host's ranks, TCP to the others) or
	// "libp2p".
	Transport string

	beat beater
	rep  reporter
	// tcfg and ccfg formed this group; NewGroup forms more like it.
	tcfg tcp.Config
	ccfg collective.Config
	tr   transport.Transport
	// replan moves the ring while the job runs (replan.go); nil: off.
	replan *replanner
	// p2p is the libp2p configuration when the group runs over libp2p, so
	// that the groups NewSites forms do too.
	p2p *p2p.Config
}

// Heartbeat tells the launcher the worker made progress: step is the
// training step just finished. A worker that has called it and then makes
// no progress for --hang-timeout is reported as hung and restarted. It
// only stores the step; a goroutine passes changes on to the launcher at
// most every 50 ms, so calling it every step costs nothing, and outside
// the launcher it does nothing.
func (g *Group) Heartbeat(step int64) { g.beat.set(step) }

// Close leaves the collective group.
func (g *Group) Close() error {
	g.beat.close()
	g.replan.close()
	return g.Comm.Close()
}

// Options adjust Init; the zero value uses the launcher's environment and
// collective.DefaultConfig, with PollBytes suggested for the number of
// workers on this host (collective.PollBytesFor), overridden by RINGO_*
// variables.
type Options struct {
	// Collective, if set, replaces that configuration.
	Collective *collective.Config
}

// Init joins the job this process was launched into and returns its
// Group. Every worker calls it at start; it returns when the whole group
// has joined or ctx ends. Outside `ringo launch` (no RANK and WORLD_SIZE
// in the environment) it returns a group of one.
func Init(ctx context.Context, opts ...Options) (*Group, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	e, err := readEnv()
	if err != nil {
		return nil, err
	}
	var ccfg collective.Config
	if o.Collective != nil {
		ccfg = *o.Collective
	} else {
		ccfg = collective.DefaultConfig()
		ccfg.PollBytes = collective.PollBytesFor(e.localSize)
		if ccfg, err = ccfg.FromEnv(); err != nil {
			return nil, err
		}
	}
	g := &Group{LocalRank: e.localRank, LocalSize: e.localSize, NodeRank: e.nodeRank, Nodes: e.nodes,
		Restarts: e.restarts, Generation: e.gen, RunID: e.runID, Launched: e.launched, Site: e.site}
	tcfg := tcp.DefaultConfig()
	tcfg.SocketsPerPeer = tcp.SocketsFor(e.localSize)
	tcfg.Spin = tcp.SpinFor(e.localSize)
	if tcfg, err = tcfg.FromEnv(); err != nil {
		return nil, err
	}
	tcfg.Rendezvous, tcfg.Rank, tcfg.Size, tcfg.ListenHost = e.collAddr, e.rank, e.size, e.nodeAddr
	tcfg.OnRefuse = func(remote string, why error) {
		fmt.Fprintf(os.Stderr, "ringo: rank %d refused a connection from %s: %v\n", e.rank, remote, why)
	}
	if e.tokenFile != "" {
		if tcfg.Token, err = auth.ReadTokenFile(e.tokenFile); err != nil {
			return nil, fmt.Errorf("rank %d: %w", e.rank, err)
		}
	}
	if e.beatFD > 0 {
		// Started before the group forms, so that a failure to join is
		// reported too.
		g.beat.start(os.NewFile(uintptr(e.beatFD), "ringo-heartbeat"))
		tcfg.OnFault = func(f *transport.Fault) { g.beat.fault(f.Peer) }
	}
	g.tcfg, g.ccfg = tcfg, ccfg
	g.rep.ckpt.LastStep = -1
	tr, name, p2pc, err := joinTransport(ctx, e, tcfg)
	if err == nil {
		if g.Comm, err = collective.New(tr, ccfg); err != nil {
			tr.Close()
		}
	}
	if err != nil {
		g.beat.close()
		return nil, fmt.Errorf("rank %d of %d: joining the collective group (%s) at %s: %w", e.rank, e.size, name, e.collAddr, err)
	}
	g.Transport, g.tr = name, tr
	if _, ok := g.Comm.(collective.Reorderer); ok {
		if g.replan, err = newReplanner(e, ccfg); err != nil {
			g.Comm.Close()
			g.beat.close()
			return nil, err
		}
	}
	if e.size > 1 {
		g.p2p = p2pc // nil unless libp2p
	}
	g.beat.report = g.report
	return g, nil
}

type workerEnv struct {
	launched                         bool
	rank, size, localRank, localSize int
	nodeRank, nodes, restarts, gen   int
	runID, collAddr, nodeAddr        string
	tokenFile                        string
	transport, p2pIdentity, p2pPeers string
	site                             string
	beatFD                           int
}

func readEnv() (workerEnv, error) {
	e := workerEnv{size: 1, localSize: 1, nodes: 1, runID: "none", site: "node-0"}
	if os.Getenv("RANK") == "" && os.Getenv("WORLD_SIZE") == "" {
		return e, nil
	}
	e.launched = true
	var firstErr error
	num := func(name string, def int) int {
		v := os.Getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s=%q is not a number", name, v)
		}
		return n
	}
	e.rank, e.size = num("RANK", 0), num("WORLD_SIZE", 1)
	e.localRank, e.localSize = num("LOCAL_RANK", 0), num("LOCAL_WORLD_SIZE", 1)
	e.nodeRank, e.nodes = num("GROUP_RANK", 0), num(EnvNNodes, 1)
	e.restarts, e.gen = num("TORCHELASTIC_RESTART_COUNT", 0), num(EnvGeneration, 0)
	e.beatFD = num(EnvHeartbeatFD, 0)
	if firstErr != nil {
		return e, firstErr
	}
	if v := os.Getenv("TORCHELASTIC_RUN_ID"); v != "" {
		e.runID = v
	}
	e.collAddr, e.nodeAddr, e.tokenFile = os.Getenv(EnvCollectiveAddr), os.Getenv(EnvNodeAddr), os.Getenv(EnvTokenFile)
	e.transport, e.p2pIdentity, e.p2pPeers = os.Getenv(EnvTransport), os.Getenv(EnvP2PIdentity), os.Getenv(EnvP2PPeers)
	e.site = os.Getenv(EnvSite)
	if e.site == "" {
		e.site = fmt.Sprintf("node-%d", e.nodeRank)
	}
	switch {
	case e.size < 1 || e.rank < 0 || e.rank >= e.size:
		return e, fmt.Errorf("RANK=%d and WORLD_SIZE=%d do not make a rank of a group", e.rank, e.size)
	case len(e.site) > maxGathered:
		return e, fmt.Errorf("rank %d: %s=%q is longer than %d bytes", e.rank, EnvSite, e.site, maxGathered)
	case e.size > 1 && e.collAddr == "":
		return e, fmt.Errorf("rank %d of %d: %s is not set; start this program with `ringo launch` (torchrun does not set up ringo's collective group)", e.rank, e.size, EnvCollectiveAddr)
	}
	return e, nil
}
