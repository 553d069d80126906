package launch

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/internal/audit"
	"github.com/ringo-ml/ringo/internal/auth"
	ringo "github.com/ringo-ml/ringo/runtime"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
	"github.com/ringo-ml/ringo/topology"
)

// Signaled is the cancel cause a caller gives Run's context when the
// launcher got a signal: workers get the same signal, and Run returns an
// *ExitError with 128+signal.
type Signaled struct{ Sig syscall.Signal }

func (s Signaled) Error() string { return "received " + s.Sig.String() }

// ExitError carries the launcher's exit status and why.
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string { return e.Msg }

// storeLinger bounds how long the node serving the embedded store waits,
// at the end, for the other nodes to disconnect.
const storeLinger = 10 * time.Second

// agent is one Run: the launcher of this node.
type agent struct {
	cfg     Config
	store   rendezvous.Store
	server  *rendezvous.Server // when this node serves the embedded store
	m       rendezvous.Membership
	me      rendezvous.Node
	console *console
	privDir string // holds the token file written for workers
	attempt int
	audit   *audit.Log // nil when --audit-log is not set
	board   *board
	p2p     *p2pFiles // this round's libp2p identities, with --transport libp2p
	// topoFile holds this round's probed matrix in node-rank order, for
	// the workers to re-plan from (RINGO_TOPOLOGY_FILE); "" without one.
	topoFile string
	// linksFile holds the kernel's counters of this node's links, for
	// the workers' re-planning (RINGO_LINKS_FILE); "" without one.
	// lastAcked is each connection's bytes acknowledged at its last
	// write, to tell which are sending.
	linksFile   string
	lastAcked   map[topology.TCPConn]uint64
	replansSeen replansSeen // what noteReplans already logged
}

// Run launches the job on this node and supervises it until it succeeds,
// fails past its restarts, or ctx ends. It returns nil when every worker
// of the final generation exited 0.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := &agent{cfg: cfg, console: &console{out: cfg.Stdout, err: cfg.Stderr}}
	if a.console.out == nil {
		a.console.out = os.Stdout
	}
	if a.console.err == nil {
		a.console.err = os.Stderr
	}
	a.m = cfg.Nodes
	a.m.Prefix = "ringo/" + cfg.RunID + "/"
	a.m.Static = cfg.Backend == BackendStatic
	defer a.close()
	if cfg.AuditLog != "" {
		abs, err := filepath.Abs(cfg.AuditLog)
		if err != nil {
			return err
		}
		if a.audit, err = audit.Open(abs); err != nil {
			return err
		}
		a.cfg.AuditLog = abs
	}
	if err := a.prepareSiteIdentity(); err != nil {
		return err
	}
	if err := a.openStore(ctx); err != nil {
		return err
	}
	if err := a.prepareToken(); err != nil {
		return err
	}
	if err := a.openBoard(); err != nil {
		return err
	}
	a.board.note("start", "launcher started on %s: %d workers, run %q", a.cfg.Host, cfg.NProc, cfg.RunID)
	a.audit.Record("launch.start", map[string]any{"run_id": cfg.RunID, "argv": cfg.Argv, "nproc": cfg.NProc,
		"nnodes": fmt.Sprintf("%d:%d", cfg.Nodes.Min, cfg.Nodes.Max), "backend": cfg.Backend, "endpoint": a.cfg.Endpoint,
		"host": a.cfg.Host, "max_restarts": cfg.MaxRestarts, "hang_timeout": cfg.HangTimeout.String(), "pid": os.Getpid()})
	err := a.loop(ctx)
	outcome := map[string]any{"run_id": cfg.RunID}
	if err != nil {
		outcome["error"] = err.Error()
	}
	a.audit.Record("launch.exit", outcome)
	return err
}

