package dataloader

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/source"
)

func TestPrefetchClimb(t *testing.T) {
	// Rates that grow by half with each doubling until 32 reads, then
	// stay flat.
	p := newPrefetch(4, 64)
	rateAt := func(n int) float64 {
		r := 100e6
		for k := 4; k < min(n, 32); k *= 2 {
			r *= 1.5
		}
		return r
	}
	var seen []int
	for range 20 {
		n := p.observe(int64(rateAt(p.n)), time.Second, -1, false)
		seen = append(seen, n)
		if n > 64 {
			t.Fatalf("grew past the cap: %v", seen)
		}
	}
	if p.n != 64 || !p.settled {
		// 4 -> 8 -> 16 -> 32 -> 64 (32 still beat 16), then 64 = 32: stop.
		t.Errorf("climb %v: ended at %d (settled %v), want 64 settled", seen, p.n, p.settled)
	}
	if seen[0] != 8 || seen[1] != 16 || seen[2] != 32 || seen[3] != 64 || seen[4] != 64 {
		t.Errorf("climb %v, want 8 16 32 64 64 ...", seen)
	}

	// No gain at the first doubling: stop at 8, for good.
	p = newPrefetch(4, 64)
	p.observe(100e6, time.Second, -1, false)
	if n := p.observe(105e6, time.Second, -1, false); n != 8 || !p.settled {
		t.Errorf("after a 5%% gain: n %d settled %v, want 8 and settled", n, p.settled)
	}
	if n := p.observe(900e6, time.Second, -1, false); n != 8 {
		t.Errorf("grew again after settling: %d", n)
	}

	// Rates that double with n: the climb goes by four after the first
	// doubling, 4 -> 8 -> 32 -> 64.
	p = newPrefetch(4, 64)
	seen = seen[:0]
	for range 6 {
		seen = append(seen, p.observe(int64(p.n)*100e6, time.Second, -1, false))
	}
	if seen[0] != 8 || seen[1] != 32 || seen[2] != 64 || seen[5] != 64 {
		t.Errorf("linear climb %v, want 8 32 64 ...", seen)
	}

	// A window that kept the CPUs busy stops the climb whatever the
	// rate did.
	p = newPrefetch(4, 64)
	p.observe(100e6, time.Second, 0.3, true)
	if n := p.observe(400e6, time.Second, 0.95, false); n != 8 || !p.settled {
		t.Errorf("busy CPUs: n %d settled %v, want 8 and settled", n, p.settled)
	}

	// Idle CPUs with every read in flight (round trips): one step of
	// busyCPU/cpu, at most maxJump, 4 -> 64 at 5% busy; then, with the
	// CPUs busier, steps by the rate again.
	p = newPrefetch(4, 256)
	if n := p.observe(100e6, time.Second, 0.05, false); n != 64 {
		t.Errorf("5%% busy, nothing held: stepped to %d, want 64", n)
	}
	if n := p.observe(1500e6, time.Second, 0.5, false); n != 256 {
		t.Errorf("15x the rate at 50%% busy: stepped to %d, want 256 (by the rate: 4)", n)
	}
	p = newPrefetch(4, 256)
	if n := p.observe(100e6, time.Second, 0.3, false); n != 8 {
		t.Errorf("30%% busy: stepped to %d, want 8 (busyCPU/0.3 is under 3)", n)
	}
	// The same idle CPUs while the budget held reads back: the consumer
	// is the limit, and the climb only doubles.
	p = newPrefetch(4, 256)
	if n := p.observe(100e6, time.Second, 0.05, true); n != 8 {
		t.Errorf("5%% busy, budget held: stepped to %d, want 8", n)
	}

	// The shards' opens left the CPUs idle: start 16 times higher, and
	// still climb by the windows after; busy or unknown: start as asked.
	p = newPrefetch(4, 256)
	if n := p.afterOpens(0.02); n != 64 || p.settled {
		t.Errorf("opens at 2%% busy: start %d (settled %v), want 64, still climbing", n, p.settled)
	}
	if n := p.observe(100e6, time.Second, 0.5, false); n != 128 {
		t.Errorf("after the opens' step, a window at 50%% busy: %d, want 128", n)
	}
	for _, busy := range []float64{0.9, -1} {
		if n := newPrefetch(4, 256).afterOpens(busy); n != 4 {
			t.Errorf("opens at busy %v: start %d, want 4", busy, n)
		}
	}
	if n := newPrefetch(4, 10).afterOpens(0); n != 10 {
		t.Errorf("opens at 0%% busy, cap 10: start %d, want 10", n)
	}

	// The cap is at least the start, and a start at the cap never grows.
	p = newPrefetch(8, 2)
	if n := p.observe(1, time.Second, -1, false); n != 8 || !p.settled {
		t.Errorf("start 8 cap 2: n %d settled %v", n, p.settled)
	}
	// A cap that is not a power-of-two multiple is reached exactly.
	p = newPrefetch(3, 10)
	for i := range 5 {
		p.observe(int64(i+1)*1e9, time.Second, -1, false)
	}
	if p.n != 10 {
		t.Errorf("start 3 cap 10: ended at %d", p.n)
	}
}

