package observe

import "time"

const (
	historyEvery = 2 * time.Second // one point per this much snapshot time, at most
	historyLen   = 450             // 15 minutes of points
)

// Point is one point of the throughput history.
type Point struct {
	Time time.Time `json:"time"`
	// StepsPerSecond is the local ranks' mean step rate.
	StepsPerSecond float64 `json:"steps_per_second"`
	// SamplesPerSecond is the local ranks' data loaders' samples, summed.
	SamplesPerSecond float64 `json:"samples_per_second"`
}

// history is a ring buffer of throughput points. It is used under the
// server's lock.
type history struct {
	buf   [historyLen]Point
	start int // oldest point
	n     int

	last    time.Time // end of the last point; zero before the first snapshot
	steps   float64   // per rank, since last
	samples float64   // since last
}

// add folds one snapshot's progress in: dSteps steps summed over the
// stepping ranks, dSamples samples.
func (h *history) add(now time.Time, dSteps, dSamples float64, stepping int) {
	if h.last.IsZero() || now.Before(h.last) {
		h.last = now
		h.steps, h.samples = 0, 0
		return
	}
	if stepping > 0 {
		h.steps += dSteps / float64(stepping)
	}
	h.samples += dSamples
	dt := now.Sub(h.last)
	if dt < historyEvery {
		return
	}
	s := dt.Seconds()
	h.push(Point{Time: now, StepsPerSecond: h.steps / s, SamplesPerSecond: h.samples / s})
	h.last = now
	h.steps, h.samples = 0, 0
}

func (h *history) push(p Point) {
	if h.n < historyLen {
		h.buf[(h.start+h.n)%historyLen] = p
		h.n++
		return
	}
	h.buf[h.start] = p
	h.start = (h.start + 1) % historyLen
}

// points returns the history, oldest first, as the caller's own slice.
func (h *history) points() []Point {
	out := make([]Point, h.n)
	for i := range out {
		out[i] = h.buf[(h.start+i)%historyLen]
	}
	return out
}
