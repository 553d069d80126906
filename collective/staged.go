package collective

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DeviceMemory is memory a transport cannot read in place, such as a GPU
// buffer: collectives stage it through host memory in chunks. Package
// device/cuda provides one for GPUs (wired up by runtime); the
// collectivetest package has a host-memory stand-in.
//
// Both copies block until done. A Stager calls CopyToHost from one
// goroutine and CopyFromHost from another, so an implementation that runs
// each direction on its own stream (a GPU has a copy engine per direction)
// overlaps them; copies in one direction never overlap each other. The
// host slices come from StagingConfig.Alloc (pinned memory, for a GPU).
type DeviceMemory interface {
	// Len is the size in bytes.
	Len() int
	// CopyToHost copies len(dst) bytes from offset off into dst.
	CopyToHost(dst []byte, off int) error
	// CopyFromHost copies src to offset off.
	CopyFromHost(off int, src []byte) error
}

// DeviceBuffer is a typed view of device memory.
type DeviceBuffer struct {
	dtype DType
	mem   DeviceMemory
}

// OnDevice views m as elements of d; m.Len() must be a multiple of
// d.Size().
func OnDevice(d DType, m DeviceMemory) DeviceBuffer { return DeviceBuffer{d, m} }

// DType returns the element type.
func (b DeviceBuffer) DType() DType { return b.dtype }

// Len returns the number of elements.
func (b DeviceBuffer) Len() int {
	if s := b.dtype.Size(); s > 0 && b.mem != nil {
		return b.mem.Len() / s
	}
	return 0
}

// Memory returns the device memory behind b.
func (b DeviceBuffer) Memory() DeviceMemory { return b.mem }

// StagingConfig sizes a Stager.
type StagingConfig struct {
	// ChunkBytes is the unit that moves through the pipeline: while chunk
	// k is on the wire, chunk k+1 is copied off the device and chunk k-1
	// back onto it. Default 4 MiB: large enough that a GPU copy runs at
	// PCIe speed, small enough that the first and last chunk, which
	// nothing hides, cost little.
	ChunkBytes int
	// Slots is how many host buffers of ChunkBytes are in flight: at
	// least 3 (one per stage). Default 4, so that a copy that finishes
	// late does not stall the wire.
	Slots int
	// Alloc returns host memory the device copies from and to fastest
	// (pinned memory for a GPU); nil means ordinary Go memory.
	Alloc func(n int) ([]byte, error)
	// Free releases what Alloc returned, on Close.
	Free func([]byte)
}

// DefaultStagingConfig returns 4 chunks of 4 MiB in ordinary memory.
func DefaultStagingConfig() StagingConfig {
	return StagingConfig{ChunkBytes: 4 << 20, Slots: 4}
}

// WithDefaults is c with its zero ChunkBytes and Slots taken from
// DefaultStagingConfig, as NewStager uses it.
func (c StagingConfig) WithDefaults() StagingConfig {
	def := DefaultStagingConfig()
	if c.ChunkBytes == 0 {
		c.ChunkBytes = def.ChunkBytes
	}
	if c.Slots == 0 {
		c.Slots = def.Slots
	}
	return c
}

// Validate reports a bad field.
func (c StagingConfig) Validate() error {
	if c.ChunkBytes < 64 {
		return fmt.Errorf("staging config: ChunkBytes %d must be at least 64", c.ChunkBytes)
	}
	if c.Slots < 3 {
		return fmt.Errorf("staging config: Slots %d must be at least 3 (one per stage: device to host, wire, host to device)", c.Slots)
	}
	return nil
}

// StageStats is where the time of staged calls went. Each stage's time is
// the sum of the time it was busy; they overlap, so together they exceed
// Total when the pipeline works.
type StageStats struct {
	Calls  int
	Bytes  int64         // device bytes reduced, gathered or broadcast
	D2H    time.Duration // copying device to host
	Wire   time.Duration // the host collective: network and reduction
	H2D    time.Duration // copying host to device
	Total  time.Duration // wall time of the calls
	Chunks int
}

// Stager runs collectives over device memory. Each call cuts the buffer
// into chunks and pipelines three stages over a ring of host slots: device
// to host, the host collective on the Comm, host to device. Results are
// the Comm's results chunk by chunk, so they are bit-identical across
// ranks and from run to run, like the Comm's. Not safe for concurrent use;
// calls run one at a time.
type Stager struct {
	comm  Comm
	cfg   StagingConfig
	slots [][]byte
	stats StageStats
	size  [2]int64 // scratch for the length check
}

