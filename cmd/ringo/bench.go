package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	ckptbench "github.com/ringo-ml/ringo/checkpoint/bench"
	databench "github.com/ringo-ml/ringo/dataloader/bench"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/bench"
)

// byteFlag accepts 4096, 4K, 64M, 1G.
type byteFlag struct{ v *int64 }

func (b byteFlag) String() string {
	if b.v == nil {
		return "0" // the flag package's zero value: a 0 default is not printed
	}
	return fmt.Sprint(*b.v)
}

func (b byteFlag) Set(s string) error {
	n, err := collective.ParseBytes(s)
	if err != nil {
		return err
	}
	*b.v = n
	return nil
}

func benchUsage() string {
	return fmt.Sprintf("Usage: ringo bench %s [flags]\n       ringo bench tune --np 4 [--rounds 3] [--out ringo-tuning.json]\n       ringo bench ckpt --size 1G --np 4 [--dir D] [--json]\n       ringo bench data DIR|URL --np 4 [--consumer 5ms] [--json]\n\n", strings.Join(bench.Ops, "|")) +
		"Starts --np local worker processes that form a TCP group, sweeps sizes from\n--min-bytes to --max-bytes, checks every result and prints nccl-tests style rows.\nExits non-zero if any result is wrong or any worker fails.\n\nFlags:\n"
}

// benchCommands are one command per collective, then the checkpoint and
// data-loader benchmarks.
func benchCommands() []subcommand {
	var cmds []subcommand
	for _, op := range bench.Ops {
		cmds = append(cmds, subcommand{name: op, run: func(ctx context.Context, args []string) error {
			return benchCollective(ctx, op, args)
		}})
	}
	cmds = append(cmds, subcommand{name: "tune", run: func(ctx context.Context, args []string) error {
		return benchCollective(ctx, "tune", args)
	}})
	return append(cmds, subcommand{name: "ckpt", run: runBenchCkpt}, subcommand{name: "data", run: runBenchData})
}

// runBench is a group whose command may be left out: flags alone measure
// all-reduce.
func runBench(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return benchCollective(ctx, "allreduce", args)
	}
	return runGroup(ctx, "bench", benchUsage(), benchCommands(), args)
}

