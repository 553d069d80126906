// Command customloop trains logistic regression, written in plain Go with
// no framework, data-parallel under `ringo launch`: it shows the whole
// runtime API for custom training loops in one screen.
//
//	customloop --make-data data/synth                # once: a synthetic dataset
//	ringo launch --nproc-per-node 4 --max-restarts 3 -- \
//	    customloop --data data/synth --ckpt ckpt/ --save-every 10
//
// With --device cuda the gradients are averaged from GPU memory
// (runtime.Gradients.AverageDevice, staged through pinned host memory).
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/source"
	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/runtime"
)

// Meta is saved with every checkpoint: where the data stands.
type Meta struct {
	Data order.State `json:"data"`
}

func main() {
	makeData := flag.String("make-data", "", "write a synthetic dataset to DIR and exit")
	samples := flag.Int("samples", 4096, "with --make-data: number of samples")
	data := flag.String("data", "data/synth", "dataset directory")
	epochs := flag.Int("epochs", 2, "epochs to train")
	batch := flag.Int("batch", 64, "global batch size (split evenly across workers)")
	lr := flag.Float64("lr", 0.5, "learning rate")
	seed := flag.Uint64("seed", 1, "data order seed")
	ckpt := flag.String("ckpt", "", "checkpoint directory (empty: none)")
	saveEvery := flag.Int64("save-every", 10, "checkpoint every N steps")
	verifyEvery := flag.Int64("verify-every", 0, "check every N steps that replicas are identical")
	stopAfter := flag.Int64("stop-after", 0, "save a checkpoint after step N and exit (to resume elsewhere)")
	dump := flag.String("dump", "", "rank 0 writes the final parameters' float32 bits here")
	seen := flag.String("seen", "", "append the sample ids each rank trains on to FILE.rank-N")
	diverge := flag.Int("diverge-rank", -1, "test hook: this rank corrupts its weights once")
	stepTime := flag.Duration("step-time", 0, "test hook: sleep this long per step")
	onDevice := flag.String("device", "host", "where the gradients are averaged from: host memory, or cuda (GPU memory, staged through pinned host memory)")
	oc := diloco.DefaultConfig()
	diloco.AddFlags(flag.CommandLine, &oc)
	flag.Parse()
	if *makeData != "" {
		if err := writeDataset(*makeData, *samples); err != nil {
			fail(err)
		}
		return
	}
	ctx := context.Background()
	g, err := runtime.Init(ctx) // the group of `ringo launch`, or of one
	if err != nil {
		fail(err)
	}
	defer g.Close()
	if *batch%g.Size() != 0 {
		fail(fmt.Errorf("--batch %d does not split evenly across %d workers", *batch, g.Size()))
	}
	ds, err := dataloader.Open(ctx, source.Local(*data))
	if err != nil {
		fail(err)
	}
	if oc.Every > 0 && *ckpt != "" && (*saveEvery%int64(oc.Every) != 0 || *stopAfter%int64(oc.Every) != 0 || oc.Delay > 0) {
		// Only right after a sync do the sites hold the same parameters,
		// which a checkpoint keeps once.
		fail(fmt.Errorf("--ckpt with --outer-every %d: --save-every %d and --stop-after %d must be multiples of it, with no --outer-delay (%d)", oc.Every, *saveEvery, *stopAfter, oc.Delay))
	}
	if oc.Every > 0 && *verifyEvery > 0 && (*verifyEvery%int64(oc.Every) != 0 || oc.Delay > 0) {
		// Between syncs each site has its own parameters.
		fail(fmt.Errorf("--verify-every %d with --outer-every %d and --outer-delay %d: sites agree only right after a sync; verify at multiples of --outer-every with no delay", *verifyEvery, oc.Every, oc.Delay))
	}
	// Across sites only the parameters are the same everywhere (and only
	// right after a sync): each site keeps its own momentum. The loop
	// checks them itself.
	trainerVerify := *verifyEvery
	if oc.Every > 0 {
		trainerVerify = 0
	}
	t, err := g.NewTrainer(ctx, runtime.TrainerConfig{Dir: *ckpt, SaveEvery: *saveEvery, KeepLast: 3, VerifyEvery: trainerVerify})
	if err != nil {
		fail(err)
	}
	defer t.Close()

	// The model: p(y=1|x) = sigmoid(w·x + b), and momentum SGD's velocity,
	// all tracked so that a checkpoint holds everything a step needs.
	w, b := make([]float32, features), make([]float32, 1)
	vw, vb := make([]float32, features), make([]float32, 1)
	for i := range w {
		w[i] = float32(i%3) * 0.01 // rank 0's start; Start copies it everywhere
	}
	// Across sites, the gradients are averaged inside the site and the
	// outer syncs average the sites; else over every rank.
	var inner collective.Comm = g
	var outer *runtime.Outer
	if oc.Every > 0 {
		if outer, err = g.NewOuter(ctx, oc, w, b); err != nil {
			fail(err)
		}
		defer outer.Close()
		inner = outer.Site
	}
	t.Track("w", w)
	t.Track("b", b)
	if outer == nil {
		t.Track("momentum.w", vw)
		t.Track("momentum.b", vb)
	} else {
		// Each site has its own momentum, each rank its own error
		// feedback; the outer optimizer's state is the same everywhere.
		t.TrackPerRank("momentum.w", vw)
		t.TrackPerRank("momentum.b", vb)
		outer.Track(t)
	}
	meta := Meta{Data: order.State{Seed: *seed}}
	step, restored, err := t.Start(ctx, &meta)
	if err != nil {
		fail(err)
	}
	if g.Rank() == 0 && restored {
		fmt.Printf("resumed from step %d (epoch %d, %d samples in)\n", step, meta.Data.Epoch, meta.Data.Consumed)
	}
	// A site of a federation (ringo launch --federation) that was down
	// replays the outer syncs the others took without it and resumes at
	// the last one: it skips the batches of the steps it missed, so that
	// every site keeps the same step count and data order.
	var skip int64
	if outer != nil {
		to, err := outer.CatchUp(ctx, step)
		if err != nil {
			fail(err)
		}
		skip, step = to-step, to
	}
	gcfg := runtime.DefaultGradConfig()
	var gpu *deviceGrads
	if *onDevice == "cuda" {
		if gpu, err = newDeviceGrads(g.LocalRank, &gcfg); err != nil {
			fail(err)
		}
		defer gpu.Close()
	} else if *onDevice != "host" {
		fail(fmt.Errorf("--device %q: want host or cuda", *onDevice))
	}
	grads, err := runtime.NewGradients(inner, gcfg)
	if err != nil {
		fail(err)
	}
	defer grads.Close()
	ocfg := order.Config{Seed: *seed, Shuffle: true, Window: 256, BatchSize: *batch / g.Size(), DropLast: true}
	gw, gb := make([]float32, features), make([]float32, 1)
	var loss float64
	for meta.Data.Epoch < *epochs {
		ld, err := dataloader.NewLoader(ctx, ds, dataloader.LoaderConfig{Order: ocfg, Rank: g.Rank(), World: g.Size(), State: meta.Data}, decode)
		if err != nil {
			fail(err)
		}
		for {
			bt, err := ld.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				fail(err)
			}
			if skip > 0 {
				skip--
				meta.Data = bt.State
				continue
			}
			loss = gradient(bt.Samples, w, b, gw, gb) // of the mean loss over this rank's share
			if gpu != nil {
				err = gpu.average(ctx, grads, gw, gb)
			} else {
				err = grads.Average(ctx, gw, gb)
			}
			if err != nil {
				fail(err) // a peer failed: exit, and the launcher restarts the job
			}
			for i := range w {
				vw[i] = 0.9*vw[i] + gw[i]
				w[i] -= float32(*lr) * vw[i]
			}
			vb[0] = 0.9*vb[0] + gb[0]
			b[0] -= float32(*lr) * vb[0]
			step++
			if outer != nil {
				if err := outer.Step(ctx, step); err != nil {
					fail(err)
				}
				if *verifyEvery > 0 && step%*verifyEvery == 0 {
					if err := runtime.VerifySame(ctx, g, step, w, b); err != nil {
						fail(err)
					}
				}
			}
			meta.Data = bt.State
			if g.Rank() == *diverge && step == 3 && g.Restarts == 0 {
				w[0] += 1e-3 // the planted bug Verify must catch
			}
			record(*seen, g.Rank(), bt.Samples)
			time.Sleep(*stepTime)
			if err := t.Step(ctx, step, meta); err != nil {
				fail(err)
			}
			if step == *stopAfter {
				if err := t.Save(ctx, step, meta); err != nil {
					fail(err)
				}
				if g.Rank() == 0 {
					fmt.Printf("stopped after step %d with a checkpoint in %s\n", step, *ckpt)
				}
				return
			}
		}
		ld.Close()
		meta.Data = order.State{Seed: *seed, Epoch: meta.Data.Epoch + 1}
		if g.Rank() == 0 {
			fmt.Printf("epoch %d: step %d, loss %.4f\n", meta.Data.Epoch, step, loss)
		}
	}
	if outer != nil {
		// The sites' parameters differ between syncs: one more makes
		// them the same everywhere.
		if err := outer.Sync(ctx, step); err != nil {
			fail(err)
		}
		if g.Rank() == 0 {
			st := outer.Stats()
			fmt.Printf("outer: %d sites over %s, %d syncs, %d bytes to other sites from rank 0 (%.0f per step), compression %.1fx; %d syncs without some site, %d deadlines waited out\n",
				len(outer.Names), outer.Transport, st.Syncs, st.WireBytes, float64(st.WireBytes)/float64(max(step, 1)), st.Ratio(), st.Partial, st.DeadlineWaits)
		}
	}
	verify := func() error { return t.Verify(ctx, step) }
	if outer != nil {
		verify = func() error { return runtime.VerifySame(ctx, g, step, w, b) }
	}
	if err := verify(); err != nil {
		fail(err)
	}
	if g.Rank() == 0 {
		fmt.Printf("done: %d steps on %d workers, loss %.4f, all replicas identical\n", step, g.Size(), loss)
		if *dump != "" {
			writeParams(*dump, w, b)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "customloop:", err)
	os.Exit(1)
}

