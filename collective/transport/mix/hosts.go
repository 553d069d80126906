package mix

import (
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// hostsOf groups the ranks into hosts: two ranks share one when Choose
// links them by shared memory, directly or through other ranks. Each host
// is numbered by its lowest rank's order, so host 0 holds rank 0. Every
// rank computes it from the same table and gets the same answer.
func hostsOf(members []transport.Member, choose func(a, b transport.Member) string) []int {
	n := len(members)
	parent := make([]int, n)
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	for a := range n {
		for b := a + 1; b < n; b++ {
			if choose(members[a], members[b]) == shm.Name {
				ra, rb := find(a), find(b)
				parent[max(ra, rb)] = min(ra, rb)
			}
		}
	}
	hosts := make([]int, n)
	id := map[int]int{}
	for r := range n {
		root := find(r)
		h, ok := id[root]
		if !ok {
			h = len(id)
			id[root] = h
		}
		hosts[r] = h
	}
	return hosts
}

// Hosts returns, for every rank, the number of the host it runs on as
// this transport sees it: ranks joined by shared memory share a host.
// Package collective reads it to lay out its hierarchical algorithms.
func (t *Transport) Hosts() []int { return append([]int(nil), t.hosts...) }

// Send counts the payload by link kind, then sends it (transport.Transport).
func (t *Transport) Send(p int, h *transport.Header, payload []byte, deadline time.Time) error {
	t.count(p, len(payload))
	return t.Mesh.Send(p, h, payload, deadline)
}

// SendLent counts the payload as Send does, and apart the bytes that went
// as a loan (transport.Lender), then lends or sends it.
func (t *Transport) SendLent(p int, h *transport.Header, payload []byte, deadline time.Time) (uint64, error) {
	t.count(p, len(payload))
	ticket, err := t.Mesh.SendLent(p, h, payload, deadline)
	if ticket != 0 {
		t.lentSHM.Add(int64(len(payload)))
	}
	return ticket, err
}

func (t *Transport) count(p, n int) {
	if p >= 0 && p < len(t.kinds) {
		switch t.kinds[p] {
		case shm.Name:
			t.sentSHM.Add(int64(n))
		case tcp.Name:
			t.sentTCP.Add(int64(n))
		}
	}
}

// LentBytes returns the payload bytes of SentBytes' shm count that were
// lent (read by the peer in this rank's shm.Window) rather than copied.
func (t *Transport) LentBytes() int64 { return t.lentSHM.Load() }

// SentBytes returns the payload bytes this rank has sent over each kind of
// link since it joined, keyed by tcp.Name and shm.Name.
func (t *Transport) SentBytes() map[string]int64 {
	return map[string]int64{shm.Name: t.sentSHM.Load(), tcp.Name: t.sentTCP.Load()}
}
