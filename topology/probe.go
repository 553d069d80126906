package topology

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Peer is what Probe needs from a group of ranks. The runtime implements
// it with the collective group's point-to-point calls; topology cannot
// import collective, so it names only what it uses.
//
// Send and Recv move one message of exactly len(buf) bytes to or from one
// peer and must return when ctx is done (the probe gives each pair a
// deadline). Barrier and AllGather involve every rank; AllGather returns
// every rank's slice, indexed by rank.
type Peer interface {
	Rank() int
	Size() int
	Send(ctx context.Context, peer int, buf []byte) error
	Recv(ctx context.Context, peer int, buf []byte) error
	Barrier(ctx context.Context) error
	AllGather(ctx context.Context, mine []float64) ([][]float64, error)
}

// HostNamer is optionally implemented by a Peer that knows where each
// rank runs; the probe copies the names into Matrix.Hosts and its errors.
type HostNamer interface {
	Hosts() []string // indexed by rank
}

// ProbeConfig says how hard Probe measures each link. Zero fields take
// the defaults of DefaultProbeConfig.
type ProbeConfig struct {
	// MessageBytes is the size of each bandwidth message. Large, so that
	// per-message costs vanish and TCP's window opens fully.
	MessageBytes int
	// Iterations is how many messages are timed per direction.
	Iterations int
	// Warmup is how many messages, and ping-pongs, go untimed first:
	// the first ones pay for slow start, page faults and cold caches.
	Warmup int
	// LatencyBytes is the size of a ping-pong message.
	LatencyBytes int
	// PingPongs is how many round trips are timed per direction; the
	// median is kept, since one scheduling hiccup should not count.
	PingPongs int
	// PairTimeout bounds everything one pair does in its round. A peer
	// that does not answer in time is reported and the probe goes on.
	PairTimeout time.Duration
}

// DefaultProbeConfig moves 64 MiB each way per pair, after 8 MiB of
// warm-up: enough for a 100 Gb/s link to be timed over ~5 ms of steady
// state and short enough that 64 ranks (63 rounds) finish in seconds on
// 10 Gb/s.
func DefaultProbeConfig() ProbeConfig {
	return ProbeConfig{
		MessageBytes: 4 << 20,
		Iterations:   16,
		Warmup:       2,
		LatencyBytes: 8,
		PingPongs:    50,
		PairTimeout:  30 * time.Second,
	}
}

// Validate reports a negative field, naming it.
func (c ProbeConfig) Validate() error {
	for name, v := range map[string]int64{
		"MessageBytes": int64(c.MessageBytes), "Iterations": int64(c.Iterations),
		"Warmup": int64(c.Warmup), "LatencyBytes": int64(c.LatencyBytes),
		"PingPongs": int64(c.PingPongs), "PairTimeout": int64(c.PairTimeout),
	} {
		if v < 0 {
			return fmt.Errorf("probe config: %s is %d; want 0 (the default) or more", name, v)
		}
	}
	return nil
}

func (c ProbeConfig) withDefaults() ProbeConfig {
	d := DefaultProbeConfig()
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.MessageBytes, d.MessageBytes)
	set(&c.Iterations, d.Iterations)
	set(&c.Warmup, d.Warmup)
	set(&c.LatencyBytes, d.LatencyBytes)
	set(&c.PingPongs, d.PingPongs)
	if c.PairTimeout == 0 {
		c.PairTimeout = d.PairTimeout
	}
	return c
}

// PairError is one rank's failure to measure its link to one peer.
type PairError struct {
	Rank, Peer int
	Host       string // the peer's host, when the Peer knows it
	Err        error
}

func (e *PairError) Error() string {
	host := ""
	if e.Host != "" {
		host = " on " + e.Host
	}
	return fmt.Sprintf("rank %d could not measure its link to rank %d%s: %v", e.Rank, e.Peer, host, e.Err)
}

func (e *PairError) Unwrap() error { return e.Err }

// ProbeError is returned, with the matrix, by every rank when some pairs
// could not be measured. Those pairs have bandwidth 0 in the matrix and a
// line each in Matrix.Errors.
type ProbeError struct {
	Rank  int          // the rank that returned it
	Pairs [][2]int     // the unmeasured pairs {a, b}, a < b, seen by any rank
	Lines []string     // Matrix.Errors: one line per pair, the same on every rank
	Local []*PairError // this rank's own failures, with their causes
}

// Error gives this rank's failures with their causes, then the other
// ranks' failures as everyone knows them.
func (e *ProbeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "probe: %d pair(s) not measured", len(e.Pairs))
	for _, l := range e.Local {
		b.WriteString("; " + l.Error())
	}
	for i, p := range e.Pairs {
		if p[0] != e.Rank && p[1] != e.Rank {
			b.WriteString("; " + e.Lines[i])
		}
	}
	return b.String()
}

