package launch

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/device"
	"github.com/ringo-ml/ringo/runtime/launch/observe"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
	"github.com/ringo-ml/ringo/topology"
)

// maxEvents bounds the recent events a status page shows.
const maxEvents = 100

// board is what the launcher keeps for its metrics and status page: the
// observe server, recent events, restart causes and the GPU sampler.
type board struct {
	srv     *observe.Server // nil without --metrics-addr
	gpus    *device.Sampler // nil without GPUs
	host    *device.Host
	tcp     *topology.TCPCounters // nil where eBPF may not be loaded
	tcp0    topology.TCPCounts    // the counters when the launcher started
	started time.Time

	mu     sync.Mutex
	events []observe.Event
	causes map[string]int
}

// openBoard starts the metrics server when an address is given.
func (a *agent) openBoard() error {
	a.board = &board{started: time.Now(), causes: map[string]int{}}
	if a.wantsKernelCounters() {
		a.board.startKernelCounters(a.logf)
	}
	if a.cfg.MetricsAddr == "" {
		return nil
	}
	var h slog.Handler = slog.NewTextHandler(a.console.err, nil)
	if a.cfg.LogJSON {
		h = slog.NewJSONHandler(a.console.err, nil)
	}
	srv, err := observe.NewServer(observe.Config{Addr: a.cfg.MetricsAddr, Logger: slog.New(h)})
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	a.board.srv = srv
	// GPU telemetry, where NVML finds GPUs; none is no error.
	if host, err := device.Open(); err == nil {
		if inv, err := host.Inventory(); err == nil && len(inv.GPUs) > 0 {
			a.board.host, a.board.gpus = host, device.NewSampler(host, 2*time.Second)
		} else {
			host.Close()
		}
	}
	a.logf("metrics and status page on http://%s/", srv.Addr())
	return nil
}

func (b *board) close() {
	if b == nil {
		return
	}
	if b.gpus != nil {
		b.gpus.Close()
		b.host.Close()
	}
	if b.tcp != nil {
		b.tcp.Close()
	}
	if b.srv != nil {
		b.srv.Close()
	}
}

// note records an event for the status page.
func (b *board) note(kind, format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, observe.Event{Time: time.Now(), Kind: kind, Message: fmt.Sprintf(format, args...)})
	if len(b.events) > maxEvents {
		b.events = b.events[len(b.events)-maxEvents:]
	}
}

func (b *board) restarted(cause string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.causes[cause]++
}

// update hands the server a snapshot of round r's local workers, and
// logs the re-plans they reported since the last update.
func (a *agent) update(r *rendezvous.Round, ws []*worker) {
	b := a.board
	a.noteReplans(r, ws)
	// One read of the per-connection counters serves the workers' file
	// and the metrics: it walks up to 16384 entries.
	var conns map[topology.TCPConn]topology.TCPCounts
	if b.tcp != nil && (a.linksFile != "" || b.srv != nil) {
		conns, _ = b.tcp.Conns() // nil on error: both go without, this tick
	}
	a.writeLinks(r, conns)
	if b.srv == nil {
		return
	}
	snap := observe.Snapshot{RunID: a.cfg.RunID, Host: a.cfg.Host, NodeRank: r.NodeRank, Nodes: len(r.Nodes),
		World: r.World(), Generation: r.Gen, Restarts: r.Restarts, Started: b.started, Time: time.Now()}
	b.mu.Lock()
	snap.Events = append([]observe.Event(nil), b.events...)
	snap.RestartCauses = make(map[string]int, len(b.causes))
	for k, v := range b.causes {
		snap.RestartCauses[k] = v
	}
	b.mu.Unlock()
	for _, w := range ws {
		snap.Ranks = append(snap.Ranks, w.status())
		if t := w.liveTopology(); t != nil && (snap.Topology == nil || t.Windows > snap.Topology.Windows) {
			snap.Topology = t
		}
		if c := w.lastCheckpoint(); c != nil && (snap.LastCheckpoint == nil || c.Step > snap.LastCheckpoint.Step) {
			snap.LastCheckpoint = c
		}
		if snap.Outer == nil {
			snap.Outer = w.outerStats()
		}
	}
	if b.gpus != nil {
		snap.GPUs = b.gpus.Latest().GPUs
	}
	if b.tcp != nil {
		if now, err := b.tcp.Read(); err == nil {
			d := now.Sub(b.tcp0)
			snap.TCP = &observe.TCPCounters{Retransmits: d.Retransmits, Segments: d.Segments, MeanRTTSeconds: d.MeanRTT().Seconds(),
				Peers: tcpPeers(a.cfg.Host, r, conns)}
		}
	}
	b.srv.Update(snap)
}

// tcpPeers sums the per-connection eBPF counters (conns) of this node's
// connections (from host) to each other node of round r. The counters'
// map is this launcher's, made when it started, so they count since
// then.
func tcpPeers(host string, r *rendezvous.Round, conns map[topology.TCPConn]topology.TCPCounts) []observe.TCPPeer {
	if len(r.Nodes) < 2 || conns == nil {
		return nil
	}
	var out []observe.TCPPeer
	var sums []topology.TCPCounts
	at := make([]int, len(r.Nodes)) // a node's index in out
	for i, n := range r.Nodes {
		if i != r.NodeRank {
			at[i] = len(out)
			out = append(out, observe.TCPPeer{NodeRank: i, Host: n.Host})
			sums = append(sums, topology.TCPCounts{})
		}
	}
	peerNodes(host, r, conns, func(node int, _ topology.TCPConn, v topology.TCPCounts) {
		k := at[node]
		out[k].Connections++
		sums[k].Retransmits += v.Retransmits
		sums[k].Segments += v.Segments
		sums[k].SRTTSumUS += v.SRTTSumUS
	})
	for k, s := range sums {
		out[k].Retransmits, out[k].Segments, out[k].MeanRTTSeconds = s.Retransmits, s.Segments, s.MeanRTT().Seconds()
	}
	return out
}

