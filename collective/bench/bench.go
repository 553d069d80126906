package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

// Ops are the collectives ringo bench measures.
var Ops = []string{"allreduce", "reducescatter", "allgather", "broadcast"}

// Config is one benchmark run; cmd/ringo maps its flags onto it.
type Config struct {
	Op        string
	NP        int
	MinBytes  int64
	MaxBytes  int64
	Factor    int64
	Iters     int
	Warmup    int
	DType     collective.DType
	RedOp     collective.Op
	Root      int
	Transport string
	Sockets   int
	Coll      collective.Config
	JSON      bool
	// CheckCeiling measures the TCP ring ceiling (package ceiling)
	// before and after the sweep and prints each row's busbw as a
	// fraction of it. TCP only: it is not the limit of shared memory.
	CheckCeiling bool
	// CeilingWindow is how long each ceiling measurement is (0: the
	// package's default, 3 s after 1 s of warm-up).
	CeilingWindow time.Duration
	// Rounds and Out are for the tune op: how many times each
	// algorithm's sweep runs (medians are compared), and the file the
	// table is written to.
	Rounds int
	Out    string
	// Device is where the buffers live: "host"; "window", host memory
	// in shm windows, which ranks on one host lend each other instead of
	// copying it through the rings; or "cuda" for GPU memory staged
	// through pinned host memory in chunks of StageChunk bytes (0:
	// collective's default, 4 MiB).
	Device     string
	StageChunk int

	ceilingGBps float64 // in a worker: what the parent measured
}

// DefaultConfig mirrors nccl-tests' defaults where they exist.
func DefaultConfig() Config {
	return Config{
		Op: "allreduce", NP: 2, MinBytes: 4 << 10, MaxBytes: 64 << 20, Factor: 2,
		Iters: 20, Warmup: 5, DType: collective.Float32, RedOp: collective.Sum,
		Transport: "tcp", Coll: collective.DefaultConfig(), Device: "host", // Sockets 0: tcp.SocketsFor(NP)
	}
}

// Validate names the first bad field.
func (c Config) Validate() error {
	known := c.Op == "tune"
	for _, o := range Ops {
		known = known || o == c.Op
	}
	switch {
	case !known:
		return fmt.Errorf("unknown op %q (want one of %v)", c.Op, Ops)
	case c.NP < 1 || c.NP > 1024:
		return fmt.Errorf("--np %d must be 1..1024", c.NP)
	case c.MinBytes < 0 || c.MaxBytes < c.MinBytes:
		return fmt.Errorf("--min-bytes %d and --max-bytes %d must satisfy 0 <= min <= max", c.MinBytes, c.MaxBytes)
	case c.Factor < 2:
		return fmt.Errorf("--factor %d must be at least 2", c.Factor)
	case c.Iters < 1 || c.Warmup < 0:
		return fmt.Errorf("--iters %d must be positive and --warmup %d not negative", c.Iters, c.Warmup)
	case c.Transport != "tcp" && c.Transport != "shm":
		return fmt.Errorf("--transport %q: want tcp or shm (shared memory, one host)", c.Transport)
	case c.Op == "tune" && (c.Rounds < 1 || c.Out == "" || c.NP < 2):
		return fmt.Errorf("tune needs --np of at least 2 (%d), --rounds of at least 1 (%d) and an --out file", c.NP, c.Rounds)
	case c.CeilingWindow < 0:
		return fmt.Errorf("--ceiling-window %v must not be negative", c.CeilingWindow)
	case c.CheckCeiling && (c.Transport != "tcp" || c.NP < 2):
		return fmt.Errorf("--check-ceiling measures a TCP ring of at least 2 processes; it is not the limit of --transport %s with --np %d", c.Transport, c.NP)
	case c.Root < 0 || c.Root >= c.NP:
		return fmt.Errorf("--root %d is outside 0..%d", c.Root, c.NP-1)
	case c.Device != "host" && c.Device != "window" && c.Device != "cuda":
		return fmt.Errorf("--device %q: want host, window or cuda", c.Device)
	case c.Device == "cuda" && (c.Op == "tune" || c.CheckCeiling):
		return fmt.Errorf("--device cuda measures the sweep only: tune and --check-ceiling measure host memory, so run them without --device cuda")
	case c.StageChunk < 0 || c.StageChunk > 0 && c.StageChunk < 64:
		return fmt.Errorf("--stage-chunk %d: want at least 64 bytes (0 for the default)", c.StageChunk)
	case !collective.Supports(c.DType, c.RedOp):
		return fmt.Errorf("reduction %s is not supported for %s", c.RedOp, c.DType)
	}
	return c.Coll.Validate()
}