// Unwrap gives errors.Is and errors.As this rank's own causes.
func (e *ProbeError) Unwrap() []error {
	errs := make([]error, len(e.Local))
	for i, l := range e.Local {
		errs[i] = l
	}
	return errs
}

// What one rank tells the others about a pair, through AllGather (which
// carries only numbers).
const (
	pairOK      = 0
	pairFailed  = 1
	pairTimeout = 2
)

// Probe measures bandwidth and latency between every pair of ranks and
// returns the same matrix on every rank. Every rank of the group must
// call it with the same config.
//
// Pairs are measured in the rounds of RoundRobin, with a barrier before
// each round, so each rank talks to one peer at a time and each link is
// measured alone. Within a pair, in order: the lower rank pings the
// higher, the higher pings the lower, the lower streams to the higher,
// the higher streams to the lower. Each direction is timed on its own
// rather than both at once: full duplex holds on a switched link, but two
// streams also share the two hosts' CPUs and memory, and one at a time is
// the figure a ring uses (each rank sends to one peer, receives from
// another). Bandwidth row→column is timed by the sender, from the first
// message to the receiver's acknowledgement of the last; latency
// row→column is half the median round trip that row started.
//
// A peer that fails or does not answer within PairTimeout does not stop
// the probe: that pair gets bandwidth and latency 0 and a line in
// Matrix.Errors, and Probe returns the matrix with a *ProbeError. Any
// other error (ctx done, Barrier or AllGather failing) returns no matrix.
//
// After a failed pair the channel between the two ranks may still hold
// part of a message; the runtime should treat that link as broken.
func Probe(ctx context.Context, p Peer, cfg ProbeConfig) (*Matrix, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n, me := p.Size(), p.Rank()
	if n < 1 || me < 0 || me >= n {
		return nil, fmt.Errorf("probe: rank %d of %d is not a rank", me, n)
	}
	m := NewMatrix(n)
	if h, ok := p.(HostNamer); ok {
		if hosts := h.Hosts(); len(hosts) == n {
			copy(m.Hosts, hosts)
		}
	}

	// mine is this rank's row of bandwidth, its row of latency and its
	// status for each peer, in one slice for one AllGather.
	mine := make([]float64, 3*n)
	bw, lat, status := mine[:n], mine[n:2*n], mine[2*n:]
	var local []*PairError
	buf := make([]byte, max(cfg.MessageBytes, cfg.LatencyBytes))
	for r, round := range RoundRobin(n) {
		if err := p.Barrier(ctx); err != nil {
			return nil, fmt.Errorf("probe: rank %d: barrier before round %d: %w", me, r, err)
		}
		peer := partner(round, me)
		if peer < 0 {
			continue // a bye
		}
		pctx, cancel := context.WithTimeout(ctx, cfg.PairTimeout)
		b, l, err := probePair(pctx, p, peer, cfg, buf)
		// A transport that applies the deadline itself (a socket's
		// SetDeadline) may fail a moment before pctx notices; the clock
		// decides, and it is read before cancel sets pctx.Err.
		deadline, _ := pctx.Deadline()
		timedOut := pctx.Err() != nil || !time.Now().Before(deadline)
		cancel()
		if err := ctxDone(ctx); err != nil {
			return nil, fmt.Errorf("probe: rank %d: %w", me, err)
		}
		if err != nil {
			status[peer] = pairFailed
			if timedOut {
				status[peer] = pairTimeout
				err = fmt.Errorf("no answer within the per-pair timeout of %v (%w): %w", cfg.PairTimeout, context.DeadlineExceeded, err)
			}
			local = append(local, &PairError{Rank: me, Peer: peer, Host: m.Hosts[peer], Err: err})
			continue
		}
		bw[peer], lat[peer] = b, l
	}

	rows, err := p.AllGather(ctx, mine)
	if err != nil {
		return nil, fmt.Errorf("probe: rank %d: gathering the matrix: %w", me, err)
	}
	if len(rows) != n {
		return nil, fmt.Errorf("probe: rank %d: AllGather returned %d rows for %d ranks", me, len(rows), n)
	}
	for i, row := range rows {
		if len(row) != 3*n {
			return nil, fmt.Errorf("probe: rank %d: rank %d sent %d numbers, want %d (a different ringo on that rank?)", me, i, len(row), 3*n)
		}
	}
	var pe ProbeError
	for i := range n {
		for j := i + 1; j < n; j++ {
			si, sj := rows[i][2*n+j], rows[j][2*n+i]
			if si != pairOK || sj != pairOK {
				pe.Pairs = append(pe.Pairs, [2]int{i, j})
				m.Errors = append(m.Errors, fmt.Sprintf("ranks %d%s and %d%s: not measured (rank %d: %s; rank %d: %s)",
					i, hostSuffix(m.Hosts[i]), j, hostSuffix(m.Hosts[j]), i, statusText(si, cfg), j, statusText(sj, cfg)))
				continue // both directions stay 0
			}
			m.Bandwidth[i][j], m.LatencyUS[i][j] = rows[i][j], rows[i][n+j]
			m.Bandwidth[j][i], m.LatencyUS[j][i] = rows[j][i], rows[j][n+i]
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("probe: rank %d: assembled a bad matrix: %w", me, err)
	}
	if len(pe.Pairs) > 0 {
		pe.Rank, pe.Lines, pe.Local = me, m.Errors, local
		return m, &pe
	}
	return m, nil
}

// ctxDone is ctx.Err, except that a deadline counts as passed by the
// clock too: a pair may fail on its socket's copy of the deadline a
// moment before ctx itself notices.
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func hostSuffix(h string) string {
	if h == "" {
		return ""
	}
	return " (" + h + ")"
}

func statusText(s float64, cfg ProbeConfig) string {
	switch s {
	case pairOK:
		return "ok"
	case pairTimeout:
		return fmt.Sprintf("timed out after %v", cfg.PairTimeout)
	default:
		return "failed"
	}
}

// probePair runs this rank's side of the four steps with peer and returns
// the bandwidth (bytes/s) and one-way latency (µs) from this rank to peer.
func probePair(ctx context.Context, p Peer, peer int, cfg ProbeConfig, buf []byte) (bw, latUS float64, err error) {
	small, big := buf[:cfg.LatencyBytes], buf[:cfg.MessageBytes]
	ping := func() error {
		rtt, err := pingPong(ctx, p, peer, cfg, small)
		latUS = float64(rtt) / 2 / float64(time.Microsecond)
		return err
	}
	pong := func() error { return echo(ctx, p, peer, cfg.Warmup+cfg.PingPongs, small) }
	send := func() error {
		var err error
		bw, err = stream(ctx, p, peer, cfg, big, small)
		return err
	}
	recv := func() error { return sink(ctx, p, peer, cfg, big, small) }

	steps := []func() error{ping, pong, send, recv}
	if p.Rank() > peer {
		steps = []func() error{pong, ping, recv, send}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return 0, 0, err
		}
	}
	return bw, latUS, nil
}

