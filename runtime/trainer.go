package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
	"github.com/ringo-ml/ringo/collective"
)

// TrainerConfig says what the step helper does besides heartbeats.
type TrainerConfig struct {
	// Dir holds the job's checkpoints; empty turns checkpointing off.
	Dir string
	// SaveEvery saves a checkpoint, in the background, after every
	// SaveEvery-th step (0: only when Save is called).
	SaveEvery int64
	// KeepLast keeps the newest KeepLast checkpoints (0: all).
	KeepLast int
	// VerifyEvery checks, after every VerifyEvery-th step, that every
	// replica holds bit-identical tracked tensors (0: never). It costs one
	// hash of the parameters and an all-gather of 8 bytes per rank.
	VerifyEvery int64
	// ReplanEvery calls Replan after every ReplanEvery-th step, so that
	// the ring moves off a link that slowed down (0: RINGO_REPLAN_EVERY,
	// else DefaultReplanEvery; negative: never). It does nothing outside
	// a multi-node job launched with --topology probe.
	ReplanEvery int64
}

// Trainer is the step helper of a data-parallel training loop: it keeps
// replicas identical at the start (rank 0's parameters, or the newest
// checkpoint), heartbeats the launcher, saves checkpoints asynchronously
// with the caller's metadata (data-loader position, RNG state, epoch), and
// can check that replicas have not diverged.
//
//	t, _ := g.NewTrainer(ctx, runtime.TrainerConfig{Dir: "ckpt", SaveEvery: 100})
//	t.Track("w", w, 784, 10)
//	var meta MyMeta // holds e.g. the loader's order.State
//	step, _, _ := t.Start(ctx, &meta)
//	for step++; ; step++ { ...; t.Step(ctx, step, meta) }
type Trainer struct {
	g       *Group
	cfg     TrainerConfig
	tracked []tracked
	side    collective.Comm // the second group async saves commit on
	saver   *checkpoint.Saver
	saved   int64 // the step of the newest save started, -1 for none
}

type tracked struct {
	name  string
	dtype safetensors.DType
	shape []int64
	data  []byte // aliases the caller's slice
	// perRank: each rank has its own (TrackPerRank), saved as its row.
	perRank bool
}

// NewTrainer returns the step helper for g. With checkpoints on and more
// than one rank it forms a second group for the background saves.
func (g *Group) NewTrainer(ctx context.Context, cfg TrainerConfig) (*Trainer, error) {
	if cfg.SaveEvery < 0 || cfg.VerifyEvery < 0 || cfg.KeepLast < 0 {
		return nil, fmt.Errorf("trainer: SaveEvery %d, VerifyEvery %d and KeepLast %d must not be negative", cfg.SaveEvery, cfg.VerifyEvery, cfg.KeepLast)
	}
	every, err := replanEvery(cfg.ReplanEvery)
	if err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	cfg.ReplanEvery = every
	t := &Trainer{g: g, cfg: cfg, saved: -1}
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("trainer: checkpoint directory: %w", err)
		}
		coord := checkpoint.Coordinator(checkpoint.Single{})
		if g.Size() > 1 {
			side, err := g.NewGroup(ctx)
			if err != nil {
				return nil, fmt.Errorf("trainer: the checkpoint group: %w", err)
			}
			t.side = side
			coord = checkpoint.FromComm(side)
		}
		t.saver = checkpoint.NewSaver(coord, cfg.Dir, checkpoint.Options{KeepLast: cfg.KeepLast})
	}
	return t, nil
}

// Track registers a float32 tensor (parameters or optimiser state) to
// restore, checkpoint and verify; shape defaults to one dimension. The
// trainer reads and writes the slice in place.
func (t *Trainer) Track(name string, data []float32, shape ...int64) {
	t.track(name, safetensors.F32, shape, len(data), bytesOfSlice(data))
}

// TrackPerRank registers a float32 tensor that differs between ranks, of
// the same length on each: state such as a site's optimizer moments or a
// rank's error feedback when training across sites (NewOuter). A
// checkpoint holds it as a [world size, len] tensor, one row per rank, and
// gives each rank its row back, on the same world size only; Start with no
// checkpoint leaves it as it is, and Verify ignores it.
func (t *Trainer) TrackPerRank(name string, data []float32) {
	t.track(name, safetensors.F32, []int64{int64(t.g.Size()), int64(len(data))}, len(data), bytesOfSlice(data))
	t.tracked[len(t.tracked)-1].perRank = true
}

