package observe

import (
	"time"

	"github.com/ringo-ml/ringo/device"
	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/topology"
)

// Snapshot is the launcher's view of its node's part of the job at one
// moment. The launcher builds one every monitor interval and hands it to
// Server.Update; everything the metrics, the alerts and the status page
// show comes from snapshots.
type Snapshot struct {
	RunID      string    `json:"run_id"`
	Host       string    `json:"host"`
	NodeRank   int       `json:"node_rank"`
	Nodes      int       `json:"nodes"`
	World      int       `json:"world"`
	Generation int       `json:"generation"`
	Restarts   int       `json:"restarts"`
	Started    time.Time `json:"started"` // when the launcher started
	Time       time.Time `json:"time"`    // when this snapshot was taken
	// RestartCauses counts restarts by cause: "exit", "signal", "hang",
	// "lost_node", "membership".
	RestartCauses map[string]int `json:"restart_causes"`
	Ranks         []Rank         `json:"ranks"`
	// Events are the launcher's recent events, oldest first (at most 100).
	Events         []Event         `json:"events"`
	LastCheckpoint *Checkpoint     `json:"last_checkpoint,omitempty"`
	GPUs           []device.Sample `json:"gpus,omitempty"`
	// TCP holds this machine's TCP counters from eBPF tracepoints, when
	// the launcher may load them (root); nil otherwise.
	TCP *TCPCounters `json:"tcp,omitempty"`
	// Topology is the job's live view of its links (hosts by node rank),
	// where its workers re-plan (--topology probe, Go workers); nil
	// otherwise.
	Topology *topology.LiveView `json:"topology,omitempty"`
	// Outer is the job's syncs with other sites, where it trains across
	// sites (runtime.NewOuter); nil otherwise.
	Outer *OuterStats `json:"outer,omitempty"`
}

// OuterStats are a site's outer syncs, as its first local worker counts
// them (since it started).
type OuterStats struct {
	Site      string   `json:"site"`
	Sites     []string `json:"sites"`
	Transport string   `json:"transport"` // "tcp", "libp2p", or "store" for a federation
	Syncs     int64    `json:"syncs"`
	// Partial: syncs that went ahead without some site; Missed: those
	// this site was left out of; DeadlineWaits: those that waited out the
	// deadline for a site that did not come.
	Partial       int64 `json:"partial"`
	Missed        int64 `json:"missed"`
	DeadlineWaits int64 `json:"deadline_waits"`
	// WireBytes is what the worker sent to other sites; Ratio its
	// messages' compression (plain float32 bytes per byte sent).
	WireBytes int64   `json:"wire_bytes"`
	Ratio     float64 `json:"compression_ratio"`
	// Absences are the latest syncs that went ahead without some site.
	Absences []diloco.Absence `json:"absences,omitempty"`
}

// TCPCounters are system-wide TCP counters since the launcher started.
type TCPCounters struct {
	Retransmits    uint64  `json:"retransmits"`
	Segments       uint64  `json:"segments"`         // segments received (tcp_probe)
	MeanRTTSeconds float64 `json:"mean_rtt_seconds"` // smoothed RTT averaged over those segments
	// Peers are the same counters for this machine's connections to each
	// other node of the job, whatever program made them (a PyTorch
	// worker's as well as ringo's), in node-rank order.
	Peers []TCPPeer `json:"peers,omitempty"`
}

// TCPPeer is TCPCounters for the connections from this node to one other
// node of the job.
type TCPPeer struct {
	NodeRank       int     `json:"node_rank"`
	Host           string  `json:"host"`
	Connections    int     `json:"connections"`
	Retransmits    uint64  `json:"retransmits"`
	Segments       uint64  `json:"segments"`
	MeanRTTSeconds float64 `json:"mean_rtt_seconds"`
}

// Rank is one local worker.
type Rank struct {
	Rank      int       `json:"rank"`
	LocalRank int       `json:"local_rank"`
	PID       int       `json:"pid"`
	State     string    `json:"state"` // "starting", "running", "exited", "failed", "hung"
	Step      int64     `json:"step"`  // last heartbeat's step (-1: none yet)
	LastBeat  time.Time `json:"last_beat"`
	// Counters the worker reports (Go workers through runtime.Init; zero
	// for others), all cumulative since the worker started.
	Collective map[string]OpStats `json:"collective,omitempty"` // by op: "allreduce", "broadcast", ...
	Data       DataStats          `json:"data"`
	Checkpoint CkptStats          `json:"checkpoint"`
}

// OpStats are one collective op's counters.
type OpStats struct {
	Calls   int64   `json:"calls"`
	Bytes   int64   `json:"bytes"`   // payload bytes per call, summed
	Seconds float64 `json:"seconds"` // time in calls, summed
	// BusBytes is Bytes scaled by the op's bus factor (2(n-1)/n for
	// all-reduce), so that BusBytes/Seconds is nccl-tests' busbw.
	BusBytes float64 `json:"bus_bytes"`
}

// DataStats are the data loader's counters.
type DataStats struct {
	Samples      int64   `json:"samples"`
	Bytes        int64   `json:"bytes"`
	StallSeconds float64 `json:"stall_seconds"` // time the loop waited for data
	Seconds      float64 `json:"seconds"`       // time the loader has run
}

// CkptStats are checkpoint counters.
type CkptStats struct {
	Saves       int64   `json:"saves"`
	SaveSeconds float64 `json:"save_seconds"`
	SaveBytes   int64   `json:"save_bytes"`
	Loads       int64   `json:"loads"`
	LoadSeconds float64 `json:"load_seconds"`
}

// Event is something the launcher did or saw.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // "start", "join", "failure", "restart", "hang", "done", "alert"
	Message string    `json:"message"`
}

// Checkpoint is the newest checkpoint a worker reported.
type Checkpoint struct {
	Step int64     `json:"step"`
	Dir  string    `json:"dir"`
	Time time.Time `json:"time"`
}