// gradient computes the gradient of the mean logistic loss over batch
// into gw and gb, and returns the loss.
func gradient(batch []sample, w, b, gw, gb []float32) float64 {
	clear(gw)
	gb[0] = 0
	var loss float64
	for _, s := range batch {
		z := b[0]
		for i, x := range s.x {
			z += w[i] * x
		}
		p := float32(1 / (1 + math.Exp(-float64(z))))
		d := p - s.y
		for i, x := range s.x {
			gw[i] += d * x
		}
		gb[0] += d
		loss -= float64(s.y)*math.Log(float64(p)+1e-7) + float64(1-s.y)*math.Log(float64(1-p)+1e-7)
	}
	inv := 1 / float32(len(batch))
	for i := range gw {
		gw[i] *= inv
	}
	gb[0] *= inv
	return loss / float64(len(batch))
}

func writeParams(path string, w, b []float32) {
	out := make([]byte, 0, 4*(len(w)+1))
	for _, v := range append(append([]float32(nil), w...), b...) {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		fail(err)
	}
}

// record appends the ids of the samples a rank trained on, for tests that
// check every sample is seen exactly once across a restart.
func record(path string, rank int, batch []sample) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(fmt.Sprintf("%s.rank-%d", path, rank), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	for _, s := range batch {
		fmt.Fprintln(f, s.id)
	}
}