// NewStager allocates the host slots for calls on comm.
func NewStager(comm Comm, cfg StagingConfig) (*Stager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Stager{comm: comm, cfg: cfg}
	// A slot holds a chunk and, for reduce-scatter and all-gather, room
	// for the other side of the out-of-place call.
	n := 2 * cfg.ChunkBytes
	for range cfg.Slots {
		var b []byte
		var err error
		if cfg.Alloc != nil {
			b, err = cfg.Alloc(n)
		} else {
			b = make([]byte, n)
		}
		if err == nil && len(b) < n {
			err = fmt.Errorf("staging allocator returned %d bytes, want %d", len(b), n)
		}
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("allocating %d staging buffers of %d bytes on rank %d: %w", cfg.Slots, n, comm.Rank(), err)
		}
		s.slots = append(s.slots, b[:n])
	}
	return s, nil
}

// Close frees the host slots. It does not close the Comm.
func (s *Stager) Close() error {
	if s.cfg.Free != nil {
		for _, b := range s.slots {
			s.cfg.Free(b)
		}
	}
	s.slots = nil
	return nil
}

// Stats returns what the calls so far spent in each stage.
func (s *Stager) Stats() StageStats { return s.stats }

// ResetStats zeroes Stats.
func (s *Stager) ResetStats() { s.stats = StageStats{} }

// stagedCall is one collective over device memory, cut into chunks of
// elems elements per block (a block is the whole buffer for all-reduce and
// broadcast, one rank's share for reduce-scatter and all-gather).
type stagedCall struct {
	kind       opKind
	dtype      DType
	wireType   DType // AllReduceAs: the float32 chunk travels as this 16-bit type
	op         Op
	root       int
	send, recv DeviceMemory
	block      int // bytes per block
	chunk      int // bytes per block per chunk
	chunks     int
	rank, size int
}

func (c *stagedCall) span(k int) (off, n int) {
	off = k * c.chunk
	return off, min(c.chunk, c.block-off)
}

// toHost stages chunk k of the send buffer into slot.
func (c *stagedCall) toHost(k int, slot []byte) error {
	off, n := c.span(k)
	switch c.kind {
	case opAllReduce, opAllGather:
		if err := c.send.CopyToHost(slot[:n], off); err != nil {
			return err
		}
		if c.wireType != 0 {
			narrow(c.wireType, view[uint16](slot[len(slot)/2:len(slot)/2+n/2]), view[float32](slot[:n]))
		}
		return nil
	case opBroadcast:
		if c.rank != c.root {
			return nil
		}
		return c.send.CopyToHost(slot[:n], off)
	case opReduceScatter:
		for b := range c.size {
			if err := c.send.CopyToHost(slot[b*n:(b+1)*n], b*c.block+off); err != nil {
				return err
			}
		}
	}
	return nil
}

// wire runs the host collective on chunk k in slot.
func (c *stagedCall) wire(ctx context.Context, comm Comm, k int, slot []byte) error {
	_, n := c.span(k)
	d := c.dtype
	switch c.kind {
	case opAllReduce:
		b := BufferOf(d, slot[:n])
		if c.wireType != 0 {
			b = BufferOf(c.wireType, slot[len(slot)/2:len(slot)/2+n/2])
		}
		return comm.AllReduce(ctx, b, b, c.op)
	case opBroadcast:
		b := BufferOf(d, slot[:n])
		return comm.Broadcast(ctx, b, b, c.root)
	case opReduceScatter:
		all := c.size * n
		return comm.ReduceScatter(ctx, BufferOf(d, slot[:all]), BufferOf(d, slot[all:all+n]), c.op)
	case opAllGather:
		return comm.AllGather(ctx, BufferOf(d, slot[:n]), BufferOf(d, slot[n:n+c.size*n]))
	}
	return nil
}

