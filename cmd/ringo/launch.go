package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/runtime/launch"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

const launchUsage = `Usage: ringo launch [flags] -- PROGRAM [ARGS...]

Starts data-parallel workers on this node, one per GPU or CPU slot, gives
them torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...),
supervises them and restarts the job from its last checkpoint on failure.
Every flag can also be set as RINGO_<FLAG>, e.g. RINGO_NPROC_PER_NODE=4.

  ringo launch --nproc-per-node 4 -- ./train --epochs 3
  ringo launch --nnodes 2:4 --nproc-per-node gpu --rdzv-backend etcd \
    --rdzv-endpoint etcd-0:2379 --rdzv-id job42 --token-file job.token \
    --max-restarts 3 -- python3 train.py

Flags:
`

// launchFlags are the flags of `ringo launch`, mapped one to one onto
// launch.Config.
type launchFlags struct {
	nproc, nnodes, backend, endpoint, runID, logDir, tee                      string
	masterAddr, tokenFile, localAddr, auditLog                                string
	metricsAddr, logFormat, tlsCert, tlsKey, tlsCA, topology, transport, site string
	federation, federationSites, federationID                                 string
	federationIdentity, federationPeers                                       string
	nodeRank, maxRestarts, masterPort, replanEvery                            int
	standalone                                                                bool
	monitor, hang, lastCall, joinTimeout, nodeTimeout                         secondsFlag
	stopGrace                                                                 secondsFlag
}

// secondsFlag is a duration given as Go duration ("500ms", "2m") or as
// seconds, the way torchrun takes them ("5", "0.5").
type secondsFlag struct{ d *time.Duration }

func (s secondsFlag) String() string {
	if s.d == nil {
		return ""
	}
	return s.d.String()
}

func (s secondsFlag) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		*s.d = time.Duration(f * float64(time.Second))
	} else if d, err := time.ParseDuration(v); err == nil {
		*s.d = d
	} else {
		return fmt.Errorf("%q is not a duration (e.g. 30s, 500ms, or seconds: 5)", v)
	}
	if *s.d < 0 {
		return fmt.Errorf("%q is negative", v)
	}
	return nil
}

