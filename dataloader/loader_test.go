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
	"slices"
	"strings"
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

// packIDs packs n records {"id": i, "pad": ...} with the given shard and
// block sizes and compression level.
func packIDs(t *testing.T, n, shardBytes, blockBytes, level int) *Dataset {
	t.Helper()
	in := filepath.Join(t.TempDir(), "ids.jsonl")
	f, _ := os.Create(in)
	for i := range n {
		fmt.Fprintf(f, "{\"id\":%d,\"pad\":\"%0*d\"}\n", i, i%37, 0)
	}
	f.Close()
	out := t.TempDir()
	opts := DefaultPackOptions()
	opts.ShardBytes, opts.Shard.BlockSize, opts.Shard.Level = int64(shardBytes), blockBytes, level
	if _, err := PackJSONL(in, out, opts); err != nil {
		t.Fatal(err)
	}
	ds, err := Open(context.Background(), source.Local(out))
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// layoutOf returns the dataset's block layout, as the loader sees it.
func layoutOf(t *testing.T, ds *Dataset) [][]int64 {
	t.Helper()
	ly := make([][]int64, len(ds.Index.Shards))
	for i := range ds.Index.Shards {
		r, obj, err := ds.OpenShard(context.Background(), i)
		if err != nil {
			t.Fatal(err)
		}
		for b := range r.Blocks() {
			ly[i] = append(ly[i], int64(r.Block(b).Records))
		}
		obj.Close()
	}
	return ly
}

// TestLoaderFollowsTheOrder: every rank's loader hands out exactly the
// batches its order cursor names, in V1 and V2, with and without
// compression, budgets from tiny to ample, and padding.
func TestLoaderFollowsTheOrder(t *testing.T) {
	for _, level := range []int{0, 3} {
		ds := packIDs(t, 613, 4000, 700, level)
		ly := layoutOf(t, ds)
		for _, v := range []int{order.V1, order.V2} {
			for _, world := range []int{1, 3, 4} {
				for _, c := range []struct {
					b, window int
					budget    int64
				}{{1, 0, 1}, {5, 40, 1 << 10}, {16, 1000, 0}} {
					cfg := order.Config{Version: v, Seed: 9, Shuffle: true, Window: c.window, BatchSize: c.b, Span: 20}
					o, err := order.NewBlocks(ly, cfg)
					if err != nil {
						t.Fatal(err)
					}
					name := fmt.Sprintf("level%d/v%d/n%d/b%d/w%d", level, v, world, c.b, c.window)
					for r := range world {
						cur, _ := o.Cursor(o.Start(1), r, world)
						l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, Rank: r, World: world, State: o.Start(1), Workers: 3, MaxInFlight: c.budget}, decodeID)
						if err != nil {
							t.Fatal(err)
						}
						for step := 0; ; step++ {
							want, ok := cur.Next()
							b, err := l.Next(context.Background())
							if !ok {
								if !errors.Is(err, io.EOF) {
									t.Fatalf("%s rank %d: after the last batch Next = %v", name, r, err)
								}
								break
							}
							if err != nil {
								t.Fatalf("%s rank %d step %d: %v", name, r, step, err)
							}
							if len(b.Samples) != len(want) || b.State != cur.State() {
								t.Fatalf("%s rank %d step %d: %d samples, state %+v; want %d, %+v", name, r, step, len(b.Samples), b.State, len(want), cur.State())
							}
							for i, s := range want {
								if int64(b.Samples[i]) != o.Flat(s) {
									t.Fatalf("%s rank %d step %d item %d: id %d, want %d", name, r, step, i, b.Samples[i], o.Flat(s))
								}
							}
						}
						l.Close()
					}
				}
			}
		}
	}
}

// TestLoaderV2ReadsOnce: with V2 the ranks read disjoint blocks, so
// together they read the dataset about once; with V1 each reads it all.
func TestLoaderV2ReadsOnce(t *testing.T) {
	ds := packIDs(t, 4000, 20000, 1000, 0)
	var stored int64
	for _, s := range ds.Index.Shards {
		stored += s.Bytes
	}
	for _, v := range []int{order.V1, order.V2} {
		cfg := order.Config{Version: v, Seed: 5, Shuffle: true, Window: 64, BatchSize: 8, DropLast: true}
		var read, samples int64
		for r := range 4 {
			l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, Rank: r, World: 4, State: order.State{Seed: 5}}, decodeID)
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := l.Next(context.Background()); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
			}
			s := l.Stats()
			read += s.Read
			samples += s.Samples
			l.Close()
		}
		ratio := float64(read) / float64(stored)
		t.Logf("v%d: 4 ranks read %.2fx the dataset for %d samples", v, ratio, samples)
		if v == order.V2 && ratio > 1.1 {
			t.Errorf("V2: 4 ranks read %.2fx the dataset, want about 1", ratio)
		}
		if v == order.V1 && ratio < 3 {
			t.Errorf("V1: 4 ranks read %.2fx the dataset; expected each to read nearly all of it", ratio)
		}
	}
}