// prepareSiteIdentity makes this site's identity where the file is
// missing, says its peer ID, and checks, before any worker starts, that
// --federation-peers lists that peer ID for this site.
func (a *agent) prepareSiteIdentity() error {
	if a.cfg.FederationIdentity == "" {
		return nil
	}
	abs, err := filepath.Abs(a.cfg.FederationIdentity)
	if err != nil {
		return err
	}
	a.cfg.FederationIdentity = abs
	id, created, err := ringo.EnsureIdentity(abs)
	if err != nil {
		return fmt.Errorf("--federation-identity: %w", err)
	}
	if created {
		a.logf("made site %q's identity %s: peer ID %s (list it as %s=%s in every site's --federation-peers)", a.cfg.Site, abs, id, a.cfg.Site, id)
	} else {
		a.logf("site %q's identity %s: peer ID %s", a.cfg.Site, abs, id)
	}
	site := slices.Index(a.cfg.FederationSites, a.cfg.Site)
	if _, _, err := ringo.FederationKeys(abs, a.cfg.FederationPeers, a.cfg.FederationSites, site); err != nil {
		return fmt.Errorf("--federation-peers: %w", err)
	}
	return nil
}

func (a *agent) close() {
	a.board.close()
	if a.store != nil {
		a.store.Close()
	}
	if a.server != nil {
		// The other nodes read the job's end from this store: give them
		// time to read it and leave before it goes away.
		deadline := time.Now().Add(storeLinger)
		for a.server.Clients() > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		a.server.Close()
	}
	if a.privDir != "" {
		os.RemoveAll(a.privDir)
	}
}

func (a *agent) logf(format string, args ...any) {
	a.console.line(true, "[ringo] ", []byte(fmt.Sprintf(format, args...)))
}

func (a *agent) event(e Event) {
	if a.cfg.OnEvent != nil {
		e.At = time.Now()
		a.cfg.OnEvent(e)
	}
}

// openStore connects to the job's store, serving it first when this is
// the node it belongs to: the only node of a one-node job; node 0 when
// node ranks are given; otherwise the launcher that can listen on the
// endpoint (torchrun's c10d backend decides the same way).
func (a *agent) openStore(ctx context.Context) error {
	c := a.cfg
	jctx, cancel := context.WithTimeout(ctx, c.JoinTimeout)
	defer cancel()
	var srvTLS, cliTLS *tls.Config
	if c.TLS.Enabled() {
		var err error
		if srvTLS, cliTLS, err = c.TLS.Configs(); err != nil {
			return err
		}
	}
	if c.Backend == BackendEtcd {
		s, err := rendezvous.NewEtcd(jctx, rendezvous.EtcdConfig{Endpoints: strings.Split(c.Endpoint, ","), Prefix: "/", Token: c.Token, DialTimeout: 10 * time.Second, TLS: cliTLS})
		if err != nil {
			return err
		}
		a.store = s
		return a.findHost(c.Endpoint)
	}
	endpoint := c.Endpoint
	if endpoint == "" {
		endpoint = "127.0.0.1:0"
	}
	// With node ranks given, node 0 serves; without, whichever launcher
	// on the endpoint's host binds first.
	if c.Nodes.Max == 1 || c.NodeRank == 0 || (c.NodeRank < 0 && isLocal(endpoint)) {
		srv, err := rendezvous.NewServerTLS(endpoint, c.Token, srvTLS)
		switch {
		case err == nil:
			a.server = srv
			endpoint = srv.Addr()
			srv.OnRefuse(func(remote string, why error) {
				a.logf("refused a connection to the rendezvous store from %s: %v", remote, why)
				a.audit.Record("store.refused", map[string]any{"remote": remote, "why": why.Error()})
			})
		case c.Nodes.Max == 1 || c.NodeRank == 0:
			return fmt.Errorf("serving the rendezvous store: %w", err)
		}
		// Another launcher on this host serves it: connect like any node.
	}
	s, err := rendezvous.DialTLS(jctx, endpoint, c.Token, cliTLS)
	if err != nil {
		return err
	}
	a.store = s
	a.cfg.Endpoint = endpoint
	return a.findHost(endpoint)
}

