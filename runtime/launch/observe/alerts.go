package observe

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/internal/stats"
)

// Alert names, as in the alert label of ringo_alert and the alert
// attribute of the log lines.
const (
	AlertStraggler    = "straggler"
	AlertHang         = "hang"
	AlertRestartStorm = "restart_storm"
	AlertGPUTemp      = "gpu_over_temperature"
	AlertDataStall    = "data_stall"
)

var alertNames = []string{AlertStraggler, AlertHang, AlertRestartStorm, AlertGPUTemp, AlertDataStall}

// AlertThresholds say when the alerts fire. A zero field takes its value
// from DefaultAlertThresholds; a negative ratio, count, temperature or
// duration threshold (StragglerRatio, HangAfter, RestartStormCount,
// GPUTempCelsius, DataStallRatio) turns its alert off.
type AlertThresholds struct {
	// StragglerRatio: a rank whose step time is above this multiple of
	// the median of the local ranks' step times...
	StragglerRatio float64
	// ...for StragglerFor is a straggler.
	StragglerFor time.Duration
	// StepWindow is the window over which step times are averaged (for
	// the straggler alert and the status page).
	StepWindow time.Duration
	// HangAfter: a running rank that has heartbeated but not for this
	// long is hung.
	HangAfter time.Duration
	// RestartStormCount: more than this many restarts within
	// RestartStormWindow is a restart storm.
	RestartStormCount  int
	RestartStormWindow time.Duration
	// GPUTempCelsius: a GPU above this temperature is too hot.
	GPUTempCelsius float64
	// DataStallRatio: a rank whose loop waited for data for more than
	// this fraction of the loader's time over DataStallWindow is stalled.
	DataStallRatio  float64
	DataStallWindow time.Duration
}

// DefaultAlertThresholds returns the thresholds of issue 8, which
// examples/prometheus/alerts.yml repeats.
func DefaultAlertThresholds() AlertThresholds {
	return AlertThresholds{
		StragglerRatio:     1.5,
		StragglerFor:       time.Minute,
		StepWindow:         time.Minute,
		HangAfter:          5 * time.Minute,
		RestartStormCount:  3,
		RestartStormWindow: 10 * time.Minute,
		GPUTempCelsius:     85,
		DataStallRatio:     0.2,
		DataStallWindow:    time.Minute,
	}
}

// withDefaults fills the zero fields.
func (t AlertThresholds) withDefaults() AlertThresholds {
	d := DefaultAlertThresholds()
	setF := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setF(&t.StragglerRatio, d.StragglerRatio)
	setD(&t.StragglerFor, d.StragglerFor)
	setD(&t.StepWindow, d.StepWindow)
	setD(&t.HangAfter, d.HangAfter)
	if t.RestartStormCount == 0 {
		t.RestartStormCount = d.RestartStormCount
	}
	setD(&t.RestartStormWindow, d.RestartStormWindow)
	setF(&t.GPUTempCelsius, d.GPUTempCelsius)
	setF(&t.DataStallRatio, d.DataStallRatio)
	setD(&t.DataStallWindow, d.DataStallWindow)
	return t
}

// Validate reports the first threshold out of range, after the zero
// fields have taken their defaults.
func (t AlertThresholds) Validate() error {
	t = t.withDefaults()
	switch {
	case math.IsNaN(t.StragglerRatio) || (t.StragglerRatio > 0 && t.StragglerRatio <= 1):
		return fmt.Errorf("straggler ratio %v must be above 1 (or negative: off)", t.StragglerRatio)
	case t.StragglerFor < 0, t.StepWindow < 0, t.RestartStormWindow < 0, t.DataStallWindow < 0:
		return errors.New("alert windows and durations must not be negative")
	case math.IsNaN(t.DataStallRatio) || t.DataStallRatio >= 1:
		return fmt.Errorf("data stall ratio %v must be below 1 (or negative: off)", t.DataStallRatio)
	case math.IsNaN(t.GPUTempCelsius):
		return errors.New("GPU temperature threshold is NaN")
	}
	return nil
}