// toDevice copies chunk k's result from slot into the receive buffer.
func (c *stagedCall) toDevice(k int, slot []byte) error {
	off, n := c.span(k)
	switch c.kind {
	case opAllReduce, opBroadcast:
		if c.kind == opBroadcast && c.rank == c.root && c.send == c.recv {
			return nil // the root's data is already there
		}
		if c.wireType != 0 {
			widen(c.wireType, view[float32](slot[:n]), view[uint16](slot[len(slot)/2:len(slot)/2+n/2]))
		}
		return c.recv.CopyFromHost(off, slot[:n])
	case opReduceScatter:
		all := c.size * n
		return c.recv.CopyFromHost(off, slot[all:all+n])
	case opAllGather:
		for b := range c.size {
			if err := c.recv.CopyFromHost(b*c.block+off, slot[n+b*n:n+(b+1)*n]); err != nil {
				return err
			}
		}
	}
	return nil
}

// AllReduce reduces send across the group into recv (which may be send).
func (s *Stager) AllReduce(ctx context.Context, send, recv DeviceBuffer, op Op) error {
	return s.reduce(ctx, opAllReduce, send, recv, 1, op, 0)
}

// reduce runs a reducing call whose send holds sendBlocks of recv's size,
// on the wire as wire (AllReduceAs) or, when 0, as send's dtype.
func (s *Stager) reduce(ctx context.Context, k opKind, send, recv DeviceBuffer, sendBlocks int, op Op, wire DType) error {
	c, err := s.check(k, send, recv, sendBlocks, 1)
	if err != nil {
		return err
	}
	reduced := send.dtype
	if wire != 0 {
		reduced = wire
	}
	if !Supports(reduced, op) {
		return s.argErr(k, "reducing %v with %v is not supported", reduced, op)
	}
	c.op, c.wireType = op, wire
	return s.run(ctx, c)
}

// AllReduceAs is AllReduce of float32 device memory that travels and is
// reduced as wire, bfloat16 or float16: half the bytes on the wire, the
// rounding described at runtime.BF16 and FP16. The narrowing and widening
// run on the host, in the copy stages, beside the wire.
func (s *Stager) AllReduceAs(ctx context.Context, send, recv DeviceBuffer, wire DType, op Op) error {
	if wire != BFloat16 && wire != Float16 || send.dtype != Float32 {
		return s.argErr(opAllReduce, "all-reduce of %v as %v: want float32 memory sent as bfloat16 or float16", send.dtype, wire)
	}
	return s.reduce(ctx, opAllReduce, send, recv, 1, op, wire)
}

// narrow rounds src into dst (same length) as wire.
func narrow(wire DType, dst []uint16, src []float32) {
	dst = dst[:len(src)]
	if wire == BFloat16 {
		for i, v := range src {
			dst[i] = f32ToBF16(v)
		}
		return
	}
	for i, v := range src {
		dst[i] = f32ToF16(v)
	}
}

// widen is narrow's inverse, exact.
func widen(wire DType, dst []float32, src []uint16) {
	dst = dst[:len(src)]
	if wire == BFloat16 {
		for i, h := range src {
			dst[i] = bf16ToF32(h)
		}
		return
	}
	t := f16Table
	for i, h := range src {
		dst[i] = t[h]
	}
}

// Concat joins device memories end to end, so that many tensors (a
// model's gradients, layer by layer) go through one staged call: the
// bucketing of runtime.Gradients over device tensors. A copy that spans
// parts becomes one copy per part, in order.
func Concat(parts ...DeviceMemory) DeviceMemory {
	c := &concat{parts: parts, starts: make([]int, len(parts)+1)}
	for i, p := range parts {
		c.starts[i+1] = c.starts[i] + p.Len()
	}
	return c
}

type concat struct {
	parts  []DeviceMemory
	starts []int // starts[i] is where part i begins; the last is the total
}

func (c *concat) Len() int { return c.starts[len(c.parts)] }

// each calls f for every piece of [off, off+n): part i, offset within it,
// and the piece's place in the caller's host slice.
func (c *concat) each(off, n int, f func(p DeviceMemory, poff, at, m int) error) error {
	if off < 0 || n < 0 || off+n > c.Len() {
		return fmt.Errorf("copy of bytes %d..%d outside %d bytes of joined device memory", off, off+n, c.Len())
	}
	for i, p := range c.parts {
		lo, hi := max(off, c.starts[i]), min(off+n, c.starts[i+1])
		if lo >= hi {
			continue
		}
		if err := f(p, lo-c.starts[i], lo-off, hi-lo); err != nil {
			return fmt.Errorf("tensor %d of %d: %w", i+1, len(c.parts), err)
		}
	}
	return nil
}

func (c *concat) CopyToHost(dst []byte, off int) error {
	return c.each(off, len(dst), func(p DeviceMemory, poff, at, m int) error { return p.CopyToHost(dst[at:at+m], poff) })
}

