package topology

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/ringo-ml/ringo/internal/stats"
)

// LiveConfig says how Live turns what a running job measures of its
// links into a decision to move its ring.
type LiveConfig struct {
	// Margin is the predicted gain (best ring's bottleneck over the
	// current ring's, minus 1) a re-plan needs: 0.2 moves only for a ring
	// predicted at least 20% faster.
	Margin float64
	// Confirm is how many windows in a row must predict that gain before
	// the ring moves, so that one noisy window does not move it.
	Confirm int
	// MinBytes and MinBusy are what a link must carry in a window, and for
	// how long its sockets must have had data in flight, for the window's
	// rate to count; below, the link keeps its earlier estimate.
	MinBytes uint64
	MinBusy  time.Duration
}

// DefaultLiveConfig moves the ring for a predicted 20% gain seen in two
// windows in a row, counting links that moved at least 1 MiB for 20 ms.
func DefaultLiveConfig() LiveConfig {
	return LiveConfig{Margin: 0.2, Confirm: 2, MinBytes: 1 << 20, MinBusy: 20 * time.Millisecond}
}

// LinkWindow is what the sockets from one host to another carried in one
// window: bytes acknowledged, and the time they had data in flight
// (TCP_INFO's busy time; for several sockets at once, the longest). Their
// ratio is the rate the link gave while it was sending, whatever the gaps
// between messages.
type LinkWindow struct {
	Bytes uint64
	Busy  time.Duration
	// Conns is how many of the job's connections run over the link now
	// (0: not known, taken as 1): beside others' connections, TCP gives
	// the job about Conns of every Conns+busy shares.
	Conns int
}

// Live keeps a running job's link estimates: the probe's matrix at the
// start, each link replaced by its measured rate once the job's own
// traffic has crossed it. Links the ring does not use are never measured
// again; so that they stay comparable with the measured ones (the probe
// and the job's traffic see different rates on the same link), they are
// the probe's figure scaled by the median ratio of measured to probed
// rate over the links measured in the latest window. Live is a plain
// value: fed the same windows, every rank reaches the same decisions.
type Live struct {
	cfg     LiveConfig
	probe   *Matrix
	rate    [][]float64 // the latest measured rate per link; 0: never measured
	scale   float64
	ring    []int
	pending int // windows in a row that predicted the margin
	// used holds each link's totals where its last window ended: a
	// window is what a link carried since, and it ends only once it
	// carried enough to count, so a slow trickle is not lost.
	used [][]LinkWindow
	// fresh marks the links measured since the ring last moved, latest
	// those measured in the latest window.
	fresh, latest [][]bool
	// What other programs carry over each link, from the kernel's
	// per-connection counters (KernelLinks): kernel[i] is node i's read
	// at its last window that counted, ours[i][j] the job's own bytes
	// then, others[i][j] the rate of the rest (bytes/s) and busy[i][j]
	// how many of their connections were sending.
	kernel []KernelLinks
	ours   [][]uint64
	others [][]float64
	busy   [][]int
	conns  [][]int // the job's connections per link, at the latest window
}

// KernelLinks is what one node's kernel counted of every program's
// connections from it to each other host (eBPF, TCPCounters.Conns), as
// its launcher read them at At: the training job's own sockets and
// anything else that shares the links (another job, a checkpoint upload,
// a data loader). Live takes from them what the job's own TCP_INFO cannot
// tell: how much of a link the job does not use others are using.
type KernelLinks struct {
	At time.Time `json:"at"`
	// BytesAcked[j] is what the node's connections to host j sent that
	// j acknowledged, summed over the connections, since the counters
	// started.
	BytesAcked []uint64 `json:"bytes_acked"`
	// Busy[j] is how many of those connections were sending at the
	// launcher's latest read (a launcher counts those that had 64 KiB or
	// more acknowledged since its read before). The job's own count too,
	// but over a link the job leaves idle they send little.
	Busy []int `json:"busy"`
}

// minKernelWindow is the shortest interval between two reads of a node's
// kernel counters that yields a rate: its launcher reads them twice a
// second, and a worker's window is usually many steps.
const minKernelWindow = 200 * time.Millisecond

// Decision is Live's answer to one window.
type Decision struct {
	// Move says to change to Ring; Current and Best are the bottlenecks
	// (bytes/s) predicted for the ring in use and for Ring, Gain is
	// Best/Current-1.
	Move          bool
	Ring          []int
	Current, Best float64
	Gain          float64
	// Measured counts the links whose rate this window measured;
	// RingMeasured says every link of the ring in use was measured since
	// it was adopted, so that Current is the job's own figure.
	Measured     int
	RingMeasured bool
	// Matrix is every link's estimate after this window (Live.Matrix).
	Matrix *Matrix
}