// alertKey names one alert instance: an alert and its subject.
type alertKey struct {
	Name string
	Rank int // -1: none
	GPU  int // -1: none
}

func (k alertKey) subject() string {
	switch {
	case k.Rank >= 0:
		return "rank " + strconv.Itoa(k.Rank)
	case k.GPU >= 0:
		return "GPU " + strconv.Itoa(k.GPU)
	}
	return "job"
}

// Alert is one alert instance that is firing.
type Alert struct {
	Name    string    `json:"alert"`
	Rank    *int      `json:"rank,omitempty"`
	GPU     *int      `json:"gpu,omitempty"`
	Since   time.Time `json:"since"`
	Message string    `json:"message"`
}

// condition is one evaluation's verdict on an alert instance.
type condition struct {
	key     alertKey
	hold    time.Duration // how long it must hold before it fires (Prometheus' "for")
	value   float64
	message string
}

type alertState struct {
	pending time.Time // when the condition began to hold
	firing  bool
	since   time.Time // when it fired
	message string
	value   float64
}

// alerter keeps the alerts' states between evaluations. It is used under
// the server's lock.
type alerter struct {
	states map[alertKey]*alertState
}

func newAlerter() *alerter {
	return &alerter{states: map[alertKey]*alertState{}}
}

// logRecord is a log line to write once the server's lock is released.
type logRecord struct {
	msg   string
	attrs []any
}