func (c *concat) CopyFromHost(off int, src []byte) error {
	return c.each(off, len(src), func(p DeviceMemory, poff, at, m int) error { return p.CopyFromHost(poff, src[at:at+m]) })
}

// Broadcast copies root's send into every rank's recv.
func (s *Stager) Broadcast(ctx context.Context, send, recv DeviceBuffer, root int) error {
	if root < 0 || root >= s.comm.Size() {
		return s.argErr(opBroadcast, "root %d is not a rank of this group of %d", root, s.comm.Size())
	}
	c, err := s.check(opBroadcast, send, recv, 1, 1)
	if err != nil {
		return err
	}
	c.root = root
	return s.run(ctx, c)
}

// ReduceScatter reduces send (Size blocks) and leaves block Rank in recv.
func (s *Stager) ReduceScatter(ctx context.Context, send, recv DeviceBuffer, op Op) error {
	return s.reduce(ctx, opReduceScatter, send, recv, s.comm.Size(), op, 0)
}

// AllGather gathers every rank's send into recv, block r from rank r.
func (s *Stager) AllGather(ctx context.Context, send, recv DeviceBuffer) error {
	c, err := s.check(opAllGather, send, recv, 1, s.comm.Size())
	if err != nil {
		return err
	}
	return s.run(ctx, c)
}

func (s *Stager) argErr(k opKind, format string, a ...any) error {
	return &ArgError{Op: "staged " + k.String(), Rank: s.comm.Rank(), Reason: fmt.Sprintf(format, a...)}
}

// check validates the buffers (send holds sendBlocks blocks, recv
// recvBlocks) and sizes the chunks.
func (s *Stager) check(k opKind, send, recv DeviceBuffer, sendBlocks, recvBlocks int) (*stagedCall, error) {
	if s.slots == nil {
		return nil, s.argErr(k, "the stager is closed")
	}
	if send.mem == nil || recv.mem == nil {
		return nil, s.argErr(k, "nil device memory")
	}
	d := send.dtype
	es := d.Size()
	if es == 0 || recv.dtype != d {
		return nil, s.argErr(k, "dtypes %v and %v: want one supported dtype for both buffers", send.dtype, recv.dtype)
	}
	for _, b := range []struct {
		name string
		m    DeviceMemory
	}{{"send", send.mem}, {"recv", recv.mem}} {
		if b.m.Len()%es != 0 {
			return nil, s.argErr(k, "%s buffer of %d bytes is not a whole number of %v elements", b.name, b.m.Len(), d)
		}
	}
	if send.mem.Len()*recvBlocks != recv.mem.Len()*sendBlocks {
		return nil, s.argErr(k, "send buffer of %d elements and recv of %d: want recv = send × %d / %d",
			send.Len(), recv.Len(), recvBlocks, sendBlocks)
	}
	block := send.mem.Len() / sendBlocks
	// Reduce-scatter stages every rank's piece of a chunk at once, so its
	// chunk is a share of ChunkBytes; all-gather receives as much.
	per := s.cfg.ChunkBytes
	if k == opReduceScatter || k == opAllGather {
		per /= s.comm.Size()
	}
	per = max(es, per/es*es)
	chunks := 0
	if block > 0 {
		chunks = (block + per - 1) / per
	}
	return &stagedCall{kind: k, dtype: d, send: send.mem, recv: recv.mem, block: block, chunk: per,
		chunks: chunks, rank: s.comm.Rank(), size: s.comm.Size()}, nil
}

// checkLength makes ranks that disagree on the length of a call of several
// chunks fail together: the Comm checks each chunk's count, but a rank
// with fewer chunks would otherwise stop early and leave the others
// waiting for a chunk that never comes. One small all-reduce of (length,
// -length) by max gives every rank the longest and the shortest.
func (s *Stager) checkLength(ctx context.Context, c *stagedCall) error {
	s.size = [2]int64{int64(c.block), -int64(c.block)}
	b := Int64s(s.size[:])
	if err := s.comm.AllReduce(ctx, b, b, Max); err != nil {
		return err
	}
	if s.size[0] != -s.size[1] {
		return &PeerError{Rank: -1, Op: "staged " + c.kind.String(), Err: fmt.Errorf(
			"%w: ranks disagree on the buffer: blocks of %d to %d bytes (this rank %d: %d)",
			ErrMismatch, -s.size[1], s.size[0], c.rank, c.block)}
	}
	return nil
}

