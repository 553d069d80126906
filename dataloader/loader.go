package dataloader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/shard"
)

// LoaderConfig says which part of which epoch one rank reads, and how.
type LoaderConfig struct {
	Order       order.Config
	Rank, World int
	// State is where to start: order.State{Seed, Epoch} for a fresh epoch,
	// or the state a checkpoint saved.
	State order.State
	// Workers read, verify and decode blocks in parallel (default 4):
	// the reads in flight at the start, or more where an earlier loader
	// over the same Dataset settled on more (a later epoch starts where
	// the last one's climb ended). While the rate the workers read
	// at keeps growing by a tenth each time the workers double, more are
	// started, up to MaxReads (see prefetch); this is what hides a
	// remote source's latency per request.
	Workers int
	// MaxReads caps the reads in flight (default: as many read buffers
	// of the plan's largest read as half of MaxInFlight holds, at most
	// 256; at least Workers). Every read buffer fits the plan's largest
	// read, so this bounds the read buffers' memory too.
	MaxReads int
	// MaxInFlight bounds the record bytes read ahead of the consumer
	// (default 512 MiB): the bytes of the records of every block handed
	// to a worker whose batch Next has not returned yet, as the blocks'
	// sizes say, whether being read or read and waiting for their batch.
	// It is back-pressure instead of memory growth; the blocks of the
	// batch Next returns next are read whatever it says, so a budget
	// smaller than one batch still makes progress.
	MaxInFlight int64
	// SkipCorrupt skips records of corrupt blocks (counted in Stats)
	// instead of failing.
	SkipCorrupt bool
}

// Stats are the loader's counters since it started.
type Stats struct {
	Samples int64
	Bytes   int64 // record bytes of the samples handed out
	Read    int64 // stored bytes read from the source
	Skipped int64 // records lost to corrupt blocks (SkipCorrupt)
	Reads   int   // reads in flight the loader settled on (workers started)
	// DatasetReads is the most range reads all the loaders over the
	// Dataset have in flight together (its shared limit, see readGate):
	// the loaders that run at once share it, each up to its own Reads.
	DatasetReads int
	Stall        time.Duration
	Elapsed      time.Duration
}

// Batch is one rank's share of one global batch, decoded, and the job's
// order state after it: save State with the checkpoint to resume exactly
// after this batch.
type Batch[T any] struct {
	Samples []T
	State   order.State
}

// maxRun is the stored bytes one job reads with one range read at
// least, where the blocks allow: consecutive blocks of a shard that are
// needed one after the other are read together, large enough that the
// per-read cost vanishes, small enough that a worker's buffer stays in
// the last-level cache while its checksum is computed. A run takes
// blocks while it is shorter than maxRun, as long as it stays within
// MaxReadBytes: blocks of 1 MiB of records are a few bytes over 1 MiB
// stored (their framing), and a strict limit of 4 MiB read them three at
// a time (64 KiB records, 1 GiB over HTTP: 384 reads instead of 256).
const maxRun = 4 << 20

// MaxReadBytes is the most stored bytes the loader reads with one
// request.
const MaxReadBytes = maxRun + maxRun/4

// need is one sample of the rank's rest of the epoch: position pos in the
// rank's sequence of samples (batch pos/B, slot pos%B) wants record rec
// of a block.
type need struct {
	pos int64
	rec int32
}

// readJob is a run of consecutive blocks of one shard, read with one range
// read, and the samples it feeds.
type readJob struct {
	shard    int
	block    int // first block
	nblocks  int
	off, len int64
	needs    []need // grouped by block, in block order; each group by position
	ends     []int  // ends[k]: end in needs of block block+k's group
	first    int64  // the first position that needs the run
	weight   int64  // record bytes the budget charges
}

// pendingBatch is one batch being filled by the workers.
type pendingBatch[T any] struct {
	samples []T
	sizes   []int32 // record bytes per slot; -1: skipped (corrupt)
	left    atomic.Int32
	done    chan struct{}
	errMu   sync.Mutex
	err     error
}

func (b *pendingBatch[T]) fill(n int32) {
	if b.left.Add(-n) == 0 {
		close(b.done)
	}
}

func (b *pendingBatch[T]) fail(err error) {
	b.errMu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.errMu.Unlock()
}

