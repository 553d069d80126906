package transport

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// HeaderSize is the encoded size of a Header on the wire.
const HeaderSize = 48

// Version is the wire format version this package speaks.
const Version = 1

// MaxPayload bounds one message's payload. It exists so that a corrupted or
// hostile length field cannot make a receiver wait for (or allocate) an
// absurd amount; collectives split larger buffers into chunks anyway.
const MaxPayload = 1 << 40

var magic = [2]byte{'R', 'G'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind says what a message is.
type Kind uint8

const (
	KindData    Kind = 1 // a chunk of a collective or point-to-point call
	KindFault   Kind = 2 // a fault notice; the payload is the encoded Fault
	KindGoodbye Kind = 3 // the sender is closing cleanly
)

func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindFault:
		return "fault"
	case KindGoodbye:
		return "goodbye"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Header precedes every message. Op, DType, RedOp, Algo, Seq, Count and Root
// form the fingerprint of the call that produced the message; the transport
// carries them without interpreting them.
type Header struct {
	Kind   Kind
	Op     uint8
	DType  uint8
	RedOp  uint8
	Algo   uint8
	Seq    uint64
	Count  uint64
	Root   int32
	Step   uint32
	Length uint64
	From   int32
}

// Encode writes h into b, which must be at least HeaderSize bytes.
func (h *Header) Encode(b []byte) {
	_ = b[HeaderSize-1]
	b[0], b[1] = magic[0], magic[1]
	b[2] = Version
	b[3] = byte(h.Kind)
	b[4] = h.Op
	b[5] = h.DType
	b[6] = h.RedOp
	b[7] = h.Algo
	binary.LittleEndian.PutUint64(b[8:], h.Seq)
	binary.LittleEndian.PutUint64(b[16:], h.Count)
	binary.LittleEndian.PutUint32(b[24:], uint32(h.Root))
	binary.LittleEndian.PutUint32(b[28:], h.Step)
	binary.LittleEndian.PutUint64(b[32:], h.Length)
	binary.LittleEndian.PutUint32(b[40:], uint32(h.From))
	binary.LittleEndian.PutUint32(b[44:], crc32.Checksum(b[:44], castagnoli))
}

// HeaderError says why bytes could not be decoded as a Header.
type HeaderError struct {
	Reason string
}

func (e *HeaderError) Error() string { return "transport: bad message header: " + e.Reason }

// Decode parses a header from b. It never panics, whatever b holds.
func (h *Header) Decode(b []byte) error {
	if len(b) < HeaderSize {
		return &HeaderError{fmt.Sprintf("%d bytes, want %d", len(b), HeaderSize)}
	}
	if b[0] != magic[0] || b[1] != magic[1] {
		return &HeaderError{fmt.Sprintf("magic %#02x%02x is not a ringo stream (wrong port or another program?)", b[0], b[1])}
	}
	if b[2] != Version {
		return &HeaderError{fmt.Sprintf("wire version %d, this build speaks %d: run the same ringo version on every host", b[2], Version)}
	}
	if got, want := binary.LittleEndian.Uint32(b[44:]), crc32.Checksum(b[:44], castagnoli); got != want {
		return &HeaderError{fmt.Sprintf("checksum %#08x, computed %#08x: stream corrupted", got, want)}
	}
	k := Kind(b[3])
	if k != KindData && k != KindFault && k != KindGoodbye {
		return &HeaderError{fmt.Sprintf("unknown message kind %d", b[3])}
	}
	length := binary.LittleEndian.Uint64(b[32:])
	if length > MaxPayload {
		return &HeaderError{fmt.Sprintf("payload length %d exceeds the %d limit", length, uint64(MaxPayload))}
	}
	from := int32(binary.LittleEndian.Uint32(b[40:]))
	if from < 0 {
		return &HeaderError{fmt.Sprintf("negative sender rank %d", from)}
	}
	*h = Header{
		Kind:   k,
		Op:     b[4],
		DType:  b[5],
		RedOp:  b[6],
		Algo:   b[7],
		Seq:    binary.LittleEndian.Uint64(b[8:]),
		Count:  binary.LittleEndian.Uint64(b[16:]),
		Root:   int32(binary.LittleEndian.Uint32(b[24:])),
		Step:   binary.LittleEndian.Uint32(b[28:]),
		Length: length,
		From:   from,
	}
	return nil
}
