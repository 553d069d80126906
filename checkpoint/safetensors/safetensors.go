package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"unicode/utf8"
)

// MaxHeader bounds the JSON header, as the reference implementation does,
// so that a corrupt length cannot make a reader allocate gigabytes.
const MaxHeader = 100 << 20

// DType is a safetensors element type name.
type DType string

const (
	BOOL   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	F8E5M2 DType = "F8_E5M2"
	F8E4M3 DType = "F8_E4M3"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
)

// Size is the byte size of one element, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case BOOL, U8, I8, F8E5M2, F8E4M3:
		return 1
	case I16, U16, F16, BF16:
		return 2
	case I32, U32, F32:
		return 4
	case F64, I64, U64:
		return 8
	}
	return 0
}

// Tensor is one named tensor to write: its bytes are Data, little-endian,
// row-major, exactly Numel(Shape) × DType.Size() of them.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
}

// Info describes one tensor of a file: where its bytes lie relative to the
// start of the data section.
type Info struct {
	Name       string
	DType      DType
	Shape      []int64
	Begin, End int64
}

// Header is a parsed header: tensors in order of their offsets.
type Header struct {
	Tensors  []Info
	Metadata map[string]string
	// DataStart is the file offset of the data section (8 + header length).
	DataStart int64
}

// Find returns the tensor called name.
func (h *Header) Find(name string) (Info, bool) {
	for _, t := range h.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Info{}, false
}

// DataSize is the length of the data section.
func (h *Header) DataSize() int64 {
	if len(h.Tensors) == 0 {
		return 0
	}
	return h.Tensors[len(h.Tensors)-1].End
}

// Numel is the element count of shape, or an error if it overflows.
func Numel(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension %d in shape %v", d, shape)
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("shape %v has more elements than fit in 64 bits", shape)
		}
		n *= d
	}
	return n, nil
}

func byteLen(d DType, shape []int64) (int64, error) {
	if d.Size() == 0 {
		return 0, fmt.Errorf("unknown dtype %q", d)
	}
	n, err := Numel(shape)
	if err != nil {
		return 0, err
	}
	if n > math.MaxInt64/int64(d.Size()) {
		return 0, fmt.Errorf("shape %v of %s is larger than 2^63 bytes", shape, d)
	}
	return n * int64(d.Size()), nil
}

// An Error says what is wrong with a file's header or layout, naming the
// tensor where there is one.
type Error struct {
	Tensor string
	Reason string
}

func (e *Error) Error() string {
	if e.Tensor == "" {
		return "safetensors: " + e.Reason
	}
	return fmt.Sprintf("safetensors: tensor %q: %s", e.Tensor, e.Reason)
}

type entry struct {
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// Layout computes the header for tensors (without writing anything), so
// that a writer can stream their bytes afterwards in the returned order.
// It returns the complete header block (length prefix, JSON, padding) and
// the tensors' placement, in data order.
func Layout(tensors []Tensor, meta map[string]string) (head []byte, order []Info, err error) {
	idx := make([]int, len(tensors))
	seen := make(map[string]bool, len(tensors))
	for i, t := range tensors {
		idx[i] = i
		switch {
		case t.Name == "" || t.Name == "__metadata__":
			return nil, nil, &Error{t.Name, "reserved or empty tensor name"}
		case !utf8.ValidString(t.Name):
			return nil, nil, &Error{t.Name, "name is not valid UTF-8"}
		case seen[t.Name]:
			return nil, nil, &Error{t.Name, "name used twice"}
		}
		seen[t.Name] = true
		n, err := byteLen(t.DType, t.Shape)
		if err != nil {
			return nil, nil, &Error{t.Name, err.Error()}
		}
		if t.Data != nil && int64(len(t.Data)) != n {
			return nil, nil, &Error{t.Name, fmt.Sprintf("has %d bytes, its shape %v of %s needs %d", len(t.Data), t.Shape, t.DType, n)}
		}
	}
	// Widest elements first keeps every tensor aligned to its element size.
	sort.SliceStable(idx, func(a, b int) bool {
		ta, tb := tensors[idx[a]], tensors[idx[b]]
		if ta.DType.Size() != tb.DType.Size() {
			return ta.DType.Size() > tb.DType.Size()
		}
		return ta.Name < tb.Name
	})
	var js bytes.Buffer
	js.WriteByte('{')
	if len(meta) > 0 {
		keys := make([]string, 0, len(meta))
		for k := range meta {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		js.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				js.WriteByte(',')
			}
			kb, _ := json.Marshal(k)
			vb, _ := json.Marshal(meta[k])
			js.Write(kb)
			js.WriteByte(':')
			js.Write(vb)
		}
		js.WriteByte('}')
	}
	var off int64
	for i, k := range idx {
		t := tensors[k]
		n, _ := byteLen(t.DType, t.Shape)
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		if i > 0 || len(meta) > 0 {
			js.WriteByte(',')
		}
		nb, _ := json.Marshal(t.Name)
		eb, _ := json.Marshal(entry{DType: t.DType, Shape: shape, DataOffsets: []int64{off, off + n}})
		js.Write(nb)
		js.WriteByte(':')
		js.Write(eb)
		order = append(order, Info{Name: t.Name, DType: t.DType, Shape: shape, Begin: off, End: off + n})
		off += n
	}
	js.WriteByte('}')
	for (8+js.Len())%8 != 0 {
		js.WriteByte(' ')
	}
	head = make([]byte, 8+js.Len())
	binary.LittleEndian.PutUint64(head, uint64(js.Len()))
	copy(head[8:], js.Bytes())
	return head, order, nil
}