// findHost settles the address others reach this node at: the one given,
// or the local address of a route to the store.
func (a *agent) findHost(endpoint string) error {
	if a.cfg.Host != "" {
		return nil
	}
	first, _, _ := strings.Cut(endpoint, ",")
	first = strings.TrimPrefix(strings.TrimPrefix(first, "http://"), "https://")
	conn, err := net.Dial("udp", first) // no packet is sent; this only picks a route
	if err != nil {
		return fmt.Errorf("finding this node's address towards %s: %v (set --local-addr)", first, err)
	}
	defer conn.Close()
	a.cfg.Host = conn.LocalAddr().(*net.UDPAddr).IP.String()
	return nil
}

// isLocal says whether host:port names an address of this machine.
func isLocal(endpoint string) bool {
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return false
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false
	}
	addrs, _ := net.InterfaceAddrs()
	for _, ip := range ips {
		if ip.IsLoopback() {
			return true
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
	}
	return false
}

// prepareToken makes sure workers can read the token from a private file:
// the user's --token-file, or one this launcher writes into a directory
// only its user can enter, removed when it exits.
func (a *agent) prepareToken() error {
	if len(a.cfg.Token) == 0 || a.cfg.TokenFile != "" {
		return nil
	}
	if err := a.ensurePrivDir(); err != nil {
		return err
	}
	a.cfg.TokenFile = filepath.Join(a.privDir, "token")
	return auth.WriteTokenFile(a.cfg.TokenFile, a.cfg.Token)
}

func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func newNodeID(host string) string {
	b := make([]byte, 4)
	rand.Read(b)
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%s/%d/%s", h, host, os.Getpid(), hex.EncodeToString(b))
}

// loop runs rendezvous, workers and restarts until the job ends.
func (a *agent) loop(ctx context.Context) error {
	a.me = rendezvous.Node{ID: newNodeID(a.cfg.Host), Host: a.cfg.Host, NProc: a.cfg.NProc, Rank: a.cfg.NodeRank}
	lastGen, lastNodes := 0, 0
	for a.attempt = 0; ; a.attempt++ {
		var err error
		if a.me.MasterPort, err = freePort(a.cfg.Host); err != nil {
			return fmt.Errorf("finding a free port on %s: %w", a.cfg.Host, err)
		}
		if a.me.CollectivePort, err = freePort(a.cfg.Host); err != nil {
			return fmt.Errorf("finding a free port on %s: %w", a.cfg.Host, err)
		}
		if a.cfg.Topology != "" {
			if a.me.ProbePort, err = freePort(a.cfg.Host); err != nil {
				return fmt.Errorf("finding a free port on %s: %w", a.cfg.Host, err)
			}
		}
		jctx, cancel := context.WithTimeout(ctx, a.cfg.JoinTimeout)
		round, err := a.m.Join(jctx, a.store, a.me)
		cancel()
		if errors.Is(err, rendezvous.ErrJobFailed) {
			return a.failed(ctx, lastGen, lastNodes, err)
		}
		if err != nil {
			if sig, ok := context.Cause(ctx).(Signaled); ok {
				return &ExitError{Code: 128 + int(sig.Sig), Msg: "stopped by " + sig.Sig.String() + " while waiting for nodes"}
			}
			return fmt.Errorf("rendezvous %q at %s: %w", a.cfg.RunID, a.cfg.Endpoint, err)
		}
		lastGen, lastNodes = round.Gen, len(round.Nodes)
		a.topoFile = ""
		if a.cfg.Topology == "probe" && len(round.Nodes) > 1 {
			if err := a.solveTopology(ctx, round); err != nil {
				// The job can still run in rendezvous order.
				a.logf("%v; keeping the rendezvous order", err)
			}
		}
		a.prepareLinksFile(round)
		hosts := make([]string, len(round.Nodes))
		for i, n := range round.Nodes {
			hosts[i] = n.Host
		}
		a.board.note("join", "generation %d formed: %d nodes, %d workers; this node is node %d", round.Gen, len(round.Nodes), round.World(), round.NodeRank)
		a.audit.Record("launch.join", map[string]any{"run_id": a.cfg.RunID, "generation": round.Gen, "node_rank": round.NodeRank,
			"node_id": a.me.ID, "host": a.cfg.Host, "hosts": hosts, "world": round.World(), "first_rank": round.FirstRank(), "restarts": round.Restarts})
		end, err := a.generation(ctx, round)
		if err != nil {
			return err
		}
		if end.Kind == "success" {
			return nil
		}
		if err := a.m.Next(context.WithoutCancel(ctx), a.store, round.Gen, end, a.cfg.MaxRestarts); err != nil {
			return fmt.Errorf("opening the next round: %w", err)
		}
		if end.Kind == "failure" && round.Restarts < a.cfg.MaxRestarts {
			a.logf("generation %d failed: %s; restarting (%d of %d restarts)", round.Gen, end.Reason, round.Restarts+1, a.cfg.MaxRestarts)
		} else if end.Kind == "membership" {
			a.logf("generation %d: %s; re-forming", round.Gen, end.Reason)
		}
		a.board.note("restart", "generation %d ended (%s): %s", round.Gen, end.Kind, end.Reason)
		if end.Cause != "" {
			a.board.restarted(end.Cause)
		}
		a.audit.Record("launch.restart", map[string]any{"run_id": a.cfg.RunID, "generation": round.Gen, "kind": end.Kind, "reason": end.Reason})
		a.event(Event{Kind: "restarting", Gen: round.Gen})
	}
}

