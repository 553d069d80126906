package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/bench/ceiling"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// The parent tells each worker process who it is through these.
const (
	envRank       = "RINGO_BENCH_RANK"
	envRendezvous = "RINGO_BENCH_RENDEZVOUS"
	// envCeiling carries the ring ceiling the parent measured (GB/s) to
	// rank 0, which prints each row's fraction of it.
	envCeiling = "RINGO_BENCH_CEILING_GBPS"
)

// joinTimeout bounds how long workers wait for each other to start.
const joinTimeout = 60 * time.Second

// Run is `ringo bench`. In the process a user started it spawns c.NP
// workers (this same executable and arguments) and waits for them; in a
// worker it runs the sweep. Rank 0's results go to stdout.
func Run(ctx context.Context, c Config, stdout, stderr io.Writer) error {
	if isChild, err := ceiling.RunChild(); isChild {
		return err
	}
	if c.Sockets == 0 {
		c.Sockets = tcp.SocketsFor(c.NP)
	}
	if err := c.Validate(); err != nil {
		return err
	}
	if r := os.Getenv(envRank); r != "" {
		rank, err := strconv.Atoi(r)
		if err != nil {
			return fmt.Errorf("%s=%q is not a rank", envRank, r)
		}
		if v := os.Getenv(envCeiling); v != "" {
			if c.ceilingGBps, err = strconv.ParseFloat(v, 64); err != nil {
				return fmt.Errorf("%s=%q is not a bandwidth", envCeiling, v)
			}
		}
		if c.Op == "tune" {
			// One of the tuning sweeps: the parent chose the algorithm
			// (RINGO_ALGO) and reads the rows.
			c.Op, c.JSON = "allreduce", true
		}
		return runWorker(ctx, c, rank, os.Getenv(envRendezvous), stdout)
	}
	if err := checkDevice(c); err != nil {
		return err
	}
	switch {
	case c.Op == "tune":
		return runTune(ctx, c, stdout, stderr)
	case c.CheckCeiling:
		return runWithCeiling(ctx, c, stdout, stderr)
	}
	return runParent(ctx, c, stdout, stderr)
}

// runWithCeiling measures the TCP ring ceiling with as many processes
// and sockets per link as the sweep uses, runs the sweep, and measures
// the ceiling again, so that a drift of the machine during the sweep
// shows. Rows carry their fraction of the first measurement.
func runWithCeiling(ctx context.Context, c Config, stdout, stderr io.Writer) error {
	head := stdout
	if c.JSON {
		head = stderr
	}
	cc := ceiling.DefaultConfig()
	cc.NP, cc.Sockets = c.NP, c.Sockets
	if c.CeilingWindow > 0 {
		cc.Window, cc.Warmup = c.CeilingWindow, min(cc.Warmup, c.CeilingWindow)
	}
	before, err := ceiling.Measure(ctx, cc)
	if err != nil {
		return fmt.Errorf("measuring the ring ceiling before the sweep: %w", err)
	}
	fmt.Fprintf(head, "# ring ceiling before the sweep: %.3f GB/s per rank (median of %d ranks; min %.3f, max %.3f), sockets per link: %d, window %v\n",
		before.GBps, c.NP, before.Min(), before.Max(), c.Sockets, cc.Window)
	if err := runParent(ctx, c, stdout, stderr, envCeiling+"="+strconv.FormatFloat(before.GBps, 'g', -1, 64)); err != nil {
		return err
	}
	after, err := ceiling.Measure(ctx, cc)
	if err != nil {
		return fmt.Errorf("measuring the ring ceiling after the sweep: %w", err)
	}
	fmt.Fprintf(head, "# ring ceiling after the sweep: %.3f GB/s per rank (before: %.3f; rows are fractions of the first)\n", after.GBps, before.GBps)
	return nil
}

func runWorker(ctx context.Context, c Config, rank int, addr string, stdout io.Writer) error {
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	comm, err := join(jctx, c, rank, addr)
	cancel()
	if err != nil {
		return fmt.Errorf("rank %d: forming the group: %w", rank, err)
	}
	werr := worker(ctx, c, comm, stdout)
	if werr != nil {
		// The group is broken; tear it down without waiting on peers.
		comm.Close()
		return fmt.Errorf("rank %d: %w", rank, werr)
	}
	return comm.Close()
}

