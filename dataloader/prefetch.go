package dataloader

import "time"

// prefetch decides how many range reads a loader keeps in flight. It does
// no I/O and keeps no clock: the loader tells it, once per window, how
// many stored bytes its workers read and in how long.
//
// The rule is a climb: start at the configured Workers; after each window
// of at least n jobs at n reads (one wave of reads), if the rate beat the best one seen by
// at least a tenth, double n (quadruple it when the last doubling
// brought 1.8 times the rate; capped at max) and keep climbing; else stop
// and keep n for the rest of the epoch (the reads beyond the best n only
// queue on the CPUs or the link that is the limit). On a local
// disk or page cache the reads are short and the workers are CPU-bound,
// so doubling buys nothing and the climb stops at once; against
// storage with a round-trip time per request (HTTP, S3), throughput grows
// with the reads in flight until the link, the server or the CPUs are
// the limit, and the climb stops there. It also stops as soon as a
// window kept the CPUs busy (busyCPU): reads in flight only help while
// the CPUs wait on them, which also keeps the noise of a shared machine
// from growing them on a local disk. The cap is set by the loader's
// memory budget (one read buffer per read in flight).
type prefetch struct {
	n, max  int
	best    float64 // bytes per second at bestN
	bestN   int
	settled bool
}

// minGain is how much faster a window must be to keep growing, and
// linearGain how much faster it must be to grow four times instead of two.
const (
	minGain    = 1.10
	linearGain = 1.80
)

func newPrefetch(start, mx int) *prefetch {
	mx = max(mx, start)
	return &prefetch{n: start, max: mx, bestN: start, settled: start >= mx}
}

// window is how many jobs the next measurement spans.
func (p *prefetch) window() int { return p.n }

// busyCPU is the share of the CPUs (GOMAXPROCS) the process used in a
// window above which more reads cannot help: the reads are CPU work
// already, or the CPUs are what the decoders wait on.
const busyCPU = 0.85

// observe takes one window's stored bytes and duration, and the share of
// the CPUs the process kept busy in it (negative: unknown), and returns
// the reads to keep in flight from now on.
func (p *prefetch) observe(bytes int64, d time.Duration, cpu float64) int {
	if p.settled || d <= 0 {
		return p.n
	}
	if cpu >= busyCPU {
		p.settled = true
		return p.n
	}
	rate := float64(bytes) / d.Seconds()
	if p.best == 0 || rate >= p.best*minGain {
		step := 2
		if p.best > 0 && rate >= p.best*linearGain {
			// The last doubling nearly doubled the rate: the reads are
			// waiting on round trips, far from any limit.
			step = 4
		}
		p.best, p.bestN = rate, p.n
		if p.n < p.max {
			p.n = min(step*p.n, p.max)
			return p.n
		}
	}
	p.settled = true
	return p.n
}
