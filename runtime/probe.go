package runtime

import (
	"context"
	"fmt"
	"os"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/topology"
)

// ProbePeer lets topology.Probe measure links through a collective group:
// its point-to-point calls carry the probe's messages. hosts names each
// rank's host for the matrix (may be nil).
func ProbePeer(c collective.Comm, hosts []string) topology.Peer { return commPeer{c, hosts} }

type commPeer struct {
	c     collective.Comm
	hosts []string
}

func (p commPeer) Rank() int       { return p.c.Rank() }
func (p commPeer) Size() int       { return p.c.Size() }
func (p commPeer) Hosts() []string { return p.hosts }

// asInt32s carries bytes in a collective buffer; probe messages are whole
// multiples of 4 bytes.
func asInt32s(b []byte) (collective.Buffer, error) {
	if len(b)%4 != 0 {
		return collective.Buffer{}, fmt.Errorf("probe message of %d bytes: want a multiple of 4", len(b))
	}
	return collective.BufferOf(collective.Int32, b), nil
}

func (p commPeer) Send(ctx context.Context, peer int, b []byte) error {
	buf, err := asInt32s(b)
	if err != nil {
		return err
	}
	return p.c.Send(ctx, buf, peer)
}

func (p commPeer) Recv(ctx context.Context, peer int, b []byte) error {
	buf, err := asInt32s(b)
	if err != nil {
		return err
	}
	return p.c.Recv(ctx, buf, peer)
}

func (p commPeer) Barrier(ctx context.Context) error { return p.c.Barrier(ctx) }

func (p commPeer) AllGather(ctx context.Context, mine []float64) ([][]float64, error) {
	all := make([]float64, len(mine)*p.c.Size())
	if err := p.c.AllGather(ctx, collective.Float64s(mine), collective.Float64s(all)); err != nil {
		return nil, err
	}
	out := make([][]float64, p.c.Size())
	for r := range out {
		out[r] = all[r*len(mine) : (r+1)*len(mine)]
	}
	return out, nil
}

// Probe measures the links between every pair of this job's ranks (see
// topology.Probe) over a group of its own, so that the job's collectives
// are not disturbed, and returns the matrix on every rank. Each rank is
// named by its node's address.
func (g *Group) Probe(ctx context.Context, cfg topology.ProbeConfig) (*topology.Matrix, error) {
	side, err := g.NewGroup(ctx)
	if err != nil {
		return nil, err
	}
	defer side.Close()
	host := g.tcfg.ListenHost
	if host == "" {
		host, _ = os.Hostname()
	}
	hosts, err := gatherStrings(ctx, side, host)
	if err != nil {
		return nil, err
	}
	return topology.Probe(ctx, ProbePeer(side, hosts), cfg)
}
