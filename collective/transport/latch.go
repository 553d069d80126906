package transport

import "sync"

// FaultLatch holds a transport's first fault: every transport records
// the first thing that went wrong, tells its owner once, and from then on
// answers every call with it. Embed one and call Init before use.
type FaultLatch struct {
	mu      sync.Mutex
	fault   *Fault
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
	if l.fault != nil {
		l.mu.Unlock()
		return false
	}
	l.fault = f
	close(l.faulted)
	l.mu.Unlock()
	if l.onFault != nil {
		l.onFault(f)
	}
	return true
}

// Fault returns the recorded fault, or nil.
func (l *FaultLatch) Fault() *Fault {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fault
}

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
