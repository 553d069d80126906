package runtime

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/topology"
)

// Report is what a Go worker tells its launcher every reportEvery, for
// the launcher's metrics and status page: cumulative counters since the
// worker started. It travels on the heartbeat pipe as a BeatReport
// message: the kind byte, the JSON length as int64, then the JSON.
type Report struct {
	Collective []collective.OpStats `json:"collective,omitempty"`
	Data       *dataloader.Stats    `json:"data,omitempty"`
	Checkpoint CheckpointStats      `json:"checkpoint"`
	// Topology is the live view of the job's links, where it re-plans.
	Topology *topology.LiveView `json:"topology,omitempty"`
	// Outer is the worker's outer syncs, where it trains across sites.
	Outer *OuterReport `json:"outer,omitempty"`
}

// OuterReport is a worker's outer syncs with the other sites (Outer).
type OuterReport struct {
	Site      string   `json:"site"`
	Sites     []string `json:"sites"`
	Transport string   `json:"transport"`
	diloco.Stats
	Ratio    float64          `json:"ratio"`
	Absences []diloco.Absence `json:"absences,omitempty"`
}

// CheckpointStats counts the checkpoints a worker's Trainer saved and
// loaded.
type CheckpointStats struct {
	Saves     int64         `json:"saves"`
	SaveTime  time.Duration `json:"save_ns"`
	SaveBytes int64         `json:"save_bytes"`
	Loads     int64         `json:"loads"`
	LoadTime  time.Duration `json:"load_ns"`
	LastStep  int64         `json:"last_step"` // -1: none yet
	LastDir   string        `json:"last_dir,omitempty"`
	LastTime  time.Time     `json:"last_time"`
}

// reportEvery is how often a worker sends its Report.
const reportEvery = time.Second

// reporter gathers a worker's counters for its Report.
type reporter struct {
	mu    sync.Mutex
	data  func() dataloader.Stats
	ckpt  CheckpointStats
	outer *OuterReport
	last  atomic.Int64
}

// ReportData makes the worker's Reports carry a data loader's counters
// (pass its Stats method), so that the launcher can show samples/s and
// how long training waited for data.
func (g *Group) ReportData(stats func() dataloader.Stats) {
	g.rep.mu.Lock()
	g.rep.data = stats
	g.rep.mu.Unlock()
}

func (r *reporter) saved(step int64, dir string, took time.Duration, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ckpt.Saves++
	r.ckpt.SaveTime += took
	r.ckpt.SaveBytes += bytes
	r.ckpt.LastStep, r.ckpt.LastDir, r.ckpt.LastTime = step, dir, time.Now()
}

func (r *reporter) loaded(took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ckpt.Loads++
	r.ckpt.LoadTime += took
}

// report builds the JSON of the worker's Report.
func (g *Group) report() []byte {
	var rep Report
	if sr, ok := g.Comm.(collective.StatsReporter); ok {
		rep.Collective = sr.Stats()
	}
	g.rep.mu.Lock()
	data := g.rep.data
	rep.Checkpoint = g.rep.ckpt
	rep.Outer = g.rep.outer
	g.rep.mu.Unlock()
	if data != nil {
		st := data()
		rep.Data = &st
	}
	rep.Topology = g.topologyReport()
	b, _ := json.Marshal(rep)
	return b
}
