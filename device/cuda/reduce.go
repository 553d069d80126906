package cuda

import (
	"fmt"

	"github.com/ringo-ml/ringo/device/cuda/kernels"
)

// Reducer runs the elementwise reduction kernels of package kernels on a
// context: the GPU side of an all-reduce that reduces in device memory.
type Reducer struct {
	c   *Context
	mod *Module
	fns map[string]*Function
}

// blockThreads is the launch's block size; the grid covers n with at most
// blocksPerSM blocks per multiprocessor, after which each thread's
// grid-stride loop takes more than one element.
const (
	blockThreads = 256
	blocksPerSM  = 8
)

// Reducer loads the kernels (once per context; the JIT compiles them for
// this device at the first call) and returns the context's Reducer.
func (c *Context) Reducer() (*Reducer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.red != nil {
		return c.red, nil
	}
	mod, err := c.LoadModule(kernels.Source())
	if err != nil {
		return nil, fmt.Errorf("loading ringo's reduction kernels: %w", err)
	}
	r := &Reducer{c: c, mod: mod, fns: map[string]*Function{}}
	for _, name := range kernels.Names() {
		f, err := mod.Function(name)
		if err != nil {
			mod.Close()
			return nil, err
		}
		r.fns[name] = f
	}
	c.red = r
	return r, nil
}

func (r *Reducer) grid(n int) int {
	return max(1, min((n+blockThreads-1)/blockThreads, blocksPerSM*max(1, r.c.info.Multiprocessors)))
}

// Reduce queues dst[i] = a[i] (op) b[i] for n elements of d at device
// addresses dst, a and b (dst may be a or b).
func (r *Reducer) Reduce(s *Stream, op kernels.Op, d kernels.DType, dst, a, b uint64, n int) error {
	if !op.Valid() || !d.Valid() {
		return fmt.Errorf("cuda device %d: no reduction kernel for op %q on %q", r.c.ordinal, op, d)
	}
	if n <= 0 {
		return nil
	}
	return s.Launch(r.fns[kernels.ReduceName(op, d)], r.grid(n), blockThreads, dst, a, b, uint64(n))
}

// Divide queues dst[i] /= divisor for n elements of d: an average's last
// step.
func (r *Reducer) Divide(s *Stream, d kernels.DType, dst uint64, n int, divisor float64) error {
	if !d.Valid() {
		return fmt.Errorf("cuda device %d: no divide kernel for %q", r.c.ordinal, d)
	}
	if n <= 0 {
		return nil
	}
	var div any = float32(divisor)
	if d.ComputeBits() == 64 {
		div = divisor
	}
	return s.Launch(r.fns[kernels.DivideName(d)], r.grid(n), blockThreads, dst, uint64(n), div)
}
