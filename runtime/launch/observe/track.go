package observe

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tracker derives, from successive snapshots, what one snapshot alone
// does not say: monotonic counters across worker restarts, step
// durations, rates over windows and restart times. It is used under the
// server's lock.
type tracker struct {
	th    AlertThresholds
	now   time.Time
	ranks map[int]*rankState

	restartsByCause map[string]*counter
	// the outer syncs' counters, by metric, monotonic across restarts
	outer        map[*prometheus.Desc]*counter
	restartTimes []time.Time // one per restart seen, oldest first
	restartsSeen int

	// steps and samples done since the previous snapshot, over all ranks
	dSteps, dSamples float64
	stepping         int // ranks that have stepped
}

// counter turns a cumulative value that restarts from 0 with its worker
// into a monotonic total.
type counter struct{ last, total float64 }

// add takes the worker's current value; restarted says the worker is new.
// A decrease also means a new worker. It returns the increase.
func (c *counter) add(v float64, restarted bool) float64 {
	d := v - c.last
	if restarted || v < c.last {
		d = v
	}
	c.last = v
	if d < 0 { // a negative reading: ignore it
		d = 0
	}
	c.total += d
	return d
}

type rankState struct {
	seen     bool
	pid, gen int

	// steps
	lastStep int64 // -1: no baseline
	lastAdv  time.Time
	hist     stepHist
	stepWin  window  // (time, hist.sum, hist.count)
	stepTime float64 // seconds, averaged over StepWindow; 0: unknown

	ops map[string]*opState

	samples, dataBytes, stall, loader counter
	dataWin                           window  // (time, stall.total, loader.total)
	stallRatio                        float64 // over DataStallWindow; -1: unknown

	saves, saveSeconds, saveBytes, loads, loadSeconds counter
}

type opState struct {
	calls, bytes, seconds, busBytes counter
	busbw                           float64 // bytes/s over the last interval with calls; -1: none yet
}

func newTracker(th AlertThresholds) *tracker {
	return &tracker{th: th, ranks: map[int]*rankState{}, restartsByCause: map[string]*counter{}, outer: map[*prometheus.Desc]*counter{}}
}

// take folds one snapshot in.
func (t *tracker) take(snap *Snapshot) {
	t.now = snap.Time
	t.dSteps, t.dSamples, t.stepping = 0, 0, 0

	total := 0
	for cause, n := range snap.RestartCauses {
		c := t.restartsByCause[cause]
		if c == nil {
			c = &counter{}
			t.restartsByCause[cause] = c
		}
		c.add(float64(n), false)
		total += n
	}
	for ; t.restartsSeen < total; t.restartsSeen++ {
		t.restartTimes = append(t.restartTimes, t.now)
	}
	// Keep what the storm window needs, and never more than a few
	// hundred.
	cut := t.now.Add(-t.th.RestartStormWindow)
	i := sort.Search(len(t.restartTimes), func(i int) bool { return t.restartTimes[i].After(cut) })
	if n := len(t.restartTimes) - 256; n > i {
		i = n
	}
	t.restartTimes = t.restartTimes[i:]

	for i := range snap.Ranks {
		t.rank(&snap.Ranks[i], snap.Generation)
	}
	if o := snap.Outer; o != nil {
		for d, v := range map[*prometheus.Desc]int64{dOuterSyncs: o.Syncs, dOuterPartial: o.Partial, dOuterMissed: o.Missed,
			dOuterWaits: o.DeadlineWaits, dOuterBytes: o.WireBytes} {
			c := t.outer[d]
			if c == nil {
				c = &counter{}
				t.outer[d] = c
			}
			c.add(float64(v), false)
		}
	}
}

func (t *tracker) restartsSince(since time.Time) int {
	n := 0
	for _, at := range t.restartTimes {
		if at.After(since) {
			n++
		}
	}
	return n
}

