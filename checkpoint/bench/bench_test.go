package bench

import (
	"context"
	"testing"
)

// A small run of the whole measurement, so that `ringo bench ckpt` cannot
// rot; the numbers themselves are for BENCHMARKS.md, not for assertions.
func TestRunSmall(t *testing.T) {
	r, err := Run(context.Background(), Config{Bytes: 4 << 20, NP: 3, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]float64{"plain write": r.PlainWrite, "plain read": r.PlainRead, "save": r.Save, "load": r.Load, "memcpy": r.Memcpy} {
		if !(v > 0) {
			t.Errorf("%s bandwidth %v was not measured", name, v)
		}
	}
}
