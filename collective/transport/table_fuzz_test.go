package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
)

// FuzzReadRegistration: whatever a process sends rank 0's rendezvous, it
// is dropped or read as a registration whose encoding reads back the same.
func FuzzReadRegistration(f *testing.F) {
	m := NewMember(3, map[string]any{"tcp": map[string]any{"addr": "127.0.0.1:9", "sockets": 1}})
	b, _ := json.Marshal(registration{V: BootstrapVersion, Size: 4, Member: m})
	f.Add(append(b, '\n'))
	f.Add([]byte(`{"v":1,"size":2,"rank":1}` + "\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		size, m, ok := ReadRegistration(bytes.NewReader(in))
		if !ok {
			return
		}
		out, err := json.Marshal(registration{V: BootstrapVersion, Size: size, Member: m})
		if err != nil {
			t.Fatalf("accepted a registration that does not encode: %v", err)
		}
		// Encoding canonicalises (escapes, spacing), so compare encodings.
		size2, m2, ok := ReadRegistration(bytes.NewReader(append(out, '\n')))
		again, _ := json.Marshal(registration{V: BootstrapVersion, Size: size2, Member: m2})
		if !ok || size2 != size || m2.Rank != m.Rank || m2.Host != m.Host || !bytes.Equal(again, out) {
			t.Fatalf("registration changed on the way round:\n in %q\nout %q", in, out)
		}
	})
}

// answerConn is a rendezvous that answers with fixed bytes.
type answerConn struct{ io.Reader }

func (answerConn) Write(b []byte) (int, error) { return len(b), nil }

// FuzzRegisterAnswer: whatever the rendezvous answers, Register fails or
// returns a table of exactly the group's size, each rank in its place.
func FuzzRegisterAnswer(f *testing.F) {
	tab := Table{Nonce: 9, Members: []Member{{Rank: 0}, {Rank: 1}}}
	b, _ := json.Marshal(answer{V: BootstrapVersion, Table: tab})
	f.Add(append(b, '\n'), 2)
	f.Add([]byte(`{"v":2,"error":"no"}`+"\n"), 2)
	f.Fuzz(func(t *testing.T, in []byte, size int) {
		if size < 1 || size > 64 {
			return
		}
		got, err := Register(context.Background(), answerConn{bytes.NewReader(in)}, size, Member{Rank: 0}, "fuzz")
		if err != nil {
			return
		}
		if len(got.Members) != size {
			t.Fatalf("table of %d ranks for a group of %d", len(got.Members), size)
		}
		for r, m := range got.Members {
			if m.Rank != r {
				t.Fatalf("rank %d in place %d", m.Rank, r)
			}
		}
	})
}