// NewLive starts from probe (hosts × hosts, bytes/s) and the ring in use.
func NewLive(probe *Matrix, ring []int, cfg LiveConfig) (*Live, error) {
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	n := probe.Size()
	if len(ring) != n {
		return nil, fmt.Errorf("live topology: ring %v has %d hosts, the matrix %d", ring, len(ring), n)
	}
	if cfg.Confirm < 1 {
		cfg.Confirm = 1
	}
	l := &Live{cfg: cfg, probe: probe, rate: make([][]float64, n), scale: 1, ring: slices.Clone(ring), used: make([][]LinkWindow, n),
		fresh: make([][]bool, n), latest: make([][]bool, n), kernel: make([]KernelLinks, n), ours: make([][]uint64, n), others: make([][]float64, n), busy: make([][]int, n), conns: make([][]int, n)}
	for i := range l.rate {
		l.rate[i] = make([]float64, n)
		l.used[i] = make([]LinkWindow, n)
		l.fresh[i], l.latest[i] = make([]bool, n), make([]bool, n)
		l.ours[i], l.others[i], l.busy[i], l.conns[i] = make([]uint64, n), make([]float64, n), make([]int, n), make([]int, n)
	}
	return l, nil
}

// Ring returns the ring in use.
func (l *Live) Ring() []int { return slices.Clone(l.ring) }

// Adopt records that the job now runs ring.
func (l *Live) Adopt(ring []int) {
	l.ring = slices.Clone(ring)
	l.pending = 0
	for _, row := range l.fresh {
		clear(row)
	}
}

// Matrix returns the current estimate of every link. A link the latest
// window did not measure, where other programs were seen sending, gets
// what they leave of it, or, where they leave less, the share TCP would
// give the job's connections beside theirs: bw·conns/(conns+busy). A
// link the job measured needs neither: its rate is what the job got
// beside them.
func (l *Live) Matrix() *Matrix {
	n := l.probe.Size()
	m := NewMatrix(n)
	copy(m.Hosts, l.probe.Hosts)
	for i := range n {
		copy(m.LatencyUS[i], l.probe.LatencyUS[i])
		for j := range n {
			if i == j {
				continue
			}
			bw := l.probe.Bandwidth[i][j] * l.scale
			if r := l.rate[i][j]; r > 0 {
				bw = r
			}
			if o := l.others[i][j]; o > 0 && !l.latest[i][j] {
				c := float64(max(1, l.conns[i][j]))
				bw = max(bw-o, bw*c/(c+float64(max(1, l.busy[i][j]))))
			}
			m.Bandwidth[i][j] = bw
		}
	}
	return m
}

// Others returns what other programs were last seen sending over each
// link, in bytes/s (0: nothing, or not known), host to host.
func (l *Live) Others() [][]float64 {
	out := make([][]float64, len(l.others))
	for i, row := range l.others {
		out[i] = slices.Clone(row)
	}
	return out
}

// observeKernel folds one window's kernel counters in: for each node
// that sent them, the bytes its connections had acknowledged since its
// last read, less what the job's own sockets (total) had, over the time
// between the reads, is what others sent. Only links the job carried
// little over in the window get a new figure: on the others, the job's
// counters were read at another moment than the kernel's, and the job's
// own rate says what the link gave it anyway.
func (l *Live) observeKernel(total [][]LinkWindow, kernel []KernelLinks) {
	n := l.probe.Size()
	for i := range min(n, len(kernel)) {
		k, prev := kernel[i], l.kernel[i]
		if len(k.BytesAcked) != n || len(k.Busy) != n || k.At.IsZero() {
			continue
		}
		if prev.At.IsZero() || k.At.Before(prev.At) {
			l.takeKernel(i, k, total)
			continue
		}
		dt := k.At.Sub(prev.At)
		if dt < minKernelWindow {
			continue
		}
		for j := range n {
			if j == i || j >= len(total[i]) {
				continue
			}
			ours := total[i][j].Bytes
			if k.BytesAcked[j] < prev.BytesAcked[j] || ours < l.ours[i][j] {
				continue // counters restarted: the next window says
			}
			dOurs := ours - l.ours[i][j]
			if dOurs >= l.cfg.MinBytes {
				l.others[i][j], l.busy[i][j] = 0, 0
				continue
			}
			all := k.BytesAcked[j] - prev.BytesAcked[j]
			l.others[i][j], l.busy[i][j] = float64(all-min(all, dOurs))/dt.Seconds(), k.Busy[j]
		}
		l.takeKernel(i, k, total)
	}
}

// takeKernel makes k node i's latest kernel read, with the job's own
// bytes from total beside it.
func (l *Live) takeKernel(i int, k KernelLinks, total [][]LinkWindow) {
	l.kernel[i] = KernelLinks{At: k.At, BytesAcked: slices.Clone(k.BytesAcked), Busy: slices.Clone(k.Busy)}
	for j := range l.ours[i] {
		if i < len(total) && j < len(total[i]) {
			l.ours[i][j] = total[i][j].Bytes
		}
	}
}

