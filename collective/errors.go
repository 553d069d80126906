package collective

import (
	"fmt"

	"github.com/ringo-ml/ringo/collective/transport"
)

// Sentinel errors; errors.Is matches them through *PeerError.
var (
	ErrClosed   = transport.ErrClosed
	ErrTimeout  = transport.ErrTimeout
	ErrMismatch = transport.ErrMismatch
	ErrPeerLost = transport.ErrPeerLost
	ErrCanceled = transport.ErrCanceled
	ErrProtocol = transport.ErrProtocol
)

// PeerError is returned by every live rank of a failed group. Rank is the
// rank at fault (the one that died, stopped answering, or disagreed), Op
// and Seq the call during which it happened.
type PeerError struct {
	Rank int    // the rank at fault, -1 if none in particular
	Op   string // e.g. "AllReduce"
	Seq  uint64 // the call's sequence number on this group
	Err  error  // wraps one of the sentinels (often via *transport.Fault)
}

func (e *PeerError) Error() string {
	if e.Rank < 0 {
		return fmt.Sprintf("collective: %s #%d: %v", e.Op, e.Seq, e.Err)
	}
	return fmt.Sprintf("collective: %s #%d: rank %d: %v", e.Op, e.Seq, e.Rank, e.Err)
}

func (e *PeerError) Unwrap() error { return e.Err }

// ArgError is a call refused before any communication: a bad buffer,
// root, peer, dtype or op. The group stays usable.
type ArgError struct {
	Op     string
	Rank   int
	Reason string
}

func (e *ArgError) Error() string {
	return fmt.Sprintf("collective: %s on rank %d: %s", e.Op, e.Rank, e.Reason)
}
