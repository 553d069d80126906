package order

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// layouts are block layouts (records per block, per shard) with uneven
// blocks and shards, empty shards, and shards smaller than a span.
var layouts = [][][]int64{
	{{1}},
	{{3, 4}},
	{{2, 1}, nil, {5}, {1, 1}},
	{{4, 4, 4, 1}, {3}, nil, {7, 7, 2}, {1, 2, 3, 4, 5}, {9}},
	{{10, 10, 10, 10, 10}, {3, 3, 3}, {41}, nil, {20, 20, 18}},
}

func mustBlocks(t testing.TB, blocks [][]int64, cfg Config) *Order {
	t.Helper()
	o, err := NewBlocks(blocks, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func v2cfg(seed uint64, window, batch, span int) Config {
	return Config{Version: V2, Seed: seed, Shuffle: true, Window: window, BatchSize: batch, Span: span}
}

func TestV2SequenceIsPermutation(t *testing.T) {
	for _, ly := range layouts {
		for _, w := range []int{0, 1, 3, 100} {
			for _, sh := range []bool{false, true} {
				for _, span := range []int{0, 1, 5} {
					cfg := v2cfg(11, w, 2, span)
					cfg.Shuffle = sh
					o := mustBlocks(t, ly, cfg)
					for _, streams := range []int{1, 2, 3, 4, 7} {
						for _, chunk := range []int{1, 3} {
							for e := range 2 {
								checkPermutation(t, o, o.sequence(State{Seed: 11, Epoch: e, Version: V2, Streams: streams, Chunk: chunk}))
							}
						}
					}
				}
			}
		}
	}
	// Without a layout too.
	for _, ds := range datasets {
		o := mustNew(t, ds, v2cfg(3, 4, 1, 3))
		for _, streams := range []int{1, 4} {
			checkPermutation(t, o, o.sequence(State{Seed: 3, Version: V2, Streams: streams, Chunk: 2}))
		}
	}
}

func TestV2Determinism(t *testing.T) {
	ly := layouts[4]
	cfg := v2cfg(99, 16, 4, 10)
	a, b := mustBlocks(t, ly, cfg), mustBlocks(t, ly, cfg)
	seq := func(o *Order, e, streams int) []Sample {
		s, err := o.Sequence(State{Seed: o.cfg.Seed, Epoch: e}, streams)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for e := range 3 {
		for _, n := range []int{1, 3, 4} {
			if !slices.Equal(seq(a, e, n), seq(b, e, n)) || !slices.Equal(seq(a, e, n), seq(a, e, n)) {
				t.Errorf("epoch %d streams %d: the same inputs give different orders", e, n)
			}
		}
	}
	if slices.Equal(seq(a, 0, 4), seq(a, 1, 4)) {
		t.Error("epochs 0 and 1 have the same order")
	}
	cfg.Seed = 100
	if c := mustBlocks(t, ly, cfg); slices.Equal(seq(a, 2, 4), seq(c, 2, 4)) {
		t.Error("seeds 99 and 100 give the same order")
	}
	// Streams fixed in the config: the order no longer depends on world.
	cfg.Seed, cfg.Streams = 99, 3
	d := mustBlocks(t, ly, cfg)
	if !slices.Equal(seq(d, 1, 1), seq(d, 1, 5)) || !slices.Equal(seq(d, 1, 5), seq(a, 1, 3)) {
		t.Error("with Streams set the order depends on the world size")
	}
	if !slices.Equal(d.Epoch(1), seq(d, 1, 8)) {
		t.Error("Epoch differs from the sequence of the epoch's state")
	}
}

// TestV2Golden pins V2: a change here changes the meaning of every V2
// checkpoint's State.
func TestV2Golden(t *testing.T) {
	o := mustBlocks(t, [][]int64{{2, 2}, {3}, {1, 2}}, v2cfg(7, 3, 2, 2))
	got := func(e int) []int64 {
		s, err := o.Sequence(State{Seed: 7, Epoch: e}, 2)
		if err != nil {
			t.Fatal(err)
		}
		return flats(o, s)
	}
	if g, w := got(0), []int64{0, 8, 6, 4, 1, 9, 3, 5, 7, 2}; !slices.Equal(g, w) {
		t.Errorf("epoch 0 = %#v, want %#v", g, w)
	}
	if g, w := got(1), []int64{8, 9, 0, 3, 4, 7, 2, 6, 5, 1}; !slices.Equal(g, w) {
		t.Errorf("epoch 1 = %#v, want %#v", g, w)
	}
}

func TestV2SpansFollowBlocks(t *testing.T) {
	ly := [][]int64{{4, 4, 4, 1}, nil, {10}, {1, 1, 1}}
	got := cutSpans([]int64{13, 0, 10, 3}, ly, 6)
	want := []span{{0, 0, 8}, {0, 8, 5}, {2, 0, 10}, {3, 0, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("spans %v, want %v", got, want)
	}
	if got := cutSpans([]int64{7}, nil, 3); !slices.Equal(got, []span{{0, 0, 3}, {0, 3, 3}, {0, 6, 1}}) {
		t.Errorf("spans without a layout: %v", got)
	}
}

// blockOf maps each sample of a layout to a block id.
func blockIDs(ly [][]int64) map[Sample]int {
	ids := map[Sample]int{}
	id := 0
	for sh, bs := range ly {
		var idx int64
		for _, n := range bs {
			for range n {
				ids[Sample{sh, idx}] = id
				idx++
			}
			id++
		}
	}
	return ids
}

func TestV2DealBalancedAndDisjoint(t *testing.T) {
	for li, ly := range layouts {
		o := mustBlocks(t, ly, v2cfg(5, 0, 1, 4))
		ids := blockIDs(ly)
		for _, streams := range []int{1, 2, 3, 4, 8} {
			dealt := deal(o.spans, streams, o.total)
			owner := map[int]map[int]bool{} // block -> streams reading it
			pieces := 0
			var lo, hi int64 = o.total, 0
			for s, sps := range dealt {
				var n int64
				for _, sp := range sps {
					pieces++
					n += sp.n
					for i := range sp.n {
						b := ids[Sample{sp.shard, sp.start + i}]
						if owner[b] == nil {
							owner[b] = map[int]bool{}
						}
						owner[b][s] = true
					}
				}
				lo, hi = min(lo, n), max(hi, n)
			}
			if hi-lo > 1 {
				t.Errorf("layout %d, %d streams: stream sizes from %d to %d", li, streams, lo, hi)
			}
			if pieces > len(o.spans)+streams-1 {
				t.Errorf("layout %d, %d streams: %d pieces from %d spans", li, streams, pieces, len(o.spans))
			}
			shared := 0
			for _, ss := range owner {
				shared += len(ss) - 1
			}
			if shared > streams-1 {
				t.Errorf("layout %d, %d streams: %d extra block reads, want at most %d", li, streams, shared, streams-1)
			}
		}
	}
}

// TestV2RanksReadTheirStreams checks the point of V2: with world equal to
// the streams and the batch size the epoch started with, every global
// batch in which every stream still has a whole chunk gives rank r only
// samples of stream r.
func TestV2RanksReadTheirStreams(t *testing.T) {
	ly := [][]int64{{50, 50, 50, 50}, {37, 40}, {90, 90, 11}, {64}}
	for _, world := range []int{1, 2, 3, 4} {
		for _, b := range []int{1, 8} {
			cfg := v2cfg(21, 32, b, 60)
			o := mustBlocks(t, ly, cfg)
			start := o.Start(3)
			rs, err := o.Resolve(start, world)
			if err != nil {
				t.Fatal(err)
			}
			if rs.Streams != world || rs.Chunk != b || rs.Version != V2 {
				t.Fatalf("resolved %+v", rs)
			}
			spans := append([]span(nil), o.spans...)
			rng := newPCGv2(cfg.Seed, 3, -1)
			for i := len(spans) - 1; i > 0; i-- {
				j := rng.Intn(i + 1)
				spans[i], spans[j] = spans[j], spans[i]
			}
			stream := map[Sample]int{}
			minLen := o.total
			for s, sps := range deal(spans, world, o.total) {
				var n int64
				for _, sp := range sps {
					for i := range sp.n {
						stream[Sample{sp.shard, sp.start + i}] = s
					}
					n += sp.n
				}
				minLen = min(minLen, n)
			}
			steps, _, _ := run(t, o, start, world, -1)
			full := int(minLen / int64(b))
			for i, step := range steps[:full] {
				for r, batch := range step {
					for _, s := range batch {
						if stream[s] != r {
							t.Fatalf("world %d batch %d: step %d rank %d got %+v of stream %d", world, b, i, r, s, stream[s])
						}
					}
				}
			}
			if full < len(steps)-2 {
				t.Errorf("world %d batch %d: only %d of %d steps read one stream per rank", world, b, full, len(steps))
			}
		}
	}
}

// TestV2ResumeAnywhere stops a job after every possible number of steps,
// saves the state through JSON and resumes: with the same world and batch
// size the rest is exactly the uninterrupted run; with another, every
// sample of the epoch is still seen exactly once (DropLast: apart from
// the dropped remainder) or at least once with exactly the padding
// repeated.
func TestV2ResumeAnywhere(t *testing.T) {
	type change struct{ n1, b1, n2, b2 int }
	changes := []change{{4, 2, 4, 2}, {4, 2, 3, 2}, {2, 3, 5, 1}, {1, 4, 4, 4}, {3, 1, 1, 7}, {4, 4, 8, 2}}
	for li, ly := range layouts[3:] {
		for _, ch := range changes {
			for _, drop := range []bool{false, true} {
				for _, seed := range []uint64{1, 1 << 40} {
					cfg := v2cfg(seed, 6, ch.b1, 5)
					cfg.DropLast = drop
					o1 := mustBlocks(t, ly, cfg)
					start := o1.Start(int(seed % 3))
					full := o1.Steps(start, ch.n1)
					ref, _, _ := run(t, o1, start, ch.n1, -1)
					for k := int64(0); k <= full; k++ {
						name := fmt.Sprintf("layout%d/%d*%d->%d*%d/drop%v/seed%d/k%d", li, ch.n1, ch.b1, ch.n2, ch.b2, drop, seed, k)
						steps1, pad1, st := run(t, o1, start, ch.n1, int(k))
						js, _ := json.Marshal(st)
						var st2 State
						if err := json.Unmarshal(js, &st2); err != nil || st2 != st {
							t.Fatalf("%s: state %+v round-trips to %+v (%v)", name, st, st2, err)
						}
						if st.Version != V2 || st.Streams != ch.n1 || st.Chunk != ch.b1 {
							t.Fatalf("%s: state %+v does not record its order", name, st)
						}
						cfg2 := cfg
						cfg2.BatchSize = ch.b2
						o2 := mustBlocks(t, ly, cfg2)
						steps2, pad2, end := run(t, o2, st2, ch.n2, -1)
						checkDisjoint(t, o2, steps2)
						if end.Consumed != o2.Total() || end.Epoch != start.Epoch || end.Streams != ch.n1 {
							t.Fatalf("%s: end state %+v", name, end)
						}
						var got []Sample
						for _, steps := range [][][][]Sample{steps1, steps2} {
							for _, step := range steps {
								for _, b := range step {
									got = append(got, b...)
								}
							}
						}
						seq, err := o2.Sequence(st2, ch.n2)
						if err != nil {
							t.Fatal(err)
						}
						checkCounts(t, name, o2, seq, got, o2.Dropped(st2, ch.n2), pad1+pad2)
						if ch.n1 == ch.n2 && ch.b1 == ch.b2 && !slices.EqualFunc(ref, append(steps1, steps2...), func(a, b [][]Sample) bool {
							return slices.EqualFunc(a, b, slices.Equal)
						}) {
							t.Fatalf("%s: resumed run differs from the uninterrupted one", name)
						}
					}
				}
			}
		}
	}
}

// TestVersionResolution: a state keeps the order it was taken in.
func TestVersionResolution(t *testing.T) {
	ly := layouts[4]
	v1 := Config{Seed: 4, Shuffle: true, Window: 8, BatchSize: 3}
	v2 := v1
	v2.Version = V2
	o1, o2 := mustBlocks(t, ly, v1), mustBlocks(t, ly, v2)

	// A V1 checkpoint (no version recorded) resumed under a V2 config
	// continues the V1 order.
	_, _, st := run(t, o1, o1.Start(0), 2, 5)
	if st.Version != 0 || st.Streams != 0 {
		t.Fatalf("V1 state %+v records V2 fields", st)
	}
	js, _ := json.Marshal(st)
	if want := fmt.Sprintf(`{"seed":4,"epoch":0,"consumed":%d}`, st.Consumed); string(js) != want {
		t.Errorf("V1 state JSON %s, want %s", js, want)
	}
	a, _, _ := run(t, o1, st, 3, -1)
	b, _, _ := run(t, o2, st, 3, -1)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Error("a V1 state resumed under a V2 config left the V1 order")
	}
	// The start of an epoch takes the configured version.
	if rs, _ := o2.Resolve(o2.Start(1), 4); rs != (State{Seed: 4, Epoch: 1, Version: V2, Streams: 4, Chunk: 3}) {
		t.Errorf("V2 start resolves to %+v", rs)
	}
	if rs, _ := o1.Resolve(o1.Start(1), 4); rs != (State{Seed: 4, Epoch: 1}) {
		t.Errorf("V1 start resolves to %+v", rs)
	}
	// A V2 state resumed under a V1 config continues the V2 order.
	_, _, st = run(t, o2, o2.Start(0), 2, 4)
	c, _, _ := run(t, o1, st, 2, -1)
	d, _, _ := run(t, o2, st, 2, -1)
	if fmt.Sprint(c) != fmt.Sprint(d) {
		t.Error("a V2 state resumed under a V1 config left the V2 order")
	}
	for _, bad := range []State{
		{Seed: 4, Consumed: 3, Version: V2},             // V2 past the start without streams
		{Seed: 4, Consumed: 3, Version: V2, Streams: 2}, // nor chunk
		{Seed: 4, Version: 3},
		{Seed: 4, Version: -1},
		{Seed: 4, Consumed: 3, Streams: 2},
		{Seed: 4, Consumed: 3, Version: V2, Streams: maxStreams + 1, Chunk: 1},
	} {
		if _, err := o2.Cursor(bad, 0, 1); !errors.Is(err, ErrInvalid) {
			t.Errorf("Cursor(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	for _, bad := range []Config{{Version: 3, BatchSize: 1}, {Version: V2, BatchSize: 1, Span: -1}, {Version: V2, BatchSize: 1, Streams: -1}} {
		if _, err := New([]int64{3}, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := NewBlocks([][]int64{{2, 0}}, v2); !errors.Is(err, ErrInvalid) {
		t.Errorf("an empty block was accepted: %v", err)
	}
}

func TestV2NoShuffleOneStreamIsNatural(t *testing.T) {
	cfg := Config{Version: V2, Seed: 2, BatchSize: 3, Window: 50}
	o := mustBlocks(t, layouts[3], cfg)
	seq, _ := o.Sequence(o.Start(0), 1)
	for i, s := range seq {
		if o.Flat(s) != int64(i) {
			t.Fatalf("position %d holds flat sample %d", i, o.Flat(s))
		}
	}
}

func BenchmarkV2Sequence(b *testing.B) {
	ly := make([][]int64, 1000)
	for i := range ly {
		ly[i] = []int64{250, 250, 250, 250}
	}
	for _, w := range []int{0, 10000} {
		b.Run(fmt.Sprintf("1M/window%d", w), func(b *testing.B) {
			o := mustBlocks(b, ly, v2cfg(1, w, 32, 0))
			b.SetBytes(o.Total() * 16)
			b.ReportAllocs()
			e := 0
			for b.Loop() {
				_ = o.sequence(State{Seed: 1, Epoch: e, Version: V2, Streams: 4, Chunk: 32})
				e++
			}
		})
	}
}
