package collective

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Algo selects the algorithm family for all-reduce (and, by extension, the
// small-message variants of the other collectives).
type Algo uint8

const (
	// AlgoAuto picks per call by size and world (Config.AlgoFor), and
	// goes hierarchical from Config.HierBytes on a group of several hosts.
	AlgoAuto Algo = iota
	// AlgoRing is bandwidth-optimal: reduce-scatter then all-gather around
	// a ring, each rank sending 2(n-1)/n of the buffer in pipelined chunks.
	AlgoRing
	// AlgoRecursiveDoubling is latency-optimal: log2(n) exchanges of the
	// whole buffer (non-powers of two fold the extra ranks in first).
	AlgoRecursiveDoubling
	// AlgoHalvingDoubling is Rabenseifner's: a reduce-scatter by recursive
	// halving, then an all-gather by recursive doubling. It moves what the
	// ring moves in 2·log2(n) steps instead of 2(n-1), for mid sizes.
	AlgoHalvingDoubling
	// AlgoHier is hierarchical (hier.go): reduce-scatter inside each
	// host, all-reduce between the hosts among the ranks that hold the
	// same block, all-gather inside each host. It applies to AllReduce,
	// ReduceScatter and AllGather on a group of several hosts with the
	// same number (>1) of ranks each; elsewhere it means AlgoAuto.
	AlgoHier
)

func (a Algo) String() string {
	switch a {
	case AlgoAuto:
		return "auto"
	case AlgoRing:
		return "ring"
	case AlgoRecursiveDoubling:
		return "rd"
	case AlgoHalvingDoubling:
		return "hd"
	case AlgoHier:
		return "hier"
	}
	return fmt.Sprintf("algo(%d)", uint8(a))
}

// ParseAlgo accepts auto, ring, rd (or recursive-doubling), hier (or
// hierarchical).
func ParseAlgo(s string) (Algo, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return AlgoAuto, nil
	case "ring":
		return AlgoRing, nil
	case "rd", "recursive-doubling", "recursivedoubling":
		return AlgoRecursiveDoubling, nil
	case "hd", "halving-doubling", "rabenseifner":
		return AlgoHalvingDoubling, nil
	case "hier", "hierarchical":
		return AlgoHier, nil
	}
	return 0, fmt.Errorf("unknown algorithm %q (want auto, ring, rd, hd or hier)", s)
}

// Config tunes a group. Build it with DefaultConfig, adjust, then Validate
// (New does that too).
type Config struct {
	// Timeout bounds every call whose context has no earlier deadline.
	// A peer that stops answering makes every live rank fail within it.
	Timeout time.Duration
	// Algo forces an algorithm; AlgoAuto chooses by size.
	Algo Algo
	// SmallBytes is the message size (bytes per rank's buffer) below which
	// AlgoAuto uses recursive doubling and trees instead of rings.
	SmallBytes int
	// MidBytes is the size below which AlgoAuto uses halving-doubling
	// (from SmallBytes up) on worlds that are a power of two of at least 4.
	MidBytes int
	// HalvingBytes, when positive and below SmallBytes, is where
	// halving-doubling takes over from recursive doubling on those worlds
	// instead: its messages are half and a quarter of the buffer where
	// recursive doubling's are the whole of it, and a message that fits
	// the executor's inline path (64 KiB) skips the hand-off to the send
	// lane.
	HalvingBytes int
	// PollBytes: calls of at most this many bytes poll for their messages
	// and for room to send them (transport.Poller) instead of sleeping
	// between them, where a sleeping thread's wake-ups are still a large
	// part of the time. Calls whose every message is at most 64 KiB (the
	// executor's inline path) poll whatever it says; 0 leaves polling to
	// those.
	PollBytes int
	// LendBytes: calls of at least this many bytes lend their buffer to
	// the peers on the host, where it lies in an shm.Window, instead of
	// copying it through the rings (the ring's and the hierarchical
	// algorithms' intra-host sends; lend.go). Below it they copy: a loan
	// is read from the lender's caches, and on a host whose cores share
	// little cache that is slower than two copies that pipeline. 0 lends
	// at every size.
	LendBytes int
	// Tuning, when set, overrides the thresholds with a table measured on
	// this machine (`ringo bench tune`, RINGO_TUNING).
	Tuning *Tuning
	// ChunkBytes is the pipelining unit of ring algorithms: sending one
	// chunk overlaps receiving and reducing the next.
	ChunkBytes int
	// RingOrder optionally lists the ranks in ring order (a permutation of
	// 0..Size-1); nil means 0, 1, ..., Size-1. The topology solver fills it.
	RingOrder []int
	// Hosts optionally labels each rank with its host (any ints; equal
	// labels: one host), for the hierarchical algorithms. Nil asks the
	// transport (package mix knows); without either there is no hierarchy.
	Hosts []int
	// HierBytes is the buffer size (bytes) from which AlgoAuto uses the
	// hierarchical algorithms, where the group's layout has a hierarchy.
	HierBytes int
}