// Track64 registers a float64 tensor.
func (t *Trainer) Track64(name string, data []float64, shape ...int64) {
	t.track(name, safetensors.F64, shape, len(data), bytesOfSlice(data))
}

func (t *Trainer) track(name string, d safetensors.DType, shape []int64, n int, b []byte) {
	if len(shape) == 0 {
		shape = []int64{int64(n)}
	}
	t.tracked = append(t.tracked, tracked{name: name, dtype: d, shape: slices.Clone(shape), data: b})
}

func (t *Trainer) state(meta any) (*checkpoint.State, error) {
	st := &checkpoint.State{}
	for _, tr := range t.tracked {
		ct := checkpoint.Tensor{Name: tr.name, DType: tr.dtype, Shape: tr.shape, Data: tr.data}
		if tr.perRank {
			r := int64(t.g.Rank())
			ct.Split = &checkpoint.Rows{Start: r, End: r + 1}
		}
		st.Tensors = append(st.Tensors, ct)
	}
	if meta != nil {
		b, err := json.Marshal(meta)
		if err != nil {
			return nil, fmt.Errorf("trainer: checkpoint metadata: %w", err)
		}
		st.Metadata = b
	}
	return st, nil
}

// Start makes every replica identical before the first step. When the
// checkpoint directory holds a complete checkpoint (after a restart, or a
// run started again), it restores the newest one into the tracked tensors
// and meta and returns its step with restored true; otherwise it copies
// rank 0's tensors to every rank and returns step 0. Rank 0 chooses the
// checkpoint and tells the others, so all restore the same one.
func (t *Trainer) Start(ctx context.Context, meta any) (step int64, restored bool, err error) {
	step = -1
	if t.cfg.Dir != "" && t.g.Rank() == 0 {
		s, _, err := checkpoint.Latest(t.cfg.Dir)
		switch {
		case err == nil:
			step = s
		case !errors.Is(err, checkpoint.ErrNoCheckpoint):
			return 0, false, fmt.Errorf("trainer: %w", err)
		}
	}
	var v [1]int64
	v[0] = step
	if err := t.g.Broadcast(ctx, collective.Int64s(v[:]), collective.Int64s(v[:]), 0); err != nil {
		return 0, false, fmt.Errorf("trainer: agreeing on the checkpoint to restore: %w", err)
	}
	step = v[0]
	if step < 0 {
		for _, tr := range t.tracked {
			if tr.perRank {
				continue
			}
			if err := t.g.Broadcast(ctx, collective.BufferOf(collective.Int32, tr.data[:len(tr.data)&^3]), collective.BufferOf(collective.Int32, tr.data[:len(tr.data)&^3]), 0); err != nil {
				return 0, false, fmt.Errorf("trainer: copying %s from rank 0: %w", tr.name, err)
			}
		}
		return 0, false, nil
	}
	st, err := t.state(nil)
	if err != nil {
		return 0, false, err
	}
	t0 := time.Now()
	defer func() {
		if err == nil {
			t.g.rep.loaded(time.Since(t0))
		}
	}()
	if err := checkpoint.Load(ctx, t.cfg.Dir, step, st); err != nil {
		return 0, false, fmt.Errorf("trainer: rank %d restoring step %d from %s: %w", t.g.Rank(), step, t.cfg.Dir, err)
	}
	if meta != nil && len(st.Metadata) > 0 {
		if err := json.Unmarshal(st.Metadata, meta); err != nil {
			return 0, false, fmt.Errorf("trainer: the metadata of step %d: %w", step, err)
		}
	}
	return step, true, nil
}

// Step is called after each optimiser step: it heartbeats the launcher,
// verifies replicas every VerifyEvery steps, and starts a background
// checkpoint of the tracked tensors and meta every SaveEvery steps. The
// copy it takes for the save is the only time it holds the caller up; a
// failed background save is returned by the next save or by Close.
func (t *Trainer) Step(ctx context.Context, step int64, meta any) error {
	t.g.Heartbeat(step)
	if t.cfg.ReplanEvery > 0 && step%t.cfg.ReplanEvery == 0 {
		if _, err := t.g.Replan(ctx, step); err != nil {
			return fmt.Errorf("trainer: %w", err)
		}
	}
	if t.cfg.VerifyEvery > 0 && step%t.cfg.VerifyEvery == 0 {
		if err := t.Verify(ctx, step); err != nil {
			return err
		}
	}
	if t.saver != nil && t.cfg.SaveEvery > 0 && step%t.cfg.SaveEvery == 0 {
		st, err := t.state(meta)
		if err != nil {
			return err
		}
		t0 := time.Now()
		p, err := t.saver.SaveAsync(ctx, step, st)
		if err != nil {
			return fmt.Errorf("trainer: %w", err)
		}
		t.saved = step
		bytes := bytesOf(t.tracked)
		go func() { // counts the save for the launcher's metrics once it commits
			if p.Wait() == nil {
				t.g.rep.saved(step, t.cfg.Dir, time.Since(t0), bytes)
			}
		}()
	}
	return nil
}

