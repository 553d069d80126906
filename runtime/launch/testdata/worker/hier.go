package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	ringo "github.com/ringo-ml/ringo/runtime"
)

var (
	algoFlag   = flag.String("algo", "", "collective algorithm (auto, ring, rd, hier); empty: RINGO_ALGO or auto")
	checkOps   = flag.Bool("check-ops", false, "before the steps, check every collective at odd sizes and print this rank's links and bytes sent by kind")
	hierBytes  = flag.String("hier-bytes", "", "auto runs hierarchically from this many bytes (e.g. 64K, 1G); empty: the default")
	benchSweep = flag.String("bench-sweep", "", "MIN:MAX: before the steps, time all-reduces of MIN, 4*MIN, ... MAX bytes and print each median")
	window     = flag.Bool("window", false, "with --bench-sweep: the buffer lies in a shared-memory window, which ranks on one host lend each other instead of copying")
)

// initOptions applies --algo over the environment's configuration.
func initOptions() []ringo.Options {
	if *algoFlag == "" && *hierBytes == "" {
		return nil
	}
	c, err := collective.DefaultConfig().FromEnv()
	if err == nil && *algoFlag != "" {
		c.Algo, err = collective.ParseAlgo(*algoFlag)
	}
	if err == nil && *hierBytes != "" {
		var v int64
		v, err = collective.ParseBytes(*hierBytes)
		c.HierBytes = int(v)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "--algo:", err)
		os.Exit(2)
	}
	return []ringo.Options{{Collective: &c}}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

// runChecks runs every collective at odd sizes with small integer inputs,
// whose results are exact in float32, and checks every element.
func runChecks(ctx context.Context, g *ringo.Group) {
	n, me := g.Size(), g.Rank()
	in := func(r, i int) float32 { return float32((r*7+i*3)%5 - 2) }
	for _, count := range []int{0, 1, 2, n - 1, 13, 1009, 262151} {
		// AllReduce, sum and max.
		for _, op := range []collective.Op{collective.Sum, collective.Max} {
			buf := make([]float32, count)
			for i := range buf {
				buf[i] = in(me, i)
			}
			if err := g.AllReduce(ctx, collective.Float32s(buf), collective.Float32s(buf), op); err != nil {
				fail("rank %d: AllReduce %s of %d: %v", me, op, count, err)
			}
			for i, v := range buf {
				want := in(0, i)
				for r := 1; r < n; r++ {
					if op == collective.Sum {
						want += in(r, i)
					} else {
						want = max(want, in(r, i))
					}
				}
				if v != want {
					fail("rank %d: AllReduce %s of %d: element %d is %v, want %v", me, op, count, i, v, want)
				}
			}
		}
		// ReduceScatter: rank r gets block r of the sum.
		send := make([]float32, count*n)
		for i := range send {
			send[i] = in(me, i)
		}
		recv := make([]float32, count)
		if err := g.ReduceScatter(ctx, collective.Float32s(send), collective.Float32s(recv), collective.Sum); err != nil {
			fail("rank %d: ReduceScatter of %d: %v", me, count, err)
		}
		for i, v := range recv {
			var want float32
			for r := range n {
				want += in(r, me*count+i)
			}
			if v != want {
				fail("rank %d: ReduceScatter of %d: element %d is %v, want %v", me, count, i, v, want)
			}
		}
		// AllGather: block r comes from rank r.
		mine := make([]float32, count)
		for i := range mine {
			mine[i] = in(me, i)
		}
		all := make([]float32, count*n)
		if err := g.AllGather(ctx, collective.Float32s(mine), collective.Float32s(all)); err != nil {
			fail("rank %d: AllGather of %d: %v", me, count, err)
		}
		for i, v := range all {
			if want := in(i/max(count, 1), i%max(count, 1)); v != want {
				fail("rank %d: AllGather of %d: element %d is %v, want %v", me, count, i, v, want)
			}
		}
		// Broadcast and Reduce from the last rank.
		root := n - 1
		b := make([]float32, count)
		for i := range b {
			b[i] = in(me, i)
		}
		if err := g.Broadcast(ctx, collective.Float32s(b), collective.Float32s(b), root); err != nil {
			fail("rank %d: Broadcast of %d: %v", me, count, err)
		}
		for i, v := range b {
			if v != in(root, i) {
				fail("rank %d: Broadcast of %d: element %d is %v, want %v", me, count, i, v, in(root, i))
			}
		}
		red := make([]float32, count)
		if err := g.Reduce(ctx, collective.Float32s(mine), collective.Float32s(red), collective.Sum, root); err != nil {
			fail("rank %d: Reduce of %d: %v", me, count, err)
		}
		if me == root {
			for i, v := range red {
				var want float32
				for r := range n {
					want += in(r, i)
				}
				if v != want {
					fail("rank %d: Reduce of %d: element %d is %v, want %v", me, count, i, v, want)
				}
			}
		}
	}
	links := g.Links()
	for p := range links {
		if links[p] == "" {
			links[p] = "-"
		}
	}
	sent := g.SentBytes()
	fmt.Printf("rank %d: ops ok; transport %s, links %s, sent shm %d tcp %d, layout %v\n",
		me, g.Transport, strings.Join(links, ","), sent["shm"], sent["tcp"], collective.HierarchicalLayout(g.Comm))
}

// runSweep times all-reduces over a range of sizes, after a warm-up for
// each: --bench-iters calls, or more for small sizes (up to 16 MiB moved,
// at most 200 calls), and prints rank 0's medians.
func runSweep(ctx context.Context, g *ringo.Group, spec string, iters int) {
	lo, hi, ok := strings.Cut(spec, ":")
	minB, err1 := collective.ParseBytes(lo)
	maxB, err2 := collective.ParseBytes(hi)
	if !ok || err1 != nil || err2 != nil || minB < 4 {
		fail("--bench-sweep %q: want MIN:MAX, e.g. 4K:256M", spec)
	}
	var buf []float32
	if *window {
		w, err := shm.NewWindow(int(maxB))
		if err != nil {
			fail("rank %d: --window: %v", g.Rank(), err)
		}
		defer w.Close()
		buf = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(w.Bytes()))), maxB/4)
	} else {
		buf = make([]float32, maxB/4)
	}
	for size := minB; size <= maxB; size *= 4 {
		b := collective.Float32s(buf[:size/4])
		var times []time.Duration
		k := max(iters, min(200, int((16<<20)/size)))
		for i := range k + 1 {
			t0 := time.Now()
			if err := g.AllReduce(ctx, b, b, collective.Sum); err != nil {
				fail("rank %d: all-reduce of %d bytes: %v", g.Rank(), size, err)
			}
			if i > 0 {
				times = append(times, time.Since(t0))
			}
		}
		slices.Sort(times)
		if g.Rank() == 0 {
			fmt.Printf("sweep %s %s: all-reduce of %d bytes: median %.6f s\n", g.Transport, *algoFlag, size, times[len(times)/2].Seconds())
		}
	}
}

// workerTimeout bounds the whole run: a minute, ten with --bench-sweep.
func workerTimeout() time.Duration {
	if *benchSweep != "" || *replanBytes > 0 {
		return 10 * time.Minute
	}
	return time.Minute
}