// DefaultConfig returns the defaults: a 5-minute timeout, automatic
// algorithm choice at 512 KiB, 1 MiB pipeline chunks. The threshold is
// where the ring overtook recursive doubling on loopback TCP with 2 and 4
// ranks (BENCHMARKS.md); below it, the ring's 2(n-1) steps cost more than
// the extra bytes recursive doubling sends. From there to 8 MiB a world of
// 4 or 8 ranks uses halving-doubling: measured at 4 ranks on 2 cores
// (`ringo bench tune`, medians of 3), 1.59 against the ring's 2.23 ms at
// 1 MiB, 3.29 against 3.55 ms at 2 MiB, 7.24 against 7.41 ms at 4 MiB;
// from 8 MiB up the two were within noise, and the ring is the one whose
// order the topology solver chooses.
//
// Halving-doubling starts at 128 KiB where the world allows it: at 4 ranks
// on 2 cores it took 230-284 µs at 128 KiB against recursive doubling's
// 410-450 (three alternating runs of `ringo bench allreduce --algo`), and
// the two were within noise at 64 and 256 KiB. Calls of up to 2 MiB poll:
// at 4 ranks, medians of 7 alternating runs, 0.79-0.96x the time of
// sleeping from 32 KiB to 2 MiB, and 4 MiB and up no faster.
func DefaultConfig() Config {
	return Config{
		Timeout:      5 * time.Minute,
		Algo:         AlgoAuto,
		SmallBytes:   512 << 10,
		MidBytes:     8 << 20,
		HalvingBytes: 128 << 10,
		PollBytes:    2 << 20,
		LendBytes:    2 << 20,
		ChunkBytes:   1 << 20,
		HierBytes:    DefaultHierBytes,
	}
}

// PollBytesFor suggests PollBytes when ranksPerHost ranks share this
// machine: 2 MiB while they are at most two per core, 1 MiB beyond, as
// tcp.SpinFor suggests how long a wait polls. Measured on 2 cores, 9
// alternating runs of `ringo bench allreduce --poll-bytes` (2026-12-08):
// at 5 and 6 ranks a 2 MiB call (the ring) took 0.78-0.85x the time when
// it slept between its messages, since a rank that polls there takes the
// core a peer needs for its copies; 1 MiB calls still gained from polling
// (0.87-0.99x), and at 3 ranks so did 2 MiB ones (0.93-0.97x). At 4 ranks
// 2 MiB calls run halving-doubling in program order, which polling is
// what makes fast (3.24 against 3.81 ms on two lanes).
func PollBytesFor(ranksPerHost int) int {
	if ranksPerHost > 2*runtime.NumCPU() {
		return 1 << 20
	}
	return 2 << 20
}

// AlgoFor resolves AlgoAuto for a buffer of the given size in bytes on
// a world of n ranks: the Tuning table's choice where it has one, else
// recursive doubling (trees for rooted calls) below SmallBytes,
// halving-doubling up to MidBytes on worlds that are a power of two of at
// least 4 (where it takes fewer steps than the ring: 2·log2(n) against
// 2(n-1); elsewhere its fold costs a whole extra transfer), from
// HalvingBytes where that is lower, and rings and chains from there up.
func (c Config) AlgoFor(bytes, n int) Algo {
	if c.Algo != AlgoAuto {
		return c.Algo
	}
	if a, ok := c.Tuning.lookup(bytes, n); ok {
		return a
	}
	halving := n >= 4 && n&(n-1) == 0
	small := c.SmallBytes
	if halving {
		small = c.HalvingFrom()
	}
	switch {
	case bytes < small:
		return AlgoRecursiveDoubling
	case bytes < c.MidBytes && halving:
		return AlgoHalvingDoubling
	}
	return AlgoRing
}