// evaluate takes the conditions that hold now; every instance not among
// them clears. It returns the changes as events and as log records.
func (a *alerter) evaluate(now time.Time, holding []condition) (events []Event, logs []logRecord) {
	seen := make(map[alertKey]bool, len(holding))
	for _, c := range holding {
		seen[c.key] = true
		st := a.states[c.key]
		if st == nil {
			st = &alertState{pending: now}
			a.states[c.key] = st
		}
		st.message, st.value = c.message, c.value
		if !st.firing && now.Sub(st.pending) >= c.hold {
			st.firing, st.since = true, now
			ev, rec := report(now, c.key, st, "firing")
			events, logs = append(events, ev), append(logs, rec)
		}
	}
	keys := make([]alertKey, 0, len(a.states))
	for k := range a.states {
		if !seen[k] {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, cmpKey)
	for _, k := range keys {
		st := a.states[k]
		delete(a.states, k)
		if st.firing {
			st.message = k.Name + " cleared on " + k.subject()
			ev, rec := report(now, k, st, "resolved")
			events, logs = append(events, ev), append(logs, rec)
		}
	}
	return events, logs
}

func report(now time.Time, k alertKey, st *alertState, state string) (Event, logRecord) {
	attrs := []any{slog.String("alert", k.Name), slog.String("state", state), slog.String("subject", k.subject())}
	if k.Rank >= 0 {
		attrs = append(attrs, slog.Int("rank", k.Rank))
	}
	if k.GPU >= 0 {
		attrs = append(attrs, slog.Int("gpu", k.GPU))
	}
	if state == "firing" && !math.IsNaN(st.value) {
		attrs = append(attrs, slog.Float64("value", st.value))
	}
	attrs = append(attrs, slog.String("detail", st.message))
	return Event{Time: now, Kind: "alert", Message: fmt.Sprintf("%s %s: %s", k.Name, state, st.message)},
		logRecord{"alert " + state + ": " + k.Name, attrs}
}

func cmpKey(x, y alertKey) int {
	if x.Name != y.Name {
		return slices.Index(alertNames, x.Name) - slices.Index(alertNames, y.Name)
	}
	if x.Rank != y.Rank {
		return x.Rank - y.Rank
	}
	return x.GPU - y.GPU
}

// firing lists the instances that are firing, in a stable order.
func (a *alerter) firing() []Alert {
	keys := make([]alertKey, 0, len(a.states))
	for k, st := range a.states {
		if st.firing {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, cmpKey)
	out := make([]Alert, 0, len(keys))
	for _, k := range keys {
		st := a.states[k]
		al := Alert{Name: k.Name, Since: st.since, Message: st.message}
		if k.Rank >= 0 {
			r := k.Rank
			al.Rank = &r
		}
		if k.GPU >= 0 {
			g := k.GPU
			al.GPU = &g
		}
		out = append(out, al)
	}
	return out
}

// conditions evaluates the thresholds on the tracker's state after it
// took snap.
func (t AlertThresholds) conditions(snap *Snapshot, tr *tracker) []condition {
	now := tr.now
	var cs []condition
	// Straggler: step time above ratio × the median of the ranks' step times.
	if t.StragglerRatio > 0 {
		var times []float64
		for _, r := range snap.Ranks {
			if st := tr.ranks[r.Rank]; st != nil && alive(r.State) && st.stepTime > 0 {
				times = append(times, st.stepTime)
			}
		}
		if len(times) >= 2 {
			med := stats.Median(times)
			for _, r := range snap.Ranks {
				st := tr.ranks[r.Rank]
				if st == nil || !alive(r.State) || st.stepTime <= 0 || st.stepTime <= t.StragglerRatio*med {
					continue
				}
				cs = append(cs, condition{key: alertKey{AlertStraggler, r.Rank, -1}, hold: t.StragglerFor, value: st.stepTime,
					message: fmt.Sprintf("rank %d step time %s is %.1f× the median %s of %d ranks (threshold %.2g×)",
						r.Rank, fmtSeconds(st.stepTime), st.stepTime/med, fmtSeconds(med), len(times), t.StragglerRatio)})
			}
		}
	}
	// Hang: no heartbeat for HangAfter from a rank that has heartbeated.
	if t.HangAfter > 0 {
		for _, r := range snap.Ranks {
			if !alive(r.State) || r.Step < 0 || r.LastBeat.IsZero() {
				continue
			}
			if age := now.Sub(r.LastBeat); age >= t.HangAfter || r.State == "hung" {
				cs = append(cs, condition{key: alertKey{AlertHang, r.Rank, -1}, value: age.Seconds(),
					message: fmt.Sprintf("rank %d (pid %d) has not heartbeated for %s, at step %d (threshold %s)",
						r.Rank, r.PID, age.Round(time.Second), r.Step, t.HangAfter)})
			}
		}
	}
	// Restart storm: more than N restarts within the window.
	if t.RestartStormCount >= 0 {
		if n := tr.restartsSince(now.Add(-t.RestartStormWindow)); n > t.RestartStormCount {
			cs = append(cs, condition{key: alertKey{AlertRestartStorm, -1, -1}, value: float64(n),
				message: fmt.Sprintf("%d restarts in the last %s (threshold: more than %d)", n, t.RestartStormWindow, t.RestartStormCount)})
		}
	}
	// GPU over temperature.
	if t.GPUTempCelsius > 0 {
		for _, g := range snap.GPUs {
			if g.TemperatureC >= 0 && float64(g.TemperatureC) > t.GPUTempCelsius {
				cs = append(cs, condition{key: alertKey{AlertGPUTemp, -1, g.Index}, value: float64(g.TemperatureC),
					message: fmt.Sprintf("GPU %d (%s) at %d °C (threshold %g °C)", g.Index, g.UUID, g.TemperatureC, t.GPUTempCelsius)})
			}
		}
	}
	// Data-loader stall: stall seconds / loader seconds over the window.
	if t.DataStallRatio > 0 {
		for _, r := range snap.Ranks {
			st := tr.ranks[r.Rank]
			if st == nil || !alive(r.State) || st.stallRatio < 0 || st.stallRatio <= t.DataStallRatio {
				continue
			}
			cs = append(cs, condition{key: alertKey{AlertDataStall, r.Rank, -1}, value: st.stallRatio,
				message: fmt.Sprintf("rank %d waited for data %.0f%% of the last %s (threshold %.0f%%)",
					r.Rank, 100*st.stallRatio, t.DataStallWindow, 100*t.DataStallRatio)})
		}
	}
	return cs
}

// alive says whether a rank's process is there to be watched.
func alive(state string) bool { return state != "exited" && state != "failed" }

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
