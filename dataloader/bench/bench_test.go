package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/dataloader"
)

// A small run of the whole measurement so that `ringo bench data` cannot
// rot; the figures are for BENCHMARKS.md.
func TestRunSmall(t *testing.T) {
	in := filepath.Join(t.TempDir(), "x.jsonl")
	f, _ := os.Create(in)
	for i := range 2000 {
		fmt.Fprintf(f, "{\"id\":%d,\"pad\":\"%0100d\"}\n", i, i)
	}
	f.Close()
	out := t.TempDir()
	opts := dataloader.DefaultPackOptions()
	opts.ShardBytes, opts.Shard.BlockSize = 32<<10, 8<<10
	if _, err := dataloader.PackJSONL(in, out, opts); err != nil {
		t.Fatal(err)
	}
	r, err := Run(context.Background(), Config{Location: out, NP: 2, BatchSize: 16, Window: 256, Workers: 2, Consumer: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Records != 2000 || !(r.RawGBps > 0) || !(r.StreamGBps > 0) || !(r.SamplesPerSec > 0) {
		t.Errorf("result %+v", r)
	}
}