func benchCollective(ctx context.Context, op string, args []string) error {
	c := bench.DefaultConfig()
	// Named "bench" whatever the op, as the op may have been left out.
	fs := newFlagSet("bench", benchUsage())
	coll, err := collective.DefaultConfig().FromEnv()
	if err != nil {
		return usageErr(fs, "%w", err)
	}
	c.Coll = coll

	fs.IntVar(&c.NP, "np", c.NP, "number of worker processes (ranks)")
	fs.Var(byteFlag{&c.MinBytes}, "min-bytes", "smallest size in bytes (accepts K, M, G)")
	fs.Var(byteFlag{&c.MaxBytes}, "max-bytes", "largest size in bytes (accepts K, M, G)")
	fs.Int64Var(&c.Factor, "factor", c.Factor, "multiply the size by this between rows")
	fs.IntVar(&c.Iters, "iters", c.Iters, "timed iterations per size")
	fs.IntVar(&c.Warmup, "warmup", c.Warmup, "untimed iterations per size before timing")
	dtype := fs.String("dtype", c.DType.String(), "element type: float32, float64, int32, int64, bfloat16, float16")
	redop := fs.String("op", c.RedOp.String(), "reduction: sum, avg, min, max, prod")
	fs.IntVar(&c.Root, "root", c.Root, "root rank for broadcast")
	fs.StringVar(&c.Transport, "transport", c.Transport, "transport between workers: tcp or shm")
	fs.IntVar(&c.Sockets, "sockets", c.Sockets, "TCP connections per peer pair that large messages are striped over (0: one per core each worker can have, 1 to 4)")
	algo := fs.String("algo", c.Coll.Algo.String(), "algorithm: auto, ring, rd, hd, hier (also RINGO_ALGO)")
	small := c.Coll.SmallBytes
	smallB := int64(small)
	fs.Var(byteFlag{&smallB}, "algo-threshold", "auto uses recursive doubling / trees below this many bytes (also RINGO_ALGO_THRESHOLD)")
	midB := int64(c.Coll.MidBytes)
	fs.Var(byteFlag{&midB}, "algo-mid", "auto uses halving-doubling from --algo-halving up to this many bytes on 4, 8, 16 ... ranks (also RINGO_ALGO_MID)")
	halvingB := int64(c.Coll.HalvingBytes)
	fs.Var(byteFlag{&halvingB}, "algo-halving", "on 4, 8, 16 ... ranks auto uses halving-doubling from this many bytes, where that is below --algo-threshold (also RINGO_ALGO_HALVING)")
	pollEnv := os.Getenv(collective.EnvPoll) != ""
	pollB := int64(0) // unless set, chosen for --np below
	if pollEnv {
		pollB = int64(c.Coll.PollBytes)
	}
	fs.Var(byteFlag{&pollB}, "poll-bytes", "calls of up to this many bytes poll for their messages instead of sleeping (also RINGO_POLL_BYTES; default 2M while workers are at most two per core, 1M beyond)")
	chunk := int64(c.Coll.ChunkBytes)
	fs.Var(byteFlag{&chunk}, "chunk", "pipeline chunk of ring algorithms, bytes (also RINGO_CHUNK_BYTES)")
	fs.DurationVar(&c.Coll.Timeout, "timeout", c.Coll.Timeout, "per-call timeout: a dead or stuck peer fails every rank within it (also RINGO_TIMEOUT)")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON object per size instead of the table")
	fs.StringVar(&c.Device, "device", c.Device, "where the buffers live: host; window (host memory in shared-memory windows, which ranks on one host lend each other instead of copying); or cuda (GPU memory, rank r on visible GPU r mod the count, staged through pinned host memory; reports each stage's share of the time)")
	stageChunk := int64(0)
	fs.Var(byteFlag{&stageChunk}, "stage-chunk", "with --device cuda: the pieces buffers are copied off and back onto the GPU in (default 4M)")
	fs.BoolVar(&c.CheckCeiling, "check-ceiling", false, "measure the TCP ring ceiling (same processes and sockets) before and after the sweep, and print each size's busbw as a fraction of it")
	fs.DurationVar(&c.CeilingWindow, "ceiling-window", 0, "with --check-ceiling: how long each ceiling measurement streams (default 3s, after up to 1s of warm-up)")

	if op == "tune" {
		c.Rounds, c.Out = 3, "ringo-tuning.json"
		c.MaxBytes = 64 << 20
		fs.IntVar(&c.Rounds, "rounds", c.Rounds, "tune: sweeps per algorithm; the medians are compared")
		fs.StringVar(&c.Out, "out", c.Out, "tune: the tuning table to write (read it with RINGO_TUNING=FILE)")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr(fs, "unexpected argument %q (the op goes first: ringo bench allreduce --np 4)", fs.Arg(0))
	}
	if op == "tune" && os.Getenv("RINGO_BENCH_RANK") == "" {
		forced := false
		fs.Visit(func(f *flag.Flag) { forced = forced || f.Name == "algo" || f.Name == "check-ceiling" })
		if forced {
			return usageErr(fs, "tune measures every algorithm itself; --algo and --check-ceiling do not apply")
		}
	}
	c.Op = op
	if c.DType, err = collective.ParseDType(*dtype); err != nil {
		return usageErr(fs, "%w", err)
	}
	if c.RedOp, err = collective.ParseOp(*redop); err != nil {
		return usageErr(fs, "%w", err)
	}
	if c.Coll.Algo, err = collective.ParseAlgo(*algo); err != nil {
		return usageErr(fs, "%w", err)
	}
	c.Coll.SmallBytes, c.Coll.MidBytes, c.Coll.ChunkBytes = int(smallB), int(midB), int(chunk)
	c.Coll.HalvingBytes, c.Coll.PollBytes = int(halvingB), int(pollB)
	pollSet := pollEnv
	fs.Visit(func(f *flag.Flag) { pollSet = pollSet || f.Name == "poll-bytes" })
	if !pollSet {
		// Every worker parses the same flags on the same machine, so the
		// group agrees.
		c.Coll.PollBytes = collective.PollBytesFor(c.NP)
	}
	c.StageChunk = int(stageChunk)
	if err := c.Validate(); err != nil {
		return usageErr(fs, "%w", err)
	}
	return bench.Run(ctx, c, os.Stdout, os.Stderr)
}

const benchCkptUsage = `Usage: ringo bench ckpt --size 1G --np 4 [--dir D] [--json]

Saves and loads a checkpoint of --size from --np ranks in --dir, beside a
plain write and read of the same bytes, and an async save's blocking time.
`

