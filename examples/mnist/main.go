package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/runtime"
)

type config struct {
	model, data, ckpt, compress string
	epochs, batch, evalBatch    int
	hidden                      int
	loaderWorkers               int
	lr                          float64
	seed                        uint64
	saveEvery, verifyEvery      int64
	maxSteps, crashAt           int64
	bench                       bool
	outer                       diloco.Config
}

func parseFlags(args []string) (config, error) {
	c := config{outer: diloco.DefaultConfig()}
	fs := flag.NewFlagSet("mnist", flag.ContinueOnError)
	diloco.AddFlags(fs, &c.outer)
	fs.StringVar(&c.model, "model", "cnn", "cnn or mlp")
	fs.IntVar(&c.hidden, "hidden", defaultHidden, "units of the model's dense hidden layer")
	fs.StringVar(&c.data, "data", "data/mnist", "dataset root holding train/ and test/ (a directory or a URL prefix)")
	fs.IntVar(&c.epochs, "epochs", 5, "epochs to train (counting those a restored checkpoint already did)")
	fs.IntVar(&c.batch, "batch", 64, "global batch size, split evenly among the workers")
	fs.IntVar(&c.evalBatch, "eval-batch", 100, "batch size of the evaluation graph")
	fs.IntVar(&c.loaderWorkers, "loader-workers", 2, "data-loader goroutines per worker")
	fs.Float64Var(&c.lr, "lr", 1e-3, "Adam learning rate")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the initial weights and of the data order")
	fs.StringVar(&c.ckpt, "ckpt", "", "checkpoint directory (empty: no checkpoints); a run resumes from the newest one in it")
	fs.Int64Var(&c.saveEvery, "save-every", 50, "save a checkpoint in the background every N steps (and at the end of every epoch)")
	fs.Int64Var(&c.verifyEvery, "verify-every", 100, "check every N steps that all replicas hold identical weights (0: only at the end)")
	fs.Int64Var(&c.maxSteps, "max-steps", 0, "stop after this step (0: no limit)")
	fs.StringVar(&c.compress, "compress", "none", "gradient wire format: none, bf16 or fp16")
	fs.Int64Var(&c.crashAt, "crash-at-step", 0, "for testing restarts: the last rank exits with status 3 after this step, on the job's first attempt only")
	fs.BoolVar(&c.bench, "bench", false, "measure: no checkpoints or per-epoch evaluation; report samples/s and where step time goes")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.epochs < 0 || c.batch < 1 || c.evalBatch < 1 || c.hidden < 1 || c.lr <= 0 || c.saveEvery < 0 || c.verifyEvery < 0 {
		return c, errors.New("--epochs, --batch, --eval-batch, --hidden, --lr, --save-every and --verify-every must be positive (or 0 where that means off)")
	}
	if c.compress == "none" {
		c.compress = ""
	}
	if c.outer.Every > 0 {
		if err := c.outer.Validate(); err != nil {
			return c, err
		}
		if c.ckpt != "" && (c.saveEvery%int64(c.outer.Every) != 0 || c.outer.Delay > 0) {
			// Only right after a sync do the sites hold the same weights,
			// which a checkpoint keeps once.
			return c, fmt.Errorf("--ckpt with --outer-every %d: --save-every %d must be a multiple of it, with no --outer-delay (%d)", c.outer.Every, c.saveEvery, c.outer.Delay)
		}
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mnist:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mnist:", err)
		os.Exit(1)
	}
}

// meta is the checkpoint's metadata: with the tracked tensors (weights,
// Adam's moments and step count) it is all a restart needs.
type meta struct {
	Model string      `json:"model"`
	Seed  uint64      `json:"seed"`
	Batch int         `json:"global_batch"`
	Order order.State `json:"order"` // the data loader's position
}

// timers add up where step time goes on this rank.
type timers struct {
	data, compute, average, rest time.Duration
	steps                        int64
	loss                         float64
}

