package dataloader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// idDataset packs n records {"id": i} into several shards of small blocks.
func idDataset(t *testing.T, n int) *Dataset {
	t.Helper()
	in := filepath.Join(t.TempDir(), "ids.jsonl")
	f, _ := os.Create(in)
	for i := range n {
		fmt.Fprintf(f, "{\"id\":%d}\n", i)
	}
	f.Close()
	out := t.TempDir()
	opts := DefaultPackOptions()
	opts.ShardBytes, opts.Shard.BlockSize = 900, 200
	if _, err := PackJSONL(in, out, opts); err != nil {
		t.Fatal(err)
	}
	ds, err := Open(context.Background(), source.Local(out))
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func decodeID(b []byte) (int, error) {
	var v struct{ ID int }
	err := json.Unmarshal(b, &v)
	return v.ID, err
}

// drain reads batches from every rank's loader in lock-step, stopping
// after stop global batches (-1: the whole epoch); it returns the ids seen
// and the job state after the last batch.
func drain(t *testing.T, ds *Dataset, cfg order.Config, st order.State, world, stop int) ([]int, order.State) {
	t.Helper()
	loaders := make([]*Loader[int], world)
	for r := range loaders {
		l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, Rank: r, World: world, State: st, Workers: 3, MaxInFlight: 1 << 10}, decodeID)
		if err != nil {
			t.Fatal(err)
		}
		loaders[r] = l
		defer l.Close()
	}
	var ids []int
	for step := 0; stop < 0 || step < stop; step++ {
		ended := 0
		for _, l := range loaders {
			b, err := l.Next(context.Background())
			if errors.Is(err, io.EOF) {
				ended++
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, b.Samples...)
			st = b.State
		}
		if ended == world {
			break
		}
		if ended != 0 {
			t.Fatalf("ranks disagree about the end of the epoch")
		}
	}
	return ids, st
}

func TestLoaderEveryRecordOnceAndElasticResume(t *testing.T) {
	const n = 257
	ds := idDataset(t, n)
	cfg := order.Config{Seed: 42, Shuffle: true, Window: 50, BatchSize: 4, DropLast: true}
	o, _ := order.New(ds.Index.Counts(), cfg)
	start := o.Start(0)

	// Four ranks stop after 7 global batches; three ranks finish the epoch.
	first, st := drain(t, ds, cfg, start, 4, 7)
	rest, _ := drain(t, ds, cfg, st, 3, -1)
	seen := map[int]int{}
	for _, id := range append(first, rest...) {
		seen[id]++
	}
	dropped := 0
	for id := 0; id < n; id++ {
		switch seen[id] {
		case 0:
			dropped++
		case 1:
		default:
			t.Fatalf("record %d was read %d times", id, seen[id])
		}
	}
	if dropped >= 3*4 {
		t.Errorf("%d records never read; only a remainder smaller than a global batch may be dropped", dropped)
	}
	// The same job without interruption reads the same first batches.
	again, _ := drain(t, ds, cfg, start, 4, 7)
	if fmt.Sprint(again) != fmt.Sprint(first) {
		t.Errorf("the order is not deterministic")
	}
}

func TestLoaderCloseStopsEverything(t *testing.T) {
	ds := idDataset(t, 500)
	before := runtime.NumGoroutine()
	cfg := order.Config{Seed: 1, Shuffle: true, Window: 10, BatchSize: 8}
	o, _ := order.New(ds.Index.Counts(), cfg)
	l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, Rank: 0, World: 1, State: o.Start(0), MaxInFlight: 64}, decodeID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Errorf("%d goroutines before, %d after Close", before, g)
	}
	if s := l.Stats(); s.Samples != 8 || s.Bytes == 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestLoaderCorruptBlocks(t *testing.T) {
	ds := idDataset(t, 200)
	dir := ds.Src.String()
	name := ds.Index.Shards[0].Name
	b, _ := os.ReadFile(filepath.Join(dir, name))
	b[30] ^= 0xff // inside the first block
	os.WriteFile(filepath.Join(dir, name), b, 0o644)
	cfg := order.Config{Seed: 3, BatchSize: 10}
	o, _ := order.New(ds.Index.Counts(), cfg)
	l, _ := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, World: 1, State: o.Start(0)}, decodeID)
	_, err := l.Next(context.Background())
	l.Close()
	if err == nil || !errors.Is(err, ErrCorruptForTest()) {
		t.Fatalf("corrupt block: got %v", err)
	}
	l, _ = NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, World: 1, State: o.Start(0), SkipCorrupt: true}, decodeID)
	defer l.Close()
	total := 0
	for {
		b, err := l.Next(context.Background())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		total += len(b.Samples)
	}
	if s := l.Stats(); s.Skipped == 0 || total+int(s.Skipped) != 200 {
		t.Errorf("read %d, skipped %d of 200", total, s.Skipped)
	}
}

func ErrCorruptForTest() error { return shardErrCorrupt }