func (t *tracker) rank(r *Rank, gen int) {
	st := t.ranks[r.Rank]
	if st == nil {
		st = &rankState{lastStep: -1, ops: map[string]*opState{}, stallRatio: -1}
		t.ranks[r.Rank] = st
	}
	restarted := !st.seen || st.pid != r.PID || st.gen != gen
	st.seen, st.pid, st.gen = true, r.PID, gen

	// Steps. An observation spans the time from one step advance to the
	// next, k steps at a time; LastBeat is the time of the newest advance
	// to within the worker's beat interval.
	if restarted {
		st.lastStep = -1
	}
	if r.Step >= 0 {
		at := t.now
		if !r.LastBeat.IsZero() && !r.LastBeat.After(t.now) {
			at = r.LastBeat
		}
		switch {
		case st.lastStep < 0 || r.Step < st.lastStep:
			st.lastStep, st.lastAdv = r.Step, at
		case r.Step > st.lastStep:
			k := r.Step - st.lastStep
			if !at.After(st.lastAdv) {
				at = t.now
			}
			if dt := at.Sub(st.lastAdv).Seconds(); dt > 0 {
				st.hist.observe(dt, uint64(k))
				t.dSteps += float64(k)
			}
			st.lastStep, st.lastAdv = r.Step, at
		}
		t.stepping++
	}
	st.stepWin.add(t.now, st.hist.sum, float64(st.hist.count), t.th.StepWindow)
	st.stepTime = 0
	if ds, dn, _ := st.stepWin.delta(); dn > 0 {
		st.stepTime = ds / dn
	}
	if st.lastStep >= 0 && alive(r.State) {
		inStep := t.now.Sub(st.lastAdv)
		if st.stepTime > 0 || inStep >= t.th.StepWindow {
			st.stepTime = max(st.stepTime, inStep.Seconds())
		}
	}

	// Collective ops.
	for op, o := range r.Collective {
		s := st.ops[op]
		if s == nil {
			s = &opState{busbw: -1}
			st.ops[op] = s
		}
		s.calls.add(float64(o.Calls), restarted)
		s.bytes.add(float64(o.Bytes), restarted)
		dt := s.seconds.add(o.Seconds, restarted)
		db := s.busBytes.add(o.BusBytes, restarted)
		if dt > 0 {
			s.busbw = db / dt
		}
	}

	// Data loader.
	t.dSamples += st.samples.add(float64(r.Data.Samples), restarted)
	st.dataBytes.add(float64(r.Data.Bytes), restarted)
	st.stall.add(r.Data.StallSeconds, restarted)
	st.loader.add(r.Data.Seconds, restarted)
	st.dataWin.add(t.now, st.stall.total, st.loader.total, t.th.DataStallWindow)
	st.stallRatio = -1
	if ds, dl, _ := st.dataWin.delta(); dl > 0 {
		st.stallRatio = ds / dl
	}

	// Checkpoints.
	c := r.Checkpoint
	st.saves.add(float64(c.Saves), restarted)
	st.saveSeconds.add(c.SaveSeconds, restarted)
	st.saveBytes.add(float64(c.SaveBytes), restarted)
	st.loads.add(float64(c.Loads), restarted)
	st.loadSeconds.add(c.LoadSeconds, restarted)
}

// stepBuckets are ringo_step_duration_seconds' upper bounds.
var stepBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// stepHist is a histogram that takes weighted observations: k steps of
// d seconds each in one call.
type stepHist struct {
	counts [16]uint64 // per bucket, not cumulative; the last is +Inf
	count  uint64
	sum    float64
}

func (h *stepHist) observe(total float64, k uint64) {
	each := total / float64(k)
	i := sort.SearchFloat64s(stepBuckets, each) // first bound >= each
	h.counts[i] += k
	h.count += k
	h.sum += total
}

func (h *stepHist) cumulative() map[float64]uint64 {
	m := make(map[float64]uint64, len(stepBuckets))
	var c uint64
	for i, b := range stepBuckets {
		c += h.counts[i]
		m[b] = c
	}
	return m
}

// window keeps (time, a, b) points reaching back at least span, so that
// the changes of a and b over the span can be read.
type window struct{ pts []wpoint }

type wpoint struct {
	t    time.Time
	a, b float64
}

func (w *window) add(t time.Time, a, b float64, span time.Duration) {
	w.pts = append(w.pts, wpoint{t, a, b})
	cut := t.Add(-span)
	i := 0
	for i+1 < len(w.pts) && !w.pts[i+1].t.After(cut) {
		i++
	}
	if i > 0 {
		w.pts = append(w.pts[:0], w.pts[i:]...)
	}
}

// delta returns the changes from the oldest point kept to the newest.
func (w *window) delta() (da, db float64, dt time.Duration) {
	if len(w.pts) < 2 {
		return 0, 0, 0
	}
	f, l := w.pts[0], w.pts[len(w.pts)-1]
	return l.a - f.a, l.b - f.b, l.t.Sub(f.t)
}