// join forms this worker's group over c.Transport.
func join(ctx context.Context, c Config, rank int, addr string) (collective.Comm, error) {
	if c.Transport == "shm" {
		scfg := shm.DefaultConfig()
		scfg.Rendezvous, scfg.Rank, scfg.Size = addr, rank, c.NP
		scfg.Yield = shm.YieldFor(c.NP)
		scfg, err := scfg.FromEnv()
		if err != nil {
			return nil, err
		}
		tr, err := shm.Join(ctx, scfg)
		if err != nil {
			return nil, err
		}
		comm, err := collective.New(tr, c.Coll)
		if err != nil {
			tr.Close()
			return nil, err
		}
		return comm, nil
	}
	tcfg := tcp.DefaultConfig()
	tcfg.Rendezvous, tcfg.Rank, tcfg.Size = addr, rank, c.NP
	tcfg.SocketsPerPeer = c.Sockets
	tcfg.Spin = tcp.SpinFor(c.NP)
	tcfg, err := tcfg.FromEnv()
	if err != nil {
		return nil, err
	}
	return collective.NewTCP(ctx, tcfg, c.Coll)
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type exit struct {
	rank int
	err  error
}

// bufferPlace says where --device puts the buffers.
func bufferPlace(device string) string {
	if device == "window" {
		return "shm windows"
	}
	return device + " memory"
}

// runParent starts the workers, each with env added to this process's
// environment, and waits for them.
func runParent(ctx context.Context, c Config, stdout, stderr io.Writer, env ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable to start workers: %w", err)
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return fmt.Errorf("choosing a rendezvous port: %w", err)
	}
	// With --json, stdout carries only result lines; the preamble goes to
	// stderr.
	head := stdout
	if c.JSON {
		head = stderr
	}
	host, _ := os.Hostname()
	link := fmt.Sprintf("%d sockets/peer", c.Sockets)
	if c.Transport == "shm" {
		link = "one ring per ordered pair"
	}
	mem := bufferPlace(c.Device)
	if c.Device == "window" {
		mem += fmt.Sprintf(", lent from %d B", c.Coll.LendBytes)
	}
	fmt.Fprintf(head, "# ringo bench %s: np %d, %s, transport %s, %s, algo %s (rd < %d B, on 4, 8, 16 ... ranks rd < %d B and hd < %d B), chunk %d B, polling up to %d B, timeout %v, iters %d, warmup %d, buffers in %s\n",
		c.Op, c.NP, c.DType, c.Transport, link, c.Coll.Algo, c.Coll.SmallBytes, c.Coll.HalvingFrom(), c.Coll.MidBytes, c.Coll.ChunkBytes, c.Coll.PollBytes, c.Coll.Timeout, c.Iters, c.Warmup, mem)

	cmds := make([]*exec.Cmd, c.NP)
	exits := make(chan exit, c.NP)
	for r := range cmds {
		cmd := exec.Command(exe, os.Args[1:]...)
		cmd.Env = append(os.Environ(), envRank+"="+strconv.Itoa(r), envRendezvous+"="+addr)
		cmd.Env = append(cmd.Env, env...)
		if os.Getenv("GOMAXPROCS") == "" {
			// Share the cores among the workers, as torchrun does with
			// OMP_NUM_THREADS: more Go threads than cores only adds
			// scheduler hand-offs to every message (measured: 4 KiB
			// all-reduce latency at 2 ranks on 2 cores drops from about
			// 41 to 31 us with one thread each).
			cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/c.NP)))
		}
		if r == 0 {
			cmd.Stdout = stdout
		}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			for _, started := range cmds[:r] {
				started.Process.Kill()
				started.Wait()
			}
			return fmt.Errorf("starting worker %d: %w", r, err)
		}
		cmds[r] = cmd
		fmt.Fprintf(head, "#  Rank %2d Pid %7d on %s\n", r, cmd.Process.Pid, host)
		go func() { exits <- exit{r, cmd.Wait()} }()
	}

	var failed []exit
	var grace <-chan time.Time
	killAll := func() {
		for _, cmd := range cmds {
			cmd.Process.Kill()
		}
	}
	for left := c.NP; left > 0; {
		select {
		case e := <-exits:
			left--
			if e.err != nil {
				failed = append(failed, e)
				if grace == nil {
					// The others must notice within their timeout; past that
					// (plus slack) they are stuck, and we stop them.
					grace = time.After(c.Coll.Timeout + 5*time.Second)
				}
			}
		case <-grace:
			killAll()
			grace = nil
		case <-ctx.Done():
			killAll()
			ctx = context.Background() // keep collecting exits
		}
	}
	if len(failed) == 0 {
		return nil
	}
	var parts []string
	for _, f := range failed {
		parts = append(parts, fmt.Sprintf("rank %d (pid %d): %v", f.rank, cmds[f.rank].Process.Pid, describeExit(f.err)))
	}
	return errors.New("workers failed, first to last: " + strings.Join(parts, "; "))
}

func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.Exited() {
			return fmt.Sprintf("exited with status %d", ee.ExitCode())
		}
		return "terminated: " + ee.String()
	}
	return err.Error()
}
