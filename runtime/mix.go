package runtime

import (
	"context"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/mix"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// defaultTransport is the transport of a job that names none: shared
// memory on one node, else mix, which picks per peer from the host
// identity each rank reports (same boot id and network namespace: shared
// memory; otherwise TCP), so ranks of one host never pay for TCP, and two
// "nodes" that are really one host share memory too.
func defaultTransport(e workerEnv) string {
	switch {
	case e.size <= 1:
		return "tcp"
	case e.nodes == 1:
		return "shm"
	}
	return "mix"
}

// shmConfig is the shared-memory configuration of this worker: rings
// shaped by the defaults and RINGO_SHM_*, yielding when the host's ranks
// outnumber its cores.
func shmConfig(e workerEnv) (shm.Config, error) {
	c := shm.DefaultConfig()
	c.Yield = shm.YieldFor(e.localSize)
	return c.FromEnv()
}

// joinMix forms a mix transport: tcfg for the TCP links and what both
// kinds share, shmConfig for the rings.
func joinMix(ctx context.Context, e workerEnv, tcfg tcp.Config) (transport.Transport, error) {
	s, err := shmConfig(e)
	if err != nil {
		return nil, err
	}
	tr, err := mix.Join(ctx, mix.Config{TCP: tcfg, SHM: s})
	if err != nil {
		return nil, err
	}
	return tr, nil
}

// Links says which kind of link reaches each rank ("shm" or "tcp"; ""
// for this rank itself), or nil when the transport uses one kind for
// every peer (Group.Transport names it).
func (g *Group) Links() []string {
	m, ok := g.tr.(*mix.Transport)
	if !ok {
		return nil
	}
	out := make([]string, g.Size())
	for p := range out {
		out[p] = m.Kind(p)
	}
	return out
}

// SentBytes returns the payload bytes this rank has sent over each kind of
// link ("shm", "tcp"), or nil when the transport does not count them.
func (g *Group) SentBytes() map[string]int64 {
	if m, ok := g.tr.(*mix.Transport); ok {
		return m.SentBytes()
	}
	return nil
}
