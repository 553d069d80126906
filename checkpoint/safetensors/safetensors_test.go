package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*7 + seed
	}
	return b
}

func TestRoundTripEveryDType(t *testing.T) {
	var tensors []Tensor
	for i, d := range []DType{BOOL, U8, I8, F8E5M2, F8E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64} {
		shape := []int64{int64(i%3 + 1), 5}
		tensors = append(tensors, Tensor{Name: "t." + string(d), DType: d, Shape: shape, Data: fill(int(shape[0]*5)*d.Size(), byte(i))})
	}
	tensors = append(tensors,
		Tensor{Name: "scalar", DType: F32, Shape: []int64{}, Data: fill(4, 9)},
		Tensor{Name: "empty", DType: F64, Shape: []int64{0, 3}, Data: []byte{}})
	meta := map[string]string{"step": "42", "note": "ünïcode \"quoted\""}
	var buf bytes.Buffer
	if err := Write(&buf, tensors, meta); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	h, err := ReadHeader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if h.DataStart%8 != 0 {
		t.Errorf("data starts at %d, not a multiple of 8", h.DataStart)
	}
	if fmt.Sprint(h.Metadata) != fmt.Sprint(meta) {
		t.Errorf("metadata %v, want %v", h.Metadata, meta)
	}
	if len(h.Tensors) != len(tensors) {
		t.Fatalf("%d tensors read, %d written", len(h.Tensors), len(tensors))
	}
	for _, want := range tensors {
		info, ok := h.Find(want.Name)
		if !ok {
			t.Fatalf("tensor %q missing", want.Name)
		}
		if info.DType != want.DType || fmt.Sprint(info.Shape) != fmt.Sprint(want.Shape) {
			t.Errorf("%s: got %s %v", want.Name, info.DType, info.Shape)
		}
		if (h.DataStart+info.Begin)%int64(want.DType.Size()) != 0 {
			t.Errorf("%s starts at file offset %d, not aligned to its %d-byte elements", want.Name, h.DataStart+info.Begin, want.DType.Size())
		}
		got := make([]byte, len(want.Data))
		if err := ReadTensor(bytes.NewReader(file), h, want.Name, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Data) {
			t.Errorf("%s: bytes differ", want.Name)
		}
	}
	if err := ReadTensor(bytes.NewReader(file), h, "nope", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: got %v, want ErrNotFound", err)
	}
}

// A file built by hand from the format's description, not by our writer:
// the example of the format's own documentation.
func TestParsesTheSpecExample(t *testing.T) {
	js := `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"foo":"bar"}}`
	file := make([]byte, 8, 8+len(js)+16)
	binary.LittleEndian.PutUint64(file, uint64(len(js)))
	file = append(file, js...)
	for i := range int32(4) {
		file = binary.LittleEndian.AppendUint32(file, uint32(i+1))
	}
	h, err := ReadHeader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if h.Metadata["foo"] != "bar" || len(h.Tensors) != 1 || h.DataStart != int64(8+len(js)) {
		t.Fatalf("parsed %+v", h)
	}
	got := make([]byte, 16)
	if err := ReadTensor(bytes.NewReader(file), h, "test", got); err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(got[12:]); v != 4 {
		t.Errorf("last element %d, want 4", v)
	}
}

func TestWriterMatchesTheFormat(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, []Tensor{{Name: "w", DType: F32, Shape: []int64{2}, Data: fill(8, 1)}}, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	n := binary.LittleEndian.Uint64(b)
	js := strings.TrimRight(string(b[8:8+n]), " ")
	want := `{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	if js != want {
		t.Errorf("header\n got %s\nwant %s", js, want)
	}
	if uint64(len(b)) != 8+n+8 {
		t.Errorf("file is %d bytes, want %d", len(b), 8+n+8)
	}
}

func header(js string) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, uint64(len(js)))
	return append(b, js...)
}

func TestRejects(t *testing.T) {
	ok := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}`
	cases := []struct {
		name, js string
		data     int // data bytes after the header
		want     string
	}{
		{"hole", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[9,12]}}`, 12, "hole"},
		{"overlap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[6,9]}}`, 9, "overlaps"},
		{"wrong length", `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8, "needs"},
		{"duplicate", `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2, "twice"},
		{"unknown dtype", `{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}`, 16, "unknown dtype"},
		{"negative dim", `{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, 0, "negative"},
		{"no shape", `{"a":{"dtype":"U8","data_offsets":[0,0]}}`, 0, "no shape"},
		{"metadata not strings", `{"__metadata__":{"k":1}}`, 0, "strings"},
		{"trailing garbage", `{}xyz`, 0, "other than space"},
		{"not an object", `[1,2]`, 0, "not a JSON object"},
		{"truncated data", ok, 10, "truncated"},
		{"extra data", ok, 12, "extended"},
	}
	for _, c := range cases {
		file := append(header(c.js), make([]byte, c.data)...)
		_, err := ReadHeader(bytes.NewReader(file), int64(len(file)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, MaxHeader+1)
	if _, err := ReadHeader(bytes.NewReader(huge), -1); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("huge header length: got %v", err)
	}
	if _, err := ReadHeader(bytes.NewReader(header(ok)[:20]), 20); err == nil {
		t.Errorf("a cut header was accepted")
	}
}

func TestLayoutRefuses(t *testing.T) {
	for _, ts := range [][]Tensor{
		{{Name: "x", DType: F32, Shape: []int64{2}, Data: make([]byte, 7)}},
		{{Name: "x", DType: U8, Shape: []int64{1}, Data: []byte{1}}, {Name: "x", DType: U8, Shape: []int64{1}, Data: []byte{1}}},
		{{Name: "__metadata__", DType: U8, Shape: []int64{0}}},
		{{Name: "x", DType: "Q4", Shape: []int64{1}}},
	} {
		if _, _, err := Layout(ts, nil); err == nil {
			t.Errorf("Layout(%v) accepted bad tensors", ts)
		}
	}
}

// FuzzParseHeader: whatever a file holds, the parser returns an error or a
// header whose tensors tile the data exactly; it never panics.
func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, js []byte) {
		h, err := ParseHeader(js)
		if err != nil {
			return
		}
		var end int64
		for _, ti := range h.Tensors {
			n, err := byteLen(ti.DType, ti.Shape)
			if err != nil || ti.Begin != end || ti.End-ti.Begin != n {
				t.Fatalf("accepted a bad layout: %+v", h.Tensors)
			}
			end = ti.End
		}
	})
}