// HalvingFrom is the size from which AlgoAuto uses halving-doubling on
// worlds of 4, 8, 16 ... ranks (recursive doubling below it): HalvingBytes,
// or SmallBytes where that is lower or HalvingBytes is unset.
func (c Config) HalvingFrom() int {
	if c.HalvingBytes > 0 {
		return min(c.SmallBytes, c.HalvingBytes)
	}
	return c.SmallBytes
}

// polls says whether a call of this many bytes polls on both lanes.
func (c Config) polls(bytes int) bool { return bytes <= c.PollBytes }

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	if c.Timeout <= 0 {
		return fmt.Errorf("collective config: Timeout %v must be positive", c.Timeout)
	}
	if c.Algo > AlgoHier {
		return fmt.Errorf("collective config: unknown Algo %d", c.Algo)
	}
	if c.HierBytes < 0 {
		return fmt.Errorf("collective config: HierBytes %d must not be negative", c.HierBytes)
	}
	if c.SmallBytes < 0 || c.MidBytes < 0 || c.HalvingBytes < 0 {
		return fmt.Errorf("collective config: SmallBytes %d, MidBytes %d and HalvingBytes %d must not be negative", c.SmallBytes, c.MidBytes, c.HalvingBytes)
	}
	if c.PollBytes < 0 || c.LendBytes < 0 {
		return fmt.Errorf("collective config: PollBytes %d and LendBytes %d must not be negative", c.PollBytes, c.LendBytes)
	}
	if c.ChunkBytes < 64 {
		return fmt.Errorf("collective config: ChunkBytes %d must be at least 64", c.ChunkBytes)
	}
	return nil
}

// Environment variables read by FromEnv.
const (
	EnvAlgo          = "RINGO_ALGO"           // auto | ring | rd | hd | hier
	EnvAlgoThreshold = "RINGO_ALGO_THRESHOLD" // bytes, e.g. 65536 or 64K
	EnvAlgoMid       = "RINGO_ALGO_MID"       // bytes: halving-doubling below it (power-of-two worlds)
	EnvAlgoHalving   = "RINGO_ALGO_HALVING"   // bytes: halving-doubling from it (power-of-two worlds)
	EnvPoll          = "RINGO_POLL_BYTES"     // bytes: calls up to it poll instead of sleeping
	EnvLend          = "RINGO_LEND_BYTES"     // bytes: calls from it lend buffers in shm windows
	EnvTuning        = "RINGO_TUNING"         // path of a tuning table (ringo bench tune)
	EnvChunk         = "RINGO_CHUNK_BYTES"    // bytes, e.g. 1M
	EnvTimeout       = "RINGO_TIMEOUT"        // Go duration, e.g. 30s
	EnvHierThreshold = "RINGO_HIER_THRESHOLD" // bytes from which auto goes hierarchical
)

// FromEnv overrides c's fields from RINGO_ALGO, RINGO_ALGO_THRESHOLD,
// RINGO_ALGO_MID, RINGO_ALGO_HALVING, RINGO_POLL_BYTES, RINGO_LEND_BYTES,
// RINGO_TUNING, RINGO_CHUNK_BYTES, RINGO_HIER_THRESHOLD and RINGO_TIMEOUT
// where they are set.
func (c Config) FromEnv() (Config, error) {
	if v := os.Getenv(EnvAlgo); v != "" {
		a, err := ParseAlgo(v)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvAlgo, err)
		}
		c.Algo = a
	}
	for _, e := range []struct {
		name string
		to   *int
	}{{EnvAlgoThreshold, &c.SmallBytes}, {EnvAlgoMid, &c.MidBytes}, {EnvAlgoHalving, &c.HalvingBytes},
		{EnvPoll, &c.PollBytes}, {EnvLend, &c.LendBytes}, {EnvChunk, &c.ChunkBytes}, {EnvHierThreshold, &c.HierBytes}} {
		if v := os.Getenv(e.name); v != "" {
			n, err := ParseBytes(v)
			if err != nil {
				return c, fmt.Errorf("%s: %w", e.name, err)
			}
			*e.to = int(n)
		}
	}
	if v := os.Getenv(EnvTuning); v != "" {
		t, err := LoadTuning(v)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvTuning, err)
		}
		c.Tuning = t
	}
	if v := os.Getenv(EnvTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvTimeout, err)
		}
		c.Timeout = d
	}
	return c, nil
}

// ParseBytes reads a byte count such as 4096, 4K, 64KiB, 256M or 1G
// (binary multiples).
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad byte count %q (want e.g. 4096, 4K, 256M)", s)
	}
	return v * mult, nil
}