// Loader streams one rank's batches of an epoch. It plans the rank's whole
// rest of the epoch up front, so it knows which records of which blocks
// it needs and in what order: each block is read once, with neighbouring
// blocks in one range read, by a worker that verifies the checksums and
// decodes the needed records straight from its read buffer into their
// batches' slots. No channel send or lock is paid per sample, and the
// read buffer is reused as soon as the decode function has returned.
type Loader[T any] struct {
	ds     *Dataset
	cfg    LoaderConfig
	decode func([]byte) (T, error)
	b      int64 // per-rank batch size

	readers []*shard.Reader

	jobs    []readJob
	states  []order.State // after each batch
	weights []int64       // budget each batch returns

	work   chan *readJob
	ctx    context.Context // the workers'; cancelled by Close
	cancel context.CancelFunc
	dead   chan struct{} // closed by Close
	wg     sync.WaitGroup

	mu       sync.Mutex
	cond     *sync.Cond
	batches  []*pendingBatch[T] // created on first use, dropped once handed out
	head     int                // the batch Next returns next
	inflight int64
	closed   bool
	largest  int64 // the plan's largest read
	bufSize  int64 // the read buffers': largest, or MaxReadBytes

	read, skipped atomic.Int64
	jobsDone      atomic.Int64
	workers       atomic.Int32

	statsMu sync.Mutex
	stats   Stats
	started time.Time
}

// NewLoader opens the dataset's shards, plans this rank's rest of the
// epoch and starts the workers. decode turns a record into an example; it
// runs on the workers.
//
// decode gets a view of the worker's read buffer: the record is valid
// only until decode returns, and the buffer is reused for the next block.
// decode must copy what it keeps (bytes.Clone, or by decoding into its own
// types); shard.DecodeFields' values alias the record too.
func NewLoader[T any](ctx context.Context, ds *Dataset, cfg LoaderConfig, decode func([]byte) (T, error)) (*Loader[T], error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 512 << 20
	}
	l := &Loader[T]{ds: ds, cfg: cfg, decode: decode, b: int64(cfg.Order.BatchSize), dead: make(chan struct{}), started: time.Now()}
	l.cond = sync.NewCond(&l.mu)
	openBusy, err := l.openShards(ctx)
	if err != nil {
		return nil, err
	}
	ord, err := ds.blockOrder(l.readers, cfg.Order)
	if err == nil {
		err = l.plan(ord)
	}
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	for i := range l.jobs {
		l.largest = max(l.largest, l.jobs[i].len)
	}
	l.bufSize = l.largest
	if l.largest > maxRun && l.largest <= MaxReadBytes {
		// Runs past maxRun end anywhere up to MaxReadBytes, so the next
		// epoch's largest is as likely to be a little longer: buffers
		// of MaxReadBytes fit every epoch's.
		l.bufSize = MaxReadBytes
	}
	if l.cfg.MaxReads <= 0 {
		l.cfg.MaxReads = defaultMaxReads(l.largest, l.cfg.MaxInFlight)
	}
	l.cfg.MaxReads = max(l.cfg.MaxReads, l.cfg.Workers)
	l.batches = make([]*pendingBatch[T], len(l.states))
	ctx, l.cancel = context.WithCancel(ctx)
	l.ctx = ctx
	pf := newPrefetch(min(max(cfg.Workers, int(ds.reads.Load())), l.cfg.MaxReads), l.cfg.MaxReads)
	start := pf.afterOpens(openBusy)
	ds.gate.raise(start)
	l.work = make(chan *readJob, start)
	l.wg.Add(1 + start)
	l.workers.Store(int32(start))
	go l.dispatch(ctx, pf)
	for range start {
		go l.worker(ctx)
	}
	return l, nil
}

// maxReadsCap bounds the default MaxReads: past it more connections to
// one server only queue there.
const maxReadsCap = 256

// defaultMaxReads is how many read buffers of the plan's largest read fit
// in half of budget bytes, at most maxReadsCap. The other half is for the
// records read and waiting for their batch: with a shuffle window they
// hold a window's worth and more (64 KiB records, a window of 1024, 1
// GiB over HTTP: with all of 256 MiB for 51 reads, only 27-29 were in
// flight on average, 10 workers waiting on the budget, and the loader
// ran at 0.8 of a plain read of 51 reads; at 256 MiB of 512 for reads,
// 47 were reading, at 0.86-1.01). Datasets of small blocks whose reads
// cannot be joined read 1-2 MiB at a time, not maxRun: counting their
// buffers at maxRun would halve the reads in flight that hide a remote
// source's latency for no memory saved.
func defaultMaxReads(largest, budget int64) int {
	return int(min(maxReadsCap, max(1, budget/2/max(1, largest))))
}

