package observe

import (
	"bytes"
	"log/slog"
	"math"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/diloco"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

func TestMetrics(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	s := newSim(2)
	s.ranks[1].stepTime = 0.25
	s.ranks[0].stallFrac = 0.1
	s.ranks[0].ckpt = CkptStats{Saves: 2, SaveSeconds: 3.5, SaveBytes: 1 << 30, Loads: 1, LoadSeconds: 1.25}
	s.causes["exit"] = 1
	srv.Update(s.tick(0))
	s.run(srv, 10*time.Second)
	snap := s.tick(500 * time.Millisecond)
	snap.LastCheckpoint = &Checkpoint{Step: 40, Dir: "/ckpt/step-40", Time: s.now.Add(-time.Second)}
	snap.TCP = &TCPCounters{Retransmits: 9, Segments: 1000, MeanRTTSeconds: 0.002, Peers: []TCPPeer{
		{NodeRank: 1, Host: "10.0.0.2", Connections: 2, Retransmits: 7, Segments: 600, MeanRTTSeconds: 0.003},
		{NodeRank: 2, Host: "10.0.0.3"}, // no traffic yet: no RTT
	}}
	srv.Update(snap)

	mfs, text := scrape(t, srv)
	expectSeries(t, mfs, []series{
		{"ringo_workers_up", "", 2},
		{"ringo_workers", "state=running", 2},
		{"ringo_generation", "", 0},
		{"ringo_world_size", "", 2},
		{"ringo_restarts_total", "cause=exit", 1},
		{"ringo_launcher_start_time_seconds", "", unix(s.t0)},
		{"ringo_job_info", "run_id=sim,host=node-a,node_rank=0", 1},
		{"ringo_step", "rank=0", float64(s.ranks[0].step)},
		{"ringo_step", "rank=1", float64(s.ranks[1].step)},
		{"ringo_last_heartbeat_timestamp_seconds", "rank=0", unix(s.ranks[0].lastBeat)},
		{"ringo_step_time_seconds", "rank=0", 0.2},
		{"ringo_step_time_seconds", "rank=1", 0.25},
		{"ringo_collective_calls_total", "rank=0,op=allreduce", float64(s.ranks[0].ar.Calls)},
		{"ringo_collective_bytes_total", "rank=1,op=allreduce", float64(s.ranks[1].ar.Bytes)},
		{"ringo_collective_seconds_total", "rank=0,op=allreduce", s.ranks[0].ar.Seconds},
		{"ringo_collective_bus_bytes_total", "rank=0,op=allreduce", s.ranks[0].ar.BusBytes},
		{"ringo_collective_busbw_bytes_per_second", "rank=0,op=allreduce", 1.5 * (1 << 20) / 0.01},
		{"ringo_data_samples_total", "rank=0", float64(s.ranks[0].data.Samples)},
		{"ringo_data_bytes_total", "rank=0", float64(s.ranks[0].data.Bytes)},
		{"ringo_data_stall_seconds_total", "rank=0", s.ranks[0].data.StallSeconds},
		{"ringo_data_loader_seconds_total", "rank=0", s.ranks[0].data.Seconds},
		{"ringo_data_stall_ratio", "rank=0", 0.1},
		{"ringo_data_stall_ratio", "rank=1", 0},
		{"ringo_checkpoint_saves_total", "rank=0", 2},
		{"ringo_checkpoint_save_seconds_total", "rank=0", 3.5},
		{"ringo_checkpoint_save_bytes_total", "rank=0", 1 << 30},
		{"ringo_checkpoint_loads_total", "rank=0", 1},
		{"ringo_checkpoint_load_seconds_total", "rank=0", 1.25},
		{"ringo_checkpoint_last_step", "", 40},
		{"ringo_gpu_utilization_ratio", "gpu=0,uuid=GPU-aaaa", 0.97},
		{"ringo_gpu_memory_utilization_ratio", "gpu=1", 0.38},
		{"ringo_gpu_memory_used_bytes", "gpu=0", 60 << 30},
		{"ringo_gpu_memory_total_bytes", "gpu=1", 141 << 30},
		{"ringo_gpu_temperature_celsius", "gpu=1", 64},
		{"ringo_gpu_power_watts", "gpu=0", 540},
		{"ringo_alerts_firing", "alert=straggler", 0},
		{"ringo_alerts_firing", "alert=data_stall", 0},
		{"ringo_tcp_retransmits_total", "", 9},
		{"ringo_tcp_peer_retransmits_total", "peer=10.0.0.2", 7},
		{"ringo_tcp_peer_segments_received_total", "peer=10.0.0.2", 600},
		{"ringo_tcp_peer_srtt_seconds", "peer=10.0.0.2", 0.003},
		{"ringo_tcp_peer_segments_received_total", "peer=10.0.0.3", 0},
	})
	if m := metric(mfs, "ringo_tcp_peer_srtt_seconds", "peer=10.0.0.3"); m != nil {
		t.Errorf("a peer without segments has an RTT: %v", m)
	}
	if m := metric(mfs, "ringo_gpu_power_watts", "gpu=1"); m != nil {
		t.Errorf("GPU 1's power is device.Unknown but exported as %v", m)
	}
	if mfs["ringo_alert"] != nil {
		t.Errorf("ringo_alert has series while no alert fires: %v", mfs["ringo_alert"])
	}

	// The step histogram: rank 0 stepped 2 or 3 times (0.2 s a step) in
	// every 0.5 s interval since its first heartbeat at t0.
	h := metric(mfs, "ringo_step_duration_seconds", "rank=0").Histogram
	wantSum := s.ranks[0].lastBeat.Sub(s.t0).Seconds()
	if h.GetSampleCount() != uint64(s.ranks[0].step) || !near(h.GetSampleSum(), wantSum) {
		t.Errorf("rank 0's step histogram: count %d sum %v, want %d and %v", h.GetSampleCount(), h.GetSampleSum(), s.ranks[0].step, wantSum)
	}
	for _, b := range h.Bucket {
		want := uint64(0)
		if b.GetUpperBound() >= 0.2 {
			want = h.GetSampleCount()
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("rank 0's bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	if mfs["go_goroutines"] == nil || mfs["process_start_time_seconds"] == nil {
		t.Errorf("the Go and process collectors are missing")
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not on PATH: skipping promtool check metrics (apt-get install prometheus)")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	// promtool exits non-zero on lint problems; the Go and process
	// collectors' own metrics pass.
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// A worker that restarts reports its counters from 0 again; the exported
// counters carry on from where they were.
func TestCountersMonotonicAcrossRestart(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	s := newSim(2)
	series := []struct{ name, labels string }{
		{"ringo_collective_calls_total", "rank=0,op=allreduce"},
		{"ringo_collective_seconds_total", "rank=1,op=allreduce"},
		{"ringo_data_samples_total", "rank=0"},
		{"ringo_data_loader_seconds_total", "rank=1"},
		{"ringo_checkpoint_saves_total", "rank=0"},
		{"ringo_step_duration_seconds", "rank=0"},
		{"ringo_restarts_total", "cause=exit"},
	}
	prev := map[string]float64{}
	check := func(stage string, wantRise bool) {
		t.Helper()
		mfs, _ := scrape(t, srv)
		for _, c := range series {
			v := value(t, mfs, c.name, c.labels)
			p, ok := prev[c.name+c.labels]
			if ok && v < p {
				t.Errorf("%s: %s{%s} went down from %v to %v", stage, c.name, c.labels, p, v)
			}
			if ok && wantRise && v == p && c.name != "ringo_restarts_total" && c.name != "ringo_checkpoint_saves_total" {
				t.Errorf("%s: %s{%s} stayed at %v", stage, c.name, c.labels, v)
			}
			prev[c.name+c.labels] = v
		}
	}
	s.restart("exit", 0) // generation 1, so that the cause is there from the start
	for _, r := range s.ranks {
		r.ckpt.Saves = 3
	}
	s.run(srv, 5*time.Second)
	check("before the restart", false)
	calls := value(t, must(scrape(t, srv)), "ringo_collective_calls_total", "rank=0,op=allreduce")

	// New PIDs, counters from zero, steps back to the checkpoint.
	s.restart("exit", 10)
	srv.Update(s.tick(500 * time.Millisecond))
	check("just after the restart", false)
	s.run(srv, 5*time.Second)
	check("after the restart", true)
	got := value(t, must(scrape(t, srv)), "ringo_collective_calls_total", "rank=0,op=allreduce")
	if want := calls + float64(s.ranks[0].ar.Calls); !near(got, want) {
		t.Errorf("calls after the restart = %v, want %v before it + %d since", got, calls, s.ranks[0].ar.Calls)
	}

	// A counter that drops under the same PID is a reset too.
	s.ranks[0].ar.Calls = 1
	srv.Update(s.tick(500 * time.Millisecond))
	check("after a reset", false)
	if got2 := value(t, must(scrape(t, srv)), "ringo_collective_calls_total", "rank=0,op=allreduce"); got2 < got {
		t.Errorf("calls went down after a reset: %v -> %v", got, got2)
	}
	// The step gauge follows the worker: it is not a counter.
	if v := value(t, must(scrape(t, srv)), "ringo_step", "rank=0"); v != float64(s.ranks[0].step) {
		t.Errorf("ringo_step = %v, want %d", v, s.ranks[0].step)
	}
}

func must[T, U any](v T, _ U) T { return v }

func TestListenErrorNamesAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = NewServer(Config{Addr: ln.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("NewServer on a busy address: %v; want an error that names %s", err, ln.Addr())
	}
	t.Log(err)
}

func TestThresholdDefaults(t *testing.T) {
	th := AlertThresholds{HangAfter: -1}.withDefaults()
	d := DefaultAlertThresholds()
	if th.StragglerRatio != d.StragglerRatio || th.RestartStormCount != 3 || th.GPUTempCelsius != 85 || th.HangAfter != -1 {
		t.Errorf("withDefaults = %+v", th)
	}
	if err := (AlertThresholds{StragglerRatio: 0.5}).Validate(); err == nil {
		t.Error("a straggler ratio of 0.5 passed Validate")
	}
	if _, err := NewServer(Config{Addr: "127.0.0.1:0", Thresholds: AlertThresholds{DataStallRatio: 2}}); err == nil {
		t.Error("NewServer took a data stall ratio of 2")
	}
}

// BenchmarkUpdate measures what the launcher pays per snapshot of 8
// ranks.
func BenchmarkUpdate(b *testing.B) {
	srv, err := NewServer(Config{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	s := newSim(8)
	snaps := make([]Snapshot, 256)
	for i := range snaps {
		snaps[i] = s.tick(500 * time.Millisecond)
	}
	b.ResetTimer()
	for i := range b.N {
		snap := snaps[i%len(snaps)]
		snap.Time = s.t0.Add(time.Duration(i) * 500 * time.Millisecond)
		srv.Update(snap)
	}
}

// A site training across sites exports its outer syncs: counters that
// stay monotonic when the site restarts (and counts from 0 again), and
// the latest step each missing site was left out of.
func TestOuterSyncMetrics(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	s := newSim(1)
	snap := s.tick(0)
	snap.Outer = &OuterStats{Site: "a", Sites: []string{"a", "b", "c"}, Transport: "store", Syncs: 12, Partial: 3, DeadlineWaits: 3,
		WireBytes: 5000, Ratio: 7.5, Absences: []diloco.Absence{{Step: 100, Missing: []string{"c"}, Members: []string{"a", "b"}},
			{Step: 120, Missing: []string{"b", "c"}, Members: []string{"a"}}}}
	srv.Update(snap)
	mfs, _ := scrape(t, srv)
	for _, c := range []struct {
		missing string
		want    float64
	}{{"b", 120}, {"c", 120}} {
		if got := value(t, mfs, "ringo_outer_last_missing_step", "site=a,missing="+c.missing); got != c.want {
			t.Errorf("last step without site %s: %v, want %v", c.missing, got, c.want)
		}
	}
	// The site restarted: its worker counts from 0.
	snap = s.tick(time.Second)
	snap.Outer = &OuterStats{Site: "a", Sites: []string{"a", "b", "c"}, Transport: "store", Syncs: 2, WireBytes: 800, Ratio: 7}
	srv.Update(snap)
	mfs, _ = scrape(t, srv)
	expectSeries(t, mfs, []series{
		{"ringo_outer_syncs_total", "site=a", 14},
		{"ringo_outer_partial_syncs_total", "site=a", 3},
		{"ringo_outer_deadline_waits_total", "site=a", 3},
		{"ringo_outer_missed_syncs_total", "site=a", 0},
		{"ringo_outer_wire_bytes_total", "site=a", 5800},
		{"ringo_outer_compression_ratio", "site=a", 7},
	})
	if mfs["ringo_outer_last_missing_step"] != nil {
		t.Errorf("the restarted site has seen no absence, but exports %v", mfs["ringo_outer_last_missing_step"])
	}
}