// Save checkpoints step now and waits for it to commit (if Step already
// started saving this step, it waits for that save).
func (t *Trainer) Save(ctx context.Context, step int64, meta any) (err error) {
	if t.saver == nil {
		return errors.New("trainer: no checkpoint directory")
	}
	if step == t.saved {
		return t.saver.Close()
	}
	t.saved = step
	t0 := time.Now()
	defer func() {
		if err == nil {
			t.g.rep.saved(step, t.cfg.Dir, time.Since(t0), bytesOf(t.tracked))
		}
	}()
	st, err := t.state(meta)
	if err != nil {
		return err
	}
	return t.saver.Save(ctx, step, st)
}

// bytesOfSlice is the memory of s, which it aliases.
func bytesOfSlice[T float32 | float64](s []T) []byte {
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), int(unsafe.Sizeof(zero))*len(s))
}

func bytesOf(ts []tracked) int64 {
	var n int64
	for _, t := range ts {
		n += int64(len(t.data))
	}
	return n
}

// DivergedError says which ranks' tensors differ from the majority's.
type DivergedError struct {
	Step   int64
	Ranks  []int    // the ranks that differ
	Hashes []uint64 // every rank's hash, by rank
}

func (e *DivergedError) Error() string {
	rs := make([]string, len(e.Ranks))
	for i, r := range e.Ranks {
		rs[i] = fmt.Sprint(r)
	}
	who := "rank " + rs[0] + " holds parameters"
	if len(rs) > 1 {
		who = "ranks " + strings.Join(rs, ", ") + " hold parameters"
	}
	return fmt.Sprintf("replicas diverged at step %d: %s that differ from the others' (hashes by rank: %x)", e.Step, who, e.Hashes)
}

// Verify checks that every rank holds bit-identical tracked tensors: each
// rank hashes its own, the hashes are all-gathered, and ranks that differ
// from the majority are named in a *DivergedError (on every rank).
func (t *Trainer) Verify(ctx context.Context, step int64) error {
	h := xxhash.New()
	for _, tr := range t.tracked {
		if tr.perRank {
			continue
		}
		h.WriteString(tr.name)
		h.Write(tr.data)
	}
	return sameHash(ctx, t.g, step, h.Sum64())
}

// VerifySame checks, as Trainer.Verify does for tracked tensors, that
// every rank of c holds bit-identical data: for state that only some
// tensors share, such as the parameters of sites that each keep their own
// optimizer state (NewOuter).
func VerifySame(ctx context.Context, c collective.Comm, step int64, data ...[]float32) error {
	h := xxhash.New()
	for _, d := range data {
		h.Write(bytesOfSlice(d))
	}
	return sameHash(ctx, c, step, h.Sum64())
}

// sameHash all-gathers every rank's hash and names the ranks that differ
// from the majority.
func sameHash(ctx context.Context, c collective.Comm, step int64, hash uint64) error {
	n := c.Size()
	mine := []int64{int64(hash)}
	all := make([]int64, n)
	if err := c.AllGather(ctx, collective.Int64s(mine), collective.Int64s(all)); err != nil {
		return fmt.Errorf("trainer: verifying replicas at step %d: %w", step, err)
	}
	count := map[int64]int{}
	for _, v := range all {
		count[v]++
	}
	if len(count) == 1 {
		return nil
	}
	// The majority is taken to be right; on a tie, rank 0's hash.
	major, best := all[0], count[all[0]]
	for v, c := range count {
		if c > best {
			major, best = v, c
		}
	}
	e := &DivergedError{Step: step, Hashes: make([]uint64, n)}
	for r, v := range all {
		e.Hashes[r] = uint64(v)
		if v != major {
			e.Ranks = append(e.Ranks, r)
		}
	}
	return e
}

// Close waits for a save in flight and closes the checkpoint group.
func (t *Trainer) Close() error {
	var err error
	if t.saver != nil {
		err = t.saver.Close()
	}
	if t.side != nil {
		if cerr := t.side.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
