package rendezvous

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire format of the embedded store, version 1. The package doc describes
// it for people; this file is the definition.

// ProtocolVersion is the version of the embedded store's wire protocol.
// A client and server that disagree refuse each other at the greeting,
// before any request is sent.
const ProtocolVersion = 1

// Limits the embedded store enforces, and the etcd store checks before it
// writes, so that one job's rendezvous cannot grow without bound.
const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 4 << 10
	// MaxValueSize is the largest value, in bytes.
	MaxValueSize = 16 << 20
	// maxFrame bounds one frame in either direction: a CompareAndSwap
	// carries two full values, a Wait answer several.
	maxFrame = 64 << 20
)

// Greeting: magic, protocol version, flags, one reserved byte. Each side
// sends one before authentication; the dialler goes first.
const (
	greetingLen   = 8
	greetingMagic = "RDZV"
	// flagToken says the sender holds a job token and will run the
	// HMAC handshake. Sides that disagree refuse each other, so a
	// client with a token never talks to an impostor without one.
	flagToken = 1 << 0
)

// Request ops and response statuses share the first byte of a frame.
const (
	opSet        byte = 1
	opGet        byte = 2
	opWait       byte = 3
	opWaitChange byte = 4
	opAdd        byte = 5
	opCAS        byte = 6
	opDelete     byte = 7
	// opCancel abandons the blocking request whose id it carries; the
	// server sends no answer to either.
	opCancel byte = 8

	statusOK       byte = 0x40
	statusNotFound byte = 0x41
	// statusError carries a message in Vals[0].
	statusError byte = 0x42
	// statusClosed: the server is shutting down.
	statusClosed byte = 0x43
)

// frame is one request or response. Which fields an op uses is listed in
// the package doc; unused fields are empty.
type frame struct {
	Op   byte   // request op or response status
	ID   uint64 // matches a response to its request
	Num  int64  // Add's delta and result; 1 if a CompareAndSwap swapped
	Keys []string
	// Vals keeps nil (absent) apart from empty: WaitChange and
	// CompareAndSwap use nil to mean "the key is missing".
	Vals [][]byte
}

func encodeGreeting(hasToken bool) []byte {
	g := make([]byte, greetingLen)
	copy(g, greetingMagic)
	binary.BigEndian.PutUint16(g[4:], ProtocolVersion)
	if hasToken {
		g[6] = flagToken
	}
	return g
}

// decodeGreeting returns the peer's version and flags, or an error if
// the bytes are not a greeting at all.
func decodeGreeting(g []byte) (version uint16, flags byte, err error) {
	if len(g) != greetingLen || string(g[:4]) != greetingMagic {
		return 0, 0, errors.New("not a ringo rendezvous store (bad greeting)")
	}
	return binary.BigEndian.Uint16(g[4:]), g[6], nil
}

// Body layout, all integers big-endian:
//
//	op u8 | id u64 | num i64 | nkeys u16 | nkeys × (len u16, bytes)
//	| nvals u16 | nvals × (present u8, len u32, bytes)
//
// A frame on the wire is its body's length (u32) followed by the body.
const fixedBody = 1 + 8 + 8 + 2 + 2

// bodySize is the encoded size of f's body.
func (f *frame) bodySize() int {
	n := fixedBody
	for _, k := range f.Keys {
		n += 2 + len(k)
	}
	for _, v := range f.Vals {
		n += 1 + 4 + len(v)
	}
	return n
}

