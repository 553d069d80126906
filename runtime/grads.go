package runtime

import (
	"context"
	"fmt"
	"unsafe"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

// Compression is how gradients travel on the wire.
type Compression string

const (
	// NoCompression sends float32 gradients as they are.
	NoCompression Compression = ""
	// BF16 rounds each gradient to bfloat16 (8 bits of mantissa) before
	// the all-reduce and widens the average back to float32: half the
	// bytes. The sum is taken in float32 and rounded once per step of the
	// ring, so the error is about 2^-8 relative per element, larger when
	// gradients of opposite sign cancel. SGD and Adam tolerate it (it is
	// below the noise of a mini-batch), but replicas stay identical only
	// because every rank receives the same rounded result.
	BF16 Compression = "bf16"
	// FP16 uses IEEE half precision: 11 bits of mantissa but a range of
	// only ±65504, so gradients above that overflow to Inf and those below
	// 6e-8 flush to zero; scale the loss if yours are tiny.
	FP16 Compression = "fp16"
)

// GradConfig tunes gradient averaging.
type GradConfig struct {
	// BucketBytes is the size gradients are fused into before each
	// all-reduce (PyTorch DDP's bucket_cap_mb; Horovod's fusion buffer).
	// Default 25 MiB.
	BucketBytes int
	// Compress selects the wire format.
	Compress Compression
	// Staging sizes the host buffers that AverageDevice stages device
	// gradients through (collective.Stager); zero fields take
	// collective.DefaultStagingConfig's values.
	Staging collective.StagingConfig
}

// DefaultGradConfig returns 25 MiB buckets and no compression.
func DefaultGradConfig() GradConfig { return GradConfig{BucketBytes: 25 << 20} }

// Validate reports a bad field.
func (c GradConfig) Validate() error {
	if c.BucketBytes < 4 {
		return fmt.Errorf("gradient bucket of %d bytes: want at least 4", c.BucketBytes)
	}
	switch c.Compress {
	case NoCompression, BF16, FP16:
	default:
		return fmt.Errorf("gradient compression %q: want none, bf16 or fp16", c.Compress)
	}
	if err := c.Staging.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("gradient staging: %w", err)
	}
	return nil
}

// Gradients averages gradients across the group: many small tensors are
// fused into buckets so that they cost few collectives, and buckets go out
// as soon as they are full, so the caller may overlap the next layer's
// backward pass with the all-reduce of the last (AverageAsync). Each
// element is reduced once, in the same order on every rank, so every
// replica gets bit-identical averages. Not safe for concurrent use: one
// average at a time.
type Gradients struct {
	comm collective.Comm
	cfg  GradConfig
	f32  bucketBufs[float32] // bucket buffers, reused
	u16  bucketBufs[uint16]
	f64  []float64
	// stager stages device gradients (AverageDevice); made on first use.
	stager *collective.Stager
}

// NewGradients returns a Gradients over comm.
func NewGradients(comm collective.Comm, cfg GradConfig) (*Gradients, error) {
	if cfg.BucketBytes == 0 {
		cfg.BucketBytes = DefaultGradConfig().BucketBytes
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Staging = cfg.Staging.WithDefaults()
	return &Gradients{comm: comm, cfg: cfg}, nil
}

// bucketBufs are the reusable bucket buffers of one element type, by
// bucket. A buffer whose all-reduce lends (collective.Lends: ranks on
// this host share memory with this one, and the bucket is large enough)
// lies in an shm window, so that those ranks read it in place instead of
// copying it through the rings.
type bucketBufs[T float32 | uint16] struct {
	bufs []bucketBuf[T]
}

type bucketBuf[T float32 | uint16] struct {
	s []T
	w *shm.Window // where s lies, or nil
}

// get returns bucket i's buffer of n elements, growing it if needed.
func (b *bucketBufs[T]) get(comm collective.Comm, i, n int) []T {
	for len(b.bufs) <= i {
		b.bufs = append(b.bufs, bucketBuf[T]{})
	}
	bb := &b.bufs[i]
	if cap(bb.s) >= n {
		return bb.s[:n]
	}
	bb.w.Close() // nil-safe
	*bb = bucketBuf[T]{s: make([]T, n)}
	size := n * int(unsafe.Sizeof(T(0)))
	if collective.Lends(comm, size) {
		// Where no window can be had (a full /dev/shm, say), the heap
		// buffer is copied instead of lent: slower, not wrong.
		if w, err := shm.NewWindow(size); err == nil {
			*bb = bucketBuf[T]{s: unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(w.Bytes()))), n), w: w}
		}
	}
	return bb.s
}

// at returns bucket i's buffer as get last gave it.
func (b *bucketBufs[T]) at(i int) []T { return b.bufs[i].s }

// freeWindows frees the buffers that lie in windows; get makes them again.
func (b *bucketBufs[T]) freeWindows() {
	for i := range b.bufs {
		if b.bufs[i].w != nil {
			b.bufs[i].w.Close()
			b.bufs[i] = bucketBuf[T]{}
		}
	}
}

// windows counts the bucket buffers that lie in windows.
func (g *Gradients) windows() int {
	n := 0
	for _, b := range g.f32.bufs {
		if b.w != nil {
			n++
		}
	}
	for _, b := range g.u16.bufs {
		if b.w != nil {
			n++
		}
	}
	return n
}

// bucket is a run of consecutive gradients that are averaged together.
type bucket struct {
	grads [][]float32
	elems int
	// direct: a lone uncompressed gradient is all-reduced in place, no
	// copy.
	direct bool
}

