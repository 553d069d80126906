package order

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// datasets covers empty shards, uneven sizes, a single shard and sizes
// smaller than a global batch.
var datasets = [][]int64{
	{1},
	{7},
	{3, 0, 5, 2},
	{0, 0, 13, 0},
	{10, 1, 0, 7, 23, 4, 0, 9},
	{17, 17, 17},
	{100, 3, 41, 0, 58},
}

func flats(o *Order, s []Sample) []int64 {
	out := make([]int64, len(s))
	for i, x := range s {
		out[i] = o.Flat(x)
	}
	return out
}

func mustNew(t testing.TB, shards []int64, cfg Config) *Order {
	t.Helper()
	o, err := New(shards, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestPCGMatchesStdlibAlgorithm(t *testing.T) {
	for _, seed := range []uint64{0, 1, 42, 1<<63 + 5} {
		for _, epoch := range []int{0, 1, 9, 1000} {
			hi, lo := deriveSeed(seed, epoch)
			ours := newPCG(seed, epoch)
			std := rand.NewPCG(hi, lo)
			for i := range 100 {
				if a, b := ours.Uint64(), std.Uint64(); a != b {
					t.Fatalf("seed %d epoch %d draw %d: ours %#x, math/rand/v2 %#x", seed, epoch, i, a, b)
				}
			}
		}
	}
}

// TestGolden pins the generator and the order of an epoch: a change here
// changes the meaning of every checkpoint's State.
func TestGolden(t *testing.T) {
	p := newPCG(42, 0)
	want := []uint64{0xc3c6333496fd5fc5, 0x3144a9d52f84c591, 0x532ef9c41dc6eb6e, 0xb2f72acfde20a8c1}
	for i, w := range want {
		if g := p.Uint64(); g != w {
			t.Fatalf("pcg(42,0) draw %d = %#x, want %#x", i, g, w)
		}
	}
	p = newPCG(0, 7)
	for i, w := range []uint64{0x2d07cc0283db94c0, 0x3331943d7a9dd6f7} {
		if g := p.Uint64(); g != w {
			t.Fatalf("pcg(0,7) draw %d = %#x, want %#x", i, g, w)
		}
	}
	o := mustNew(t, []int64{3, 0, 5, 2}, Config{Seed: 7, Shuffle: true, Window: 4, BatchSize: 1})
	if g, w := flats(o, o.Epoch(0)), []int64{4, 7, 6, 1, 2, 3, 8, 5, 0, 9}; !slices.Equal(g, w) {
		t.Errorf("epoch 0 = %v, want %v", g, w)
	}
	if g, w := flats(o, o.Epoch(1)), []int64{6, 4, 8, 3, 0, 7, 1, 2, 5, 9}; !slices.Equal(g, w) {
		t.Errorf("epoch 1 = %v, want %v", g, w)
	}
}

func TestUint64nUniform(t *testing.T) {
	p := newPCG(3, 3)
	const n, draws = 7, 70000
	var c [n]int
	for range draws {
		v := p.Uint64n(n)
		if v >= n {
			t.Fatalf("Uint64n(%d) = %d", n, v)
		}
		c[v]++
	}
	for i, x := range c {
		if x < draws/n*9/10 || x > draws/n*11/10 {
			t.Errorf("value %d drawn %d times of %d", i, x, draws)
		}
	}
}

func checkPermutation(t *testing.T, o *Order, s []Sample) {
	t.Helper()
	if int64(len(s)) != o.Total() {
		t.Fatalf("order has %d samples, want %d", len(s), o.Total())
	}
	seen := make([]bool, o.Total())
	for _, x := range s {
		if x.Shard < 0 || x.Shard >= len(o.shards) || x.Index < 0 || x.Index >= o.shards[x.Shard] {
			t.Fatalf("sample %+v out of range", x)
		}
		f := o.Flat(x)
		if seen[f] {
			t.Fatalf("sample %+v twice", x)
		}
		seen[f] = true
	}
}

func TestEpochIsPermutation(t *testing.T) {
	for _, ds := range datasets {
		for _, w := range []int{0, 1, 2, 5, 64, 1000} {
			for _, sh := range []bool{false, true} {
				o := mustNew(t, ds, Config{Seed: 11, Shuffle: sh, Window: w, BatchSize: 1})
				for e := range 3 {
					checkPermutation(t, o, o.Epoch(e))
				}
			}
		}
	}
}

func TestDeterminism(t *testing.T) {
	ds := []int64{50, 0, 30, 20, 7, 93}
	for _, w := range []int{0, 1, 16, 1000} {
		cfg := Config{Seed: 99, Shuffle: true, Window: w, BatchSize: 4}
		a, b := mustNew(t, ds, cfg), mustNew(t, ds, cfg)
		for e := range 4 {
			if !slices.Equal(a.Epoch(e), b.Epoch(e)) {
				t.Errorf("window %d epoch %d: two orders with the same seed differ", w, e)
			}
			if !slices.Equal(a.Epoch(e), a.Epoch(e)) {
				t.Errorf("window %d epoch %d: repeated call differs", w, e)
			}
		}
		if slices.Equal(a.Epoch(0), a.Epoch(1)) || slices.Equal(a.Epoch(1), a.Epoch(2)) {
			t.Errorf("window %d: different epochs give the same order", w)
		}
		cfg.Seed = 100
		c := mustNew(t, ds, cfg)
		if slices.Equal(a.Epoch(0), c.Epoch(0)) || slices.Equal(a.Epoch(3), c.Epoch(3)) {
			t.Errorf("window %d: different seeds give the same order", w)
		}
		// The order must not depend on batch size.
		cfg.Seed, cfg.BatchSize, cfg.DropLast = 99, 1, true
		if d := mustNew(t, ds, cfg); !slices.Equal(a.Epoch(2), d.Epoch(2)) {
			t.Errorf("window %d: order depends on batch size or DropLast", w)
		}
	}
}

// run drives world cursors in lockstep from st for at most steps global
// batches (steps < 0: to the end). It returns the batches step by step
// (steps[i][r] = rank r's batch), the padding per rank and the state every
// rank reports at the end.
func run(t *testing.T, o *Order, st State, world, steps int) (out [][][]Sample, padding int, end State) {
	t.Helper()
	cs := make([]*Cursor, world)
	for r := range cs {
		c, err := o.Cursor(st, r, world)
		if err != nil {
			t.Fatal(err)
		}
		cs[r] = c
	}
	for steps < 0 || len(out) < steps {
		var step [][]Sample
		var oks int
		for _, c := range cs {
			b, ok := c.Next()
			if ok {
				oks++
				if len(b) != o.cfg.BatchSize {
					t.Fatalf("batch of %d samples, want %d", len(b), o.cfg.BatchSize)
				}
			}
			step = append(step, b)
		}
		if oks == 0 {
			break
		}
		if oks != world {
			t.Fatalf("only %d of %d ranks got a batch at step %d", oks, world, len(out))
		}
		out = append(out, step)
	}
	end = cs[0].State()
	for r, c := range cs {
		padding += c.Padding()
		if s := c.State(); s != end {
			t.Fatalf("rank %d state %+v, rank 0 state %+v", r, s, end)
		}
	}
	return out, padding, end
}

// checkDisjoint checks that within each global batch the ranks' samples
// are disjoint (padding can only repeat samples across batches, except when
// a global batch is larger than the dataset).
func checkDisjoint(t *testing.T, o *Order, steps [][][]Sample) {
	t.Helper()
	for i, step := range steps {
		nb := int64(len(step) * len(step[0]))
		if nb > o.Total() {
			continue
		}
		seen := map[Sample]int{}
		for r, b := range step {
			for _, s := range b {
				if q, ok := seen[s]; ok {
					t.Fatalf("step %d: sample %+v taken by ranks %d and %d", i, s, q, r)
				}
				seen[s] = r
			}
		}
	}
}

func TestPartition(t *testing.T) {
	for _, ds := range datasets {
		for world := 1; world <= 8; world++ {
			for _, b := range []int{1, 3} {
				for _, drop := range []bool{false, true} {
					name := fmt.Sprintf("%v/n%d/b%d/drop%v", ds, world, b, drop)
					cfg := Config{Seed: uint64(world*31 + b), Shuffle: true, Window: 5, BatchSize: b, DropLast: drop}
					o := mustNew(t, ds, cfg)
					start := o.Start(2)
					steps, pad, end := run(t, o, start, world, -1)
					checkDisjoint(t, o, steps)
					if int64(len(steps)) != o.Steps(start, world) {
						t.Fatalf("%s: %d steps, Steps says %d", name, len(steps), o.Steps(start, world))
					}
					if end != (State{Seed: cfg.Seed, Epoch: 2, Consumed: o.Total()}) {
						t.Fatalf("%s: end state %+v", name, end)
					}
					// Naive reference: step i, rank r takes positions
					// i*N*B + r*B ... of the epoch order, wrapping to its start.
					order := o.Epoch(2)
					var got []Sample
					for i, step := range steps {
						for r, batch := range step {
							for j, s := range batch {
								p := (int64(i)*int64(world*b) + int64(r*b+j)) % o.Total()
								if s != order[p] {
									t.Fatalf("%s: step %d rank %d item %d = %+v, want %+v", name, i, r, j, s, order[p])
								}
							}
							got = append(got, batch...)
						}
					}
					if int64(pad) != o.Padding(start, world) {
						t.Fatalf("%s: cursors report %d padded samples, Padding says %d", name, pad, o.Padding(start, world))
					}
					checkCounts(t, name, o, order, got, o.Dropped(start, world), pad)
				}
			}
		}
	}
}

// checkCounts checks the multiset of samples a whole job saw in one epoch
// whose order is order: without DropLast, every sample at least once and
// exactly pad repeats; with DropLast, every sample before the last dropped
// positions exactly once and the dropped ones never.
func checkCounts(t *testing.T, name string, o *Order, order, got []Sample, dropped int64, pad int) {
	t.Helper()
	count := make([]int, o.Total())
	for _, s := range got {
		count[o.Flat(s)]++
	}
	if o.cfg.DropLast {
		if pad != 0 {
			t.Fatalf("%s: %d padded samples with DropLast", name, pad)
		}
		for p, s := range order {
			want := 1
			if int64(p) >= o.Total()-dropped {
				want = 0
			}
			if c := count[o.Flat(s)]; c != want {
				t.Fatalf("%s: sample %+v at position %d seen %d times, want %d (%d dropped)", name, s, p, c, want, dropped)
			}
		}
		return
	}
	dups := 0
	for f, c := range count {
		if c < 1 {
			t.Fatalf("%s: flat sample %d never seen", name, f)
		}
		dups += c - 1
	}
	if dups != pad {
		t.Fatalf("%s: %d repeated samples, cursors report %d padded", name, dups, pad)
	}
}

func TestElasticResume(t *testing.T) {
	type change struct{ n1, b1, n2, b2 int }
	changes := []change{{4, 2, 3, 2}, {4, 3, 3, 5}, {2, 2, 5, 2}, {2, 1, 5, 3}, {4, 2, 4, 2}, {4, 1, 1, 1}, {1, 4, 8, 1}}
	sets := [][]int64{{10, 1, 0, 7, 23, 4, 0, 9}, {100, 3, 41, 0, 58}, {0, 37}}
	for si, ds := range sets {
		for _, ch := range changes {
			for _, drop := range []bool{false, true} {
				for _, seed := range []uint64{1, 77, 1 << 40} {
					cfg := Config{Seed: seed, Shuffle: true, Window: 8, BatchSize: ch.b1, DropLast: drop}
					o1 := mustNew(t, ds, cfg)
					start := o1.Start(int(seed % 5))
					full := o1.Steps(start, ch.n1)
					ks := []int64{0, 1, full / 3, full / 2, full - 1, full}
					for _, k := range ks {
						if k < 0 || k > full {
							continue
						}
						name := fmt.Sprintf("set%d/%d*%d->%d*%d/drop%v/seed%d/k%d", si, ch.n1, ch.b1, ch.n2, ch.b2, drop, seed, k)
						steps1, pad1, st := run(t, o1, start, ch.n1, int(k))
						checkDisjoint(t, o1, steps1)
						if int64(len(steps1)) != k {
							t.Fatalf("%s: ran %d steps, want %d", name, len(steps1), k)
						}
						// Through JSON, as in a checkpoint.
						js, err := json.Marshal(st)
						if err != nil {
							t.Fatal(err)
						}
						var st2 State
						if err := json.Unmarshal(js, &st2); err != nil || st2 != st {
							t.Fatalf("%s: state %+v round-trips to %+v (%v)", name, st, st2, err)
						}
						if want := min(start.Consumed+k*int64(ch.n1*ch.b1), o1.Total()); st.Consumed != want {
							t.Fatalf("%s: consumed %d after %d steps, want %d", name, st.Consumed, k, want)
						}
						cfg2 := cfg
						cfg2.BatchSize = ch.b2
						o2 := mustNew(t, ds, cfg2)
						steps2, pad2, end := run(t, o2, st2, ch.n2, -1)
						checkDisjoint(t, o2, steps2)
						if end.Consumed != o2.Total() || end.Epoch != start.Epoch {
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
						if pad1 != 0 && k != full {
							t.Fatalf("%s: padding before the last batch", name)
						}
						wantPad1 := int64(0)
						if k == full {
							wantPad1 = o1.Padding(start, ch.n1)
						}
						if int64(pad1) != wantPad1 || int64(pad2) != o2.Padding(st2, ch.n2) {
							t.Fatalf("%s: padding %d+%d, want %d+%d", name, pad1, pad2, wantPad1, o2.Padding(st2, ch.n2))
						}
						checkCounts(t, name, o2, o2.Epoch(start.Epoch), got, o2.Dropped(st2, ch.n2), pad1+pad2)
						if ch.n1 == ch.n2 && ch.b1 == ch.b2 {
							// Same world: exactly the uninterrupted run.
							ref, _, _ := run(t, o1, start, ch.n1, -1)
							if !slices.EqualFunc(ref, append(steps1, steps2...), func(a, b [][]Sample) bool {
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
}

// streamPos returns, for epoch e, each sample's position in the stream
// that enters the shuffle buffer (the shard-permuted natural order).
func streamPos(o *Order, e int) map[Sample]int {
	perm := o.shardOrder(newPCG(o.cfg.Seed, e))
	pos := map[Sample]int{}
	for _, sh := range perm {
		for i := range o.shards[sh] {
			pos[Sample{sh, i}] = len(pos)
		}
	}
	return pos
}

func TestShuffleQuality(t *testing.T) {
	for _, ds := range [][]int64{{20000}, {3000, 0, 5000, 1, 7000, 4999}} {
		for _, w := range []int{2, 16, 256} {
			o := mustNew(t, ds, Config{Seed: 5, Shuffle: true, Window: w, BatchSize: 1})
			for e := range 2 {
				pos := streamPos(o, e)
				order := o.Epoch(e)
				var sumAbs, fixed, earlier, later int
				for q, s := range order {
					p := pos[s]
					if p-q > w-1 {
						t.Fatalf("%v window %d: sample %+v moved %d positions earlier", ds, w, s, p-q)
					}
					sumAbs += max(p-q, q-p)
					switch {
					case p == q:
						fixed++
					case p > q:
						earlier++
					default:
						later++
					}
				}
				mean := float64(sumAbs) / float64(len(order))
				// A sample stays a geometric time of mean w in the buffer.
				if mean < float64(w)/8 || mean > 4*float64(w) {
					t.Errorf("%v window %d: mean displacement %.1f", ds, w, mean)
				}
				// The emitted slot is uniform: a sample leaves the buffer
				// before or after its stream position with sizeable odds
				// (about 1-1/e and 1/e for large windows).
				if earlier < len(order)/5 || later < len(order)/5 {
					t.Errorf("%v window %d: %d samples earlier, %d later of %d", ds, w, earlier, later, len(order))
				}
				if fixed > len(order)*3/4 {
					t.Errorf("%v window %d: %d of %d samples did not move", ds, w, fixed, len(order))
				}
			}
		}
	}
	// A window of the whole dataset mixes the shards: the first tenth of
	// the order holds samples of every shard.
	o := mustNew(t, []int64{1000, 1000, 1000}, Config{Seed: 8, Shuffle: true, Window: 3000, BatchSize: 1})
	shards := map[int]bool{}
	for _, s := range o.Epoch(0)[:300] {
		shards[s.Shard] = true
	}
	if len(shards) != 3 {
		t.Errorf("full window: first 300 samples come from shards %v", shards)
	}
}

func TestNoSampleShuffle(t *testing.T) {
	ds := []int64{4, 0, 9, 3, 6}
	natural := func(o *Order) []int64 {
		var f []int64
		for i := range o.Total() {
			f = append(f, i)
		}
		return f
	}
	for _, w := range []int{0, 1, 100} {
		o := mustNew(t, ds, Config{Seed: 5, Shuffle: false, Window: w, BatchSize: 1})
		for e := range 3 {
			if g := flats(o, o.Epoch(e)); !slices.Equal(g, natural(o)) {
				t.Fatalf("Shuffle=false window %d epoch %d: %v", w, e, g)
			}
		}
	}
	for _, w := range []int{0, 1} {
		o := mustNew(t, ds, Config{Seed: 5, Shuffle: true, Window: w, BatchSize: 1})
		perms := map[string]bool{}
		for e := range 6 {
			order := o.Epoch(e)
			pos := streamPos(o, e)
			for q, s := range order {
				if pos[s] != q {
					t.Fatalf("window %d: sample %+v at %d, stream position %d", w, s, q, pos[s])
				}
			}
			var shards []int
			for i, s := range order {
				if i == 0 || order[i-1].Shard != s.Shard {
					shards = append(shards, s.Shard)
				}
			}
			perms[fmt.Sprint(shards)] = true
		}
		if len(perms) < 2 {
			t.Errorf("window %d: shards are not permuted across epochs: %v", w, perms)
		}
	}
}

func TestErrors(t *testing.T) {
	good := Config{Seed: 1, Shuffle: true, Window: 4, BatchSize: 2}
	bad := []struct {
		shards []int64
		cfg    Config
	}{
		{nil, good},
		{[]int64{}, good},
		{[]int64{0, 0}, good},
		{[]int64{3, -1}, good},
		{[]int64{3}, Config{BatchSize: 0}},
		{[]int64{3}, Config{BatchSize: -2}},
		{[]int64{3}, Config{BatchSize: 1, Window: -1}},
		{[]int64{1 << 62, 1 << 62}, good},
	}
	for _, c := range bad {
		if _, err := New(c.shards, c.cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(%v, %+v) = %v, want ErrInvalid", c.shards, c.cfg, err)
		}
	}
	o := mustNew(t, []int64{5, 5}, good)
	st := o.Start(0)
	for _, c := range []struct {
		st          State
		rank, world int
	}{
		{st, 0, 0},
		{st, -1, 2},
		{st, 2, 2},
		{State{Seed: 2}, 0, 1},
		{State{Seed: 1, Epoch: -1}, 0, 1},
		{State{Seed: 1, Consumed: -1}, 0, 1},
		{State{Seed: 1, Consumed: 11}, 0, 1},
	} {
		if _, err := o.Cursor(c.st, c.rank, c.world); !errors.Is(err, ErrInvalid) {
			t.Errorf("Cursor(%+v, %d, %d) = %v, want ErrInvalid", c.st, c.rank, c.world, err)
		}
	}
	c, err := o.Cursor(State{Seed: 1, Consumed: 10}, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Next(); ok {
		t.Error("cursor at the end of the epoch returned a batch")
	}
}

func TestStateJSON(t *testing.T) {
	b, err := json.Marshal(State{Seed: 1<<64 - 1, Epoch: 3, Consumed: 96})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"seed":18446744073709551615,"epoch":3,"consumed":96}`; string(b) != want {
		t.Errorf("State JSON = %s, want %s", b, want)
	}
}

func TestCursorBatchesAreOwned(t *testing.T) {
	o := mustNew(t, []int64{8}, Config{Seed: 1, Shuffle: true, Window: 3, BatchSize: 2})
	want := o.Epoch(0)
	c, _ := o.Cursor(o.Start(0), 0, 1)
	b, _ := c.Next()
	b[0] = Sample{Shard: 9, Index: 9}
	c2, _ := o.Cursor(o.Start(0), 0, 1)
	b2, _ := c2.Next()
	if !slices.Equal(b2, want[:2]) {
		t.Errorf("changing a returned batch changed the order: %v, want %v", b2, want[:2])
	}
}

func BenchmarkEpoch(b *testing.B) {
	shards := make([]int64, 1000)
	for i := range shards {
		shards[i] = 1000
	}
	for _, w := range []int{0, 10000} {
		b.Run(fmt.Sprintf("1M/window%d", w), func(b *testing.B) {
			o := mustNew(b, shards, Config{Seed: 1, Shuffle: true, Window: w, BatchSize: 32})
			b.SetBytes(o.Total() * 16)
			b.ReportAllocs()
			e := 0
			for b.Loop() {
				_ = o.Epoch(e)
				e++
			}
		})
	}
}
