package rendezvous

import (
	"bytes"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []*frame{
		{Op: opGet, ID: 1, Keys: []string{"k"}},
		{Op: opSet, ID: 1 << 60, Keys: []string{"k"}, Vals: [][]byte{{}}},
		{Op: opCAS, ID: 3, Keys: []string{"k"}, Vals: [][]byte{nil, []byte("new")}},
		{Op: opAdd, ID: 4, Num: -7, Keys: []string{"count"}},
		{Op: opWait, ID: 5, Keys: []string{"a", "", "c"}},
		{Op: statusOK, ID: 6, Vals: [][]byte{[]byte("x"), nil, {}}},
		{Op: opCancel, ID: 7},
	} {
		b, err := appendFrame(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("round trip of %+v gave %+v", f, got)
		}
	}
}

func TestGreeting(t *testing.T) {
	v, flags, err := decodeGreeting(encodeGreeting(true))
	if err != nil || v != ProtocolVersion || flags != flagToken {
		t.Fatalf("greeting: v%d flags %d, %v", v, flags, err)
	}
	if _, _, err := decodeGreeting([]byte("HTTP/1.1")); err == nil {
		t.Fatal("HTTP taken for a greeting")
	}
}

// FuzzDecodeFrame: the decoder never panics or over-reads, and whatever
// it accepts encodes back to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range []*frame{
		{Op: opGet, ID: 1, Keys: []string{"k"}},
		{Op: opCAS, ID: 2, Keys: []string{"leader"}, Vals: [][]byte{nil, []byte("10.0.0.1:29500")}},
		{Op: statusOK, ID: 3, Num: 42, Vals: [][]byte{{}, []byte("v")}},
	} {
		b, _ := appendFrame(nil, fr)
		f.Add(b[4:])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		fr, err := decodeFrame(body)
		if err != nil {
			return
		}
		b, err := appendFrame(nil, fr)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", fr, err)
		}
		if !bytes.Equal(b[4:], body) {
			t.Fatalf("decode then encode changed the bytes:\n in %x\nout %x", body, b[4:])
		}
	})
}
