package checkpoint

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
)

// Coordinator is what Save needs from the group of ranks saving together.
type Coordinator interface {
	Rank() int
	Size() int
	Barrier(ctx context.Context) error
	// AllGather returns every rank's local bytes, indexed by rank.
	AllGather(ctx context.Context, local []byte) ([][]byte, error)
}

// Single is the Coordinator of a job of one rank.
type Single struct{}

func (Single) Rank() int                                               { return 0 }
func (Single) Size() int                                               { return 1 }
func (Single) Barrier(context.Context) error                           { return nil }
func (Single) AllGather(_ context.Context, b []byte) ([][]byte, error) { return [][]byte{b}, nil }

// FromComm adapts a collective group.
func FromComm(c collective.Comm) Coordinator { return commCoord{c} }

type commCoord struct{ c collective.Comm }

func (cc commCoord) Rank() int                         { return cc.c.Rank() }
func (cc commCoord) Size() int                         { return cc.c.Size() }
func (cc commCoord) Barrier(ctx context.Context) error { return cc.c.Barrier(ctx) }

// AllGather of variable-length bytes: the lengths first, then every
// rank's bytes padded to the longest.
func (cc commCoord) AllGather(ctx context.Context, local []byte) ([][]byte, error) {
	n := cc.c.Size()
	lens := make([]int64, n)
	if err := cc.c.AllGather(ctx, collective.Int64s([]int64{int64(len(local))}), collective.Int64s(lens)); err != nil {
		return nil, fmt.Errorf("checkpoint: gathering sizes: %w", err)
	}
	width := int64(0)
	for _, l := range lens {
		width = max(width, l)
	}
	// Moved as int64 words: any dtype would do, since nothing is reduced.
	stride := (width + 7) / 8 * 8
	mine := make([]byte, stride)
	copy(mine, local)
	all := make([]byte, stride*int64(n))
	if err := cc.c.AllGather(ctx, collective.BufferOf(collective.Int64, mine), collective.BufferOf(collective.Int64, all)); err != nil {
		return nil, fmt.Errorf("checkpoint: gathering plans: %w", err)
	}
	out := make([][]byte, n)
	for r := range out {
		start := int64(r) * stride
		out[r] = all[start : start+lens[r] : start+lens[r]]
	}
	return out, nil
}
