package observe

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ringo-ml/ringo/device"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// sim is a synthetic job on one node: ranks that step at given rates,
// report counters and heartbeat, as the launcher would see them.
type sim struct {
	t0, now time.Time
	gen     int
	causes  map[string]int
	ranks   []*simRank
	gpus    []device.Sample
	events  []Event
	nextPID int
}

type simRank struct {
	rank, pid int
	state     string
	step      int64
	frac      float64
	stepTime  float64 // seconds; 0: stuck
	lastBeat  time.Time
	stallFrac float64 // fraction of loader time stalled
	data      DataStats
	ar        OpStats
	ckpt      CkptStats
}

func newSim(n int) *sim {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := &sim{t0: t0, now: t0, causes: map[string]int{}, nextPID: 1000}
	for i := range n {
		s.ranks = append(s.ranks, &simRank{rank: i, pid: s.pid(), state: "running", stepTime: 0.2, lastBeat: t0})
	}
	s.gpus = []device.Sample{
		{Index: 0, UUID: "GPU-aaaa", Utilization: 97, MemoryUtilization: 40, MemoryUsed: 60 << 30, MemoryTotal: 141 << 30, TemperatureC: 62, PowerW: 540},
		{Index: 1, UUID: "GPU-bbbb", Utilization: 95, MemoryUtilization: 38, MemoryUsed: 59 << 30, MemoryTotal: 141 << 30, TemperatureC: 64, PowerW: device.Unknown},
	}
	s.events = []Event{{Time: t0, Kind: "start", Message: "launcher started"}}
	return s
}

func (s *sim) pid() int { s.nextPID++; return s.nextPID }

// restart starts every worker anew in the next generation, from step.
func (s *sim) restart(cause string, step int64) {
	s.gen++
	s.causes[cause]++
	for _, r := range s.ranks {
		*r = simRank{rank: r.rank, pid: s.pid(), state: "running", step: step, stepTime: r.stepTime, lastBeat: s.now, stallFrac: r.stallFrac}
	}
	s.events = append(s.events, Event{Time: s.now, Kind: "restart", Message: "generation restarted: " + cause})
}

// tick advances the job by dt and returns the launcher's snapshot.
func (s *sim) tick(dt time.Duration) Snapshot {
	s.now = s.now.Add(dt)
	sec := dt.Seconds()
	for _, r := range s.ranks {
		if r.stepTime > 0 {
			r.frac += sec / r.stepTime
			if k := math.Floor(r.frac + 1e-9); k >= 1 {
				r.frac -= k
				r.step += int64(k)
				r.lastBeat = s.now
				r.ar.Calls += int64(k)
				r.ar.Bytes += int64(k) << 20
				r.ar.BusBytes += float64(int64(k)<<20) * 1.5
				r.ar.Seconds += float64(k) * 0.01
				r.data.Samples += 32 * int64(k)
				r.data.Bytes += 4096 * int64(k)
			}
		}
		r.data.Seconds += sec
		r.data.StallSeconds += sec * r.stallFrac
	}
	snap := Snapshot{RunID: "sim", Host: "node-a", Nodes: 1, World: len(s.ranks), Generation: s.gen,
		Restarts: s.gen, Started: s.t0, Time: s.now, RestartCauses: map[string]int{}, GPUs: append([]device.Sample(nil), s.gpus...),
		Events: append([]Event(nil), s.events...)}
	for k, v := range s.causes {
		snap.RestartCauses[k] = v
	}
	for _, r := range s.ranks {
		snap.Ranks = append(snap.Ranks, Rank{Rank: r.rank, LocalRank: r.rank, PID: r.pid, State: r.state, Step: r.step,
			LastBeat: r.lastBeat, Collective: map[string]OpStats{"allreduce": r.ar}, Data: r.data, Checkpoint: r.ckpt})
	}
	return snap
}

// run feeds d of ticks of 0.5 s to srv.
func (s *sim) run(srv *Server, d time.Duration) {
	for end := s.now.Add(d); s.now.Before(end); {
		srv.Update(s.tick(500 * time.Millisecond))
	}
}

// testThresholds are short, so that alerts fire in seconds of snapshot
// time.
var testThresholds = AlertThresholds{StragglerFor: 2 * time.Second, StepWindow: 4 * time.Second, HangAfter: 3 * time.Second,
	RestartStormCount: 2, RestartStormWindow: 10 * time.Second, DataStallWindow: 4 * time.Second}

func startServer(t *testing.T, th AlertThresholds) (*Server, *proctest.Buffer) {
	t.Helper()
	logs := &proctest.Buffer{}
	srv, err := NewServer(Config{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewJSONHandler(logs, nil)), Thresholds: th})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv, logs
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}

func get(t *testing.T, srv *Server, path string) []byte {
	t.Helper()
	resp, err := client.Get("http://" + srv.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b
}

// scrape fetches and parses /metrics.
func scrape(t *testing.T, srv *Server) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	b := get(t, srv, "/metrics")
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, b)
	}
	return mfs, b
}

// metric finds the series of name whose labels include want ("k=v,...").
func metric(mfs map[string]*dto.MetricFamily, name, want string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
outer:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for kv := range strings.SplitSeq(want, ",") {
			if kv == "" {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue outer
			}
		}
		return m
	}
	return nil
}

func value(t *testing.T, mfs map[string]*dto.MetricFamily, name, labels string) float64 {
	t.Helper()
	m := metric(mfs, name, labels)
	if m == nil {
		t.Fatalf("no %s{%s} in the scrape", name, labels)
	}
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s{%s} has no value", name, labels)
	return 0
}

// logLines parses the JSON log lines.
func logLines(t *testing.T, logs *proctest.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(logs.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %q", err, line)
		}
		out = append(out, m)
	}
	return out
}

// series is one exported series and the value it must have.
type series struct {
	name, labels string
	want         float64
}

// expectSeries checks every series' value in a scrape.
func expectSeries(t *testing.T, mfs map[string]*dto.MetricFamily, want []series) {
	t.Helper()
	for _, c := range want {
		if got := value(t, mfs, c.name, c.labels); !near(got, c.want) {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