func (g *Gradients) plan(grads [][]float32) []bucket {
	var bs []bucket
	fuse(len(grads), func(i int) int { return len(grads[i]) }, g.cfg.BucketBytes/4, func(idx []int, elems int) {
		b := bucket{grads: make([][]float32, len(idx)), elems: elems}
		for j, i := range idx {
			b.grads[j] = grads[i]
		}
		b.direct = len(b.grads) == 1 && g.cfg.Compress == NoCompression
		bs = append(bs, b)
	})
	return bs
}

// fuse is the bucketing rule of both Average and AverageDevice: it walks
// n tensors of elems(i) float32s in order, skips empty ones, and calls
// emit with the indexes of each run of consecutive tensors that fits in
// per elements, and its total. A tensor larger than per is a bucket of its
// own. emit must not keep idx.
func fuse(n int, elems func(i int) int, per int, emit func(idx []int, elems int)) {
	var idx []int
	cur := 0
	for i := range n {
		e := elems(i)
		if e == 0 {
			continue
		}
		if cur > 0 && cur+e > per {
			emit(idx, cur)
			idx, cur = idx[:0], 0
		}
		idx = append(idx, i)
		cur += e
	}
	if cur > 0 {
		emit(idx, cur)
	}
}

// Pending is an average in flight.
type Pending struct {
	g       *Gradients
	buckets []bucket
	reqs    []*collective.Request
	err     error
}

// Average replaces every gradient with its average over the group.
func (g *Gradients) Average(ctx context.Context, grads ...[]float32) error {
	return g.AverageAsync(ctx, grads...).Wait(ctx)
}

// AverageAsync starts averaging grads and returns at once; the gradients
// must not be touched until Wait returns.
func (g *Gradients) AverageAsync(ctx context.Context, grads ...[]float32) *Pending {
	p := &Pending{g: g, buckets: g.plan(grads)}
	if g.comm.Size() == 1 {
		return p
	}
	for i, b := range p.buckets {
		var buf collective.Buffer
		switch {
		case b.direct:
			buf = collective.Float32s(b.grads[0])
		case g.cfg.Compress == NoCompression:
			f := g.f32.get(g.comm, i, b.elems)
			off := 0
			for _, gr := range b.grads {
				off += copy(f[off:], gr)
			}
			buf = collective.Float32s(f)
		default:
			h := g.u16.get(g.comm, i, b.elems)
			off := 0
			to := collective.BF16FromFloat32
			if g.cfg.Compress == FP16 {
				to = collective.F16FromFloat32
			}
			for _, gr := range b.grads {
				for _, v := range gr {
					h[off] = to(v)
					off++
				}
			}
			if g.cfg.Compress == FP16 {
				buf = collective.Float16s(h)
			} else {
				buf = collective.BFloat16s(h)
			}
		}
		p.reqs = append(p.reqs, g.comm.AllReduceAsync(ctx, buf, buf, collective.Avg))
	}
	return p
}

// Wait blocks until every bucket has been averaged and copied back.
func (p *Pending) Wait(ctx context.Context) error {
	for i, r := range p.reqs {
		if err := r.Wait(ctx); err != nil && p.err == nil {
			p.err = fmt.Errorf("averaging gradient bucket %d of %d: %w", i+1, len(p.reqs), err)
		}
	}
	if p.err != nil || len(p.reqs) == 0 {
		return p.err
	}
	g := p.g
	for i, b := range p.buckets {
		if b.direct {
			continue
		}
		off := 0
		if g.cfg.Compress == NoCompression {
			f := g.f32.at(i)
			for _, gr := range b.grads {
				off += copy(gr, f[off:off+len(gr)])
			}
			continue
		}
		from := collective.BF16ToFloat32
		if g.cfg.Compress == FP16 {
			from = collective.F16ToFloat32
		}
		h := g.u16.at(i)
		for _, gr := range b.grads {
			for j := range gr {
				gr[j] = from(h[off])
				off++
			}
		}
	}
	p.reqs = nil
	return nil
}

// Average64 averages float64 gradients, fused into buckets like Average
// (without compression or overlap: float64 training is for checking, not
// for speed).
func (g *Gradients) Average64(ctx context.Context, grads ...[]float64) error {
	if g.comm.Size() == 1 {
		return nil
	}
	per := max(1, g.cfg.BucketBytes/8)
	for start := 0; start < len(grads); {
		end, n := start, 0
		for end < len(grads) && (n == 0 || n+len(grads[end]) <= per) {
			n += len(grads[end])
			end++
		}
		if cap(g.f64) < n {
			g.f64 = make([]float64, n)
		}
		buf := g.f64[:n]
		off := 0
		for _, gr := range grads[start:end] {
			off += copy(buf[off:], gr)
		}
		if err := g.comm.AllReduce(ctx, collective.Float64s(buf), collective.Float64s(buf), collective.Avg); err != nil {
			return fmt.Errorf("averaging float64 gradients: %w", err)
		}
		off = 0
		for _, gr := range grads[start:end] {
			off += copy(gr, buf[off:off+len(gr)])
		}
		start = end
	}
	return nil
}

// BroadcastParams makes every replica start from rank 0's parameters.
func BroadcastParams(ctx context.Context, comm collective.Comm, params ...[]float32) error {
	for i, p := range params {
		if err := comm.Broadcast(ctx, collective.Float32s(p), collective.Float32s(p), 0); err != nil {
			return fmt.Errorf("broadcasting parameter %d of %d from rank 0: %w", i+1, len(params), err)
		}
	}
	return nil
}

// BroadcastParams64 is BroadcastParams for float64 parameters.
func BroadcastParams64(ctx context.Context, comm collective.Comm, params ...[]float64) error {
	for i, p := range params {
		if err := comm.Broadcast(ctx, collective.Float64s(p), collective.Float64s(p), 0); err != nil {
			return fmt.Errorf("broadcasting parameter %d of %d from rank 0: %w", i+1, len(params), err)
		}
	}
	return nil
}