// failed prints the root cause of the job's failure and returns the error
// the launcher exits with.
func (a *agent) failed(ctx context.Context, gen, nodes int, cause error) error {
	fs, _ := a.m.Failures(context.WithoutCancel(ctx), a.store, gen, nodes)
	msg := fmt.Sprintf("job %q failed: %v", a.cfg.RunID, strings.TrimPrefix(cause.Error(), rendezvous.ErrJobFailed.Error()+": "))
	if len(fs) > 0 {
		a.console.line(true, "", []byte(rootCause(fs)))
	}
	return &ExitError{Code: 1, Msg: msg}
}

// env builds a worker's environment: torchrun's contract plus ringo's.
func (a *agent) env(r *rendezvous.Round, local int) []string {
	node0 := r.Nodes[0]
	first := r.FirstRank()
	set := map[string]string{
		"RANK":                         strconv.Itoa(first + local),
		"LOCAL_RANK":                   strconv.Itoa(local),
		"WORLD_SIZE":                   strconv.Itoa(r.World()),
		"LOCAL_WORLD_SIZE":             strconv.Itoa(a.cfg.NProc),
		"GROUP_RANK":                   strconv.Itoa(r.NodeRank),
		"GROUP_WORLD_SIZE":             strconv.Itoa(len(r.Nodes)),
		"ROLE_RANK":                    strconv.Itoa(first + local),
		"ROLE_WORLD_SIZE":              strconv.Itoa(r.World()),
		"ROLE_NAME":                    "default",
		"MASTER_ADDR":                  node0.Host,
		"MASTER_PORT":                  strconv.Itoa(node0.MasterPort),
		"TORCHELASTIC_RESTART_COUNT":   strconv.Itoa(r.Restarts),
		"TORCHELASTIC_MAX_RESTARTS":    strconv.Itoa(a.cfg.MaxRestarts),
		"TORCHELASTIC_RUN_ID":          a.cfg.RunID,
		"TORCHELASTIC_USE_AGENT_STORE": "False",
		ringo.EnvCollectiveAddr:        net.JoinHostPort(node0.Host, strconv.Itoa(node0.CollectivePort)),
		ringo.EnvGeneration:            strconv.Itoa(r.Gen),
		ringo.EnvRdzvEndpoint:          a.cfg.Endpoint,
		ringo.EnvNodeAddr:              a.cfg.Host,
		ringo.EnvNNodes:                strconv.Itoa(len(r.Nodes)),
		ringo.EnvTokenFile:             a.cfg.TokenFile,
	}
	if a.cfg.Devices != nil {
		set["CUDA_VISIBLE_DEVICES"] = a.cfg.Devices[local]
	}
	if a.cfg.AuditLog != "" {
		set[audit.EnvFile] = a.cfg.AuditLog
	}
	if a.cfg.Transport != "" {
		set[ringo.EnvTransport] = a.cfg.Transport
	}
	if a.cfg.Site != "" {
		set[ringo.EnvSite] = a.cfg.Site
	}
	if a.cfg.Federation != "" {
		set[ringo.EnvFederation] = a.cfg.Federation
		set[ringo.EnvFederationSites] = strings.Join(a.cfg.FederationSites, ",")
		set[ringo.EnvFederationID] = a.cfg.FederationID
		if a.cfg.FederationIdentity != "" {
			set[ringo.EnvFederationIdentity], set[ringo.EnvFederationPeers] = a.cfg.FederationIdentity, a.cfg.FederationPeers
		}
		if a.cfg.TLS.Enabled() {
			// The sites' store takes the same certificates as the job's.
			set[ringo.EnvFederationTLSCert], set[ringo.EnvFederationTLSKey], set[ringo.EnvFederationTLSCA] = a.cfg.TLS.Cert, a.cfg.TLS.Key, a.cfg.TLS.CA
		}
	}
	if a.topoFile != "" {
		set[ringo.EnvTopologyFile] = a.topoFile
	}
	a.linksEnv(set)
	if a.cfg.ReplanEvery != 0 {
		set[ringo.EnvReplanEvery] = strconv.Itoa(a.cfg.ReplanEvery)
	}
	if a.p2p != nil {
		set[ringo.EnvP2PIdentity] = a.p2p.identity[local]
		set[ringo.EnvP2PPeers] = a.p2p.peers
	}
	env := make([]string, 0, len(a.cfg.Env)+len(set)+1)
	for _, kv := range a.cfg.Env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := set[k]; ours || k == ringo.EnvHeartbeatFD {
			continue
		}
		if k == "OMP_NUM_THREADS" {
			set["OMP_NUM_THREADS"] = "" // the user's wins
		}
		env = append(env, kv)
	}
	// torchrun's default: one OpenMP thread per worker when several share
	// a node, so that they do not oversubscribe its cores.
	if v, ok := set["OMP_NUM_THREADS"]; !ok && a.cfg.NProc > 1 {
		set["OMP_NUM_THREADS"] = "1"
	} else if ok && v == "" {
		delete(set, "OMP_NUM_THREADS")
	}
	for k, v := range set {
		if v != "" || k == ringo.EnvTokenFile {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// startAll starts this node's workers for round r; on a failure it stops
// those already started.
func (a *agent) startAll(r *rendezvous.Round) ([]*worker, error) {
	dir := ""
	if a.cfg.LogDir != "" {
		dir = filepath.Join(a.cfg.LogDir, a.cfg.RunID, strconv.Itoa(a.attempt))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("--log-dir: %w", err)
		}
	}
	ws := make([]*worker, 0, a.cfg.NProc)
	for local := range a.cfg.NProc {
		w, err := start(spawnSpec{argv: a.cfg.Argv, env: a.env(r, local), dir: dir, tee: a.cfg.Tee,
			console: a.console, rank: r.FirstRank() + local, local: local})
		if err != nil {
			for _, w := range ws {
				w.stop(syscall.SIGKILL, 0)
			}
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}
