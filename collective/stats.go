package collective

import (
	"sync/atomic"
	"time"
)

// OpStats are one kind of call's counters since the group formed.
type OpStats struct {
	Op    string // "AllReduce", "Broadcast", ...
	Calls int64
	Bytes int64 // each call's payload (the larger of its buffers), summed
	Time  time.Duration
	// BusBytes is Bytes times the op's bus factor (nccl-tests'
	// convention: 2(n-1)/n for AllReduce, (n-1)/n for AllGather and
	// ReduceScatter, 1 otherwise), so BusBytes/Time is the bus bandwidth.
	BusBytes float64
}

// StatsReporter is implemented by the groups New returns: counters for
// metrics, cheap enough to keep always on (three atomic adds per call).
type StatsReporter interface {
	Stats() []OpStats
}

type opCounters struct {
	calls, bytes, nanos atomic.Int64
}

// Stats returns a counter set for every kind of call made at least once.
func (g *group) Stats() []OpStats {
	var out []OpStats
	n := float64(g.size)
	for k := opAllReduce; k <= opSend; k++ {
		st := &g.stats[k]
		calls := st.calls.Load()
		if calls == 0 {
			continue
		}
		o := OpStats{Op: k.String(), Calls: calls, Bytes: st.bytes.Load(), Time: time.Duration(st.nanos.Load())}
		factor := 1.0
		switch k {
		case opAllReduce:
			factor = 2 * (n - 1) / n
		case opAllGather, opReduceScatter:
			factor = (n - 1) / n
		}
		o.BusBytes = float64(o.Bytes) * factor
		out = append(out, o)
	}
	return out
}
