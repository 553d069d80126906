package checkpoint

import (
	"encoding/json"
	"testing"
)

// FuzzParseManifest: a manifest comes from disk and may be anything; the
// parser returns an error or a manifest whose pieces tile every tensor.
func FuzzParseManifest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		for name, mt := range m.Tensors {
			next := int64(0)
			for _, p := range mt.Pieces {
				if p.Rows[0] != next || p.Shard < 0 || p.Shard >= m.WorldSize {
					t.Fatalf("accepted tensor %q with pieces %+v", name, mt.Pieces)
				}
				next = p.Rows[1]
			}
		}
		if _, err := json.Marshal(m); err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
	})
}

func TestParseStepDir(t *testing.T) {
	for name, want := range map[string]int64{"step-00000042": 42, "step-7": 7} {
		if got, ok := parseStepDir(name); !ok || got != want {
			t.Errorf("%s: got %d, %v", name, got, ok)
		}
	}
	for _, name := range []string{"step-", "step-1.tmp-ab", "step-x", "steps-1", "step-99999999999999999999"} {
		if _, ok := parseStepDir(name); ok {
			t.Errorf("%s accepted", name)
		}
	}
}