func run(ctx context.Context, c config, out io.Writer) error {
	g, err := runtime.Init(ctx)
	if err != nil {
		return err
	}
	defer g.Close()
	rank, world := g.Rank(), g.Size()
	say := func(format string, args ...any) {
		if rank == 0 {
			fmt.Fprintf(out, format+"\n", args...)
		}
	}
	if c.batch%world != 0 {
		return fmt.Errorf("global batch %d does not split evenly among %d workers", c.batch, world)
	}
	local := c.batch / world
	// Workers of one node share its cores; more threads than cores only
	// adds switching.
	if os.Getenv("GOMAXPROCS") == "" {
		goruntime.GOMAXPROCS(max(1, goruntime.NumCPU()/max(1, g.LocalSize)))
	}

	train, err := openSplit(ctx, c.data, "train")
	if err != nil {
		return err
	}
	if train.Index.Records < int64(c.batch) {
		return fmt.Errorf("%d training digits do not make one global batch of %d", train.Index.Records, c.batch)
	}
	testDS, err := openSplit(ctx, c.data, "test")
	if err != nil {
		return err
	}
	test, err := readAll(ctx, testDS)
	if err != nil {
		return err
	}
	n, err := newNet(c.model, c.hidden, local, c.evalBatch, c.seed)
	if err != nil {
		return err
	}
	opt := newAdam(n.params, c.lr)
	tcfg := runtime.TrainerConfig{Dir: c.ckpt, SaveEvery: c.saveEvery, KeepLast: 2, VerifyEvery: c.verifyEvery}
	if c.outer.Every > 0 {
		// Each site keeps its own Adam moments; only the weights agree,
		// and only right after a sync. The loop checks them itself.
		tcfg.VerifyEvery = 0
	}
	if c.bench {
		tcfg.Dir = ""
	}
	tr, err := g.NewTrainer(ctx, tcfg)
	if err != nil {
		return err
	}
	defer tr.Close()
	// Across sites, gradients are averaged inside the site every step and
	// the sites sync every --outer-every steps; else over every rank.
	var inner collective.Comm = g
	var outer *runtime.Outer
	weights := make([][]float32, len(n.params))
	for i, p := range n.params {
		weights[i] = p.data()
	}
	if c.outer.Every > 0 {
		if outer, err = g.NewOuter(ctx, c.outer, weights...); err != nil {
			return err
		}
		defer outer.Close()
		inner = outer.Site
		say("across %d sites %v: outer sync every %d steps, lr %g, momentum %g, %s, top-k %g, delay %d",
			len(outer.Names), outer.Names, c.outer.Every, c.outer.LR, c.outer.Momentum, c.outer.Precision, c.outer.TopK, c.outer.Delay)
	}
	var nparams int
	for _, p := range n.params {
		tr.Track(p.name, p.data(), p.shape64()...)
		nparams += len(p.data())
	}
	for i, p := range n.params {
		if outer != nil {
			// Each site has its own Adam moments, each rank its own error
			// feedback; the outer optimizer's state is the same everywhere.
			tr.TrackPerRank("adam.m."+p.name, opt.m[i])
			tr.TrackPerRank("adam.v."+p.name, opt.v[i])
			continue
		}
		tr.Track("adam.m."+p.name, opt.m[i], p.shape64()...)
		tr.Track("adam.v."+p.name, opt.v[i], p.shape64()...)
	}
	tr.Track64("adam.steps", opt.steps[:])
	if outer != nil {
		outer.Track(tr)
	}
	// synced says whether the sites agree after step, so that a
	// checkpoint of it continues the run.
	synced := func(step int64) bool { return outer == nil || step%int64(c.outer.Every) == 0 }

	m := meta{Model: c.model, Seed: c.seed, Batch: c.batch, Order: order.State{Seed: c.seed}}
	step, restored, err := tr.Start(ctx, &m)
	if err != nil {
		return err
	}
	say("mnist: %s, %d parameters, %d workers, global batch %d (%d each), %d training and %d test digits, Adam lr %g",
		c.model, nparams, world, c.batch, local, train.Index.Records, len(test), c.lr)
	if restored {
		if m.Model != c.model || m.Seed != c.seed || m.Batch != c.batch {
			return fmt.Errorf("the checkpoint in %s is of --model %s --seed %d --batch %d; this run asks for %s, %d, %d (use another --ckpt)",
				c.ckpt, m.Model, m.Seed, m.Batch, c.model, c.seed, c.batch)
		}
		say("resumed from step %d: epoch %d, %d of its samples done (restart %d)", step, m.Order.Epoch+1, m.Order.Consumed, g.Restarts)
	}
	// A site of a federation (ringo launch --federation) that was down
	// replays the outer syncs the others took without it and resumes at
	// the last one, skipping the batches of the steps it missed so that
	// every site keeps the same step count and data order.
	var skip int64
	if outer != nil {
		to, err := outer.CatchUp(ctx, step)
		if err != nil {
			return err
		}
		skip, step = to-step, to
	}
	avg, err := runtime.NewGradients(inner, runtime.GradConfig{Compress: runtime.Compression(c.compress)})
	if err != nil {
		return err
	}
	ocfg := order.Config{Seed: c.seed, Shuffle: true, Window: 16384, BatchSize: local, DropLast: true}

	lastSaved := step
	var total timers
	var elapsed time.Duration
	stopped := false
	for m.Order.Epoch < c.epochs && !stopped {
		epoch := m.Order.Epoch
		if train.Index.Records-m.Order.Consumed < int64(c.batch) {
			// Restored from the last step of an epoch: nothing is left of
			// it (the last incomplete batch is dropped).
			m.Order = order.State{Seed: c.seed, Epoch: epoch + 1}
			continue
		}
		ld, err := dataloader.NewLoader(ctx, train, dataloader.LoaderConfig{Order: ocfg, Rank: rank, World: world, State: m.Order, Workers: c.loaderWorkers}, decodeDigit)
		if err != nil {
			return err
		}
		var t timers
		t0 := time.Now()
		for {
			if c.maxSteps > 0 && step >= c.maxSteps {
				stopped = true
				break
			}
			ta := time.Now()
			b, err := ld.Next(ctx)
			if err == io.EOF {
				break
			}
			if err != nil {
				ld.Close()
				return err
			}
			if skip > 0 {
				skip--
				m.Order = b.State
				continue
			}
			tb := time.Now()
			loss, err := n.step(b.Samples)
			if err != nil {
				ld.Close()
				return err
			}
			tc := time.Now()
			if err := avg.Average(ctx, n.grads...); err != nil {
				ld.Close()
				return err
			}
			td := time.Now()
			opt.update(n.params, n.grads)
			step++
			if outer != nil {
				if err := outer.Step(ctx, step); err != nil {
					ld.Close()
					return err
				}
				if c.verifyEvery > 0 && step%c.verifyEvery == 0 && step%int64(c.outer.Every) == 0 && c.outer.Delay == 0 {
					if err := runtime.VerifySame(ctx, g, step, weights...); err != nil {
						ld.Close()
						return err
					}
				}
			}
			m.Order = b.State
			if err := tr.Step(ctx, step, m); err != nil {
				ld.Close()
				return err
			}
			if !c.bench && c.ckpt != "" && c.saveEvery > 0 && step%c.saveEvery == 0 {
				lastSaved = step
			}
			if step == c.crashAt && g.Restarts == 0 && rank == world-1 {
				fmt.Fprintf(os.Stderr, "mnist: rank %d crashing after step %d, as --crash-at-step asks\n", rank, step)
				os.Exit(3)
			}
			t.data += tb.Sub(ta)
			t.compute += tc.Sub(tb)
			t.average += td.Sub(tc)
			t.rest += time.Since(td)
			t.steps++
			t.loss += float64(loss)
		}
		ld.Close()
		dt := time.Since(t0)
		if stopped {
			// Leave a checkpoint to resume from.
			if !c.bench && c.ckpt != "" && step != lastSaved && synced(step) {
				if err := tr.Save(ctx, step, m); err != nil {
					return err
				}
				say("stopped at step %d (--max-steps)  checkpoint %s", step, filepath.Join(c.ckpt, fmt.Sprintf("step-%08d", step)))
			}
			break
		}
		m.Order = order.State{Seed: c.seed, Epoch: epoch + 1}
		sums, err := sumOverRanks(ctx, g, t.loss, float64(t.steps), t.data.Seconds(), t.compute.Seconds(), t.average.Seconds(), t.rest.Seconds())
		if err != nil {
			return err
		}
		total.data += t.data
		total.compute += t.compute
		total.average += t.average
		total.rest += t.rest
		total.steps += t.steps
		elapsed += dt
		rate := float64(t.steps) * float64(c.batch) / dt.Seconds()
		if c.bench {
			say("epoch %d/%d  loss %.4f  %.0f samples/s  %s", epoch+1, c.epochs, sums[0]/max(sums[1], 1), rate, breakdown(sums[2:]))
			continue
		}
		ckptNote := ""
		if c.ckpt != "" {
			if step != lastSaved && synced(step) {
				if err := tr.Save(ctx, step, m); err != nil {
					return err
				}
				lastSaved = step
			}
			ckptNote = "  checkpoint " + filepath.Join(c.ckpt, fmt.Sprintf("step-%08d", lastSaved))
		}
		acc, err := accuracy(ctx, g, n, test)
		if err != nil {
			return err
		}
		say("epoch %d/%d  loss %.4f  test accuracy %.4f  %.0f samples/s%s", epoch+1, c.epochs, sums[0]/max(sums[1], 1), acc, rate, ckptNote)
	}

	if c.bench && total.steps > 0 {
		sums, err := sumOverRanks(ctx, g, total.data.Seconds(), total.compute.Seconds(), total.average.Seconds(), total.rest.Seconds())
		if err != nil {
			return err
		}
		say("bench: %d workers, global batch %d: %.0f samples/s; %s", world, c.batch,
			float64(total.steps)*float64(c.batch)/elapsed.Seconds(), breakdown(sums))
	}
	if outer != nil {
		// Between syncs each site has its own weights: one more sync
		// makes them the same everywhere.
		if err := outer.Sync(ctx, step); err != nil {
			return err
		}
	}
	acc, err := accuracy(ctx, g, n, test)
	if err != nil {
		return err
	}
	say("final test accuracy %.4f on %d digits after %d steps", acc, len(test), step)
	if outer != nil {
		if err := runtime.VerifySame(ctx, g, step, weights...); err != nil {
			return err
		}
		st := outer.Stats()
		say("outer: %d syncs; rank 0 sent %d bytes to other sites (%.0f per step), compression %.1fx, waited %v for syncs",
			st.Syncs, st.WireBytes, float64(st.WireBytes)/float64(max(step, 1)), st.Ratio(), st.Waited.Round(time.Millisecond))
		say("all %d replicas hold identical weights after step %d (each site keeps its own Adam moments)", world, step)
		return tr.Close()
	}
	if err := tr.Verify(ctx, step); err != nil {
		return err
	}
	say("all %d replicas hold identical weights (hash %016x) after step %d", world, stateHash(n, opt), step)
	return tr.Close()
}