func newLaunchFlags(cfg *launch.Config) (*flag.FlagSet, *launchFlags) {
	fs := newFlagSet("launch", launchUsage)
	f := &launchFlags{}
	fs.StringVar(&f.nproc, "nproc-per-node", "1", "workers on this node: a number, gpu (one per GPU), cpu (one per core) or auto (GPUs if any, else cores)")
	fs.StringVar(&f.nnodes, "nnodes", "1", "number of nodes, MIN[:MAX] for an elastic job")
	fs.IntVar(&f.nodeRank, "node-rank", -1, "this node's rank (static rendezvous; elsewhere a preference)")
	fs.StringVar(&f.backend, "rdzv-backend", launch.BackendEmbedded, "where nodes meet: embedded (node 0 serves the store), etcd, or static")
	fs.StringVar(&f.endpoint, "rdzv-endpoint", "", "HOST:PORT of the rendezvous store (etcd: comma-separated endpoints)")
	fs.StringVar(&f.runID, "rdzv-id", "none", "job id; nodes with the same id form one job")
	fs.BoolVar(&f.standalone, "standalone", false, "one node, a private store on a free loopback port, a random job id")
	fs.IntVar(&f.maxRestarts, "max-restarts", 0, "restarts of the whole job after a failure before giving up")
	f.monitor = secondsFlag{&cfg.MonitorInterval}
	fs.Var(f.monitor, "monitor-interval", "how often to check liveness, hangs and waiting nodes (exits are seen at once)")
	fs.StringVar(&f.logDir, "log-dir", "", "write each worker's output to DIR/<rdzv-id>/<attempt>/rank-N.{out,err}")
	fs.StringVar(&f.tee, "tee", "", "with --log-dir, also show these streams on the console: none, out, err or all")
	fs.StringVar(&f.masterAddr, "master-addr", "", "node 0's address for the static rendezvous (torchrun's flag)")
	fs.IntVar(&f.masterPort, "master-port", 29500, "node 0's store port for the static rendezvous")
	f.hang = secondsFlag{&cfg.HangTimeout}
	fs.Var(f.hang, "hang-timeout", "restart when a heartbeating worker makes no progress this long (0: off)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file (mode 0600) with the job's secret; required on several nodes, generated for one")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics (/metrics) and a status page (/) on HOST:PORT, e.g. :9400")
	fs.StringVar(&f.logFormat, "log-format", "text", "alerts and launcher warnings as text or json lines")
	fs.StringVar(&f.transport, "transport", "", "collectives over tcp, shm (one host), mix (shm to same-host peers, tcp to the rest) or libp2p (alias p2p; peer IDs, encrypted); default: shm on one node, else mix")
	fs.StringVar(&f.site, "site", "", "label of this node's site (data centre) for training across sites: workers see it as RINGO_SITE, and runtime.NewOuter averages inside a site every step and across sites every H steps; default: each node its own site")
	fs.StringVar(&f.federation, "federation", "", "make this job one site of a federation of jobs that meet in the store at HOST:PORT (ringo store) or etcd://HOST:PORT[,...]: each site fails and restarts on its own, and the outer syncs go ahead without a site that is late or down (see --outer-deadline of the trainer); needs --site, --federation-sites and --token-file")
	fs.StringVar(&f.federationSites, "federation-sites", "", "with --federation: every site, comma-separated, in the same order at every site")
	fs.StringVar(&f.federationID, "federation-id", "default", "with --federation: the federation's name, so that several can share a store")
	fs.StringVar(&f.federationIdentity, "federation-identity", "", "with --federation: this site's identity FILE (an Ed25519 key, made there if missing; its peer ID is logged): the site signs its deltas with it; needs --federation-peers")
	fs.StringVar(&f.federationPeers, "federation-peers", "", "with --federation-identity: every site's peer ID, as site=PEERID,site=PEERID,...; a site's deltas are taken only when its identity signed them")
	fs.StringVar(&f.topology, "topology", "", "probe: measure the links between nodes at every (re)formation and order ranks along the ring that avoids the slowest; Go workers then re-plan from what their TCP sockets measure (see --replan-every)")
	fs.IntVar(&f.replanEvery, "replan-every", 0, "with --topology probe: a Go worker's Trainer checks the ring against its measured links every N steps and moves it, without a restart, off links that slowed (0: the default, 20; -1: never)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "this node's certificate (PEM) for mutual TLS on the rendezvous store")
	fs.StringVar(&f.tlsKey, "tls-key", "", "its private key (PEM)")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "the CA (PEM) that signed every node's certificate")
	fs.StringVar(&f.auditLog, "audit-log", "", "append the job's audit events (joins, restarts, checkpoints) to FILE, hash-chained")
	fs.StringVar(&f.localAddr, "local-addr", "", "the address other nodes reach this node at (default: the route to the store)")
	f.lastCall = secondsFlag{&cfg.Nodes.LastCall}
	fs.Var(f.lastCall, "rdzv-last-call", "with MIN nodes joined, how long to wait for more before starting")
	f.joinTimeout = secondsFlag{&cfg.JoinTimeout}
	fs.Var(f.joinTimeout, "rdzv-timeout", "how long to wait for the store and for MIN nodes")
	f.nodeTimeout = secondsFlag{&cfg.NodeTimeout}
	fs.Var(f.nodeTimeout, "node-timeout", "a node whose launcher is silent this long is lost, and the job re-forms")
	f.stopGrace = secondsFlag{&cfg.StopGrace}
	fs.Var(f.stopGrace, "stop-grace", "time between SIGTERM and SIGKILL when stopping workers")
	return fs, f
}

// envFlagName is the RINGO_<FLAG> variable of a flag.
func envFlagName(flagName string) string {
	return "RINGO_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagsFromEnv sets every flag not given on the command line from its
// RINGO_<FLAG> variable.
func flagsFromEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envFlagName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %v", envFlagName(f.Name), v, e)
			}
			given[f.Name] = true
		}
	})
	return err
}

