package checkpoint

import (
	"context"
	"fmt"
	"sync"
)

// Saver saves checkpoints in the background. SaveAsync blocks only while
// it copies the state into buffers of its own; the writing happens on a
// goroutine while training goes on. At most one save is in flight: a
// second SaveAsync waits for the first, and a failed background save is
// returned by the next SaveAsync (or Close), so a failure is never lost.
//
// The coordinator is used from the background goroutine, concurrently
// with whatever the training loop does on its own group, so it must not be
// the group that training's collectives run on (ranks would interleave the
// two in different orders): form a second group for checkpoints, as
// PyTorch's async checkpointing does.
type Saver struct {
	coord Coordinator
	dir   string
	opts  Options

	mu      sync.Mutex
	pending *Pending
	buffers [][]byte // reused host copies, one per tensor
}

// Options tune saving. The zero value keeps every checkpoint.
type Options struct {
	// KeepLast, when positive, deletes all but the newest KeepLast
	// complete checkpoints after each commit...
	KeepLast int
	// ...except those whose step is a multiple of KeepEvery, when positive.
	KeepEvery int64
	// Compress stores every tensor zstd-compressed after shuffling its
	// byte planes (raw float32 barely compresses without the shuffle).
	Compress bool
	// Encrypt seals every tensor with AES-256-GCM under the key in
	// RINGO_CKPT_KEY or RINGO_CKPT_KEY_FILE; Load needs the same key.
	Encrypt bool
	// ReplicateTo, when set, receives a verified copy of every committed
	// checkpoint (see Replicate); a failed copy fails the save's report
	// but never the checkpoint itself.
	ReplicateTo string

	// progress counts the tensor bytes written, for Reshard's caller.
	progress *tally
}

// NewSaver returns a Saver writing into dir.
func NewSaver(coord Coordinator, dir string, opts Options) *Saver {
	return &Saver{coord: coord, dir: dir, opts: opts}
}

// Pending is a background save.
type Pending struct {
	Step int64
	done chan struct{}
	err  error
}

// Wait blocks until the save has committed or failed.
func (p *Pending) Wait() error {
	<-p.done
	return p.err
}

// Err is the save's error once it has finished; nil while it runs or
// after it succeeded.
func (p *Pending) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// SaveAsync copies st and starts saving it as step. It first waits for the
// previous save and returns that save's error, if it failed, without
// starting a new one.
func (s *Saver) SaveAsync(ctx context.Context, step int64, st *State) (*Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending != nil {
		prev := s.pending
		s.pending = nil
		if err := prev.Wait(); err != nil {
			return nil, fmt.Errorf("checkpoint: the background save of step %d failed: %w", prev.Step, err)
		}
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("checkpoint: saving step %d: rank %d: %w", step, s.coord.Rank(), err)
	}
	// The copy is the only part that holds the caller up; its buffers are
	// reused from save to save.
	snap := &State{Tensors: make([]Tensor, len(st.Tensors)), Metadata: append([]byte(nil), st.Metadata...)}
	if len(s.buffers) < len(st.Tensors) {
		s.buffers = append(s.buffers, make([][]byte, len(st.Tensors)-len(s.buffers))...)
	}
	for i, t := range st.Tensors {
		if cap(s.buffers[i]) < len(t.Data) {
			s.buffers[i] = make([]byte, len(t.Data))
		}
		buf := s.buffers[i][:len(t.Data)]
		copy(buf, t.Data)
		t.Data = buf
		if t.Split != nil {
			r := *t.Split
			t.Split = &r
		}
		t.Shape = append([]int64(nil), t.Shape...)
		snap.Tensors[i] = t
	}
	p := &Pending{Step: step, done: make(chan struct{})}
	s.pending = p
	go func() {
		p.err = s.save(ctx, step, snap)
		close(p.done)
	}()
	return p, nil
}

// Save saves synchronously (after any save in flight), with retention.
func (s *Saver) Save(ctx context.Context, step int64, st *State) error {
	if err := s.Close(); err != nil {
		return err
	}
	return s.save(ctx, step, st)
}

func (s *Saver) save(ctx context.Context, step int64, st *State) error {
	if err := SaveWith(ctx, s.coord, s.dir, step, st, s.opts); err != nil {
		return err
	}
	if s.coord.Rank() == 0 && s.opts.ReplicateTo != "" {
		if err := Replicate(ctx, s.dir, step, s.opts.ReplicateTo); err != nil {
			return fmt.Errorf("checkpoint: step %d committed, but %w", step, err)
		}
	}
	if s.coord.Rank() == 0 && s.opts.KeepLast > 0 {
		if _, err := Retain(s.dir, s.opts.KeepLast, s.opts.KeepEvery); err != nil {
			return fmt.Errorf("checkpoint: step %d committed, but pruning old ones failed: %w", step, err)
		}
	}
	return nil
}

// Close waits for the save in flight and returns its error.
func (s *Saver) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		return nil
	}
	p := s.pending
	s.pending = nil
	if err := p.Wait(); err != nil {
		return fmt.Errorf("checkpoint: the background save of step %d failed: %w", p.Step, err)
	}
	return nil
}
