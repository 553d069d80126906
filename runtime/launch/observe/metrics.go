package observe

import (
	"github.com/ringo-ml/ringo/topology"
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("ringo_"+name, help, labels, nil)
}

var (
	rk    = []string{"rank"}
	rkOp  = []string{"rank", "op"}
	gpuID = []string{"gpu", "uuid"}

	dInfo       = desc("job_info", "The launcher's job: always 1.", "run_id", "host", "node_rank")
	dWorkersUp  = desc("workers_up", "Local workers whose process is running (starting, running or hung).")
	dWorkers    = desc("workers", "Local workers by state.", "state")
	dGeneration = desc("generation", "The job's generation: it goes up by one at every restart or re-formation.")
	dWorld      = desc("world_size", "Ranks in the job.")
	dNodes      = desc("nodes", "Nodes in the job.")
	dRestarts   = desc("restarts_total", "Restarts this launcher has seen, by cause.", "cause")
	dStart      = desc("launcher_start_time_seconds", "When the launcher started, in seconds since the Unix epoch.")

	dStep      = desc("step", "The rank's last heartbeat's step.", rk...)
	dBeat      = desc("last_heartbeat_timestamp_seconds", "When the running rank last made progress, in seconds since the Unix epoch.", rk...)
	dStepDur   = desc("step_duration_seconds", "Time per training step, from heartbeats: k steps in t seconds count as k observations of t/k.", rk...)
	dStepTime  = desc("step_time_seconds", "The rank's step time averaged over the alerts' step window (what the straggler alert compares).", rk...)
	dCollCalls = desc("collective_calls_total", "Collective calls.", rkOp...)
	dCollBytes = desc("collective_bytes_total", "Collective payload bytes.", rkOp...)
	dCollBus   = desc("collective_bus_bytes_total", "Collective payload bytes scaled by the op's bus factor (nccl-tests' busbw numerator).", rkOp...)
	dCollSec   = desc("collective_seconds_total", "Time spent in collective calls.", rkOp...)
	dCollBusbw = desc("collective_busbw_bytes_per_second", "Bus bandwidth over the last monitor interval with calls (nccl-tests' busbw).", rkOp...)
	dSamples   = desc("data_samples_total", "Samples the data loader delivered.", rk...)
	dDataBytes = desc("data_bytes_total", "Bytes the data loader read.", rk...)
	dStall     = desc("data_stall_seconds_total", "Time the training loop waited for data.", rk...)
	dLoader    = desc("data_loader_seconds_total", "Time the data loader has run.", rk...)
	dStallR    = desc("data_stall_ratio", "Stall seconds over loader seconds in the alerts' data-stall window.", rk...)
	dSaves     = desc("checkpoint_saves_total", "Checkpoints saved.", rk...)
	dSaveSec   = desc("checkpoint_save_seconds_total", "Time spent saving checkpoints.", rk...)
	dSaveBytes = desc("checkpoint_save_bytes_total", "Checkpoint bytes saved.", rk...)
	dLoads     = desc("checkpoint_loads_total", "Checkpoints loaded.", rk...)
	dLoadSec   = desc("checkpoint_load_seconds_total", "Time spent loading checkpoints.", rk...)
	dCkptStep  = desc("checkpoint_last_step", "Step of the newest checkpoint a local worker reported.")
	dCkptTime  = desc("checkpoint_last_timestamp_seconds", "When the newest checkpoint was written, in seconds since the Unix epoch.")

	dGPUUtil    = desc("gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU.", gpuID...)
	dGPUMemUtil = desc("gpu_memory_utilization_ratio", "Fraction of time the GPU's memory was read or written.", gpuID...)
	dGPUMemUsed = desc("gpu_memory_used_bytes", "GPU memory in use.", gpuID...)
	dGPUMemTot  = desc("gpu_memory_total_bytes", "GPU memory.", gpuID...)
	dGPUTemp    = desc("gpu_temperature_celsius", "GPU temperature.", gpuID...)
	dGPUPower   = desc("gpu_power_watts", "GPU power draw.", gpuID...)
	dGPUSMClk   = desc("gpu_sm_clock_hertz", "GPU streaming multiprocessor clock.", gpuID...)
	dGPUMemClk  = desc("gpu_memory_clock_hertz", "GPU memory clock.", gpuID...)

	dTCPRetrans = desc("tcp_retransmits_total", "TCP segments this machine retransmitted since the launcher started (eBPF tracepoint tcp_retransmit_skb).")
	dTCPSegs    = desc("tcp_segments_received_total", "TCP segments this machine received since the launcher started (eBPF tracepoint tcp_probe).")
	dTCPRTT     = desc("tcp_srtt_seconds", "Smoothed TCP round-trip time averaged over the segments received (eBPF tcp_probe).")
	dPeerRetr   = desc("tcp_peer_retransmits_total", "TCP segments this machine retransmitted to each other node of the job, from any program (eBPF, per connection).", "peer")
	dPeerSegs   = desc("tcp_peer_segments_received_total", "TCP segments this machine received from each other node of the job, from any program (eBPF, per connection).", "peer")
	dPeerRTT    = desc("tcp_peer_srtt_seconds", "Smoothed TCP round-trip time to each other node of the job, averaged over the segments received (eBPF, per connection).", "peer")

	dReplans   = desc("topology_replans_total", "Times the job moved its ring off links it measured slower, without a restart.")
	dRingBW    = desc("topology_ring_bottleneck_bytes_per_second", "The slowest link of the ring in use, as the job last measured it.")
	dLinkBW    = desc("topology_link_bandwidth_bytes_per_second", "Each link's bandwidth as the job last measured it (unused links: the probe's figure scaled like the measured ones).", "src", "dst")
	dLinkRTT   = desc("topology_link_rtt_seconds", "The longest smoothed TCP round-trip time of the job's sockets on each link (TCP_INFO).", "src", "dst")
	dLinkRetr  = desc("topology_link_retransmits_total", "TCP segments the job's sockets retransmitted on each link (TCP_INFO).", "src", "dst")
	dReplanGot = desc("topology_last_replan_gain_ratio", "Predicted and measured gain of the last re-plan: the new ring's slowest link over the old one's, minus 1.", "kind")

	dOuterSyncs   = desc("outer_syncs_total", "Outer syncs with the other sites this site applied (training across sites).", "site")
	dOuterPartial = desc("outer_partial_syncs_total", "Outer syncs that went ahead without some site (late or down).", "site")
	dOuterMissed  = desc("outer_missed_syncs_total", "Outer syncs this site was left out of.", "site")
	dOuterWaits   = desc("outer_deadline_waits_total", "Outer syncs that waited out the deadline for a site that did not come.", "site")
	dOuterBytes   = desc("outer_wire_bytes_total", "Bytes the site's first worker sent to the other sites.", "site")
	dOuterRatio   = desc("outer_compression_ratio", "Plain float32 bytes per byte of the outer sync messages.", "site")
	dOuterLast    = desc("outer_last_missing_step", "The step of the latest outer sync that went ahead without some site, by missing site.", "site", "missing")

	dAlert  = desc("alert", "1 for each alert instance that is firing (rank or gpu empty when it has no such subject).", "alert", "rank", "gpu")
	dAlerts = desc("alerts_firing", "Instances of each alert that are firing.", "alert")

	allDescs = []*prometheus.Desc{dInfo, dWorkersUp, dWorkers, dGeneration, dWorld, dNodes, dRestarts, dStart,
		dStep, dBeat, dStepDur, dStepTime, dCollCalls, dCollBytes, dCollBus, dCollSec, dCollBusbw,
		dSamples, dDataBytes, dStall, dLoader, dStallR, dSaves, dSaveSec, dSaveBytes, dLoads, dLoadSec, dCkptStep, dCkptTime,
		dGPUUtil, dGPUMemUtil, dGPUMemUsed, dGPUMemTot, dGPUTemp, dGPUPower, dGPUSMClk, dGPUMemClk, dTCPRetrans, dTCPSegs, dTCPRTT, dPeerRetr, dPeerSegs, dPeerRTT, dReplans, dRingBW, dLinkBW, dLinkRTT, dLinkRetr, dReplanGot,
		dOuterSyncs, dOuterPartial, dOuterMissed, dOuterWaits, dOuterBytes, dOuterRatio, dOuterLast, dAlert, dAlerts}
)