// Row is one line of results, as printed with --json.
type Row struct {
	Op        string  `json:"op"`
	Transport string  `json:"transport"`
	NP        int     `json:"np"`
	Bytes     int64   `json:"bytes"`
	Count     int64   `json:"count"`
	DType     string  `json:"dtype"`
	Algo      string  `json:"algo"`
	TimeUS    float64 `json:"time_us"`
	AlgBWGBps float64 `json:"algbw_gbps"`
	BusBWGBps float64 `json:"busbw_gbps"`
	Wrong     int64   `json:"wrong"`
	// With --check-ceiling: the ring ceiling measured before the sweep,
	// and busbw as a fraction of it.
	CeilingGBps float64 `json:"ceiling_gbps,omitempty"`
	OfCeiling   float64 `json:"of_ceiling,omitempty"`
	// With --device cuda: where the buffers were, and the share of the
	// timed calls' wall time that each stage was busy (rank 0's): copies
	// off the GPU, the host collective (network and reduction), copies
	// back. They overlap, so they add up to more than 1 when the copies
	// hide behind the wire.
	Device    string  `json:"device,omitempty"`
	D2HShare  float64 `json:"d2h_share,omitempty"`
	WireShare float64 `json:"wire_share,omitempty"`
	H2DShare  float64 `json:"h2d_share,omitempty"`
}

// busFactor converts algbw into busbw (nccl-tests' PERFORMANCE.md).
func busFactor(op string, n int) float64 {
	switch op {
	case "allreduce":
		return 2 * float64(n-1) / float64(n)
	case "reducescatter", "allgather":
		return float64(n-1) / float64(n)
	}
	return 1
}

// sizes lists the byte sizes of the sweep, each rounded down to whole
// elements (and, for the gathering ops, whole elements per rank); sizes
// that round to one already listed are dropped.
func sizes(c Config) []int64 {
	unit := int64(c.DType.Size())
	if c.Op == "allgather" || c.Op == "reducescatter" {
		unit *= int64(c.NP)
	}
	var out []int64
	for b := c.MinBytes; b <= c.MaxBytes; b *= c.Factor {
		r := b / unit * unit
		if len(out) == 0 || out[len(out)-1] != r {
			out = append(out, r)
		}
		if b == 0 {
			b = 1 // so that multiplying makes progress
		}
	}
	return out
}

// value is rank r's input at index i: a small integer, so that every
// reduction's exact result is representable in every dtype (bfloat16
// included) and a wrong result cannot hide in rounding.
func value(r, i int) float64 { return float64((r*7+i*3)%5 - 2) }

func prodValue(r, i int) float64 {
	if (r+i)%3 == 0 {
		return -1
	}
	return 1
}

func input(op collective.Op, r, i int) float64 {
	if op == collective.Prod {
		return prodValue(r, i)
	}
	return value(r, i)
}

// expected is the reduction over n ranks at index i.
func expected(op collective.Op, n, i int, d collective.DType) float64 {
	acc := input(op, 0, i)
	for r := 1; r < n; r++ {
		v := input(op, r, i)
		switch op {
		case collective.Sum, collective.Avg:
			acc += v
		case collective.Prod:
			acc *= v
		case collective.Min:
			acc = math.Min(acc, v)
		case collective.Max:
			acc = math.Max(acc, v)
		}
	}
	if op == collective.Avg {
		// Divide the exact sum the way the library does: in the dtype's
		// own arithmetic (16-bit floats through float32).
		q := float32(acc) / float32(n)
		switch d {
		case collective.Int32, collective.Int64:
			acc = math.Trunc(acc / float64(n))
		case collective.Float64:
			acc /= float64(n)
		case collective.Float32:
			acc = float64(q)
		case collective.BFloat16:
			acc = float64(collective.BF16ToFloat32(collective.BF16FromFloat32(q)))
		case collective.Float16:
			acc = float64(collective.F16ToFloat32(collective.F16FromFloat32(q)))
		}
	}
	return acc
}