// TestLoaderV2ElasticResume: four ranks stop part-way, the state goes
// through JSON, three ranks finish the epoch: every record exactly once
// (the dropped remainder aside), and the same world resumes exactly.
func TestLoaderV2ElasticResume(t *testing.T) {
	const n = 1009
	ds := packIDs(t, n, 6000, 800, 0)
	cfg := order.Config{Version: order.V2, Seed: 42, Shuffle: true, Window: 30, BatchSize: 4, DropLast: true, Span: 25}
	start := order.State{Seed: 42}
	for _, stop := range []int{0, 1, 13, 40} {
		first, st := drain(t, ds, cfg, start, 4, stop)
		js, _ := json.Marshal(st)
		var st2 order.State
		json.Unmarshal(js, &st2)
		if stop > 0 && (st2.Version != order.V2 || st2.Streams != 4 || st2.Chunk != 4) {
			t.Fatalf("stop %d: state %+v does not record its order", stop, st2)
		}
		if stop == 0 {
			st2 = start
		}
		rest, _ := drain(t, ds, cfg, st2, 3, -1)
		seen := map[int]int{}
		for _, id := range append(first, rest...) {
			seen[id]++
		}
		dropped := 0
		for id := range n {
			switch seen[id] {
			case 0:
				dropped++
			case 1:
			default:
				t.Fatalf("stop %d: record %d read %d times", stop, id, seen[id])
			}
		}
		if dropped >= 3*4 {
			t.Errorf("stop %d: %d records never read", stop, dropped)
		}
		// Same world: the resumed run continues the uninterrupted one.
		all, _ := drain(t, ds, cfg, start, 4, -1)
		again, _ := drain(t, ds, cfg, st2, 4, -1)
		if fmt.Sprint(append(first, again...)) != fmt.Sprint(all) {
			t.Errorf("stop %d: resuming with the same world differs from the uninterrupted run", stop)
		}
	}
}