// status is a worker's row of the snapshot.
func (w *worker) status() observe.Rank {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := observe.Rank{Rank: w.rank, LocalRank: w.local, PID: w.pid, State: "running", Step: -1, LastBeat: w.lastBeat}
	if w.beats > 0 {
		st.Step = w.lastStep
	} else if !w.goProc {
		st.State = "starting"
	}
	if w.reaped != nil {
		st.State = "exited"
		if !w.reaped.ok() {
			st.State = "failed"
		}
	}
	if rep := w.report; rep != nil {
		st.Collective = map[string]observe.OpStats{}
		for _, o := range rep.Collective {
			st.Collective[o.Op] = observe.OpStats{Calls: o.Calls, Bytes: o.Bytes, Seconds: o.Time.Seconds(), BusBytes: o.BusBytes}
		}
		if d := rep.Data; d != nil {
			st.Data = observe.DataStats{Samples: d.Samples, Bytes: d.Bytes, StallSeconds: d.Stall.Seconds(), Seconds: d.Elapsed.Seconds()}
		}
		c := rep.Checkpoint
		st.Checkpoint = observe.CkptStats{Saves: c.Saves, SaveSeconds: c.SaveTime.Seconds(), SaveBytes: c.SaveBytes,
			Loads: c.Loads, LoadSeconds: c.LoadTime.Seconds()}
	}
	return st
}

func (w *worker) lastCheckpoint() *observe.Checkpoint {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.report == nil || w.report.Checkpoint.LastStep < 0 {
		return nil
	}
	c := w.report.Checkpoint
	return &observe.Checkpoint{Step: c.LastStep, Dir: c.LastDir, Time: c.LastTime}
}

// outerStats is the worker's outer syncs as it last reported them, or nil.
func (w *worker) outerStats() *observe.OuterStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.report == nil || w.report.Outer == nil {
		return nil
	}
	o := w.report.Outer
	return &observe.OuterStats{Site: o.Site, Sites: o.Sites, Transport: o.Transport, Syncs: o.Syncs, Partial: o.Partial,
		Missed: o.Missed, DeadlineWaits: o.DeadlineWaits, WireBytes: o.WireBytes, Ratio: o.Ratio, Absences: o.Absences}
}

// liveTopology is the live view of the links the worker last reported,
// or nil.
func (w *worker) liveTopology() *topology.LiveView {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.report == nil {
		return nil
	}
	return w.report.Topology
}

// noteReplans logs, audits and puts on the status page each ring move
// that node 0's first worker reported since the last call: every rank
// reports the same moves, so one worker per job tells them.
func (a *agent) noteReplans(r *rendezvous.Round, ws []*worker) {
	if r.NodeRank != 0 || len(ws) == 0 {
		return
	}
	t := ws[0].liveTopology()
	if t == nil || t.Matrix == nil {
		return
	}
	seen := &a.replansSeen
	if seen.gen != r.Gen {
		*seen = replansSeen{gen: r.Gen}
	}
	name := func(ring []int) string {
		s := make([]string, len(ring))
		for i, h := range ring {
			if h >= 0 && h < len(t.Matrix.Hosts) {
				s[i] = t.Matrix.Hosts[h]
			}
		}
		return strings.Join(s, " -> ")
	}
	for _, p := range t.Replans[min(seen.moves, len(t.Replans)):] {
		a.logf("topology: re-planned at step %d without a restart: ring %s (was %s); slowest link predicted %.1f MB/s, was %.1f MB/s (%+.0f%%)",
			p.Step, name(p.To), name(p.From), p.Predicted/1e6, p.Before/1e6, 100*p.PredictedGain)
		a.board.note("replan", "step %d: ring %s, slowest link predicted %.0f MB/s (was %.0f MB/s)", p.Step, name(p.To), p.Predicted/1e6, p.Before/1e6)
		a.audit.Record("topology.replan", map[string]any{"run_id": a.cfg.RunID, "generation": r.Gen, "step": p.Step,
			"from": name(p.From), "to": name(p.To), "before_bytes_per_second": p.Before, "predicted_bytes_per_second": p.Predicted})
	}
	seen.moves = len(t.Replans)
	for _, p := range t.Replans[min(seen.measured, len(t.Replans)):] {
		if p.Measured == 0 {
			break
		}
		a.logf("topology: the ring of step %d measured: slowest link %.1f MB/s, was %.1f MB/s (%+.0f%%, predicted %+.0f%%)",
			p.Step, p.Measured/1e6, p.Before/1e6, 100*p.MeasuredGain, 100*p.PredictedGain)
		a.board.note("replan", "step %d measured: slowest link %.0f MB/s (%+.0f%%)", p.Step, p.Measured/1e6, 100*p.MeasuredGain)
		seen.measured++
	}
}

// replansSeen counts what noteReplans logged of generation gen: the
// moves, and those whose measured gain it logged.
type replansSeen struct{ gen, moves, measured int }