// appendFrame appends f, length prefix included, to b. It fails if a
// field does not fit its length field or the frame exceeds maxFrame.
func appendFrame(b []byte, f *frame) ([]byte, error) {
	size := f.bodySize()
	if size > maxFrame {
		return b, fmt.Errorf("message of %d bytes is over the %d-byte limit of the store protocol", size, maxFrame)
	}
	if len(f.Keys) > 0xffff || len(f.Vals) > 0xffff {
		return b, fmt.Errorf("%d keys in one message is over the limit of 65535", max(len(f.Keys), len(f.Vals)))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	b = append(b, f.Op)
	b = binary.BigEndian.AppendUint64(b, f.ID)
	b = binary.BigEndian.AppendUint64(b, uint64(f.Num))
	b = binary.BigEndian.AppendUint16(b, uint16(len(f.Keys)))
	for _, k := range f.Keys {
		if len(k) > 0xffff {
			return b, fmt.Errorf("key of %d bytes does not fit the store protocol", len(k))
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(f.Vals)))
	for _, v := range f.Vals {
		if v == nil {
			b = append(b, 0)
		} else {
			b = append(b, 1)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b, nil
}

// errMalformed marks a frame that breaks the format; the connection that
// sent it is closed, since nothing after it can be trusted to line up.
var errMalformed = errors.New("malformed frame")

// decodeFrame parses one frame body (without its length prefix). Keys
// and values are copied out of body's backing array only where needed:
// values alias body, which the caller must not reuse.
func decodeFrame(body []byte) (*frame, error) {
	if len(body) < fixedBody {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", errMalformed, len(body), fixedBody)
	}
	f := &frame{
		Op:  body[0],
		ID:  binary.BigEndian.Uint64(body[1:]),
		Num: int64(binary.BigEndian.Uint64(body[9:])),
	}
	p := body[17:]
	nk := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	// Each key takes at least two bytes, so a count larger than what is
	// left is a lie; checking first keeps the allocation honest.
	if nk*2 > len(p) {
		return nil, fmt.Errorf("%w: %d keys cannot fit in %d bytes", errMalformed, nk, len(p))
	}
	if nk > 0 {
		f.Keys = make([]string, nk)
	}
	for i := range nk {
		if len(p) < 2 {
			return nil, fmt.Errorf("%w: truncated key %d", errMalformed, i)
		}
		n := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if n > len(p) {
			return nil, fmt.Errorf("%w: key %d claims %d bytes, %d left", errMalformed, i, n, len(p))
		}
		f.Keys[i] = string(p[:n])
		p = p[n:]
	}
	if len(p) < 2 {
		return nil, fmt.Errorf("%w: truncated value count", errMalformed)
	}
	nv := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if nv*5 > len(p) {
		return nil, fmt.Errorf("%w: %d values cannot fit in %d bytes", errMalformed, nv, len(p))
	}
	if nv > 0 {
		f.Vals = make([][]byte, nv)
	}
	for i := range nv {
		if len(p) < 5 {
			return nil, fmt.Errorf("%w: truncated value %d", errMalformed, i)
		}
		present := p[0]
		n := uint64(binary.BigEndian.Uint32(p[1:]))
		p = p[5:]
		switch {
		case present > 1:
			return nil, fmt.Errorf("%w: value %d has presence byte %d", errMalformed, i, present)
		case present == 0 && n != 0:
			return nil, fmt.Errorf("%w: absent value %d has length %d", errMalformed, i, n)
		case n > uint64(len(p)):
			return nil, fmt.Errorf("%w: value %d claims %d bytes, %d left", errMalformed, i, n, len(p))
		}
		if present == 1 {
			// Full slice expression: appending to one value must
			// never write into the next.
			f.Vals[i] = p[:n:n]
		}
		p = p[n:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(p))
	}
	return f, nil
}

// readFrame reads one length-prefixed frame. The body buffer grows as
// bytes arrive rather than being allocated from the claimed length, so a
// peer cannot make us reserve maxFrame by sending four bytes.
func readFrame(r io.Reader) (*frame, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, fmt.Errorf("%w: length %d is over the %d-byte limit", errMalformed, n, maxFrame)
	}
	var buf bytes.Buffer
	if n <= 64<<10 {
		buf.Grow(int(n))
	}
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return decodeFrame(buf.Bytes())
}
