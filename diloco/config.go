package diloco

import (
	"fmt"
	"math"
	"time"
)

// Precision is how a delta's values travel.
type Precision string

const (
	// F32 sends float32 values as they are.
	F32 Precision = "f32"
	// BF16 rounds each value to bfloat16: half the bytes, 8 bits of
	// mantissa. What rounding leaves out stays in the site's error
	// feedback and goes with a later sync.
	BF16 Precision = "bf16"
	// FP16 rounds to IEEE half precision: 11 bits of mantissa, but
	// values beyond ±65504 become Inf.
	FP16 Precision = "fp16"
)

// Config tunes the outer synchronisation.
type Config struct {
	// Every is H, the inner steps between outer syncs. 1 averages the
	// sites' parameters after every step.
	Every int
	// LR is the outer learning rate: how far the averaged delta moves the
	// global parameters (1 with Momentum 0 is plain averaging).
	LR float64
	// Momentum of the outer SGD; Nesterov selects Nesterov's form (the
	// DiLoCo paper's choice) over heavy ball.
	Momentum float64
	Nesterov bool
	// Delay is d: a sync started after step k is applied after step k+d,
	// so that d inner steps overlap the exchange. 0 waits for it at once.
	// At most Every.
	Delay int
	// Precision of the values on the wire.
	Precision Precision
	// TopK, in (0, 1), sends only that fraction of each delta, the values
	// of largest magnitude; the rest waits in error feedback. 0 sends
	// every value.
	TopK float64
	// Zstd compresses each message with zstd.
	Zstd bool
	// Deadline, for a Federation, is how long a sync waits for the sites
	// missing after this rank posted its delta before it goes ahead with
	// those present. 0 waits for every site.
	Deadline time.Duration
}

// DefaultConfig is DiLoCo's outer optimizer (SGD, lr 0.7, Nesterov
// momentum 0.9) every 20 inner steps, bfloat16 on the wire, zstd on, no
// sparsification and no overlap.
func DefaultConfig() Config {
	return Config{Every: 20, LR: 0.7, Momentum: 0.9, Nesterov: true, Precision: BF16, Zstd: true}
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	if c.Every < 1 {
		return fmt.Errorf("outer sync every %d steps: want at least 1", c.Every)
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		return fmt.Errorf("outer learning rate %v: want a positive number", c.LR)
	}
	if !(c.Momentum >= 0 && c.Momentum < 1) {
		return fmt.Errorf("outer momentum %v: want 0 <= momentum < 1", c.Momentum)
	}
	if c.Delay < 0 || c.Delay > c.Every {
		return fmt.Errorf("outer sync delay %d steps: want 0 to %d (the sync interval)", c.Delay, c.Every)
	}
	switch c.Precision {
	case F32, BF16, FP16:
	default:
		return fmt.Errorf("outer sync precision %q: want f32, bf16 or fp16", c.Precision)
	}
	if c.Deadline < 0 {
		return fmt.Errorf("outer sync deadline %v: want 0 (wait for every site) or more", c.Deadline)
	}
	if !(c.TopK >= 0 && c.TopK < 1) {
		return fmt.Errorf("outer sync top-k fraction %v: want 0 (dense) or a fraction below 1", c.TopK)
	}
	return nil
}