// restartCauses are the causes the launcher names (Snapshot.RestartCauses);
// they are exported from the start, at 0.
var restartCauses = []string{"exit", "signal", "hang", "lost_node", "membership"}

// collector exports the server's latest state; it reads it under the
// server's lock at every scrape.
type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.have {
		return
	}
	snap, tr := &s.latest, s.tr
	g := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	ctr := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}

	g(dInfo, 1, snap.RunID, snap.Host, strconv.Itoa(snap.NodeRank))
	states := map[string]int{}
	up := 0
	for _, r := range snap.Ranks {
		states[r.State]++
		if alive(r.State) {
			up++
		}
	}
	g(dWorkersUp, float64(up))
	for _, st := range slices.Sorted(maps.Keys(states)) {
		g(dWorkers, float64(states[st]), st)
	}
	g(dGeneration, float64(snap.Generation))
	g(dWorld, float64(snap.World))
	g(dNodes, float64(snap.Nodes))
	for _, cause := range restartCauses {
		if tr.restartsByCause[cause] == nil {
			ctr(dRestarts, 0, cause) // so that rate() sees the first restart
		}
	}
	for _, cause := range slices.Sorted(maps.Keys(tr.restartsByCause)) {
		ctr(dRestarts, tr.restartsByCause[cause].total, cause)
	}
	if !snap.Started.IsZero() {
		g(dStart, unix(snap.Started))
	}

	for _, r := range snap.Ranks {
		st := tr.ranks[r.Rank]
		if st == nil {
			continue
		}
		rs := strconv.Itoa(r.Rank)
		if r.Step >= 0 {
			g(dStep, float64(r.Step), rs)
			if !r.LastBeat.IsZero() && alive(r.State) {
				g(dBeat, unix(r.LastBeat), rs)
			}
		}
		ch <- prometheus.MustNewConstHistogram(dStepDur, st.hist.count, st.hist.sum, st.hist.cumulative(), rs)
		if st.stepTime > 0 {
			g(dStepTime, st.stepTime, rs)
		}
		for _, op := range slices.Sorted(maps.Keys(st.ops)) {
			o := st.ops[op]
			ctr(dCollCalls, o.calls.total, rs, op)
			ctr(dCollBytes, o.bytes.total, rs, op)
			ctr(dCollBus, o.busBytes.total, rs, op)
			ctr(dCollSec, o.seconds.total, rs, op)
			if o.busbw >= 0 {
				g(dCollBusbw, o.busbw, rs, op)
			}
		}
		ctr(dSamples, st.samples.total, rs)
		ctr(dDataBytes, st.dataBytes.total, rs)
		ctr(dStall, st.stall.total, rs)
		ctr(dLoader, st.loader.total, rs)
		if st.stallRatio >= 0 {
			g(dStallR, st.stallRatio, rs)
		}
		ctr(dSaves, st.saves.total, rs)
		ctr(dSaveSec, st.saveSeconds.total, rs)
		ctr(dSaveBytes, st.saveBytes.total, rs)
		ctr(dLoads, st.loads.total, rs)
		ctr(dLoadSec, st.loadSeconds.total, rs)
	}
	if c := snap.LastCheckpoint; c != nil {
		g(dCkptStep, float64(c.Step))
		if !c.Time.IsZero() {
			g(dCkptTime, unix(c.Time))
		}
	}

	for _, gp := range snap.GPUs {
		lv := []string{strconv.Itoa(gp.Index), gp.UUID}
		if gp.Utilization >= 0 {
			g(dGPUUtil, float64(gp.Utilization)/100, lv...)
		}
		if gp.MemoryUtilization >= 0 {
			g(dGPUMemUtil, float64(gp.MemoryUtilization)/100, lv...)
		}
		if gp.MemoryUsed >= 0 {
			g(dGPUMemUsed, float64(gp.MemoryUsed), lv...)
		}
		if gp.MemoryTotal >= 0 {
			g(dGPUMemTot, float64(gp.MemoryTotal), lv...)
		}
		if gp.TemperatureC >= 0 {
			g(dGPUTemp, float64(gp.TemperatureC), lv...)
		}
		if gp.PowerW >= 0 {
			g(dGPUPower, gp.PowerW, lv...)
		}
		if gp.SMClockMHz >= 0 {
			g(dGPUSMClk, float64(gp.SMClockMHz)*1e6, lv...)
		}
		if gp.MemoryClockMHz >= 0 {
			g(dGPUMemClk, float64(gp.MemoryClockMHz)*1e6, lv...)
		}
	}

	if t := snap.TCP; t != nil {
		ctr(dTCPRetrans, float64(t.Retransmits))
		ctr(dTCPSegs, float64(t.Segments))
		if t.Segments > 0 {
			g(dTCPRTT, t.MeanRTTSeconds)
		}
		for _, p := range t.Peers {
			ctr(dPeerRetr, float64(p.Retransmits), p.Host)
			ctr(dPeerSegs, float64(p.Segments), p.Host)
			if p.Segments > 0 {
				g(dPeerRTT, p.MeanRTTSeconds, p.Host)
			}
		}
	}

	if t := snap.Topology; t != nil && t.Matrix != nil {
		m := t.Matrix
		ctr(dReplans, float64(len(t.Replans)))
		if len(t.Ring) == m.Size() {
			g(dRingBW, topology.Bottleneck(m, t.Ring))
		}
		for i := range m.Size() {
			for j := range m.Size() {
				if i == j {
					continue
				}
				g(dLinkBW, m.Bandwidth[i][j], m.Hosts[i], m.Hosts[j])
				if i < len(t.RTTUS) && j < len(t.RTTUS[i]) && t.RTTUS[i][j] > 0 {
					g(dLinkRTT, t.RTTUS[i][j]/1e6, m.Hosts[i], m.Hosts[j])
				}
				if i < len(t.Retransmits) && j < len(t.Retransmits[i]) {
					ctr(dLinkRetr, float64(t.Retransmits[i][j]), m.Hosts[i], m.Hosts[j])
				}
			}
		}
		if n := len(t.Replans); n > 0 {
			last := t.Replans[n-1]
			g(dReplanGot, last.PredictedGain, "predicted")
			if last.Measured > 0 {
				g(dReplanGot, last.MeasuredGain, "measured")
			}
		}
	}

	if o := snap.Outer; o != nil {
		for _, d := range []*prometheus.Desc{dOuterSyncs, dOuterPartial, dOuterMissed, dOuterWaits, dOuterBytes} {
			if c := tr.outer[d]; c != nil {
				ctr(d, c.total, o.Site)
			}
		}
		g(dOuterRatio, o.Ratio, o.Site)
		last := map[string]int64{}
		for _, a := range o.Absences {
			for _, m := range a.Missing {
				last[m] = a.Step
			}
		}
		for _, m := range slices.Sorted(maps.Keys(last)) {
			g(dOuterLast, float64(last[m]), o.Site, m)
		}
	}

	counts := map[string]int{}
	for _, a := range s.al.firing() {
		counts[a.Name]++
		rank, gpu := "", ""
		if a.Rank != nil {
			rank = strconv.Itoa(*a.Rank)
		}
		if a.GPU != nil {
			gpu = strconv.Itoa(*a.GPU)
		}
		g(dAlert, 1, a.Name, rank, gpu)
	}
	for _, name := range alertNames {
		g(dAlerts, float64(counts[name]), name)
	}
}