func runLaunch(ctx context.Context, args []string) error {
	cfg := launch.DefaultConfig()
	fs, f := newLaunchFlags(&cfg)
	// Flags stop at the program: what follows is its own command line.
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	if err := flagsFromEnv(fs); err != nil {
		return usageErr(fs, "%w", err)
	}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	slurmDefaults(f, given)
	cfg.Argv = fs.Args()
	if err := f.apply(&cfg, given); err != nil {
		return usageErr(fs, "%w", err)
	}
	if f.tokenFile != "" {
		// Reading it can fail for reasons of the file, not the command line.
		tok, err := auth.ReadTokenFile(f.tokenFile)
		if err != nil {
			return err
		}
		cfg.Token, cfg.TokenFile = tok, f.tokenFile
	}
	// Validate speaks of flags only, so what it refuses is a usage error;
	// launch.Run checks again for callers that are not this command.
	if err := cfg.Validate(); err != nil {
		return usageErr(fs, "%w", err)
	}
	cfg.Env = os.Environ()

	// Signals: the launcher forwards SIGINT and SIGTERM to its workers and
	// exits 130 or 143, so it handles them itself rather than through the
	// context main gives every command.
	lctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			cancel(launch.Signaled{Sig: s.(syscall.Signal)})
		case <-lctx.Done():
		}
	}()
	return launch.Run(lctx, cfg)
}

// apply moves the flags into cfg, checking each; it reads no files, so
// whatever it refuses is the command line's fault. The token file is read
// by the caller.
func (f *launchFlags) apply(cfg *launch.Config, given map[string]bool) error {
	min, max, err := parseNNodes(f.nnodes)
	if err != nil {
		return err
	}
	cfg.Nodes.Min, cfg.Nodes.Max = min, max
	cfg.NodeRank, cfg.MaxRestarts = f.nodeRank, f.maxRestarts
	cfg.Backend, cfg.Endpoint, cfg.RunID = f.backend, f.endpoint, f.runID
	cfg.LogDir, cfg.Host, cfg.AuditLog, cfg.MetricsAddr = f.logDir, f.localAddr, f.auditLog, f.metricsAddr
	cfg.Topology, cfg.Transport, cfg.Site, cfg.ReplanEvery = f.topology, f.transport, f.site, f.replanEvery
	cfg.Federation, cfg.FederationID = f.federation, f.federationID
	cfg.FederationIdentity, cfg.FederationPeers = f.federationIdentity, f.federationPeers
	if f.federationSites != "" {
		cfg.FederationSites = strings.Split(f.federationSites, ",")
	}
	if cfg.Transport == "p2p" {
		cfg.Transport = "libp2p"
	}
	cfg.TLS = rendezvous.TLSFiles{Cert: f.tlsCert, Key: f.tlsKey, CA: f.tlsCA}
	switch f.logFormat {
	case "text":
	case "json":
		cfg.LogJSON = true
	default:
		return fmt.Errorf("--log-format %q: want text or json", f.logFormat)
	}
	if cfg.Tee, err = launch.ParseTee(f.tee); err != nil {
		return err
	}
	if f.standalone {
		if max > 1 {
			return fmt.Errorf("--standalone runs one node, but --nnodes is %s", f.nnodes)
		}
		b := make([]byte, 6)
		rand.Read(b)
		cfg.Backend, cfg.Endpoint, cfg.RunID = launch.BackendEmbedded, "", "standalone-"+hex.EncodeToString(b)
	}
	// torchrun: --master-addr/--master-port without an endpoint mean the
	// static rendezvous at node 0.
	if (given["master-addr"] || f.masterAddr != "") && cfg.Endpoint == "" {
		cfg.Endpoint = fmt.Sprintf("%s:%d", f.masterAddr, f.masterPort)
		if !given["rdzv-backend"] {
			cfg.Backend = launch.BackendStatic
		}
	}
	if cfg.Backend == launch.BackendStatic && cfg.Endpoint == "" {
		return errors.New("--rdzv-backend static needs --master-addr and --master-port (or --rdzv-endpoint)")
	}
	if f.tokenFile == "" && max == 1 {
		cfg.Token = auth.NewToken() // one node: the launcher makes one
	}
	devs, n, err := slots(f.nproc)
	if err != nil {
		return err
	}
	cfg.NProc, cfg.Devices = n, devs
	return nil
}

