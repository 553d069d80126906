package launch

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// Rendezvous backends.
const (
	BackendEmbedded = "embedded" // node 0's launcher serves the store
	BackendEtcd     = "etcd"     // an etcd v3 cluster
	BackendStatic   = "static"   // fixed nodes and ranks, store on node 0
)

// Config is one node's launcher. cmd/ringo maps its flags onto it one to
// one; build it with DefaultConfig.
type Config struct {
	// Argv is the worker program and its arguments.
	Argv []string
	// NProc is the number of workers on this node.
	NProc int
	// Nodes bounds the number of nodes and says how rounds close.
	Nodes rendezvous.Membership
	// NodeRank is the rank this node asks for, or -1.
	NodeRank int
	// Backend, Endpoint and RunID say where and under which name the
	// nodes of a job meet. An embedded endpoint is served by the launcher
	// that can listen on it; the others connect.
	Backend, Endpoint, RunID string
	// MaxRestarts is how many failures the job survives.
	MaxRestarts int
	// MonitorInterval is how often the launcher checks liveness, hangs
	// and waiting nodes. Worker exits are seen at once, not polled.
	MonitorInterval time.Duration
	// HangTimeout stops a generation when a worker that heartbeats has
	// made no progress for this long (0: never).
	HangTimeout time.Duration
	// NodeTimeout declares a node lost when its launcher has not checked
	// in for this long.
	NodeTimeout time.Duration
	// JoinTimeout bounds each rendezvous.
	JoinTimeout time.Duration
	// StopGrace is how long workers get between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// LogDir, when set, receives every worker's output whole, under
	// <LogDir>/<RunID>/<attempt>/rank-N.{out,err}; Tee copies streams to
	// the console too. Without LogDir, output goes to the console.
	LogDir string
	Tee    teeMode
	// Token authenticates every connection of the job; TokenFile is the
	// file it came from, passed on to workers (empty: the launcher writes
	// one in a private directory).
	Token     auth.Token
	TokenFile string
	// Host is the address other nodes reach this node at; empty: the
	// local address of the connection to the store.
	Host string
	// Devices, when set, holds one CUDA_VISIBLE_DEVICES value per local
	// rank.
	Devices []string
	// Transport is what the workers' collectives run over: "tcp", "shm"
	// (one host), "mix" (shared memory to the ranks of the worker's host,
	// TCP to the others), "libp2p" (peer IDs and encryption; the launcher
	// makes each worker an identity and gives all of them the job's
	// allowlist), or "" for the default (shared memory when every rank is
	// on one node, mix otherwise).
	Transport string
	// Site labels this node's site (data centre) for training across
	// sites: workers see it as RINGO_SITE. Empty leaves RINGO_SITE as the
	// launcher's environment has it (unset: each node is its own site).
	Site string
	// Federation, when set, makes this job one site of a federation of
	// jobs, each its own failure domain, that meet for their outer syncs
	// in the store at this endpoint (HOST:PORT of `ringo store`, or
	// etcd://HOST:PORT[,...]), with the job token (the same TokenFile at
	// every site). FederationSites lists every site, in the same order
	// everywhere; Site is this one. FederationID namespaces the
	// federation's keys. Workers see them as RINGO_FEDERATION*, and
	// reach the store over mutual TLS with the job's TLS files when given.
	Federation, FederationID string
	FederationSites          []string
	// FederationIdentity is this site's identity file (made there if
	// missing) and FederationPeers every site's peer ID
	// (site=PEERID,...): with them the sites sign their deltas and take
	// a site's only when its identity signed it (runtime.FederationKeys).
	// Both or neither.
	FederationIdentity, FederationPeers string
	// Topology "probe" measures the links between nodes at every
	// (re)formation and orders the nodes along the ring that avoids the
	// slowest; "" keeps the rendezvous order.
	Topology string
	// ReplanEvery, with Topology "probe", is how many steps apart a Go
	// worker's Trainer re-plans its ring from what it measured
	// (RINGO_REPLAN_EVERY; 0: the runtime's default, negative: never).
	ReplanEvery int
	// TLS, when its files are named, puts the store's connections (and
	// etcd's) under mutual TLS; the token challenge still runs inside.
	TLS rendezvous.TLSFiles
	// MetricsAddr, when set, serves Prometheus metrics and a status page
	// (host:port, e.g. ":9400"); LogJSON makes alerts JSON log lines.
	MetricsAddr string
	LogJSON     bool
	// AuditLog, when set, is a file that receives the job's audit events
	// (hash-chained JSON lines, see internal/audit); workers get its path
	// so that their checkpoint saves, loads and deletions are in it too.
	AuditLog string
	// Env is the environment workers inherit (normally os.Environ()).
	Env []string
	// Stdout and Stderr are the console.
	Stdout, Stderr io.Writer
	// OnEvent, if set, is called on state changes (tests and benchmarks
	// use it; it must not block).
	OnEvent func(Event)
}

