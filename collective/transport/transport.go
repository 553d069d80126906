package transport

import (
	"errors"
	"time"
)

// Sentinel errors, re-exported by package collective. Wrap them with %w.
var (
	// ErrClosed: the transport (or the group above it) was closed.
	ErrClosed = errors.New("closed")
	// ErrTimeout: a peer did not answer before the call's deadline.
	ErrTimeout = errors.New("timed out")
	// ErrMismatch: ranks called different collectives, or the same one
	// with different arguments.
	ErrMismatch = errors.New("ranks disagree")
	// ErrPeerLost: the connection to a peer broke (the process died,
	// exited, or the network cut it).
	ErrPeerLost = errors.New("peer lost")
	// ErrCanceled: a rank's context was cancelled during a call.
	ErrCanceled = errors.New("canceled")
	// ErrProtocol: a peer sent bytes that are not a valid message.
	ErrProtocol = errors.New("protocol error")
)

// Transport moves messages between this rank and every other rank of a
// group. Calls for one peer must not be made concurrently from several
// goroutines (the layer above owns ordering); calls for different peers, and
// a Send concurrent with a Recv, may be.
//
// A deadline of zero means none. Implementations may round a deadline up by
// a few tens of milliseconds to avoid resetting timers on every call.
type Transport interface {
	Rank() int
	Size() int

	// Send writes one message to peer: h (its Length and From are set by
	// Send) followed by payload. It returns once payload may be reused.
	Send(peer int, h *Header, payload []byte, deadline time.Time) error

	// RecvHeader blocks until the next message from peer arrives and
	// decodes its header into h. Only data messages are returned; fault
	// notices and goodbyes are handled by the transport.
	RecvHeader(peer int, h *Header, deadline time.Time) error

	// RecvPayload reads the payload of the message whose header was just
	// returned by RecvHeader for the same peer; len(buf) must equal that
	// header's Length.
	RecvPayload(peer int, buf []byte, deadline time.Time) error

	// Abort records f as this transport's fault unless one is already
	// recorded, tells every peer about it (best effort, bounded in time),
	// and makes every blocked and future call return the recorded fault.
	Abort(f *Fault)

	// Fault returns the recorded fault, or nil while the transport is
	// healthy.
	Fault() *Fault

	// Close says goodbye to every peer and releases everything the
	// transport started; it returns after its goroutines have exited.
	Close() error
}

// Addresser is implemented by transports that can say where a peer lives,
// for error messages.
type Addresser interface {
	PeerAddr(peer int) string
}

// Poller is implemented by transports that can wait for a message, or for
// room to send one, by polling instead of sleeping. The layer above turns
// polling on while it waits for small messages, and for mid-size calls
// (collective.Config.PollBytes) whose sends and receives run side by side,
// where waking a sleeping thread would be much of the time, and off for
// bulk transfers, where polling takes CPU from the copies.
type Poller interface {
	// Poll turns polling on or off for the waits that follow, and says
	// whether they will poll: a transport configured not to (a spin of 0,
	// where ranks far outnumber cores) answers false even when asked to.
	Poll(on bool) bool
}

// InPlaceReceiver is implemented by transports whose links to some peers
// can hand a received payload to a function where it lies (shared
// memory: in the ring the peer wrote it to; TCP: in the socket's read
// buffer, 64 KiB at a time) instead of copying it into a buffer first. A
// reduction reads it from there into its accumulator: one pass over the
// bytes instead of a copy and a pass, and over TCP a pass over bytes that
// are still in the cache the kernel just wrote them to.
type InPlaceReceiver interface {
	// InPlace says whether peer's payloads of n bytes can be received
	// with RecvPayloadFunc.
	InPlace(peer, n int) bool
	// RecvPayloadFunc is RecvPayload for such a peer: n must equal the
	// header's Length, and fn is handed the payload piece by piece, in
	// order, off being each piece's offset in the payload. A piece is
	// valid only until fn returns; its length and offset are multiples of
	// 8 bytes but for the payload's end.
	RecvPayloadFunc(peer, n int, fn func(off int, part []byte), deadline time.Time) error
}

// Lender is implemented by transports whose links to some peers can lend
// a payload instead of copying it: the peer reads it where it lies in
// this process's memory (shared memory, for a buffer in an shm.Window).
// The sender must then leave those bytes alone until the peer has read
// them, which AwaitLent waits for.
type Lender interface {
	// SendLent is Send of a payload that the caller will not change
	// before AwaitLent(peer, ticket) returns. The ticket is 0 where the
	// payload was sent the ordinary way (a copy) and there is nothing to
	// wait for.
	SendLent(peer int, h *Header, payload []byte, deadline time.Time) (ticket uint64, err error)
	// AwaitLent returns once peer has read the lent payload of ticket
	// (and every payload lent to it before). It may run beside a Send or
	// SendLent to the same peer on another goroutine.
	AwaitLent(peer int, ticket uint64, deadline time.Time) error
	// Lends says whether the link to some peer can lend: buffers in a
	// window are worth having.
	Lends() bool
}

// Peeker is implemented by transports that can show the header of a
// message that has arrived without consuming it. After a timeout, the layer
// above looks at what the other peers sent: a message of the same call
// with another fingerprint (a different root, say) explains the timeout
// better than "no answer".
type Peeker interface {
	PeekHeader(peer int, h *Header) bool
}
