package collective

import "context"

// Comm is a group of ranks that call collectives together. Every rank must
// make the same sequence of collective calls with matching arguments (dtype,
// count, op, root); ranks that do not get ErrMismatch naming who called
// what, never a hang or a wrong result.
//
// Buffers follow NCCL's conventions: send and recv may be the same buffer
// (in place) or distinct, non-overlapping buffers (out of place). Counts
// are in elements of the buffer's dtype:
//
//	AllReduce      send n,     recv n
//	ReduceScatter  send n*Size, recv n   (rank r gets block r)
//	AllGather      send n,     recv n*Size (block r comes from rank r)
//	Broadcast      send n (read on root only), recv n
//	Reduce         send n,     recv n (written on root only)
//
// A call returns when this rank's part is done and its buffers may be
// reused. Any error leaves the group unusable (like NCCL after an abort):
// later calls return the same error. Cancelling ctx during a call aborts the
// group on every rank.
type Comm interface {
	Rank() int
	Size() int

	AllReduce(ctx context.Context, send, recv Buffer, op Op) error
	ReduceScatter(ctx context.Context, send, recv Buffer, op Op) error
	AllGather(ctx context.Context, send, recv Buffer) error
	Broadcast(ctx context.Context, send, recv Buffer, root int) error
	Reduce(ctx context.Context, send, recv Buffer, op Op, root int) error
	Barrier(ctx context.Context) error

	// Send and Recv move buf to and from one peer. Each pair of ranks must
	// issue them in matching order; they do not involve other ranks.
	Send(ctx context.Context, buf Buffer, peer int) error
	Recv(ctx context.Context, buf Buffer, peer int) error

	// AllReduceAsync starts an all-reduce and returns at once. Calls on a
	// Comm, blocking or not, run one at a time in the order they were made,
	// so several async all-reduces may be in flight and complete in order.
	// The buffers must not be touched until Wait returns.
	AllReduceAsync(ctx context.Context, send, recv Buffer, op Op) *Request

	// Close releases the group's connections and goroutines. It waits for
	// queued async calls to finish first.
	Close() error
}

// Request is the handle of an asynchronous call.
type Request struct {
	done chan struct{}
	err  error
}

// Wait blocks until the call completes or ctx ends, and returns the call's
// error. Giving up on ctx does not cancel the call itself.
func (r *Request) Wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed when the call has completed.
func (r *Request) Done() <-chan struct{} { return r.done }