// DefaultConfig returns a one-node, one-worker configuration with
// torchrun's defaults where it has them.
func DefaultConfig() Config {
	return Config{
		NProc:           1,
		Nodes:           rendezvous.Membership{Min: 1, Max: 1, LastCall: 10 * time.Second},
		NodeRank:        -1,
		Backend:         BackendEmbedded,
		RunID:           "none",
		MaxRestarts:     0,
		MonitorInterval: 500 * time.Millisecond,
		NodeTimeout:     15 * time.Second,
		JoinTimeout:     10 * time.Minute,
		StopGrace:       5 * time.Second,
	}
}

// Validate reports the first field out of range, in the words of the flag
// that sets it.
func (c Config) Validate() error {
	if err := c.Nodes.Validate(); err != nil {
		return err
	}
	switch {
	case len(c.Argv) == 0:
		return errors.New("no program to launch: put it after the flags, e.g. ringo launch --nproc-per-node 4 -- ./train")
	case c.NProc < 1:
		return fmt.Errorf("--nproc-per-node %d: need at least one worker per node", c.NProc)
	case c.Backend != BackendEmbedded && c.Backend != BackendEtcd && c.Backend != BackendStatic:
		return fmt.Errorf("--rdzv-backend %q: want embedded, etcd or static", c.Backend)
	case c.Backend == BackendEtcd && c.Endpoint == "":
		return errors.New("--rdzv-backend etcd needs --rdzv-endpoint HOST:PORT")
	case c.Nodes.Max > 1 && c.Endpoint == "":
		return fmt.Errorf("--nnodes %d:%d: a job on several nodes needs --rdzv-endpoint (or --master-addr and --master-port) that every node can reach", c.Nodes.Min, c.Nodes.Max)
	case c.Nodes.Max > 1 && len(c.Token) == 0:
		return errors.New("a job on several nodes needs --token-file: a file (mode 0600) with the same secret on every node, e.g. made with: openssl rand -hex 32 > job.token && chmod 600 job.token")
	case c.MaxRestarts < 0:
		return fmt.Errorf("--max-restarts %d is negative", c.MaxRestarts)
	case c.MonitorInterval <= 0:
		return fmt.Errorf("--monitor-interval %v must be positive", c.MonitorInterval)
	case c.HangTimeout < 0:
		return fmt.Errorf("--hang-timeout %v is negative", c.HangTimeout)
	case c.Devices != nil && len(c.Devices) != c.NProc:
		return fmt.Errorf("%d devices for %d workers", len(c.Devices), c.NProc)
	case len(c.Site) > 128 || strings.ContainsAny(c.Site, "\x00\n"):
		return fmt.Errorf("--site %q: want a label of at most 128 bytes on one line", c.Site)
	case c.Federation != "" && !slices.Contains(c.FederationSites, c.Site):
		return fmt.Errorf("--federation %s: --site %q must be one of --federation-sites %q", c.Federation, c.Site, strings.Join(c.FederationSites, ","))
	case (c.FederationIdentity != "" || c.FederationPeers != "") && c.Federation == "":
		return errors.New("--federation-identity and --federation-peers are for a site of a federation: give --federation too")
	case (c.FederationIdentity == "") != (c.FederationPeers == ""):
		return fmt.Errorf("--federation-identity %q and --federation-peers %q: give both (this site's identity, and every site's peer ID) or neither", c.FederationIdentity, c.FederationPeers)
	case c.Federation != "" && c.TokenFile == "":
		return fmt.Errorf("--federation %s needs --token-file: the sites reach their store with the job token, the same file at every site", c.Federation)
	case c.Transport != "" && c.Transport != "tcp" && c.Transport != "shm" && c.Transport != "mix" && c.Transport != "libp2p":
		return fmt.Errorf("--transport %q: want tcp, shm, mix or libp2p (or nothing for the default)", c.Transport)
	case c.Topology != "" && c.Topology != "probe":
		return fmt.Errorf("--topology %q: want probe, or nothing", c.Topology)
	case c.NodeRank >= c.Nodes.Max:
		return fmt.Errorf("--node-rank %d is outside 0..%d (--nnodes %d)", c.NodeRank, c.Nodes.Max-1, c.Nodes.Max)
	}
	return nil
}

// Event is a change in the launcher's state, for tests and benchmarks.
type Event struct {
	Kind string // "started", "stopped", "restarting", "done"
	Gen  int
	PIDs []int // started: the workers' pids, by local rank
	At   time.Time
}
