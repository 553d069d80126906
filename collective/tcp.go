package collective

import (
	"context"

	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// NewTCP joins a group of tcfg.Size ranks over TCP through the rendezvous
// at tcfg.Rendezvous (rank 0 listens there) and returns this rank's Comm.
// Every rank calls it concurrently; it returns when all have joined or ctx
// ends. A group of one opens no sockets.
func NewTCP(ctx context.Context, tcfg tcp.Config, cfg Config) (Comm, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tr, err := tcp.Join(ctx, tcfg)
	if err != nil {
		return nil, err
	}
	c, err := New(tr, cfg)
	if err != nil {
		tr.Close()
		return nil, err
	}
	return c, nil
}