// Write writes a complete safetensors file of tensors and metadata to w.
func Write(w io.Writer, tensors []Tensor, meta map[string]string) error {
	head, order, err := Layout(tensors, meta)
	if err != nil {
		return err
	}
	if _, err := w.Write(head); err != nil {
		return err
	}
	byName := make(map[string][]byte, len(tensors))
	for _, t := range tensors {
		byName[t.Name] = t.Data
	}
	for _, o := range order {
		data := byName[o.Name]
		if int64(len(data)) != o.End-o.Begin {
			return &Error{o.Name, "no data to write"}
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}

// ReadHeader reads and checks the header at the start of r. fileSize, if
// non-negative, is the whole file's size: the data section must then end
// exactly where the last tensor does.
func ReadHeader(r io.Reader, fileSize int64) (*Header, error) {
	var lb [8]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, &Error{"", fmt.Sprintf("reading the 8-byte header length: %v", err)}
	}
	n := binary.LittleEndian.Uint64(lb[:])
	if n > MaxHeader {
		return nil, &Error{"", fmt.Sprintf("header length %d exceeds the %d-byte limit (not a safetensors file, or corrupt)", n, MaxHeader)}
	}
	if fileSize >= 0 && int64(n) > fileSize-8 {
		return nil, &Error{"", fmt.Sprintf("header length %d runs past the end of a %d-byte file (truncated?)", n, fileSize)}
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r, js); err != nil {
		return nil, &Error{"", fmt.Sprintf("reading the %d-byte header: %v (truncated?)", n, err)}
	}
	h, err := ParseHeader(js)
	if err != nil {
		return nil, err
	}
	h.DataStart = 8 + int64(n)
	if fileSize >= 0 && h.DataStart+h.DataSize() != fileSize {
		return nil, &Error{"", fmt.Sprintf("the tensors cover %d data bytes but the file holds %d after its header (truncated or extended)", h.DataSize(), fileSize-h.DataStart)}
	}
	return h, nil
}

// ParseHeader checks and parses the JSON header (without the length
// prefix).
func ParseHeader(js []byte) (*Header, error) {
	if !utf8.Valid(js) {
		return nil, &Error{"", "header is not valid UTF-8"}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, &Error{"", "header is not a JSON object"}
	}
	h := &Header{}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, &Error{"", fmt.Sprintf("bad JSON in header: %v", err)}
		}
		name, _ := tok.(string)
		if seen[name] {
			return nil, &Error{name, "appears twice in the header"}
		}
		seen[name] = true
		if name == "__metadata__" {
			if err := dec.Decode(&h.Metadata); err != nil {
				return nil, &Error{"", fmt.Sprintf("__metadata__ must map strings to strings: %v", err)}
			}
			continue
		}
		var e entry
		if err := dec.Decode(&e); err != nil {
			return nil, &Error{name, fmt.Sprintf("bad entry: %v", err)}
		}
		if len(e.DataOffsets) != 2 {
			return nil, &Error{name, fmt.Sprintf("data_offsets has %d numbers, want 2", len(e.DataOffsets))}
		}
		if e.Shape == nil {
			return nil, &Error{name, "has no shape"}
		}
		t := Info{Name: name, DType: e.DType, Shape: e.Shape, Begin: e.DataOffsets[0], End: e.DataOffsets[1]}
		want, err := byteLen(t.DType, t.Shape)
		if err != nil {
			return nil, &Error{name, err.Error()}
		}
		if t.Begin < 0 || t.End < t.Begin || t.End-t.Begin != want {
			return nil, &Error{name, fmt.Sprintf("data_offsets [%d, %d] do not hold the %d bytes its shape %v of %s needs", t.Begin, t.End, want, t.Shape, t.DType)}
		}
		h.Tensors = append(h.Tensors, t)
	}
	if _, err := dec.Token(); err != nil {
		return nil, &Error{"", fmt.Sprintf("bad JSON in header: %v", err)}
	}
	if rest := strings.TrimRight(string(js[dec.InputOffset():]), " "); rest != "" {
		return nil, &Error{"", "bytes after the header's JSON object other than space padding"}
	}
	sort.SliceStable(h.Tensors, func(a, b int) bool { return h.Tensors[a].Begin < h.Tensors[b].Begin })
	var end int64
	for _, t := range h.Tensors {
		if t.Begin != end {
			if t.Begin < end {
				return nil, &Error{t.Name, fmt.Sprintf("overlaps the tensor before it (starts at %d, the previous ends at %d)", t.Begin, end)}
			}
			return nil, &Error{t.Name, fmt.Sprintf("leaves a hole: starts at %d, the previous tensor ends at %d", t.Begin, end)}
		}
		end = t.End
	}
	return h, nil
}

// ErrNotFound is returned by ReadTensor for a name the file lacks.
var ErrNotFound = errors.New("no such tensor")

// ReadTensor reads tensor name's bytes from r (the whole file) into dst,
// which must be exactly its size.
func ReadTensor(r io.ReaderAt, h *Header, name string, dst []byte) error {
	t, ok := h.Find(name)
	if !ok {
		return fmt.Errorf("safetensors: tensor %q: %w", name, ErrNotFound)
	}
	if int64(len(dst)) != t.End-t.Begin {
		return &Error{name, fmt.Sprintf("is %d bytes, the buffer %d", t.End-t.Begin, len(dst))}
	}
	if _, err := r.ReadAt(dst, h.DataStart+t.Begin); err != nil {
		return &Error{name, fmt.Sprintf("reading %d bytes at %d: %v (truncated?)", len(dst), h.DataStart+t.Begin, err)}
	}
	return nil
}