func TestLoaderDecodeError(t *testing.T) {
	ds := packIDs(t, 300, 4000, 500, 0)
	cfg := order.Config{Version: order.V2, Seed: 1, Shuffle: true, Window: 10, BatchSize: 7}
	l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, World: 1, State: order.State{Seed: 1}}, func(b []byte) (int, error) {
		id, err := decodeID(b)
		if id == 77 {
			return 0, errors.New("no 77s")
		}
		return id, err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var failed int
	for {
		_, err := l.Next(context.Background())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !strings.Contains(err.Error(), "no 77s") || !strings.Contains(err.Error(), "shard-") {
				t.Errorf("error %v does not say which record and why", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d batches failed, want 1", failed)
	}
}

// A second loader over the same Dataset reuses the shards the first
// opened and its read buffers, and starts at the reads in flight the
// first climbed to; after
// Dataset.Close a new loader fails, saying what to do.
func TestDatasetKeepsShardsForTheNextLoader(t *testing.T) {
	ds := idDataset(t, 500)
	cfg := order.Config{Seed: 1, Shuffle: true, Window: 10, BatchSize: 8}
	o, _ := order.New(ds.Index.Counts(), cfg)
	newLoader := func() (*Loader[int], error) {
		return NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, World: 1, State: o.Start(0), Workers: 2}, decodeID)
	}
	l, err := newLoader()
	if err != nil {
		t.Fatal(err)
	}
	first := slices.Clone(l.readers)
	drain := func(l *Loader[int]) {
		for {
			if _, err := l.Next(context.Background()); err != nil {
				return
			}
		}
	}
	drain(l)
	l.Close()
	bufs := map[*byte]bool{}
	for _, b := range ds.bufs {
		bufs[&b[:1][0]] = true
	}
	if len(bufs) == 0 {
		t.Fatal("the dataset kept no read buffers from the first loader")
	}
	ds.reads.Store(5) // as if the first loader had climbed to 5
	l, err = newLoader()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range l.readers {
		if r != first[i] {
			t.Errorf("shard %d was opened again", i)
		}
	}
	reads := l.Stats().Reads
	if reads < 5 { // 2 (Workers) without the hint; the climb may add more
		t.Errorf("the second loader started with %d reads in flight, want the 5 the dataset remembered", reads)
	}
	// Its 5 reads in flight took the first loader's buffers before
	// making new ones.
	drain(l)
	l.Close()
	kept := 0
	for _, b := range ds.bufs {
		if bufs[&b[:1][0]] {
			kept++
		}
	}
	if made := len(ds.bufs) - kept; kept != len(bufs) || made > max(0, reads-len(bufs)) {
		t.Errorf("the second loader (%d reads in flight) kept %d of the first one's %d read buffers and made %d", reads, kept, len(bufs), made)
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := newLoader(); err == nil || !strings.Contains(err.Error(), "open it again") {
		t.Errorf("a loader over a closed dataset: %v", err)
	}
}

// The plan reads every needed block exactly once, in runs of neighbouring
// blocks in first-use order, and leaves no two runs side by side in a
// file that one read could have taken: runs made apart and joined later
// by the block between them are merged (blocks needed 3, 1, 2 used to
// leave [1 2] and [3] as two reads).
func TestPlanJoinsNeighbours(t *testing.T) {
	ds := packIDs(t, 6000, 40000, 400, 0)
	for _, budget := range []int64{0, 8 << 10} {
		for _, c := range []struct{ span, window int }{{1, 0}, {30, 200}, {200, 2000}} {
			cfg := order.Config{Version: order.V2, Seed: 4, Shuffle: true, Window: c.window, Span: c.span, BatchSize: 8}
			l, err := NewLoader(context.Background(), ds, LoaderConfig{Order: cfg, World: 1, State: order.State{Seed: 4}, Workers: 1, MaxInFlight: budget}, decodeID)
			if err != nil {
				t.Fatal(err)
			}
			l.Close()
			name := fmt.Sprintf("budget %d span %d window %d", budget, c.span, c.window)
			type at struct{ shard, block int }
			owner := map[at]int{}
			var wmax int64
			samples := 0
			for k, j := range l.jobs {
				r := l.readers[j.shard]
				if k > 0 && j.first < l.jobs[k-1].first {
					t.Fatalf("%s: job %d is needed at %d, before job %d at %d", name, k, j.first, k-1, l.jobs[k-1].first)
				}
				if len(j.ends) != j.nblocks || j.ends[j.nblocks-1] != len(j.needs) || j.off != r.Block(j.block).Offset {
					t.Fatalf("%s: job %d: %d blocks, ends %v for %d needs, offset %d", name, k, j.nblocks, j.ends, len(j.needs), j.off)
				}
				var stored int64
				from := 0
				for b := j.block; b < j.block+j.nblocks; b++ {
					bi := r.Block(b)
					stored += bi.Stored
					wmax = max(wmax, bi.Raw/int64(bi.Records))
					if o, dup := owner[at{j.shard, b}]; dup {
						t.Fatalf("%s: block %d of shard %d is in jobs %d and %d", name, b, j.shard, o, k)
					}
					owner[at{j.shard, b}] = k
					group := j.needs[from:j.ends[b-j.block]]
					if len(group) == 0 {
						t.Fatalf("%s: job %d reads block %d of shard %d, which no sample needs", name, k, b, j.shard)
					}
					for _, nd := range group {
						if nd.rec < 0 || int(nd.rec) >= bi.Records || nd.pos < j.first {
							t.Fatalf("%s: job %d block %d: need %+v (block of %d records, job first %d)", name, k, b, nd, bi.Records, j.first)
						}
					}
					from = j.ends[b-j.block]
				}
				samples += len(j.needs)
				if stored != j.len || j.len > MaxReadBytes {
					t.Fatalf("%s: job %d reads %d bytes, its blocks hold %d (at most %d)", name, k, j.len, stored, MaxReadBytes)
				}
			}
			if want := len(l.states) * cfg.BatchSize; samples < want-cfg.BatchSize || samples > want {
				t.Fatalf("%s: the jobs feed %d samples for %d batches of %d", name, samples, len(l.states), cfg.BatchSize)
			}
			lim := l.cfg.MaxInFlight / mergeAhead
			for k, j := range l.jobs {
				next, ok := owner[at{j.shard, j.block + j.nblocks}]
				if !ok {
					continue
				}
				n := l.jobs[next]
				if j.len+n.len <= MaxReadBytes && max(n.first-j.first, j.first-n.first)*wmax <= lim {
					t.Errorf("%s: jobs %d and %d read blocks %d-%d and %d-%d of shard %d, needed at %d and %d: one read would do", name, k, next, j.block, j.block+j.nblocks-1, n.block, n.block+n.nblocks-1, j.shard, j.first, n.first)
				}
			}
			t.Logf("%s: %d reads", name, len(l.jobs))
		}
	}
}

// blockOf finds every record's block, whether the blocks hold the same
// count of records or not.
func TestBlockOf(t *testing.T) {
	for _, counts := range [][]int64{{5}, {4, 4, 4, 3}, {1, 9, 2, 2, 30, 1, 1}, {7, 7, 1, 7, 7}} {
		var firsts []int64
		var total int64
		for _, c := range counts {
			firsts = append(firsts, total)
			total += c
		}
		for i := range total {
			b := blockOf(firsts, i)
			if b < 0 || b >= len(firsts) || firsts[b] > i || (b+1 < len(firsts) && firsts[b+1] <= i) {
				t.Fatalf("blocks of %v records: record %d is in block %d", counts, i, b)
			}
		}
	}
}