func runBenchCkpt(ctx context.Context, args []string) error {
	c := ckptbench.Config{Bytes: 1 << 30, NP: 4, Dir: os.TempDir()}
	fs := newFlagSet("bench ckpt", benchCkptUsage)
	fs.Var(byteFlag{&c.Bytes}, "size", "total checkpoint size (accepts K, M, G)")
	fs.IntVar(&c.NP, "np", c.NP, "ranks saving together (goroutines of this process)")
	fs.StringVar(&c.Dir, "dir", c.Dir, "directory on the disk to measure")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	r, err := ckptbench.Run(ctx, c)
	if err != nil {
		return err
	}
	if *asJSON {
		printJSON(r)
		return nil
	}
	fmt.Printf("# ringo bench ckpt: %d bytes from %d ranks in %s\n", r.Bytes, r.NP, c.Dir)
	fmt.Printf("plain write (fsync)  %7.3f GB/s\n", r.PlainWrite)
	fmt.Printf("checkpoint save      %7.3f GB/s  (%.0f%% of plain write)\n", r.Save, 100*r.Save/r.PlainWrite)
	fmt.Printf("plain read           %7.3f GB/s\n", r.PlainRead)
	fmt.Printf("checkpoint load      %7.3f GB/s  (%.0f%% of plain read)\n", r.Load, 100*r.Load/r.PlainRead)
	fmt.Printf("async save blocks    %7.0f us    (%.2fx a plain copy of the state by all ranks: %.0f us, %.2f GB/s)\n", r.AsyncBlockUS, r.AsyncBlockUS/r.MemcpyUS, r.MemcpyUS, r.Memcpy)
	return nil
}

const benchDataUsage = `Usage: ringo bench data DIR|URL --np 4 [--consumer 5ms] [--json]

Streams a dataset through --np loaders, beside a plain sequential read of
its files, --rounds times one after the other, and reports the medians;
--make SIZE first packs a synthetic one into DIR. For a URL, --plain-reads
-1 compares with parallel range reads, as many in flight as the loaders
settled on.
`

func runBenchData(ctx context.Context, args []string) error {
	c := databench.Config{NP: 4, BatchSize: 64, Window: 16384, Workers: 4}
	fs := newFlagSet("bench data", benchDataUsage)
	fs.IntVar(&c.NP, "np", c.NP, "ranks reading together (loaders in this process)")
	fs.IntVar(&c.BatchSize, "batch", c.BatchSize, "samples per rank per batch")
	fs.IntVar(&c.Window, "window", c.Window, "shuffle window, samples")
	fs.IntVar(&c.Workers, "workers", c.Workers, "fetch and decode goroutines per loader")
	fs.IntVar(&c.OrderVersion, "order", 2, "order version: 2 (ranks read disjoint blocks) or 1")
	fs.IntVar(&c.Rounds, "rounds", 3, "plain read then stream, this many times; medians reported")
	fs.IntVar(&c.PlainReads, "plain-reads", 0, "plain read: 0 sequential, N range reads of 4 MiB in flight, -1 as many as the loaders settled on")
	fs.IntVar(&c.MaxReads, "max-reads", 0, "most reads in flight per loader (0: the loader's default)")
	fs.DurationVar(&c.Consumer, "consumer", 0, "also run with a consumer spending this long per batch, and report its stall")
	var size int64
	fs.Var(byteFlag{&size}, "make", "first pack a synthetic dataset of this size into DIR")
	recSize := fs.Int("record", 4096, "with --make: bytes per record")
	level := fs.Int("level", 0, "with --make: zstd level of its blocks (0: none)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	loc, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	if loc == "" {
		return usageErr(fs, "bench data needs a dataset DIR or URL (with --make SIZE, a directory to create it in)")
	}
	if size > 0 {
		if err := databench.MakeSynthetic(loc, size, *recSize, *level); err != nil {
			return err
		}
	}
	c.Location = loc
	r, err := databench.Run(ctx, c)
	if err != nil {
		return err
	}
	if *asJSON {
		printJSON(r)
		return nil
	}
	fmt.Printf("# ringo bench data: %s, %d records, %s, %d ranks, batch %d, window %d\n", loc, r.Records, humanBytes(r.FileBytes), c.NP, c.BatchSize, c.Window)
	plain := "plain sequential read"
	if r.PlainReads > 0 {
		plain = fmt.Sprintf("plain read, %d in flight", r.PlainReads)
	}
	fmt.Printf("medians of %d rounds\n", len(r.RawRounds))
	fmt.Printf("%-27s %7.3f GB/s\n", plain, r.RawGBps)
	fmt.Printf("%-27s %7.3f GB/s of files (%.0f%% of plain, median of the rounds' ratios), %.3f GB/s of records, %.0f samples/s, %d reads in flight\n", "ringo streaming", r.StreamFileGBps, 100*r.Ratio, r.StreamGBps, r.SamplesPerSec, r.LoaderReads)
	fmt.Printf("%-27s %7.2fx the dataset (%s)\n", "storage read", r.ReadAmplification, humanBytes(r.StreamReadBytes))
	if c.Consumer > 0 {
		fmt.Printf("stall with a consumer of %v per batch: %.1f%%\n", c.Consumer, 100*r.Stall)
	}
	return nil
}