// worker runs the sweep on one rank; rank 0 writes the rows to out.
func worker(ctx context.Context, c Config, comm collective.Comm, out io.Writer) error {
	n, rank := comm.Size(), comm.Rank()
	ceil1, ceil2 := "", ""
	if c.ceilingGBps > 0 {
		ceil1, ceil2 = "  of ceiling", fmt.Sprintf("  (%.3f GB/s)", c.ceilingGBps)
	}
	if rank == 0 && !c.JSON {
		fmt.Fprintf(out, "#\n# %10s %12s %8s %6s %6s %6s %10s %8s %8s %7s%s\n", "size", "count", "type", "redop", "root", "algo", "time", "algbw", "busbw", "#wrong", ceil1)
		fmt.Fprintf(out, "# %10s %12s %8s %6s %6s %6s %10s %8s %8s %7s%s\n", "(B)", "(elements)", "", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", ceil2)
	}
	var gpu *gpuSide
	if c.Device == "cuda" {
		var err error
		if gpu, err = openGPU(c, comm); err != nil {
			return err
		}
		defer gpu.Close()
		if rank == 0 && !c.JSON {
			maj, mnr := gpu.ctx.ComputeCapability()
			fmt.Fprintf(out, "# buffers on %s (%s, compute %d.%d, %d MiB), staged in %d B chunks through pinned memory; d2h, wire, h2d: each stage's busy share of the time\n",
				gpu.ctx.Name(), gpu.ctx.UUID(), maj, mnr, gpu.ctx.TotalMem()>>20, gpu.stager.ChunkBytes())
		}
	}
	var busSum float64
	var rows int
	var totalWrong int64
	stat := make([]float64, 1)
	wrongBuf := make([]int64, 1)
	esize := int64(c.DType.Size())
	for _, size := range sizes(c) {
		count := size / esize
		b, err := newBuffers(c, n, rank, int(count))
		if err != nil {
			return err
		}
		run := func() error { return b.run(ctx, comm, c) }
		var db *deviceBuffers
		if gpu != nil {
			if db, err = gpu.buffers(b); err != nil {
				return fmt.Errorf("%d bytes on the GPU: %w", size, err)
			}
			run = func() error { return db.run(ctx, b) }
		}
		for range c.Warmup {
			if err := run(); err != nil {
				return err
			}
		}
		// One checked call on fresh inputs, then the timed ones.
		b.reset()
		if db != nil {
			if err := db.load(b); err != nil {
				return err
			}
		}
		if err := run(); err != nil {
			return err
		}
		if db != nil {
			if err := db.store(b); err != nil {
				return err
			}
			gpu.stager.ResetStats()
		}
		wrongBuf[0] = b.check()
		if err := comm.Barrier(ctx); err != nil {
			return err
		}
		start := time.Now()
		for range c.Iters {
			if err := run(); err != nil {
				return err
			}
		}
		stat[0] = time.Since(start).Seconds() / float64(c.Iters)
		var stages collective.StageStats
		if db != nil {
			stages = gpu.stager.Stats()
			db.Free()
		}
		b.free()
		// The slowest rank's time is the collective's time.
		if err := comm.AllReduce(ctx, collective.Float64s(stat), collective.Float64s(stat), collective.Max); err != nil {
			return err
		}
		if err := comm.AllReduce(ctx, collective.Int64s(wrongBuf), collective.Int64s(wrongBuf), collective.Sum); err != nil {
			return err
		}
		if rank != 0 {
			continue
		}
		sec := stat[0]
		algbw := float64(size) / sec / 1e9
		row := Row{Op: c.Op, Transport: c.Transport, NP: n, Bytes: size, Count: count, DType: c.DType.String(), Algo: b.algo(c).String(),
			TimeUS: sec * 1e6, AlgBWGBps: algbw, BusBWGBps: algbw * busFactor(c.Op, n), Wrong: wrongBuf[0]}
		if size == 0 {
			row.AlgBWGBps, row.BusBWGBps = 0, 0
		}
		if c.ceilingGBps > 0 {
			row.CeilingGBps, row.OfCeiling = c.ceilingGBps, row.BusBWGBps/c.ceilingGBps
		}
		if gpu != nil {
			row.Device = c.Device
			row.D2HShare, row.WireShare, row.H2DShare = stageShares(stages)
		}
		busSum += row.BusBWGBps
		totalWrong += row.Wrong
		rows++
		if c.JSON {
			j, _ := json.Marshal(row)
			fmt.Fprintln(out, string(j))
		} else {
			root := "-1"
			if c.Op == "broadcast" {
				root = fmt.Sprint(c.Root)
			}
			redop := c.RedOp.String()
			if c.Op == "allgather" || c.Op == "broadcast" {
				redop = "none"
			}
			frac := ""
			if c.ceilingGBps > 0 {
				frac = fmt.Sprintf("  %10.0f%%", 100*row.OfCeiling)
			}
			if gpu != nil {
				frac += fmt.Sprintf("  d2h %3.0f%% wire %3.0f%% h2d %3.0f%%", 100*row.D2HShare, 100*row.WireShare, 100*row.H2DShare)
			}
			fmt.Fprintf(out, "  %10d %12d %8s %6s %6s %6s %10.1f %8.3f %8.3f %7d%s\n", row.Bytes, row.Count, row.DType, redop, root, row.Algo, row.TimeUS, row.AlgBWGBps, row.BusBWGBps, row.Wrong, frac)
		}
	}
	if rank == 0 && !c.JSON && rows > 0 {
		fmt.Fprintf(out, "# Wrong results     : %d\n# Avg bus bandwidth : %.4f GB/s\n#\n", totalWrong, busSum/float64(rows))
	}
	if totalWrong > 0 {
		return fmt.Errorf("%d wrong results", totalWrong)
	}
	return nil
}
