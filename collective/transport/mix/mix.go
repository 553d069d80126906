package mix

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// Config says how to join a group. TCP carries what both kinds share (the
// rendezvous, rank, size, token and fault hook); SHM's copies of those are
// ignored and only its ring shape, spin and yield are read.
type Config struct {
	TCP tcp.Config
	SHM shm.Config
	// Choose names the link kind (tcp.Name or shm.Name) between ranks a
	// and b, a.Rank < b.Rank. Both ends call it with the same entries of
	// the table, so it must depend on nothing else. Nil means SameHost.
	Choose func(a, b transport.Member) string
}

// SameHost is the default choice: shared memory between ranks on one host
// and in one network namespace, TCP between the others.
func SameHost(a, b transport.Member) string {
	if a.Host.SameHost(b.Host) {
		return shm.Name
	}
	return tcp.Name
}

// Transport is a mesh whose links to some peers are shm and to others
// TCP. Poll reaches the TCP links (the shm ones always poll).
type Transport struct {
	*transport.Mesh
	kinds   []string
	polling bool
	spin    bool // the TCP links poll at all (Spin > 0)
	hosts   []int
	// sentSHM and sentTCP count the payload bytes sent over each kind,
	// lentSHM those of sentSHM that were lent.
	sentSHM, sentTCP, lentSHM atomic.Int64
}

// Join forms the group: it blocks until every rank has joined or ctx ends.
func Join(ctx context.Context, cfg Config) (*Transport, error) {
	c := cfg.TCP
	s := cfg.SHM
	s.Rendezvous, s.Rank, s.Size, s.Token, s.OnFault = c.Rendezvous, c.Rank, c.Size, c.Token, c.OnFault
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	choose := cfg.Choose
	if choose == nil {
		choose = SameHost
	}
	t := &Transport{kinds: make([]string, c.Size), hosts: make([]int, c.Size), spin: c.Spin > 0}
	if c.Size == 1 {
		t.Mesh = transport.NewMesh(0, 1, nil, transport.MeshConfig{OnFault: c.OnFault})
		return t, nil
	}
	se, err := shm.Listen(s)
	if err != nil {
		return nil, err
	}
	defer se.Close()
	var te *tcp.Endpoint
	rv := transport.RendezvousConfig{Addr: c.Rendezvous, Rank: c.Rank, Size: c.Size, Token: c.Token, OnRefuse: c.OnRefuse}
	tab, err := transport.Rendezvous(ctx, rv, func(local net.Addr) (transport.Member, error) {
		var err error
		if te, err = tcp.Listen(c, local); err != nil {
			return transport.Member{}, err
		}
		m := transport.NewMember(c.Rank, map[string]any{tcp.Name: te.Offer(), shm.Name: se.Offer()})
		m.Host = se.Member().Host // shm's, which a test may override
		return m, nil
	})
	if te != nil {
		defer te.Close()
	}
	if err != nil {
		return nil, err
	}
	t.hosts = hostsOf(tab.Members, choose)
	byKind := map[string][]int{}
	for p := range tab.Members {
		if p == c.Rank {
			continue
		}
		a, b := tab.Members[min(p, c.Rank)], tab.Members[max(p, c.Rank)]
		k := choose(a, b)
		if k != tcp.Name && k != shm.Name {
			return nil, fmt.Errorf("mix: rank %d: Choose gave %q for ranks %d and %d; want %q or %q", c.Rank, k, a.Rank, b.Rank, tcp.Name, shm.Name)
		}
		t.kinds[p] = k
		byKind[k] = append(byKind[k], p)
	}
	links := make([]transport.Link, c.Size)
	closeAll := func() {
		for _, l := range links {
			if l != nil {
				l.Close()
			}
		}
	}
	if peers := byKind[shm.Name]; len(peers) > 0 {
		sl, err := se.Links(ctx, tab, peers)
		if err != nil {
			return nil, err
		}
		for _, p := range peers {
			links[p] = sl[p]
		}
	}
	if peers := byKind[tcp.Name]; len(peers) > 0 {
		tl, err := te.Links(ctx, tab, peers, &t.polling)
		if err != nil {
			closeAll()
			return nil, err
		}
		for _, p := range peers {
			links[p] = tl[p]
		}
	}
	t.Mesh = transport.NewMesh(c.Rank, c.Size, links, transport.MeshConfig{OnFault: c.OnFault})
	return t, nil
}

// Poll turns polling on or off for the TCP links' receives and sends that
// follow (transport.Poller); the shm links always poll.
func (t *Transport) Poll(on bool) bool {
	t.polling = on
	return on && t.spin
}

// Kind says which kind of link reaches peer p: tcp.Name or shm.Name ("" for
// this rank itself).
func (t *Transport) Kind(p int) string { return t.kinds[p] }
