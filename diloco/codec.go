package diloco

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"

	"github.com/klauspost/compress/zstd"

	"github.com/ringo-ml/ringo/collective"
)

// The delta message, version 1 (all integers little-endian):
//
//	off  len  field
//	0    4    magic "RDLT"
//	4    1    version, 1
//	5    1    value type: 1 float32, 2 bfloat16, 3 float16
//	6    1    flags: bit 0 sparse (indices precede the values), bit 1 zstd
//	7    1    reserved, 0
//	8    8    count: length of the dense vector the message encodes
//	16   8    nnz: number of values carried (count when dense)
//	24   4    CRC-32C of the body before compression
//	28   4    length of the body as sent
//	32   ...  body
//
// The body is, when sparse, nnz indices as unsigned varints of the gap to
// the previous index (the first: the index itself; then index − previous
// − 1, so strictly increasing indices), followed by nnz values of the
// value type; when dense, count values. With the zstd flag the body is one
// zstd frame of that.
const (
	magic      = "RDLT"
	version    = 1
	headerSize = 32

	flagSparse = 1 << 0
	flagZstd   = 1 << 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// valueType is the code of a Precision in the header.
func (p Precision) valueType() byte {
	switch p {
	case BF16:
		return 2
	case FP16:
		return 3
	}
	return 1
}

func (p Precision) size() int {
	if p == F32 {
		return 4
	}
	return 2
}

func precisionOf(code byte) (Precision, bool) {
	switch code {
	case 1:
		return F32, true
	case 2:
		return BF16, true
	case 3:
		return FP16, true
	}
	return "", false
}

// round returns v as the receiver will see it after p.
func (p Precision) round(v float32) float32 {
	switch p {
	case BF16:
		return collective.BF16ToFloat32(collective.BF16FromFloat32(v))
	case FP16:
		return collective.F16ToFloat32(collective.F16FromFloat32(v))
	}
	return v
}

func (p Precision) put(b []byte, v float32) {
	switch p {
	case BF16:
		binary.LittleEndian.PutUint16(b, collective.BF16FromFloat32(v))
	case FP16:
		binary.LittleEndian.PutUint16(b, collective.F16FromFloat32(v))
	default:
		binary.LittleEndian.PutUint32(b, math.Float32bits(v))
	}
}

func (p Precision) get(b []byte) float32 {
	switch p {
	case BF16:
		return collective.BF16ToFloat32(binary.LittleEndian.Uint16(b))
	case FP16:
		return collective.F16ToFloat32(binary.LittleEndian.Uint16(b))
	}
	return math.Float32frombits(binary.LittleEndian.Uint32(b))
}

// encoder turns a site's delta into a message, keeping what compression
// left out (error feedback).
type encoder struct {
	prec Precision
	topK float64
	zstd *zstd.Encoder // nil: no zstd
	body []byte
	mag  []float32
}

func newEncoder(c Config) (*encoder, error) {
	e := &encoder{prec: c.Precision, topK: c.TopK}
	if c.Zstd {
		z, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		e.zstd = z
	}
	return e, nil
}

// keep is how many of n values a message carries.
func (e *encoder) keep(n int) int {
	if e.topK <= 0 || e.topK >= 1 || n == 0 {
		return n
	}
	return max(1, int(math.Ceil(e.topK*float64(n))))
}

// encode appends to dst the message of resid, the error-feedback
// accumulator (the caller has added this sync's delta to it), and
// subtracts from resid what the message carries, as the receivers will
// decode it: what is left is sent with a later sync.
func (e *encoder) encode(dst []byte, resid []float32) []byte {
	n := len(resid)
	k := e.keep(n)
	sparse := k < n
	body := e.body[:0]
	if sparse {
		thr, ties := e.threshold(resid, k)
		idx := make([]int, 0, k)
		for i, v := range resid {
			a := abs32(v)
			if a > thr || a == thr && ties > 0 {
				if a == thr {
					ties--
				}
				idx = append(idx, i)
			}
		}
		prev := -1
		for _, i := range idx {
			body = binary.AppendUvarint(body, uint64(i-prev-1))
			prev = i
		}
		body = e.values(body, resid, idx)
	} else {
		body = e.values(body, resid, nil)
	}
	e.body = body
	var flags byte
	if sparse {
		flags |= flagSparse
	}
	sum := crc32.Checksum(body, castagnoli)
	wire := body
	if e.zstd != nil {
		// Kept only where it is smaller: rounded deltas are noisy, and a
		// small one can grow by the frame's overhead.
		if z := e.zstd.EncodeAll(body, nil); len(z) < len(body) {
			flags |= flagZstd
			wire = z
		}
	}
	var h [headerSize]byte
	copy(h[:], magic)
	h[4], h[5], h[6] = version, e.prec.valueType(), flags
	binary.LittleEndian.PutUint64(h[8:], uint64(n))
	binary.LittleEndian.PutUint64(h[16:], uint64(k))
	binary.LittleEndian.PutUint32(h[24:], sum)
	binary.LittleEndian.PutUint32(h[28:], uint32(len(wire)))
	dst = append(dst, h[:]...)
	return append(dst, wire...)
}

// values appends the values at idx (every value when idx is nil) and takes
// each, as rounded, out of resid.
func (e *encoder) values(body []byte, resid []float32, idx []int) []byte {
	sz := e.prec.size()
	put := func(i int) {
		var b [4]byte
		e.prec.put(b[:], resid[i])
		body = append(body, b[:sz]...)
		resid[i] -= e.prec.round(resid[i])
	}
	if idx == nil {
		for i := range resid {
			put(i)
		}
		return body
	}
	for _, i := range idx {
		put(i)
	}
	return body
}

// threshold returns the k-th largest magnitude of v, and how many values
// of exactly that magnitude the top k take (ties go to the lowest indices,
// so that the choice is the same on every run).
func (e *encoder) threshold(v []float32, k int) (float32, int) {
	e.mag = e.mag[:0]
	for _, x := range v {
		e.mag = append(e.mag, abs32(x))
	}
	thr := nthLargest(e.mag, k)
	above := 0
	for _, x := range v {
		if abs32(x) > thr {
			above++
		}
	}
	return thr, k - above
}

// nthLargest returns the k-th largest of a (1-based), reordering a.
func nthLargest(a []float32, k int) float32 {
	lo, hi, want := 0, len(a)-1, k-1 // want: index in descending order
	for lo < hi {
		// Median of three as the pivot keeps sorted input linear.
		mid := lo + (hi-lo)/2
		p := median3(a[lo], a[mid], a[hi])
		i, j := lo, hi
		for i <= j {
			for a[i] > p {
				i++
			}
			for a[j] < p {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		switch {
		case want <= j:
			hi = j
		case want >= i:
			lo = i
		default:
			return a[want]
		}
	}
	return a[want]
}

func median3(a, b, c float32) float32 {
	s := [3]float32{a, b, c}
	slices.Sort(s[:])
	return s[1]
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

func (e *encoder) close() {
	if e.zstd != nil {
		e.zstd.Close()
	}
}

// errMessage marks a message that is not a valid delta.
var errMessage = errors.New("bad delta message")

// decoder reads messages; it is not safe for concurrent use.
type decoder struct {
	zstd *zstd.Decoder
	body []byte
}

func newDecoder() (*decoder, error) {
	z, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &decoder{zstd: z}, nil
}

func (d *decoder) close() { d.zstd.Close() }

// clearCarried zeroes the values of resid that msg carries (every one,
// unsparse; its indices, sparse), which msg has already sent. A carried
// value that is exactly zero leaves its place as it is.
func (d *decoder) clearCarried(resid []float32, msg []byte) error {
	vals := make([]float32, len(resid))
	if err := d.addTo(vals, msg); err != nil {
		return err
	}
	for i, v := range vals {
		if v != 0 {
			resid[i] = 0
		}
	}
	return nil
}

// addTo checks msg, a message of a vector of len(acc) values, and adds
// what it carries to acc. On error acc may hold part of the message.
func (d *decoder) addTo(acc []float32, msg []byte) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", errMessage, fmt.Sprintf(format, a...))
	}
	if len(msg) < headerSize {
		return bad("%d bytes, shorter than the %d-byte header", len(msg), headerSize)
	}
	if string(msg[:4]) != magic {
		return bad("magic %q, want %q", msg[:4], magic)
	}
	if msg[4] != version {
		return bad("version %d, this build reads %d", msg[4], version)
	}
	prec, ok := precisionOf(msg[5])
	if !ok {
		return bad("unknown value type %d", msg[5])
	}
	flags := msg[6]
	if flags&^(flagSparse|flagZstd) != 0 || msg[7] != 0 {
		return bad("unknown flags %#x %#x", flags, msg[7])
	}
	count := binary.LittleEndian.Uint64(msg[8:])
	nnz := binary.LittleEndian.Uint64(msg[16:])
	sum := binary.LittleEndian.Uint32(msg[24:])
	wireLen := binary.LittleEndian.Uint32(msg[28:])
	if count != uint64(len(acc)) {
		return bad("a vector of %d values, want %d: every site must train the same parameters (same model, same number of ranks per site)", count, len(acc))
	}
	sparse := flags&flagSparse != 0
	if nnz > count || !sparse && nnz != count {
		return bad("%d values of %d (sparse %v)", nnz, count, sparse)
	}
	if uint64(len(msg)-headerSize) != uint64(wireLen) {
		return bad("body of %d bytes, header says %d", len(msg)-headerSize, wireLen)
	}
	body := msg[headerSize:]
	sz := uint64(prec.size())
	// The largest a valid body can be: every index a 10-byte varint.
	maxBody := nnz * sz
	if sparse {
		maxBody += nnz * binary.MaxVarintLen64
	}
	if flags&flagZstd != 0 {
		var err error
		if d.body, err = d.zstd.DecodeAll(body, d.body[:0]); err != nil {
			return bad("zstd: %v", err)
		}
		if uint64(len(d.body)) > maxBody {
			return bad("body of %d bytes unpacked, at most %d for %d values", len(d.body), maxBody, nnz)
		}
		body = d.body
	}
	if crc32.Checksum(body, castagnoli) != sum {
		return bad("body checksum mismatch")
	}
	vals := body
	if sparse {
		// Walk the indices first, so that a bad one is reported before
		// anything is added.
		p := body
		prev := int64(-1)
		for range nnz {
			g, n := binary.Uvarint(p)
			if n <= 0 {
				return bad("truncated index list")
			}
			p = p[n:]
			if g >= count || uint64(prev+1)+g >= count {
				return bad("index past the %d values", count)
			}
			prev += int64(g) + 1
		}
		vals = p
	}
	if uint64(len(vals)) != nnz*sz {
		return bad("%d bytes of values, want %d", len(vals), nnz*sz)
	}
	if !sparse {
		for i := range acc {
			acc[i] += prec.get(vals[uint64(i)*sz:])
		}
		return nil
	}
	p := body
	prev := -1
	for j := range nnz {
		g, n := binary.Uvarint(p)
		p = p[n:]
		prev += int(g) + 1
		acc[prev] += prec.get(vals[j*sz:])
	}
	return nil
}
