// Package observe turns the launcher's snapshots of its workers into
// Prometheus metrics, alerts and a status page, served on
// `ringo launch --metrics-addr`.
//
// The launcher builds a Snapshot every monitor interval and hands it to
// Server.Update; everything else is derived from successive snapshots,
// on the snapshots' own clock (Snapshot.Time):
//
//	srv, err := observe.NewServer(observe.Config{Addr: ":9400", Logger: logger})
//	...
//	srv.Update(snap) // every interval, from one goroutine
//	...
//	srv.Close()      // returns once its goroutines have exited
//
// # Endpoints
//
//   - /metrics: Prometheus text exposition, from the server's own registry
//     (the ringo_ metrics below, go_ and process_ of the launcher).
//   - /: the status page: job, generation, uptime, each rank's host, PID,
//     state, step, step time, last beat, data stall and bus bandwidth, a
//     throughput chart, the last checkpoint, GPUs, firing alerts and recent
//     events. One embedded HTML file with a few lines of JS; it carries its
//     first Status and polls /status.json every 2 s.
//   - /status.json: a Status: the newest snapshot (its events merged with
//     the alerts'), what the server derived per rank, the firing alerts and
//     the throughput history (one point per 2 s, 15 minutes).
//
// # Metrics
//
// Job: ringo_job_info{run_id,host,node_rank} (1), ringo_workers_up,
// ringo_workers{state}, ringo_generation, ringo_world_size, ringo_nodes,
// ringo_restarts_total{cause} (the known causes are exported at 0 from the
// start), ringo_launcher_start_time_seconds.
//
// Per rank ({rank}): ringo_step, ringo_last_heartbeat_timestamp_seconds
// (running ranks), ringo_step_duration_seconds (histogram),
// ringo_step_time_seconds (the windowed mean the straggler alert uses);
// {rank,op}: ringo_collective_calls_total, _bytes_total, _bus_bytes_total,
// _seconds_total and ringo_collective_busbw_bytes_per_second (over the last
// interval that had calls); ringo_data_samples_total, _bytes_total,
// _stall_seconds_total, _loader_seconds_total, ringo_data_stall_ratio
// (over the data-stall window); ringo_checkpoint_saves_total,
// _save_seconds_total, _save_bytes_total, _loads_total,
// _load_seconds_total; ringo_checkpoint_last_step and
// ringo_checkpoint_last_timestamp_seconds (job-wide, no rank).
//
// GPUs ({gpu,uuid}, fields NVML could not read are left out):
// ringo_gpu_utilization_ratio, ringo_gpu_memory_utilization_ratio,
// ringo_gpu_memory_used_bytes, ringo_gpu_memory_total_bytes,
// ringo_gpu_temperature_celsius, ringo_gpu_power_watts.
//
// Alerts: ringo_alert{alert,rank,gpu} is 1 for each firing instance (rank
// or gpu empty where the alert has no such subject) and absent otherwise;
// ringo_alerts_firing{alert} counts them, 0 included.
//
// Counters stay monotonic across worker restarts: a worker's counters are
// cumulative since it started, so the server adds up their increases, and
// takes a new PID, a new generation or a decrease to mean a new worker
// whose whole value is an increase.
//
// Step durations come from heartbeats: when a rank's step advances by k
// since its previous advance, t seconds earlier (times from
// Rank.LastBeat, the time of the newest progress), the histogram counts k
// observations of t/k in one weighted step (count += k, sum += t). The
// first step a worker reports is a baseline, not an observation.
//
// # Alerts
//
// Evaluated on every Update with AlertThresholds (zero fields take the
// defaults shown; negative turns one off). Each instance is logged once
// as a warning when it starts firing and once when it clears (attributes
// alert, state "firing" or "resolved", subject, rank or gpu, value,
// detail), exported as ringo_alert and added to the status page's events.
//
//   - straggler: a running rank's step time, averaged over StepWindow (1m),
//     is above StragglerRatio (1.5) × the median of the local ranks' step
//     times, for StragglerFor (1m). A rank with no step for a whole window
//     counts its step in progress. Needs two or more local ranks.
//   - hang: a running rank that has heartbeated has not made progress for
//     HangAfter (5m), or the launcher marked it hung.
//   - restart_storm: more than RestartStormCount (3) restarts (any cause in
//     Snapshot.RestartCauses) within RestartStormWindow (10m).
//   - gpu_over_temperature: a GPU above GPUTempCelsius (85 °C).
//   - data_stall: a rank's stall seconds over its loader seconds, over
//     DataStallWindow (1m), above DataStallRatio (0.2).
//
// examples/prometheus/alerts.yml has the same rules for Prometheus and
// Alertmanager, evaluated across all the nodes of a job (its straggler
// median is the job's, not one node's), with promtool unit tests in
// alerts_test.yml.
package observe
