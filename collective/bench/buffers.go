package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

// buffers holds one size's send and receive memory for one rank.
type buffers struct {
	dtype       collective.DType
	n, rank     int
	count       int // elements in the per-rank unit (see newBuffers)
	send, recv  []byte
	op          string
	redop       collective.Op
	root        int
	initialRecv func()
	windows     []*shm.Window // where the buffers lie, with --device window
}

func setElem(d collective.DType, b []byte, i int, v float64) {
	switch d {
	case collective.Float32:
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(v)))
	case collective.Float64:
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
	case collective.Int32:
		binary.LittleEndian.PutUint32(b[4*i:], uint32(int32(v)))
	case collective.Int64:
		binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(v)))
	case collective.BFloat16:
		binary.LittleEndian.PutUint16(b[2*i:], collective.BF16FromFloat32(float32(v)))
	case collective.Float16:
		binary.LittleEndian.PutUint16(b[2*i:], collective.F16FromFloat32(float32(v)))
	}
}

func getElem(d collective.DType, b []byte, i int) float64 {
	switch d {
	case collective.Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	case collective.Float64:
		return math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	case collective.Int32:
		return float64(int32(binary.LittleEndian.Uint32(b[4*i:])))
	case collective.Int64:
		return float64(int64(binary.LittleEndian.Uint64(b[8*i:])))
	case collective.BFloat16:
		return float64(collective.BF16ToFloat32(binary.LittleEndian.Uint16(b[2*i:])))
	case collective.Float16:
		return float64(collective.F16ToFloat32(binary.LittleEndian.Uint16(b[2*i:])))
	}
	return math.NaN()
}

// newBuffers allocates and fills the buffers for total elements: the
// all-reduce or broadcast count, or the whole gathered / scattered buffer
// for all-gather and reduce-scatter (total/n elements per rank).
func newBuffers(c Config, n, rank, total int) (*buffers, error) {
	es := c.DType.Size()
	b := &buffers{dtype: c.DType, n: n, rank: rank, op: c.Op, redop: c.RedOp, root: c.Root}
	var err error
	alloc := func(n int) []byte {
		if c.Device != "window" || err != nil || n == 0 {
			return make([]byte, n)
		}
		// A window per buffer: the peers on this host read it in place.
		var w *shm.Window
		if w, err = shm.NewWindow(n); err != nil {
			return make([]byte, n) // reported below
		}
		b.windows = append(b.windows, w)
		return w.Bytes()
	}
	defer func() {
		if err != nil {
			b.free()
		}
	}()
	switch c.Op {
	case "allreduce":
		b.count = total
		b.send = alloc(total * es)
		b.recv = alloc(total * es)
		for i := 0; i < total; i++ {
			setElem(c.DType, b.send, i, input(c.RedOp, rank, i))
		}
	case "reducescatter":
		b.count = total / n
		b.send = alloc(total * es)
		b.recv = alloc(b.count * es)
		for i := 0; i < total; i++ {
			setElem(c.DType, b.send, i, input(c.RedOp, rank, i))
		}
	case "allgather":
		b.count = total / n
		b.send = alloc(b.count * es)
		b.recv = alloc(total * es)
		for i := 0; i < b.count; i++ {
			setElem(c.DType, b.send, i, value(rank, i))
		}
	case "broadcast":
		b.count = total
		b.send = alloc(total * es)
		b.recv = alloc(total * es)
		if rank == c.Root {
			for i := 0; i < total; i++ {
				setElem(c.DType, b.send, i, value(rank, i))
			}
		}
	default:
		return nil, fmt.Errorf("unknown op %q", c.Op)
	}
	if err != nil {
		return nil, fmt.Errorf("--device window: %w", err)
	}
	return b, nil
}

// free releases the buffers' windows (--device window).
func (b *buffers) free() {
	for _, w := range b.windows {
		w.Close()
	}
	b.windows = nil
}

// reset prepares the checked call: in-place all-reduce starts from the
// input again; other outputs are poisoned so a missed write shows.
func (b *buffers) reset() {
	if b.op == "allreduce" {
		copy(b.recv, b.send)
		return
	}
	for i := range b.recv {
		b.recv[i] = 0xff
	}
}

func (b *buffers) algo(c Config) collective.Algo {
	switch b.op {
	case "reducescatter", "allgather":
		return collective.AlgoRing
	}
	return c.Coll.AlgoFor(len(b.recv), c.NP)
}

// run makes one call. All-reduce runs in place on recv, as a training loop
// does with gradients, so no copy is timed with it.
func (b *buffers) run(ctx context.Context, comm collective.Comm, c Config) error {
	return call(ctx, comm, b, collective.BufferOf(b.dtype, b.send), collective.BufferOf(b.dtype, b.recv))
}

// collectives is what a sweep calls: a Comm on host buffers, or a Stager
// on device buffers.
type collectives[B any] interface {
	AllReduce(ctx context.Context, send, recv B, op collective.Op) error
	ReduceScatter(ctx context.Context, send, recv B, op collective.Op) error
	AllGather(ctx context.Context, send, recv B) error
	Broadcast(ctx context.Context, send, recv B, root int) error
}

// call makes b's collective through c.
func call[B any](ctx context.Context, c collectives[B], b *buffers, send, recv B) error {
	switch b.op {
	case "allreduce":
		return c.AllReduce(ctx, recv, recv, b.redop)
	case "reducescatter":
		return c.ReduceScatter(ctx, send, recv, b.redop)
	case "allgather":
		return c.AllGather(ctx, send, recv)
	case "broadcast":
		return c.Broadcast(ctx, send, recv, b.root)
	}
	return fmt.Errorf("unknown op %q", b.op)
}

// check counts the elements of recv that differ from the exact answer.
func (b *buffers) check() int64 {
	var wrong int64
	elems := len(b.recv) / b.dtype.Size()
	for i := 0; i < elems; i++ {
		var want float64
		switch b.op {
		case "allreduce":
			want = expected(b.redop, b.n, i, b.dtype)
		case "reducescatter":
			want = expected(b.redop, b.n, b.rank*b.count+i, b.dtype)
		case "allgather":
			want = value(i/b.count, i%b.count)
		case "broadcast":
			want = value(b.root, i)
		}
		if got := getElem(b.dtype, b.recv, i); got != want {
			wrong++
		}
	}
	return wrong
}
