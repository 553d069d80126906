package transport

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// FaultLatch holds a transport's first fault: every transport records
// the first thing that went wrong, tells its owner once, and from then on
// answers every call with it. Embed one and call Init before use.
type FaultLatch struct {
	mu      sync.Mutex
	fault   atomic.Pointer[Fault] // read without the lock on hot paths
	faulted chan struct{}
	onFault func(*Fault)
}

// Init readies the latch; onFault (may be nil) is called once,
// synchronously, with the first fault recorded.
func (l *FaultLatch) Init(onFault func(*Fault)) {
	l.faulted = make(chan struct{})
	l.onFault = onFault
}

// Record stores f unless a fault is already recorded, and reports
// whether f was the first. The caller then wakes its blocked calls.
func (l *FaultLatch) Record(f *Fault) bool {
	l.mu.Lock()
	if l.fault.Load() != nil {
		l.mu.Unlock()
		return false
	}
	l.fault.Store(f)
	close(l.faulted)
	l.mu.Unlock()
	if l.onFault != nil {
		l.onFault(f)
	}
	return true
}

// Fault returns the recorded fault, or nil; it takes no lock.
func (l *FaultLatch) Fault() *Fault { return l.fault.Load() }

// Faulted is closed when a fault is recorded.
func (l *FaultLatch) Faulted() <-chan struct{} { return l.faulted }

// ControlMessage encodes a control message (a fault notice or goodbye)
// from rank from: the header, then payload.
func ControlMessage(kind Kind, from int, payload []byte) []byte {
	h := Header{Kind: kind, From: int32(from), Length: uint64(len(payload))}
	b := make([]byte, HeaderSize+len(payload))
	h.Encode(b)
	copy(b[HeaderSize:], payload)
	return b
}

// TimeoutFault is the fault of a call that waited on peer past its
// deadline; what says which way ("got nothing from", "could not send to
// (it stopped reading)"). It is not recorded: the caller may find a better
// explanation (a peer's header that disagrees) before it aborts with one.
func TimeoutFault(rank, peer int, addr, what string) *Fault {
	return &Fault{Kind: FaultTimeout, Peer: peer, Reporter: rank,
		Detail: fmt.Sprintf("rank %d %s rank %d (%s) before the deadline: rank %d is stuck, stopped, or slower than the call's timeout (RINGO_TIMEOUT)", rank, what, peer, addr, peer)}
}

// LinkBroken decides what a broken link to peer means, records it through
// abort, and returns the transport's fault. The peer may have broken the
// link because it failed for another reason, and its fault notice says
// which: wait up to grace for that notice (or for the peer's goodbye, when
// it closed its group mid-call) before blaming the peer itself. dir and
// err say what broke ("receive", the read error).
func (l *FaultLatch) LinkBroken(abort func(*Fault), goodbye <-chan struct{}, rank, peer int, addr, dir string, err error, grace time.Duration) *Fault {
	tm := time.NewTimer(grace)
	defer tm.Stop()
	select {
	case <-l.faulted:
	case <-goodbye:
		abort(&Fault{Kind: FaultPeerLost, Peer: peer, Reporter: rank,
			Detail: fmt.Sprintf("rank %d (%s) closed its group while rank %d was still in a call with it", peer, addr, rank)})
	case <-tm.C:
		abort(&Fault{Kind: FaultPeerLost, Peer: peer, Reporter: rank,
			Detail: fmt.Sprintf("lost rank %d (%s) during a %s: %v; the process died, was killed, or the network cut it", peer, addr, dir, err)})
	}
	return l.Fault()
}

// ClosedFault is what a transport records when its own rank closes it:
// every later call fails with it.
func ClosedFault(rank int) *Fault {
	return &Fault{Kind: FaultClosed, Peer: -1, Reporter: rank, Detail: fmt.Sprintf("rank %d closed its group", rank)}
}

// KilledFault is what a transport records when a test kills it as a crash
// would.
func KilledFault(rank int) *Fault {
	return &Fault{Kind: FaultClosed, Peer: rank, Reporter: rank, Detail: fmt.Sprintf("rank %d was killed", rank)}
}
