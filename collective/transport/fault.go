package transport

import (
	"encoding/binary"
	"fmt"
)

// FaultKind classifies a Fault; each maps onto one sentinel error.
type FaultKind uint8

const (
	FaultPeerLost FaultKind = 1 + iota
	FaultTimeout
	FaultMismatch
	FaultCanceled
	FaultProtocol
	FaultClosed
)

// Sentinel returns the sentinel error this kind wraps.
func (k FaultKind) Sentinel() error {
	switch k {
	case FaultPeerLost:
		return ErrPeerLost
	case FaultTimeout:
		return ErrTimeout
	case FaultMismatch:
		return ErrMismatch
	case FaultCanceled:
		return ErrCanceled
	case FaultClosed:
		return ErrClosed
	}
	return ErrProtocol
}

// Fault says which rank is at fault, who noticed, during which call, and
// why. It is the error every rank of a failed group returns, and it travels
// between ranks in fault notices so that all of them tell the same story.
type Fault struct {
	Kind     FaultKind
	Peer     int    // the rank at fault (-1 if none in particular)
	Reporter int    // the rank that first noticed
	Op       uint8  // collective kind of the call in progress (0: none)
	Seq      uint64 // that call's sequence number
	Detail   string // what happened and what to do, in words
}

func (f *Fault) Error() string {
	return fmt.Sprintf("%s (reported by rank %d)", f.Detail, f.Reporter)
}

// Unwrap lets errors.Is match the kind's sentinel.
func (f *Fault) Unwrap() error { return f.Kind.Sentinel() }

// maxFaultDetail bounds the detail text carried in a notice.
const maxFaultDetail = 4096

// EncodeFault serialises f as a fault notice payload (version 1:
// kind u8, peer i32, reporter i32, op u8, seq u64, detail length u16, detail).
func EncodeFault(f *Fault) []byte {
	d := f.Detail
	if len(d) > maxFaultDetail {
		d = d[:maxFaultDetail]
	}
	b := make([]byte, 20+len(d))
	b[0] = byte(f.Kind)
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(f.Peer)))
	binary.LittleEndian.PutUint32(b[5:], uint32(int32(f.Reporter)))
	b[9] = f.Op
	binary.LittleEndian.PutUint64(b[10:], f.Seq)
	binary.LittleEndian.PutUint16(b[18:], uint16(len(d)))
	copy(b[20:], d)
	return b
}

// DecodeFault parses a fault notice payload. It never panics.
func DecodeFault(b []byte) (*Fault, error) {
	if len(b) < 20 {
		return nil, &HeaderError{fmt.Sprintf("fault notice of %d bytes is too short", len(b))}
	}
	n := int(binary.LittleEndian.Uint16(b[18:]))
	if len(b) != 20+n {
		return nil, &HeaderError{fmt.Sprintf("fault notice detail says %d bytes, %d present", n, len(b)-20)}
	}
	k := FaultKind(b[0])
	if k < FaultPeerLost || k > FaultClosed {
		return nil, &HeaderError{fmt.Sprintf("unknown fault kind %d", b[0])}
	}
	return &Fault{
		Kind:     k,
		Peer:     int(int32(binary.LittleEndian.Uint32(b[1:]))),
		Reporter: int(int32(binary.LittleEndian.Uint32(b[5:]))),
		Op:       b[9],
		Seq:      binary.LittleEndian.Uint64(b[10:]),
		Detail:   string(b[20:]),
	}, nil
}