// pingPong returns the median round trip of small messages to peer.
func pingPong(ctx context.Context, p Peer, peer int, cfg ProbeConfig, msg []byte) (time.Duration, error) {
	rtts := make([]time.Duration, 0, cfg.PingPongs)
	for i := range cfg.Warmup + cfg.PingPongs {
		t0 := time.Now()
		if err := p.Send(ctx, peer, msg); err != nil {
			return 0, fmt.Errorf("ping: sending to rank %d: %w", peer, err)
		}
		if err := p.Recv(ctx, peer, msg); err != nil {
			return 0, fmt.Errorf("ping: receiving from rank %d: %w", peer, err)
		}
		if i >= cfg.Warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// echo answers count pings from peer.
func echo(ctx context.Context, p Peer, peer, count int, msg []byte) error {
	for range count {
		if err := p.Recv(ctx, peer, msg); err != nil {
			return fmt.Errorf("pong: receiving from rank %d: %w", peer, err)
		}
		if err := p.Send(ctx, peer, msg); err != nil {
			return fmt.Errorf("pong: sending to rank %d: %w", peer, err)
		}
	}
	return nil
}

// stream sends the warm-up messages, waits for them to be acknowledged so
// that the timed part starts from an empty pipe, then times Iterations
// messages up to the acknowledgement of the last one. That last wait adds
// one latency, which is noise next to the megabytes moved.
func stream(ctx context.Context, p Peer, peer int, cfg ProbeConfig, big, ack []byte) (float64, error) {
	send := func(count int) error {
		for range count {
			if err := p.Send(ctx, peer, big); err != nil {
				return fmt.Errorf("bandwidth: sending to rank %d: %w", peer, err)
			}
		}
		if err := p.Recv(ctx, peer, ack); err != nil {
			return fmt.Errorf("bandwidth: waiting for rank %d to acknowledge: %w", peer, err)
		}
		return nil
	}
	if err := send(cfg.Warmup); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := send(cfg.Iterations); err != nil {
		return 0, err
	}
	return float64(cfg.Iterations) * float64(len(big)) / time.Since(t0).Seconds(), nil
}

// sink is the receiving side of stream.
func sink(ctx context.Context, p Peer, peer int, cfg ProbeConfig, big, ack []byte) error {
	for _, count := range []int{cfg.Warmup, cfg.Iterations} {
		for range count {
			if err := p.Recv(ctx, peer, big); err != nil {
				return fmt.Errorf("bandwidth: receiving from rank %d: %w", peer, err)
			}
		}
		if err := p.Send(ctx, peer, ack); err != nil {
			return fmt.Errorf("bandwidth: acknowledging to rank %d: %w", peer, err)
		}
	}
	return nil
}
