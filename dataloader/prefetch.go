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
//
// A window in which the CPUs sat mostly idle, with every read in flight
// and the consumer keeping up (the budget held nothing back), says the
// reads wait on round trips: by Little's law n*busyCPU/cpu reads would
// keep the CPUs busy, so the climb steps by that much at once (at most
// maxJump times) instead of doubling. Against a source 20 ms away a
// loader of 4 reads keeps the CPUs about 5% busy, and gets from 4 to 64
// reads in one window instead of three; an epoch of a few hundred reads
// is over before a doubling climb has finished. The shards' opens, a wave
// of small reads before the first window, give the first such step
// (afterOpens).
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

// maxJump is the most one step of the climb multiplies the reads by.
const maxJump = 16

func newPrefetch(start, mx int) *prefetch {
	mx = max(mx, start)
	return &prefetch{n: start, max: mx, bestN: start, settled: start >= mx}
}

// littleStep is how many times more reads would keep the CPUs busy,
// from the share cpu that the reads in flight kept busy while waiting on
// nothing else (see the type's doc), at most maxJump.
func littleStep(cpu float64) int {
	return int(busyCPU / max(cpu, busyCPU/maxJump))
}

// afterOpens takes the share of the CPUs the process kept busy while the
// loader opened its shards (a wave of small reads, each a round trip on
// remote storage; negative: unknown, or too short to tell) and returns
// the reads to start with. A wave that left the CPUs idle says the reads
// wait on round trips, as a window would, so the climb takes that step
// before its first window instead of after: a first epoch of a few
// hundred reads no longer spends a third of its time at 4 reads.
func (p *prefetch) afterOpens(cpu float64) int {
	if !p.settled && cpu >= 0 {
		p.n = min(p.max, p.n*max(1, littleStep(cpu)))
	}
	return p.n
}

// window is how many jobs the next measurement spans.
func (p *prefetch) window() int { return p.n }

// busyCPU is the share of the CPUs (GOMAXPROCS) the process used in a
// window above which more reads cannot help: the reads are CPU work
// already, or the CPUs are what the decoders wait on.
const busyCPU = 0.85

// observe takes one window's stored bytes and duration, the share of
// the CPUs the process kept busy in it (negative: unknown), and whether
// the budget held reads back in it (the consumer was the limit), and
// returns the reads to keep in flight from now on.
func (p *prefetch) observe(bytes int64, d time.Duration, cpu float64, held bool) int {
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
		if !held && cpu >= 0 {
			step = max(step, littleStep(cpu))
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
