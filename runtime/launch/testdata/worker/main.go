// Command worker is the test program the launcher's tests start: it joins
// the group with runtime.Init, all-reduces for a number of steps with a
// heartbeat each, and can be told to die, hang or fail on the first
// attempt, to exercise the launcher's supervision.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/collective"
	ringo "github.com/ringo-ml/ringo/runtime"
)

func main() {
	steps := flag.Int("steps", 20, "all-reduce steps")
	stepTime := flag.Duration("step-time", 10*time.Millisecond, "sleep per step")
	dieRank := flag.Int("die-rank", -1, "on the first attempt, this rank kills itself with SIGKILL")
	hangRank := flag.Int("hang-rank", -1, "on the first attempt, this rank stops making progress")
	panicRank := flag.Int("panic-rank", -1, "on the first attempt, this rank panics")
	failRank := flag.Int("fail-rank", -1, "on the first attempt, this rank exits 3 after a message on stderr")
	at := flag.Int("at", 5, "the step at which --die-rank, --hang-rank or --fail-rank act")
	always := flag.Bool("always", false, "act on every attempt, not just the first")
	benchBytes := flag.Int("bench-bytes", 0, "before the steps, time all-reduces of this many bytes and print the median")
	benchIters := flag.Int("bench-iters", 3, "with --bench-bytes: timed all-reduces (after one warm-up)")
	noToken := flag.Int("no-token-rank", -1, "this rank joins without the job token, as an intruder would")
	printP2P := flag.Bool("print-p2p", false, "rank 0 prints its libp2p peer ID and the address it listens on, for a test to dial")
	flag.Parse()
	if os.Getenv("RANK") == fmt.Sprint(*noToken) {
		os.Unsetenv("RINGO_TOKEN_FILE")
	}

	ctx, cancel := context.WithTimeout(context.Background(), workerTimeout())
	defer cancel()
	g, err := ringo.Init(ctx, initOptions()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "init:", err)
		os.Exit(1)
	}
	defer g.Close()
	if *printP2P && g.Rank() == 0 {
		ids, err := os.ReadFile(os.Getenv(ringo.EnvP2PPeers))
		if f := strings.Fields(string(ids)); err == nil && len(f) > 0 {
			fmt.Printf("p2p rank 0 is %s at %s\n", f[0], os.Getenv(ringo.EnvCollectiveAddr))
		}
	}
	if *benchBytes > 0 {
		buf := make([]float32, *benchBytes/4)
		var times []time.Duration
		for i := range *benchIters + 1 {
			t0 := time.Now()
			if err := g.AllReduce(ctx, collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil {
				fmt.Fprintf(os.Stderr, "rank %d: timing all-reduce: %v\n", g.Rank(), err)
				os.Exit(1)
			}
			if i > 0 {
				times = append(times, time.Since(t0))
			}
		}
		slices.Sort(times)
		host, _ := os.Hostname()
		fmt.Printf("rank %d of %d on %s (%s): all-reduce of %d bytes: median %.6f s\n", g.Rank(), g.Size(), os.Getenv("RINGO_NODE_ADDR"), host, *benchBytes, times[len(times)/2].Seconds())
	}
	if *checkOps {
		runChecks(ctx, g)
	}
	if *benchSweep != "" {
		runSweep(ctx, g, *benchSweep, *benchIters)
	}
	if *replanBytes > 0 {
		runReplanLoop(ctx, g)
		return
	}
	first := g.Restarts == 0 || *always
	n := g.Size()
	buf := make([]float32, 1024)
	for step := 1; step <= *steps; step++ {
		if first && step == *at {
			switch g.Rank() {
			case *dieRank:
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			case *hangRank:
				fmt.Fprintf(os.Stderr, "rank %d: hanging at step %d\n", g.Rank(), step)
				select {}
			case *panicRank:
				go func() { select {} }() // more stacks after the panic message
				panic(fmt.Sprintf("rank %d: index out of range at step %d", g.Rank(), step))
			case *failRank:
				fmt.Fprintf(os.Stderr, "rank %d: something went wrong at step %d\n", g.Rank(), step)
				os.Exit(3)
			}
		}
		for i := range buf {
			buf[i] = float32(g.Rank() + 1 + step)
		}
		if err := g.AllReduce(ctx, collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil {
			fmt.Fprintf(os.Stderr, "rank %d step %d: %v\n", g.Rank(), step, err)
			os.Exit(1)
		}
		want := float32(n*(n+1)/2 + n*step)
		for i, v := range buf {
			if v != want {
				fmt.Fprintf(os.Stderr, "rank %d step %d: element %d is %v, want %v\n", g.Rank(), step, i, v, want)
				os.Exit(1)
			}
		}
		g.Heartbeat(int64(step))
		time.Sleep(*stepTime)
	}
	fmt.Printf("rank %d of %d: done %d steps, last sum %v, restarts %d, generation %d, local %d/%d, node %d/%d, transport %s\n",
		g.Rank(), n, *steps, buf[0], g.Restarts, g.Generation, g.LocalRank, g.LocalSize, g.NodeRank, g.Nodes, g.Transport)
}
