package runtime

import (
	"context"
	"fmt"
	"net"

	"github.com/ringo-ml/ringo/collective"
)

// NewGroup forms another group of the same ranks over fresh connections,
// for work that runs beside the training loop's collectives, such as
// committing an asynchronous checkpoint: two goroutines must not share one
// group, or ranks would interleave their calls in different orders (this
// is what PyTorch's new_group is for). Every rank calls it at the same
// point; rank 0 picks a free port and tells the others through this group.
// The caller closes the new group.
func (g *Group) NewGroup(ctx context.Context) (collective.Comm, error) {
	tcfg := g.tcfg
	tcfg.OnFault = nil
	if g.Size() > 1 {
		var addr [128]int32 // the rendezvous address, one byte per element
		if g.Rank() == 0 {
			host := tcfg.ListenHost
			if host == "" {
				h, _, err := net.SplitHostPort(tcfg.Rendezvous)
				if err != nil {
					return nil, fmt.Errorf("new group: %v", err)
				}
				host = h
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				return nil, fmt.Errorf("new group: rank 0 cannot find a free port on %s: %w", host, err)
			}
			a := ln.Addr().String()
			ln.Close()
			for i := range min(len(a), len(addr)) {
				addr[i] = int32(a[i])
			}
		}
		if err := g.Broadcast(ctx, collective.Int32s(addr[:]), collective.Int32s(addr[:]), 0); err != nil {
			return nil, fmt.Errorf("new group: learning rank 0's address: %w", err)
		}
		var b []byte
		for _, c := range addr {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		tcfg.Rendezvous = string(b)
	}
	c, err := collective.NewTCP(ctx, tcfg, g.ccfg)
	if err != nil {
		return nil, fmt.Errorf("new group: rank %d: %w", g.Rank(), err)
	}
	return c, nil
}