// parseNNodes reads --nnodes N or MIN:MAX.
func parseNNodes(s string) (int, int, error) {
	lo, hi, ranged := strings.Cut(s, ":")
	min, err := strconv.Atoi(lo)
	max := min
	if err == nil && ranged {
		max, err = strconv.Atoi(hi)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("--nnodes %q: want N or MIN:MAX", s)
	}
	if min < 1 {
		return 0, 0, fmt.Errorf("--nnodes %q: need at least one node", s)
	}
	if min > max {
		return 0, 0, fmt.Errorf("--nnodes %s: MIN %d is larger than MAX %d", s, min, max)
	}
	return min, max, nil
}

// slots reads --nproc-per-node: a number, or gpu/cpu/auto resolved on
// this machine. With GPUs it also returns one CUDA_VISIBLE_DEVICES value
// per worker, taken from the user's CUDA_VISIBLE_DEVICES when set.
func slots(s string) ([]string, int, error) {
	switch s {
	case "gpu", "auto", "cpu":
	default:
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, 0, fmt.Errorf("--nproc-per-node %q: want a number, gpu, cpu or auto", s)
		}
		if n < 1 {
			return nil, 0, fmt.Errorf("--nproc-per-node %d: need at least one worker", n)
		}
		gpus := gpuIDs()
		if len(gpus) >= n {
			return gpus[:n], n, nil
		}
		return nil, n, nil
	}
	if s == "cpu" {
		return nil, runtime.NumCPU(), nil
	}
	gpus := gpuIDs()
	if len(gpus) > 0 {
		return gpus, len(gpus), nil
	}
	if s == "gpu" {
		return nil, 0, fmt.Errorf("--nproc-per-node gpu: %s", noGPUReason())
	}
	return nil, runtime.NumCPU(), nil
}

// slurmDefaults fills --nnodes, --node-rank, --rdzv-endpoint and --rdzv-id
// from Slurm's variables under srun, when they were not given.
func slurmDefaults(f *launchFlags, given map[string]bool) {
	if os.Getenv("SLURM_JOB_ID") == "" {
		return
	}
	n := os.Getenv("SLURM_JOB_NUM_NODES")
	if n == "" {
		n = os.Getenv("SLURM_NNODES")
	}
	if !given["nnodes"] && n != "" {
		f.nnodes = n
	}
	if !given["node-rank"] {
		if r, err := strconv.Atoi(os.Getenv("SLURM_NODEID")); err == nil {
			f.nodeRank = r
		}
	}
	if !given["rdzv-endpoint"] && !given["master-addr"] {
		if host := firstSlurmHost(os.Getenv("SLURM_JOB_NODELIST")); host != "" {
			f.endpoint = host + ":29400"
		}
	}
	if !given["rdzv-id"] {
		f.runID = "slurm-" + os.Getenv("SLURM_JOB_ID")
	}
}

// firstSlurmHost returns the first host of a Slurm hostlist such as
// "gpu[03-05,07],cpu01" (gpu03).
func firstSlurmHost(list string) string {
	list = strings.TrimSpace(list)
	if list == "" {
		return ""
	}
	open := strings.IndexByte(list, '[')
	comma := strings.IndexByte(list, ',')
	if open < 0 || (comma >= 0 && comma < open) {
		if comma >= 0 {
			return list[:comma]
		}
		return list
	}
	prefix, rest := list[:open], list[open+1:]
	end := strings.IndexAny(rest, ",-]")
	if end < 0 {
		return ""
	}
	return prefix + rest[:end]
}