// Observe folds what every link carried since the job started (total[i][j]:
// host i to host j, counters that only grow) into the estimates and says
// whether to move the ring. A link's window is what it carried since its
// last window that counted. kernel, where not nil, holds each node's
// kernel counters of every program's connections (a zero KernelLinks for
// a node without them): what others send over links the job leaves idle
// lowers those links' estimates (see Matrix).
func (l *Live) Observe(total [][]LinkWindow, kernel []KernelLinks) Decision {
	n := l.probe.Size()
	var ratios []float64
	d := Decision{}
	for _, row := range l.latest {
		clear(row)
	}
	for i := range n {
		for j := range n {
			if i == j || i >= len(total) || j >= len(total[i]) {
				continue
			}
			t, u := total[i][j], l.used[i][j]
			l.conns[i][j] = t.Conns
			if t.Bytes < u.Bytes || t.Busy < u.Busy {
				l.used[i][j] = t // counters restarted (a new connection)
				continue
			}
			x := LinkWindow{Bytes: t.Bytes - u.Bytes, Busy: t.Busy - u.Busy}
			if x.Bytes < l.cfg.MinBytes || x.Busy < l.cfg.MinBusy || x.Busy <= 0 {
				continue
			}
			l.used[i][j] = t
			r := float64(x.Bytes) / x.Busy.Seconds()
			l.rate[i][j], l.fresh[i][j], l.latest[i][j] = r, true, true
			d.Measured++
			if p := l.probe.Bandwidth[i][j]; p > 0 {
				ratios = append(ratios, r/p)
			}
		}
	}
	if len(ratios) > 0 {
		l.scale = stats.Median(ratios)
	}
	l.observeKernel(total, kernel)
	d.RingMeasured = true
	for p, a := range l.ring {
		b := l.ring[(p+1)%len(l.ring)]
		if !l.fresh[a][b] && !l.fresh[b][a] {
			d.RingMeasured = false
		}
	}
	m := l.Matrix()
	best, bb := SolveRing(m)
	d.Current, d.Best, d.Ring, d.Matrix = Bottleneck(m, l.ring), bb, best, m
	if d.Current > 0 {
		d.Gain = d.Best/d.Current - 1
	} else if d.Best > 0 {
		d.Gain = 1e9 // the ring in use has a dead link (finite: it goes into JSON)
	}
	if d.Measured == 0 || d.Gain < l.cfg.Margin {
		l.pending = 0
		return d
	}
	l.pending++
	if l.pending >= l.cfg.Confirm {
		d.Move = true
	}
	return d
}

// Replan is one move of a running job's ring.
type Replan struct {
	Step int64     `json:"step"`
	Time time.Time `json:"time"`
	// From and To are the rings of hosts (matrix indices: node ranks).
	From []int `json:"from"`
	To   []int `json:"to"`
	// Before is the slowest link of the old ring when it moved, Predicted
	// that of the new one as the matrix stood (bytes/s), PredictedGain
	// their ratio minus 1.
	Before        float64 `json:"before"`
	Predicted     float64 `json:"predicted"`
	PredictedGain float64 `json:"predicted_gain"`
	// Measured is the new ring's slowest link once every one of its links
	// was measured again, MeasuredGain its gain over Before; 0 until then.
	Measured     float64 `json:"measured,omitempty"`
	MeasuredGain float64 `json:"measured_gain,omitempty"`
}

// LiveView is a running job's view of its links, as its workers report
// it and the launcher serves it (GET /topology.json): the ring of hosts
// in use, the live matrix, how many windows were observed and the moves.
type LiveView struct {
	Ring   []int   `json:"ring"`
	Matrix *Matrix `json:"matrix"`
	// RTTUS and Retransmits are what TCP_INFO says of the job's sockets
	// from each host to each other (the longest smoothed RTT, in µs, and
	// the segments retransmitted, summed); nil before the first window.
	RTTUS       [][]float64 `json:"rtt_us,omitempty"`
	Retransmits [][]uint64  `json:"retransmits,omitempty"`
	// Others is what other programs were last seen sending from each
	// host to each other over links the job left idle (bytes/s, from the
	// launchers' eBPF counters; see Live.Matrix); nil where no node had
	// them.
	Others  [][]float64 `json:"others_bytes_per_second,omitempty"`
	Windows int         `json:"windows"`
	Replans []Replan    `json:"replans,omitempty"`
}

// WriteKernelLinks saves k where a reader may be reading at any moment:
// it writes a file beside path and renames it over path, so a reader
// sees the old counters or the new, never half of them.
func WriteKernelLinks(path string, k KernelLinks) error {
	b, err := json.Marshal(k)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadKernelLinks reads what WriteKernelLinks wrote, checked for n hosts.
func ReadKernelLinks(path string, n int) (KernelLinks, error) {
	var k KernelLinks
	b, err := os.ReadFile(path)
	if err != nil {
		return k, err
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("%s: %w", path, err)
	}
	if len(k.BytesAcked) != n || len(k.Busy) != n || k.At.IsZero() {
		return KernelLinks{}, fmt.Errorf("%s: counters of %d and %d hosts at %v, want %d hosts", path, len(k.BytesAcked), len(k.Busy), k.At, n)
	}
	return k, nil
}