// openReads is how many shards a loader opens at once when MaxReads is
// not set yet (the plan that sets it needs the shards open).
const openReads = 64

// openShards opens every shard, MaxReads at a time (each open is a few
// small reads, round trips on remote storage): the order needs the
// block layout of all of them, and the rank reads from nearly all of them.
// The Dataset keeps them open for the next loader (a later epoch, another
// rank in the same process). It returns the share of the CPUs the process
// kept busy meanwhile (negative: unknown, or over too soon to tell), for
// the prefetch climb.
func (l *Loader[T]) openShards(ctx context.Context) (float64, error) {
	start := time.Now()
	cpu0, ok := cpuTime()
	n := len(l.ds.Index.Shards)
	l.readers = make([]*shard.Reader, n)
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	at := l.cfg.MaxReads
	if at <= 0 {
		at = openReads
	}
	for range min(at, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				l.readers[i], errs[i] = l.ds.loaderShard(ctx, i)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return busyShare(start, cpu0, ok, minOpenWave), nil
}

// minOpenWave is the shortest wave of opens whose CPU share says anything:
// opens from the page cache are over in well under a millisecond.
const minOpenWave = 2 * time.Millisecond

// busyShare is the share of the CPUs (GOMAXPROCS) the process used since
// start, when its CPU time was cpu0 (ok: that it could be read); -1 where
// it cannot be read or less than atLeast has passed.
func busyShare(start time.Time, cpu0 time.Duration, ok bool, atLeast time.Duration) float64 {
	d := time.Since(start)
	cpu, ok2 := cpuTime()
	if !ok || !ok2 || d < atLeast || d <= 0 {
		return -1
	}
	return float64(cpu-cpu0) / float64(d) / float64(runtime.GOMAXPROCS(0))
}

// plan walks the rank's rest of the epoch and turns it into read jobs in
// the order the samples are first needed.
func (l *Loader[T]) plan(ord *order.Order) error {
	cur, err := ord.Cursor(l.cfg.State, l.cfg.Rank, l.cfg.World)
	if err != nil {
		return err
	}
	// Blocks get global ids: base[s] + block index in shard s. wOf[g] is
	// what the budget charges per record of block g: its share of the
	// block's raw bytes (the same comes back when its batch is handed out).
	base := make([]int, len(l.readers)+1)
	firsts := make([][]int64, len(l.readers))
	for s, r := range l.readers {
		base[s+1] = base[s] + r.Blocks()
		firsts[s] = make([]int64, r.Blocks())
		for b := range firsts[s] {
			firsts[s][b] = r.Block(b).First
		}
	}
	wOf := make([]int64, base[len(l.readers)])
	for s, r := range l.readers {
		for b := range r.Blocks() {
			bi := r.Block(b)
			wOf[base[s]+b] = bi.Raw / int64(bi.Records)
		}
	}
	// This rank's share of what is left of the epoch, to size the slices
	// once (growing them by append was a third of planning's time).
	left := max(0, ord.Total()-l.cfg.State.Consumed)
	share := left/int64(max(1, l.cfg.World)) + int64(l.cfg.Order.BatchSize)
	gids, recs := make([]int32, 0, share), make([]int32, 0, share)
	nbatches := share/int64(max(1, l.cfg.Order.BatchSize)) + 1
	l.states = make([]order.State, 0, nbatches)
	l.weights = make([]int64, 0, nbatches)
	// last[s] is the block of shard s the previous sample of s was in:
	// samples come in runs from one span, so it is usually the answer.
	last := make([]int, len(l.readers))
	for {
		batch, ok := cur.Next()
		if !ok {
			break
		}
		var weight int64
		for _, smp := range batch {
			f := firsts[smp.Shard]
			b := last[smp.Shard]
			if smp.Index < f[b] || (b+1 < len(f) && smp.Index >= f[b+1]) {
				b = blockOf(f, smp.Index)
				last[smp.Shard] = b
			}
			g := base[smp.Shard] + b
			gids = append(gids, int32(g))
			recs = append(recs, int32(smp.Index-f[b]))
			weight += wOf[g]
		}
		l.states = append(l.states, cur.State())
		l.weights = append(l.weights, weight)
	}
	nblocks := base[len(l.readers)]
	// Group the needs by block (a counting sort keeps each group in
	// position order).
	start := make([]int, nblocks+1)
	for _, g := range gids {
		start[g+1]++
	}
	for g := range nblocks {
		start[g+1] += start[g]
	}
	needs := make([]need, len(gids))
	fill := slices.Clone(start[:nblocks])
	for pos, g := range gids {
		needs[fill[g]] = need{pos: int64(pos), rec: recs[pos]}
		fill[g]++
	}
	shardOf := func(g int) int { return sort.Search(len(l.readers), func(s int) bool { return base[s+1] > g }) }
	var used []int
	for g := range nblocks {
		if start[g+1] > start[g] {
			used = append(used, g)
		}
	}
	sort.Slice(used, func(i, j int) bool { return needs[start[used[i]]].pos < needs[start[used[j]]].pos })
	// endsAt[g] and startsAt[g] are the job whose run ends or starts with
	// block g (-1: none yet). A job's needs and ends are filled in once
	// its run is final; a job merged into another has no blocks.
	endsAt, startsAt := make([]int32, nblocks), make([]int32, nblocks)
	for g := range endsAt {
		endsAt[g], startsAt[g] = -1, -1
	}
	lim := l.cfg.MaxInFlight / mergeAhead
	// soon says whether reading a run first needed at from along with
	// one first needed at first holds little of the budget.
	soon := func(from, first, w int64) bool { return max(first-from, from-first)*max(w, 1) <= lim }
	// takes says whether job k (made earlier, so needed no later) takes
	// a block of stored bytes beside its run along: while the run is
	// shorter than maxRun, within MaxReadBytes, needed soon after it.
	takes := func(k int32, stored, first, w int64) bool {
		if k < 0 {
			return false
		}
		j := &l.jobs[k]
		return j.len < maxRun && j.len+stored <= MaxReadBytes && soon(j.first, first, w)
	}
	// merge joins the runs of jobs a and b, b's right after a's in the
	// file, into the one of them needed first, where the two fit in one
	// read.
	merge := func(a, b int32, w int64) {
		ja, jb := &l.jobs[a], &l.jobs[b]
		if ja.len+jb.len > MaxReadBytes || !soon(ja.first, jb.first, w) {
			return
		}
		keep, drop := ja, jb
		if b < a {
			keep, drop = jb, ja
		}
		hi := base[ja.shard] + jb.block + jb.nblocks - 1
		keep.block, keep.off = ja.block, ja.off
		keep.nblocks = ja.nblocks + jb.nblocks
		keep.len += drop.len
		keep.weight += drop.weight
		drop.nblocks = 0
		startsAt[base[keep.shard]+keep.block], endsAt[hi] = min(a, b), min(a, b)
	}
	for _, g := range used {
		s := shardOf(g)
		bi := l.readers[s].Block(g - base[s])
		w := wOf[g]
		weight := w * int64(start[g+1]-start[g])
		first := needs[start[g]].pos
		left, right := int32(-1), int32(-1)
		if g > base[s] {
			left = endsAt[g-1]
		}
		if g+1 < base[s+1] {
			right = startsAt[g+1]
		}
		switch {
		case takes(left, bi.Stored, first, w):
			j := &l.jobs[left]
			j.nblocks++
			j.len += bi.Stored
			j.weight += weight
			endsAt[g] = left
			// g may have closed the gap between two runs.
			if right >= 0 {
				merge(left, right, w)
			}
		case takes(right, bi.Stored, first, w):
			j := &l.jobs[right]
			j.block, j.off = g-base[s], bi.Offset
			j.nblocks++
			j.len += bi.Stored
			j.weight += weight
			startsAt[g] = right
			if left >= 0 {
				merge(left, right, w)
			}
		default:
			startsAt[g] = int32(len(l.jobs))
			endsAt[g] = int32(len(l.jobs))
			l.jobs = append(l.jobs, readJob{shard: s, block: g - base[s], nblocks: 1, off: bi.Offset, len: bi.Stored, first: first, weight: weight})
		}
	}
	jobs := l.jobs[:0]
	for _, j := range l.jobs {
		if j.nblocks == 0 {
			continue
		}
		lo := base[j.shard] + j.block
		j.needs = needs[start[lo]:start[lo+j.nblocks]]
		j.ends = make([]int, j.nblocks)
		for k := range j.ends {
			j.ends[k] = start[lo+k+1] - start[lo]
		}
		jobs = append(jobs, j)
	}
	l.jobs = jobs
	return nil
}

// blockOf returns the block whose records start at firsts holds record
// i of the shard. Blocks of records of one size hold the same count, so
// the first guess is usually the answer; a binary search otherwise.
func blockOf(firsts []int64, i int64) int {
	n := len(firsts)
	if n > 1 && firsts[1] > 0 {
		b := int(min(i/firsts[1], int64(n-1)))
		for range 2 {
			switch {
			case firsts[b] > i:
				b--
			case b+1 < n && firsts[b+1] <= i:
				b++
			default:
				return b
			}
		}
	}
	return sort.Search(n, func(k int) bool { return firsts[k] > i }) - 1
}

// mergeAhead: a block joins the read of the blocks before or after it in
// its shard (one range read instead of two, up to maxRun) when its first
// sample is needed within 1/mergeAhead of the budget's worth of samples
// after that read's first, so reading it early holds little of the
// budget. With a shuffle window, the blocks of one span reach the window
// one after the other but their first samples come out interleaved with
// other spans' (64 KiB records: 971 reads of 1 MiB for 1 GiB when only
// reads next to each other in first-use order were joined); each read is
// a request, and against a source 20 ms away the requests' count, not
// their size, set the loader's pace.
const mergeAhead = 4

// batch returns batch i, creating it; l.mu is held.
func (l *Loader[T]) batch(i int) *pendingBatch[T] {
	b := l.batches[i]
	if b == nil {
		b = &pendingBatch[T]{samples: make([]T, l.b), sizes: make([]int32, l.b), done: make(chan struct{})}
		b.left.Store(int32(l.b))
		l.batches[i] = b
	}
	return b
}

// dispatch hands the jobs to the workers in plan order, within the
// budget. The jobs the head batch needs come first in that order (it is
// by first use), so waiting on the budget never holds them up.
//
// It also runs the prefetch climb: every window of jobs it compares the
// rate the workers read at, and starts more workers while that grows.
func (l *Loader[T]) dispatch(ctx context.Context, pf *prefetch) {
	defer l.wg.Done()
	defer close(l.work)
	// Whether it settled or the epoch ended first, where the climb got
	// to is where the next loader over this dataset starts.
	defer func() { l.ds.reads.Store(int32(pf.n)) }()
	winStart, winJobs, winBytes := time.Now(), int64(0), int64(0)
	winCPU, cpuOK := cpuTime()
	held := false // the budget held a job back in this window
	for i := range l.jobs {
		j := &l.jobs[i]
		l.mu.Lock()
		for !l.closed && l.inflight+j.weight > l.cfg.MaxInFlight && j.first >= int64(l.head+1)*l.b {
			held = true
			l.cond.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return
		}
		l.inflight += j.weight
		// The batches this job fills exist before any worker writes.
		for _, nd := range j.needs {
			l.batch(int(nd.pos / l.b))
		}
		l.mu.Unlock()
		select {
		case l.work <- j:
		case <-ctx.Done():
			return
		}
		if done := l.jobsDone.Load(); !pf.settled && done-winJobs >= int64(pf.window()) {
			now, read := time.Now(), l.read.Load()
			busy := busyShare(winStart, winCPU, cpuOK, 0)
			before := pf.n
			after := pf.observe(read-winBytes, now.Sub(winStart), busy, held)
			l.ds.gate.raise(after)
			winCPU, cpuOK = cpuTime()
			held = false
			l.wg.Add(after - before)
			l.workers.Add(int32(after - before))
			for range after - before {
				go l.worker(ctx)
			}
			winStart, winJobs, winBytes = now, done, read
		}
	}
}

func (l *Loader[T]) worker(ctx context.Context) {
	defer l.wg.Done()
	var scratch []byte
	var recs [][]byte
	for j := range l.work {
		if ctx.Err() != nil {
			return
		}
		scratch, recs = scratch[:0], recs[:0]
		scratch, recs = l.run(ctx, j, scratch, recs)
		l.jobsDone.Add(1)
	}
}

// run reads, verifies and decodes one job; it returns the scratch buffers
// for reuse.
func (l *Loader[T]) run(ctx context.Context, j *readJob, scratch []byte, recs [][]byte) ([]byte, [][]byte) {
	r := l.readers[j.shard]
	name := l.ds.Index.Shards[j.shard].Name
	// A failed read spoils the whole run; a block that fails its checks
	// spoils only itself. The buffer, taken once the read has its slot,
	// holds bufSize bytes, so that it fits any read of this plan.
	readErr := l.ds.gate.acquire(ctx)
	var buf []byte
	if readErr == nil {
		buf = l.ds.readBuf(l.bufSize)
		defer l.ds.putBuf(buf)
		buf = buf[:j.len]
		readErr = r.ReadAt(buf, j.off, j.block)
		l.ds.gate.release()
	}
	if readErr == nil {
		l.read.Add(j.len)
	}
	from := 0
	for k := range j.nblocks {
		group := j.needs[from:j.ends[k]]
		from = j.ends[k]
		blk := j.block + k
		err := readErr
		var raw []byte
		if err == nil {
			bi := r.Block(blk)
			raw, err = r.CheckBlock(blk, buf[bi.Offset-j.off:][:bi.Stored], scratch)
			if err == nil && bi.Compressed {
				scratch = raw
			}
		}
		if err == nil {
			recs, err = r.SplitBlock(blk, raw, recs)
		}
		if err != nil {
			l.lose(group, err)
			continue
		}
		for _, nd := range group {
			b := l.batches[nd.pos/l.b]
			slot := nd.pos % l.b
			rec := recs[nd.rec]
			v, derr := l.decode(rec)
			if derr != nil {
				b.fail(fmt.Errorf("dataloader: decoding record %d of shard %s: %w", r.Block(blk).First+int64(nd.rec), name, derr))
			} else {
				b.samples[slot] = v
			}
			b.sizes[slot] = int32(len(rec))
			b.fill(1)
		}
	}
	return scratch, recs
}

// lose settles needs whose block could not be read: skipped when
// SkipCorrupt allows it, else their batches fail.
func (l *Loader[T]) lose(group []need, err error) {
	skip := l.cfg.SkipCorrupt && errors.Is(err, shard.ErrCorrupt)
	if skip {
		l.skipped.Add(int64(len(group)))
	}
	for _, nd := range group {
		b := l.batches[nd.pos/l.b]
		if !skip {
			b.fail(err)
		}
		b.sizes[nd.pos%l.b] = -1
		b.fill(1)
	}
}

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("dataloader: loader closed")

// Next returns this rank's next batch, or io.EOF after the epoch's last.
// The batch's samples are the caller's.
func (l *Loader[T]) Next(ctx context.Context) (Batch[T], error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Batch[T]{}, ErrClosed
	}
	i := l.head
	if i >= len(l.batches) {
		l.mu.Unlock()
		return Batch[T]{}, io.EOF
	}
	b := l.batch(i)
	l.mu.Unlock()
	t0 := time.Now()
	select {
	case <-b.done:
	case <-ctx.Done():
		return Batch[T]{}, ctx.Err()
	case <-l.dead:
		return Batch[T]{}, ErrClosed
	case <-l.ctx.Done():
		// The context NewLoader got is done: the workers have stopped.
		return Batch[T]{}, fmt.Errorf("dataloader: %w", l.ctx.Err())
	}
	stall := time.Since(t0)
	l.mu.Lock()
	l.batches[i] = nil
	l.head = i + 1
	l.inflight -= l.weights[i]
	l.cond.Broadcast()
	l.mu.Unlock()

	var bytes int64
	out := b.samples[:0]
	for k, n := range b.sizes {
		if n >= 0 {
			out = append(out, b.samples[k])
			bytes += int64(n)
		}
	}
	clear(b.samples[len(out):])
	l.statsMu.Lock()
	l.stats.Stall += stall
	if b.err == nil {
		l.stats.Samples += int64(len(out))
		l.stats.Bytes += bytes
	}
	l.statsMu.Unlock()
	if b.err != nil {
		return Batch[T]{}, b.err
	}
	return Batch[T]{Samples: out, State: l.states[i]}, nil
}

// Stats returns the counters so far.
func (l *Loader[T]) Stats() Stats {
	l.statsMu.Lock()
	defer l.statsMu.Unlock()
	s := l.stats
	s.Read = l.read.Load()
	s.Skipped = l.skipped.Load()
	s.Reads = int(l.workers.Load())
	s.DatasetReads = l.ds.gate.reads()
	s.Elapsed = time.Since(l.started)
	return s
}

// Close stops every goroutine the loader started and waits for them.
func (l *Loader[T]) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.dead)
	l.cond.Broadcast()
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
	return nil
}
