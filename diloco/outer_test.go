package diloco

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

// The model of these tests: logistic regression on points labelled by
// the sign of a hidden linear function, so that a well-trained model
// classifies nearly all of them.
const features = 256

var truth = func() []float32 {
	r := rand.New(rand.NewPCG(7, 7))
	w := make([]float32, features)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	return w
}()

// sample fills x with a point and returns its label.
func sample(r *rand.Rand, x []float32) float32 {
	var dot float32
	for i := range x {
		x[i] = float32(r.NormFloat64())
		dot += x[i] * truth[i]
	}
	if dot > 0 {
		return 1
	}
	return 0
}

// gradient of the mean logistic loss over a batch drawn for (rank, step),
// into g (weights, then the bias).
func gradient(rank, step, batch int, w, g []float32) {
	r := rand.New(rand.NewPCG(uint64(rank), uint64(step)))
	clear(g)
	x := make([]float32, features)
	for range batch {
		y := sample(r, x)
		z := w[features]
		for i, v := range x {
			z += w[i] * v
		}
		p := float32(1 / (1 + math.Exp(-float64(z))))
		for i, v := range x {
			g[i] += (p - y) * v / float32(batch)
		}
		g[features] += (p - y) / float32(batch)
	}
}

func accuracy(w []float32) float64 {
	r := rand.New(rand.NewPCG(99, 99))
	x := make([]float32, features)
	right := 0
	const n = 4000
	for range n {
		y := sample(r, x)
		z := w[features]
		for i, v := range x {
			z += w[i] * v
		}
		if (z > 0) == (y == 1) {
			right++
		}
	}
	return float64(right) / n
}

type run struct {
	sites, local, steps, batch int
	lr                         float32
	outer                      *Config // nil: one flat group, an all-reduce every step
}

type result struct {
	params [][]float32 // per rank
	stats  []Stats
	errs   []error
}