// breakdown says where step time went, from the ranks' summed seconds of
// data wait, compute, averaging and the rest (optimiser, trainer).
func breakdown(s []float64) string {
	all := s[0] + s[1] + s[2] + s[3]
	if all == 0 {
		return ""
	}
	return fmt.Sprintf("step time: compute %.0f%%, gradient averaging %.0f%%, waiting for data %.1f%%, optimiser and trainer %.0f%%",
		100*s[1]/all, 100*s[2]/all, 100*s[0]/all, 100*s[3]/all)
}

func sumOverRanks(ctx context.Context, g *runtime.Group, v ...float64) ([]float64, error) {
	if err := g.AllReduce(ctx, collective.Float64s(v), collective.Float64s(v), collective.Sum); err != nil {
		return nil, fmt.Errorf("summing statistics over the workers: %w", err)
	}
	return v, nil
}

// accuracy evaluates the whole test set: each rank takes a contiguous
// part of it and the counts are summed.
func accuracy(ctx context.Context, g *runtime.Group, n *net, test []digit) (float64, error) {
	lo, hi := g.Rank()*len(test)/g.Size(), (g.Rank()+1)*len(test)/g.Size()
	pred, err := n.predict(test[lo:hi])
	if err != nil {
		return 0, err
	}
	var right float64
	for i, p := range pred {
		if p == test[lo+i].label {
			right++
		}
	}
	s, err := sumOverRanks(ctx, g, right, float64(len(pred)))
	if err != nil {
		return 0, err
	}
	return s[0] / s[1], nil
}

// stateHash is the hash Trainer.Verify compares: XXH64 over each tracked
// tensor's name and bytes, in the order tracked.
func stateHash(n *net, opt *adam) uint64 {
	h := xxhash.New()
	f32 := func(name string, s []float32) {
		h.WriteString(name)
		h.Write(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 4*len(s)))
	}
	for _, p := range n.params {
		f32(p.name, p.data())
	}
	for i, p := range n.params {
		f32("adam.m."+p.name, opt.m[i])
		f32("adam.v."+p.name, opt.v[i])
	}
	h.WriteString("adam.steps")
	h.Write(unsafe.Slice((*byte)(unsafe.Pointer(&opt.steps[0])), 8))
	return h.Sum64()
}