// slowServer serves dir over loopback HTTP, each request delayed by d.
func slowServer(t *testing.T, dir string, d time.Duration) source.Source {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(d)
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return source.HTTP(srv.URL, nil, source.DefaultRetry)
}

// paddedDataset packs 3000 JSON records of about 220 bytes into 4 KiB
// blocks and 96 KiB shards, and returns its directory.
func paddedDataset(t *testing.T) string {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.jsonl")
	var buf bytes.Buffer
	for i := range 3000 {
		buf.WriteString(`{"id":` + strconv.Itoa(i) + `,"pad":"` + string(bytes.Repeat([]byte{'x'}, 200)) + `"}` + "\n")
	}
	os.WriteFile(in, buf.Bytes(), 0o644)
	out := filepath.Join(dir, "ds")
	opts := DefaultPackOptions()
	opts.ShardBytes, opts.Shard.BlockSize = 96<<10, 4<<10
	if _, err := PackJSONL(in, out, opts); err != nil {
		t.Fatal(err)
	}
	return out
}

// Loaders that run at once over one Dataset share its reads in flight:
// three ranks of 6 workers each never have more than the 6 reads one of
// them climbed to at the server together, and each still gets its own
// batches.
func TestLoadersShareReadsInFlight(t *testing.T) {
	out := paddedDataset(t)
	var now, most atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(2 * time.Millisecond)
		http.FileServer(http.Dir(out)).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	ds, err := Open(ctx, source.HTTP(srv.URL, nil, source.DefaultRetry))
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	// No shuffle window to speak of, and a budget that joins no blocks:
	// every block is a read of its own, so each loader has many.
	cfg := order.Config{Version: order.V2, Seed: 3, Shuffle: true, Window: 4, BatchSize: 8}
	o, err := order.New(ds.Index.Counts(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	const world, workers = 3, 6
	newLoader := func(rank int) (*Loader[int], error) {
		return NewLoader(ctx, ds, LoaderConfig{Order: cfg, Rank: rank, World: world, State: o.Start(0), Workers: workers, MaxReads: workers, MaxInFlight: 64 << 20}, decodeID)
	}
	// A first loader opens the shards (the opens are not range reads of
	// blocks, and the Dataset keeps them for the others).
	l, err := newLoader(0)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	most.Store(0)
	samples := make([]int, world)
	stats := make([]Stats, world)
	var wg sync.WaitGroup
	for rank := range world {
		wg.Go(func() {
			l, err := newLoader(rank)
			if err != nil {
				t.Error(err)
				return
			}
			defer l.Close()
			for {
				b, err := l.Next(ctx)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Errorf("rank %d: %v", rank, err)
					return
				}
				samples[rank] += len(b.Samples)
			}
			stats[rank] = l.Stats()
		})
	}
	wg.Wait()
	total := 0
	for rank, st := range stats {
		total += samples[rank]
		if st.Reads != workers || st.DatasetReads != workers {
			t.Errorf("rank %d: %d reads in flight of its own, %d for the dataset; want %d and %d", rank, st.Reads, st.DatasetReads, workers, workers)
		}
	}
	if want := int(o.Total()); total != want {
		t.Errorf("the ranks got %d samples, want %d", total, want)
	}
	if got := most.Load(); got > workers || got < 2 {
		t.Errorf("%d range reads at once at the server from %d loaders of %d reads each, want 2 to %d (one shared limit)", got, world, workers, workers)
	}
}

// Whatever the climb does, a loader over a slow source delivers exactly
// what one over the files does, batch by batch with the same states, and
// keeps within its cap on reads in flight.
func TestLoaderAdaptivePrefetchSameBatches(t *testing.T) {
	out := paddedDataset(t)
	ctx := context.Background()
	cfg := order.Config{Version: order.V2, Seed: 7, Shuffle: true, Window: 500, BatchSize: 16}
	type got struct {
		ids    []int
		states []order.State
		reads  int
	}
	run := func(src source.Source, rank, world, maxReads int) got {
		ds, err := Open(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		o, err := order.New(ds.Index.Counts(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		l, err := NewLoader(ctx, ds, LoaderConfig{Order: cfg, Rank: rank, World: world, State: o.Start(0), Workers: 1, MaxReads: maxReads}, decodeID)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var g got
		for {
			b, err := l.Next(ctx)
			if err != nil {
				break
			}
			g.ids = append(g.ids, b.Samples...)
			g.states = append(g.states, b.State)
		}
		g.reads = l.Stats().Reads
		return g
	}
	slow := slowServer(t, out, 2*time.Millisecond)
	for _, world := range []int{1, 3} {
		for rank := range world {
			want := run(source.Local(out), rank, world, 1)
			if want.reads != 1 {
				t.Errorf("MaxReads 1: %d reads in flight", want.reads)
			}
			g := run(slow, rank, world, 5)
			if g.reads < 1 || g.reads > 5 {
				t.Errorf("world %d rank %d: %d reads in flight, want 1 to 5", world, rank, g.reads)
			}
			if len(g.ids) == 0 || len(g.ids) != len(want.ids) || len(g.states) != len(want.states) {
				t.Fatalf("world %d rank %d: %d samples in %d batches over HTTP, %d in %d from files", world, rank, len(g.ids), len(g.states), len(want.ids), len(want.states))
			}
			for i := range want.ids {
				if g.ids[i] != want.ids[i] {
					t.Fatalf("world %d rank %d: sample %d is %d over HTTP, %d from files", world, rank, i, g.ids[i], want.ids[i])
				}
			}
			for i := range want.states {
				if g.states[i] != want.states[i] {
					t.Fatalf("world %d rank %d: state after batch %d differs: %+v, %+v", world, rank, i, g.states[i], want.states[i])
				}
			}
		}
	}
}

// The default cap on reads in flight counts buffers of the plan's largest
// read against half of the budget, at most maxReadsCap.
func TestDefaultMaxReads(t *testing.T) {
	for _, c := range []struct {
		largest, budget int64
		want            int
	}{
		{2 << 20, 512 << 20, 128},
		{4 << 20, 512 << 20, 64},
		{5 << 20, 256 << 20, 25},
		{64 << 10, 512 << 20, maxReadsCap},
		{4 << 20, 1 << 20, 1},
		{0, 512 << 20, maxReadsCap},
	} {
		if got := defaultMaxReads(c.largest, c.budget); got != c.want {
			t.Errorf("largest read %d, budget %d: %d reads, want %d", c.largest, c.budget, got, c.want)
		}
	}
}