// train runs r with every rank in its own goroutine over in-process
// groups: per site, one group of its ranks; per index within a site, one
// group of that index's ranks across sites.
func train(t *testing.T, r run) result {
	t.Helper()
	n := r.sites * r.local
	flat := inproc.NewWorld(n)
	siteW := make([]*inproc.World, r.sites)
	for s := range siteW {
		siteW[s] = inproc.NewWorld(r.local)
	}
	crossW := make([]*inproc.World, r.local)
	for j := range crossW {
		crossW[j] = inproc.NewWorld(r.sites)
	}
	form := func(w *inproc.World, rank int) collective.Comm {
		c, err := collective.New(w.Transport(rank), collective.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	res := result{params: make([][]float32, n), stats: make([]Stats, n), errs: make([]error, n)}
	comms := make([][2]collective.Comm, n)
	for rank := range n {
		s, j := rank/r.local, rank%r.local
		if r.outer == nil {
			comms[rank][0] = form(flat, rank)
		} else {
			comms[rank] = [2]collective.Comm{form(siteW[s], j), form(crossW[j], s)}
		}
	}
	var wg sync.WaitGroup
	for rank := range n {
		wg.Go(func() {
			ctx := context.Background()
			inner, cross := comms[rank][0], comms[rank][1]
			w, g := make([]float32, features+1), make([]float32, features+1)
			var o *Outer
			if r.outer != nil {
				var err error
				if o, err = New(inner, cross, *r.outer, w); err != nil {
					res.errs[rank] = err
					return
				}
				defer o.Close()
			}
			for step := 1; step <= r.steps; step++ {
				if err := innerStep(ctx, inner, r, rank, step, w, g); err != nil {
					res.errs[rank] = err
					return
				}
				if o != nil {
					if err := o.Step(ctx, int64(step)); err != nil {
						res.errs[rank] = err
						return
					}
				}
			}
			if o != nil {
				if err := o.Sync(ctx, int64(r.steps)); err != nil {
					res.errs[rank] = err
					return
				}
				res.stats[rank] = o.Stats()
			}
			res.params[rank] = w
		})
	}
	wg.Wait()
	return res
}

// innerStep is one step of plain SGD on this rank's batch, the gradients
// averaged over inner.
func innerStep(ctx context.Context, inner collective.Comm, r run, rank, step int, w, g []float32) error {
	gradient(rank, step, r.batch, w, g)
	if err := inner.AllReduce(ctx, collective.Float32s(g), collective.Float32s(g), collective.Sum); err != nil {
		return err
	}
	for i := range w {
		w[i] -= r.lr * g[i] / float32(inner.Size())
	}
	return nil
}

func (res result) check(t *testing.T) {
	t.Helper()
	for r, err := range res.errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r, p := range res.params {
		for i := range p {
			if math.Float32bits(p[i]) != math.Float32bits(res.params[0][i]) {
				t.Fatalf("rank %d parameter %d is %v, rank 0's %v: replicas differ", r, i, p[i], res.params[0][i])
			}
		}
	}
}

// With H = 1, outer lr 1 and no momentum, the outer sync averages the
// sites' parameters after every step, which for SGD is the per-step
// all-reduce of the gradients over every rank.
func TestEveryStepMatchesAllReduce(t *testing.T) {
	base := run{sites: 3, local: 2, steps: 60, batch: 16, lr: 0.5}
	flat := train(t, base)
	flat.check(t)
	for _, prec := range []Precision{F32} {
		cfg := Config{Every: 1, LR: 1, Precision: prec, Zstd: true}
		r := base
		r.outer = &cfg
		got := train(t, r)
		got.check(t)
		var worst float64
		for i, v := range got.params[0] {
			want := flat.params[0][i]
			worst = max(worst, math.Abs(float64(v-want))/max(1, math.Abs(float64(want))))
		}
		if worst > 1e-5 {
			t.Errorf("%s: parameters differ from the per-step all-reduce by up to %.2g (relative), want within 1e-5", prec, worst)
		}
	}
}

// DiLoCo's setting: 20 inner steps between syncs, Nesterov outer momentum,
// bfloat16 and the top quarter of each delta on the wire. It still learns the
// task, every replica ends identical, and the sites exchange a small
// fraction of what per-step averaging would send.
func TestInfrequentCompressedSyncLearns(t *testing.T) {
	flatAcc := accuracy(train(t, run{sites: 2, local: 2, steps: 400, batch: 16, lr: 0.5}).params[0])
	for _, delay := range []int{0, 5} {
		cfg := DefaultConfig()
		cfg.TopK, cfg.Delay = 0.25, delay
		r := run{sites: 2, local: 2, steps: 400, batch: 16, lr: 0.5, outer: &cfg}
		res := train(t, r)
		res.check(t)
		acc := accuracy(res.params[0])
		if acc < 0.95 || acc < flatAcc-0.01 {
			t.Errorf("delay %d: test accuracy %.3f, want at least 0.95 and within 0.01 of per-step averaging's %.3f", delay, acc, flatAcc)
		}
		st := res.stats[0]
		// The last step is a sync's; without delay the closing Sync finds
		// the sites agreeing already, with it Sync applies that one and
		// takes one more.
		wantSyncs := int64(r.steps / cfg.Every)
		if delay > 0 {
			wantSyncs++
		}
		if st.Syncs != wantSyncs || st.Ratio() < 3 {
			t.Errorf("delay %d: %d syncs, compression %.1fx; want %d syncs and at least 3x", delay, st.Syncs, st.Ratio(), wantSyncs)
		}
		// Per-step averaging of these parameters in float32 over a ring of
		// the two sites sends the whole shard once per step.
		perStep := int64(r.steps) * int64((features+1+r.local-1)/r.local*4)
		if st.WireBytes*50 > perStep {
			t.Errorf("delay %d: %d bytes to the other site, want under 1/50 of per-step averaging's %d", delay, st.WireBytes, perStep)
		}
		t.Logf("delay %d: accuracy %.3f, %d syncs, %d bytes across sites (per-step averaging: %d), compression %.1fx, waited %v",
			delay, acc, st.Syncs, st.WireBytes, perStep, st.Ratio(), st.Waited)
	}
}

// Sites whose parameters do not match are told which site sent what.
func TestMismatchedSitesAreNamed(t *testing.T) {
	a := inproc.NewWorld(2)

	errs := make([]error, 2)
	var wg sync.WaitGroup
	for s := range 2 {
		wg.Go(func() {
			c, err := collective.New(a.Transport(s), collective.DefaultConfig())
			if err != nil {
				errs[s] = err
				return
			}
			defer c.Close()
			o, err := New(nil, c, DefaultConfig(), make([]float32, 10+s))
			if err != nil {
				errs[s] = err
				return
			}
			defer o.Close()
			errs[s] = o.Sync(context.Background(), 1)
		})
	}
	wg.Wait()
	for s, err := range errs {
		other := 1 - s
		if err == nil || !strings.Contains(err.Error(), "delta of site") || !strings.Contains(err.Error(), "values, want") {
			t.Errorf("site %d: %v, want an error naming site %d's delta and its length", s, err, other)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Every = 0 }, "every 0 steps"},
		{func(c *Config) { c.LR = 0 }, "learning rate 0"},
		{func(c *Config) { c.Momentum = 1 }, "momentum 1"},
		{func(c *Config) { c.Delay = 21 }, "delay 21"},
		{func(c *Config) { c.Precision = "int8" }, `precision "int8"`},
		{func(c *Config) { c.TopK = 1 }, "top-k fraction 1"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", c, err, tc.want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}