// stageError names the chunk and stage that failed.
type stageError struct {
	stage  string
	k, of  int
	off, n int
	err    error
}

func (e *stageError) Error() string {
	return fmt.Sprintf("staged collective: %s of chunk %d of %d (block bytes %d..%d): %v",
		e.stage, e.k+1, e.of, e.off, e.off+e.n, e.err)
}

func (e *stageError) Unwrap() error { return e.err }

// run pipelines the chunks of c: a goroutine copies chunks off the device
// into free slots, the caller's goroutine runs the host collective on each
// in order, and another goroutine copies results back and frees the slot.
// A failed copy cancels the context of the host collective, which aborts
// the group on every rank (they get a PeerError naming this rank) instead
// of leaving them waiting for a chunk that will not come.
func (s *Stager) run(ctx context.Context, c *stagedCall) error {
	t0 := time.Now()
	defer func() {
		s.stats.Calls++
		s.stats.Total += time.Since(t0)
	}()
	if c.chunks == 0 || s.comm.Size() == 1 && c.kind == opBroadcast && c.send == c.recv {
		return nil
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.chunks > 1 {
		if err := s.checkLength(wctx, c); err != nil {
			return err
		}
	}

	type job struct{ k, slot int }
	nslots := len(s.slots)
	free := make(chan int, nslots)
	staged := make(chan job, nslots)
	wired := make(chan job, nslots)
	for i := range nslots {
		free <- i
	}
	var (
		wg         sync.WaitGroup
		d2hT, h2dT time.Duration
		mu         sync.Mutex
		firstErr   error
	)
	fail := func(stage string, k int, err error) {
		off, n := c.span(k)
		err = &stageError{stage: stage, k: k, of: c.chunks, off: off, n: n, err: err}
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel(err)
	}
	wg.Add(2)
	go func() { // device to host
		defer wg.Done()
		defer close(staged)
		for k := range c.chunks {
			var slot int
			select {
			case slot = <-free:
			case <-wctx.Done():
				return
			}
			t := time.Now()
			err := c.toHost(k, s.slots[slot])
			d2hT += time.Since(t)
			if err != nil {
				fail("copy device to host", k, err)
				return
			}
			staged <- job{k, slot}
		}
	}()
	go func() { // host to device
		defer wg.Done()
		for j := range wired {
			if wctx.Err() != nil {
				continue // drain: the call has failed
			}
			t := time.Now()
			err := c.toDevice(j.k, s.slots[j.slot])
			h2dT += time.Since(t)
			if err != nil {
				fail("copy host to device", j.k, err)
				continue
			}
			free <- j.slot
		}
	}()

	var wireT time.Duration
	var wireErr error
	done := 0
	for done < c.chunks && wireErr == nil {
		var j job
		var ok bool
		select {
		case j, ok = <-staged:
		case <-wctx.Done():
		}
		if !ok {
			// A copy failed. Make the peers fail with us now rather than
			// at their timeout: a call on a cancelled context aborts the
			// group and tells every rank why.
			// (A group of one has nobody to tell, and its local copy
			// would touch a slot the other stage may be reading.)
			wireErr = context.Cause(wctx)
			if s.comm.Size() > 1 {
				if err := c.wire(wctx, s.comm, min(done, c.chunks-1), s.slots[0]); err != nil {
					wireErr = err
				}
			}
			break
		}
		t := time.Now()
		if err := c.wire(wctx, s.comm, j.k, s.slots[j.slot]); err != nil {
			wireErr = err
			break
		}
		wireT += time.Since(t)
		wired <- j
		done++
	}
	if wireErr != nil {
		cancel(wireErr)
	}
	close(wired)
	wg.Wait()

	s.stats.D2H += d2hT
	s.stats.H2D += h2dT
	s.stats.Wire += wireT
	if firstErr != nil {
		return firstErr
	}
	if wireErr != nil {
		off, n := c.span(done)
		return &stageError{stage: c.kind.String(), k: done, of: c.chunks, off: off, n: n, err: wireErr}
	}
	s.stats.Chunks += c.chunks
	s.stats.Bytes += int64(c.block)
	return nil
}

// ChunkBytes is the size of the pieces calls are cut into.
func (s *Stager) ChunkBytes() int { return s.cfg.ChunkBytes }
