// Command ringceiling measures the machine's own limit for a TCP ring
// (package collective/bench/ceiling): the highest per-rank receive
// throughput that N processes connected in a ring over loopback sustain,
// each streaming to its successor while receiving from its predecessor.
// `ringo bench allreduce --check-ceiling` measures the same in the same
// run as its sweep.
//
//	go build -o bin/ringceiling ./scripts/ringceiling
//	bin/ringceiling --np 4 --sockets 2 --seconds 3 --json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ringo-ml/ringo/collective/bench/ceiling"
)

func main() {
	if isChild, err := ceiling.RunChild(); isChild {
		if err != nil {
			fmt.Fprintln(os.Stderr, "ringceiling:", err)
			os.Exit(1)
		}
		return
	}
	c := ceiling.DefaultConfig()
	flag.IntVar(&c.NP, "np", c.NP, "number of processes in the ring")
	flag.IntVar(&c.Sockets, "sockets", c.Sockets, "TCP sockets per ring link")
	seconds := flag.Float64("seconds", c.Window.Seconds(), "measurement window in seconds")
	warmup := flag.Float64("warmup", c.Warmup.Seconds(), "warm-up in seconds before the window opens")
	bufMiB := flag.Int("buf-mib", c.Buf>>20, "socket buffers (SO_SNDBUF/SO_RCVBUF) in MiB")
	ioKiB := flag.Int("io-kib", c.IO>>10, "size of each write and read in KiB")
	asJSON := flag.Bool("json", false, `print one JSON line {"np":N,"sockets":K,"gbps":x}`)
	verbose := flag.Bool("v", false, "also print every rank's throughput (to stderr)")
	flag.Parse()
	c.Window = time.Duration(*seconds * float64(time.Second))
	c.Warmup = time.Duration(*warmup * float64(time.Second))
	c.Buf, c.IO = *bufMiB<<20, *ioKiB<<10
	if err := c.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "ringceiling:", err)
		os.Exit(2)
	}
	res, err := ceiling.Measure(context.Background(), c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ringceiling:", err)
		os.Exit(1)
	}
	if *verbose {
		for _, r := range res.Ranks {
			fmt.Fprintf(os.Stderr, "rank %d: %.3f GB/s (%d bytes in %.3fs)\n", r.Rank, r.GBps, r.Bytes, r.Seconds)
		}
	}
	if *asJSON {
		out, _ := json.Marshal(struct {
			NP      int     `json:"np"`
			Sockets int     `json:"sockets"`
			GBps    float64 `json:"gbps"`
		}{c.NP, c.Sockets, float64(int64(res.GBps*1000+0.5)) / 1000})
		fmt.Println(string(out))
		return
	}
	fmt.Printf("np=%d sockets=%d: ring ceiling %.3f GB/s per rank (median; min %.3f, max %.3f)\n",
		c.NP, c.Sockets, res.GBps, res.Min(), res.Max())
}
