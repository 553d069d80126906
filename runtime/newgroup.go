package runtime

import (
	"bytes"
	"context"
	"fmt"
	"net"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

// NewGroup forms another group of the same ranks over fresh connections,
// for work that runs beside the training loop's collectives, such as
// committing an asynchronous checkpoint: two goroutines must not share one
// group, or ranks would interleave their calls in different orders (this
// is what PyTorch's new_group is for). Every rank calls it at the same
// point; rank 0 picks a free port and tells the others through this group.
// The caller closes the new group.
func (g *Group) NewGroup(ctx context.Context) (collective.Comm, error) {
	members := make([]int, g.Size())
	for r := range members {
		members[r] = r
	}
	return g.newSubgroup(ctx, members, "new group")
}

// newSubgroup forms a group of members (ranks of g, in the new group's
// rank order) over fresh connections; every rank of g calls it at the
// same point, with members the group it belongs to (the groups of
// different calls partition the ranks). The first member picks a free
// port and every rank learns it through g. what names the group in
// errors.
func (g *Group) newSubgroup(ctx context.Context, members []int, what string) (collective.Comm, error) {
	tcfg, ccfg := g.tcfg, g.ccfg
	tcfg.OnFault = nil
	ccfg.Hosts = nil // the hierarchy is g's; a subgroup is flat
	me := -1
	for i, r := range members {
		if r == g.Rank() {
			me = i
		}
	}
	if me < 0 {
		return nil, fmt.Errorf("%s: rank %d is not among its members %v", what, g.Rank(), members)
	}
	tcfg.Rank, tcfg.Size = me, len(members)
	if g.Size() > 1 {
		var mine string
		if me == 0 {
			a, err := freeAddr(tcfg.ListenHost, tcfg.Rendezvous)
			if err != nil {
				return nil, fmt.Errorf("%s: rank %d: %w", what, g.Rank(), err)
			}
			mine = a
		}
		all, err := gatherStrings(ctx, g, mine)
		if err != nil {
			return nil, fmt.Errorf("%s: learning the rendezvous address of rank %d: %w", what, members[0], err)
		}
		tcfg.Rendezvous = all[members[0]]
	}
	if g.p2p != nil {
		return g.newP2PSubgroup(ctx, members, me, tcfg.Rendezvous, ccfg, what)
	}
	c, err := collective.NewTCP(ctx, tcfg, ccfg)
	if err != nil {
		return nil, fmt.Errorf("%s: rank %d: %w", what, g.Rank(), err)
	}
	return c, nil
}

// newP2PSubgroup forms the subgroup over libp2p: the members' peer IDs
// pinned and nothing else allowed, with the first member's rendezvous at
// addr.
func (g *Group) newP2PSubgroup(ctx context.Context, members []int, me int, addr string, ccfg collective.Config, what string) (collective.Comm, error) {
	c := *g.p2p
	c.Rank, c.Size, c.OnFault, c.Allow = me, len(members), nil, nil
	c.Peers = make([]peer.ID, len(members))
	for i, r := range members {
		c.Peers[i] = g.p2p.Peers[r]
	}
	if len(members) > 1 {
		var err error
		if c.Rendezvous, err = p2p.RendezvousAddr(addr, c.Peers[0]); err != nil {
			return nil, fmt.Errorf("%s: rank %d: %w", what, g.Rank(), err)
		}
	}
	tr, err := p2p.Join(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("%s: rank %d over libp2p: %w", what, g.Rank(), err)
	}
	comm, err := collective.New(tr, ccfg)
	if err != nil {
		tr.Close()
		return nil, err
	}
	return comm, nil
}

// freeAddr picks a free port on this rank's listen host (else the host of
// the job's rendezvous), for a rendezvous of its own.
func freeAddr(listenHost, rendezvous string) (string, error) {
	host := listenHost
	if host == "" {
		h, _, err := net.SplitHostPort(rendezvous)
		if err != nil {
			return "", err
		}
		host = h
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("cannot find a free port on %s: %w", host, err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// maxGathered is the longest string gatherStrings carries.
const maxGathered = 128

// gatherStrings gives every rank of c the string of every rank (at most
// maxGathered bytes, no NULs).
func gatherStrings(ctx context.Context, c collective.Comm, mine string) ([]string, error) {
	if len(mine) > maxGathered || bytes.IndexByte([]byte(mine), 0) >= 0 {
		return nil, fmt.Errorf("rank %d: %q is longer than %d bytes or holds a NUL", c.Rank(), mine, maxGathered)
	}
	send := make([]byte, maxGathered)
	copy(send, mine)
	recv := make([]byte, maxGathered*c.Size())
	if err := c.AllGather(ctx, collective.BufferOf(collective.Int32, send), collective.BufferOf(collective.Int32, recv)); err != nil {
		return nil, err
	}
	out := make([]string, c.Size())
	for r := range out {
		b := recv[r*maxGathered : (r+1)*maxGathered]
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		out[r] = string(b)
	}
	return out, nil
}
