package dataloader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// LoaderConfig says which part of which epoch one rank reads, and how.
type LoaderConfig struct {
	Order       order.Config
	Rank, World int
	// State is where to start: order.State{Seed, Epoch} for a fresh epoch,
	// or the state a checkpoint saved.
	State order.State
	// Workers fetch and decode in parallel (default 4).
	Workers int
	// MaxInFlight bounds the raw bytes fetched but not yet handed to the
	// consumer (default 256 MiB): back-pressure instead of memory growth.
	MaxInFlight int64
	// SkipCorrupt skips records of corrupt blocks (counted in Stats)
	// instead of failing.
	SkipCorrupt bool
}

// Stats are the loader's counters since it started.
type Stats struct {
	Samples int64
	Bytes   int64
	Skipped int64         // records lost to corrupt blocks (SkipCorrupt)
	Stall   time.Duration // time Next waited for data
	Elapsed time.Duration
}

// Batch is one rank's share of one global batch, decoded, and the job's
// order state after it: save State with the checkpoint to resume exactly
// after this batch.
type Batch[T any] struct {
	Samples []T
	State   order.State
}

type pending[T any] struct {
	seq     int64 // batch number; the budget never holds up the head batch
	samples []T
	ok      []bool
	state   order.State
	wg      sync.WaitGroup
	errMu   sync.Mutex
	err     error
	bytes   int64
}

type job[T any] struct {
	p   *pending[T]
	i   int
	smp order.Sample
}

// Loader streams one rank's batches of an epoch. Workers read blocks
// (each block once, through a small cache, since shuffled samples still
// arrive roughly block by block), pick records, and run the decode
// function; Next hands batches out in order.
type Loader[T any] struct {
	ds     *Dataset
	cfg    LoaderConfig
	decode func([]byte) (T, error)
	cursor *order.Cursor

	ready  chan *pending[T]
	jobs   chan job[T]
	cancel context.CancelFunc
	wg     sync.WaitGroup

	blocks *recordStore

	budget   *byteBudget
	statsMu  sync.Mutex
	stats    Stats
	started  time.Time
	closeErr error
}

// NewLoader starts the workers. decode turns a record into an example;
// it runs on the workers.
func NewLoader[T any](ctx context.Context, ds *Dataset, cfg LoaderConfig, decode func([]byte) (T, error)) (*Loader[T], error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256 << 20
	}
	ord, err := order.New(ds.Index.Counts(), cfg.Order)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	cur, err := ord.Cursor(cfg.State, cfg.Rank, cfg.World)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	// Walk this rank's whole epoch once to know which records it needs.
	walk, _ := ord.Cursor(cfg.State, cfg.Rank, cfg.World)
	var plan []order.Sample
	for {
		b, ok := walk.Next()
		if !ok {
			break
		}
		plan = append(plan, b...)
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &Loader[T]{ds: ds, cfg: cfg, decode: decode, cursor: cur,
		ready: make(chan *pending[T], 64), jobs: make(chan job[T], 4*cfg.Workers), cancel: cancel,
		blocks: newRecordStore(ds, plan), budget: newByteBudget(cfg.MaxInFlight), started: time.Now()}
	l.wg.Add(1 + cfg.Workers)
	go l.produce(ctx)
	for range cfg.Workers {
		go l.work(ctx)
	}
	return l, nil
}

// produce walks the cursor and queues every sample of every batch.
func (l *Loader[T]) produce(ctx context.Context) {
	defer l.wg.Done()
	defer close(l.ready)
	defer close(l.jobs)
	for seq := int64(0); ; seq++ {
		samples, ok := l.cursor.Next()
		if !ok {
			return
		}
		p := &pending[T]{seq: seq, samples: make([]T, len(samples)), ok: make([]bool, len(samples)), state: l.cursor.State()}
		p.wg.Add(len(samples))
		select {
		case l.ready <- p:
		case <-ctx.Done():
			return
		}
		for i, s := range samples {
			select {
			case l.jobs <- job[T]{p: p, i: i, smp: s}:
			case <-ctx.Done():
				for range len(samples) - i {
					p.wg.Done()
				}
				return
			}
		}
	}
}

func (l *Loader[T]) work(ctx context.Context) {
	defer l.wg.Done()
	for j := range l.jobs {
		l.fetch(ctx, j)
		j.p.wg.Done()
	}
}

func (l *Loader[T]) fetch(ctx context.Context, j job[T]) {
	fail := func(err error) {
		j.p.errMu.Lock()
		if j.p.err == nil {
			j.p.err = err
		}
		j.p.errMu.Unlock()
	}
	rec, err := l.blocks.record(ctx, j.smp)
	if err != nil {
		if l.cfg.SkipCorrupt && errors.Is(err, shard.ErrCorrupt) {
			l.statsMu.Lock()
			l.stats.Skipped++
			l.statsMu.Unlock()
			return
		}
		fail(err)
		return
	}
	if err := l.budget.take(ctx, int64(len(rec)), j.p.seq); err != nil {
		fail(err)
		return
	}
	v, err := l.decode(rec)
	if err != nil {
		l.budget.give(int64(len(rec)))
		fail(fmt.Errorf("dataloader: decoding record %d of shard %s: %w", j.smp.Index, l.ds.Index.Shards[j.smp.Shard].Name, err))
		return
	}
	j.p.samples[j.i], j.p.ok[j.i] = v, true
	j.p.errMu.Lock()
	j.p.bytes += int64(len(rec))
	j.p.errMu.Unlock()
}

// Next returns this rank's next batch, or io.EOF after the epoch's last.
func (l *Loader[T]) Next(ctx context.Context) (Batch[T], error) {
	t0 := time.Now()
	var p *pending[T]
	select {
	case p = <-l.ready:
	case <-ctx.Done():
		return Batch[T]{}, ctx.Err()
	}
	if p == nil {
		return Batch[T]{}, io.EOF
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return Batch[T]{}, ctx.Err()
	}
	stall := time.Since(t0)
	l.budget.give(p.bytes)
	l.budget.advance(p.seq + 1)
	if p.err != nil {
		return Batch[T]{}, p.err
	}
	out := p.samples[:0]
	for i, ok := range p.ok {
		if ok {
			out = append(out, p.samples[i])
		}
	}
	l.statsMu.Lock()
	l.stats.Samples += int64(len(out))
	l.stats.Bytes += p.bytes
	l.stats.Stall += stall
	l.statsMu.Unlock()
	return Batch[T]{Samples: out, State: p.state}, nil
}

// Stats returns the counters so far.
func (l *Loader[T]) Stats() Stats {
	l.statsMu.Lock()
	defer l.statsMu.Unlock()
	s := l.stats
	s.Elapsed = time.Since(l.started)
	return s
}

// Close stops every goroutine the loader started and waits for them.
func (l *Loader[T]) Close() error {
	l.cancel()
	l.budget.close()
	// Drain so that the producer is never stuck sending.
	go func() {
		for range l.ready {
		}
	}()
	l.wg.Wait()
	l.blocks.close()
	return nil
}

// byteBudget is a weighted semaphore over bytes in flight. The batch
// Next will return next (the head) always gets through, so a batch larger
// than the budget still completes and the loader cannot deadlock; the
// batches behind it wait.
type byteBudget struct {
	mu     sync.Mutex
	cond   *sync.Cond
	left   int64
	total  int64
	head   int64
	closed bool
}

func newByteBudget(n int64) *byteBudget {
	b := &byteBudget{left: n, total: n}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// take waits for n bytes of budget for a record of batch seq.
func (b *byteBudget) take(ctx context.Context, n, seq int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.left < n && seq != b.head && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		return ctx.Err()
	}
	b.left -= n // may go below zero for the head batch
	return nil
}

// advance makes seq the head batch.
func (b *byteBudget) advance(seq int64) {
	b.mu.Lock()
	b.head = seq
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *byteBudget) close() {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *byteBudget) give(n int64) {
	b.mu.Lock()
	b.left += n
	b.cond.Broadcast()
	b.mu.Unlock()
}

// recordStore reads each block at most once per loader and keeps, of
// its records, only those this rank still needs, until they are used.
// The shuffle window means the samples of one block are spread over many
// batches (a few stay in the window for long), so caching whole blocks by
// recency would read a block again for every straggler; knowing the rank's
// whole epoch in advance avoids that.
type recordStore struct {
	ds *Dataset

	mu      sync.Mutex
	readers map[int]*openShard
	need    map[[2]int]map[int64]int // (shard, block) -> record -> uses left
	blocks  map[[2]int]*storedBlock
}

type openShard struct {
	r   *shard.Reader
	obj source.Object
}

type storedBlock struct {
	ready chan struct{}
	recs  map[int64][]byte
	err   error
}

// newRecordStore plans from the samples the rank will read, in order.
func newRecordStore(ds *Dataset, samples []order.Sample) *recordStore {
	rs := &recordStore{ds: ds, readers: map[int]*openShard{}, need: map[[2]int]map[int64]int{}, blocks: map[[2]int]*storedBlock{}}
	// Blocks are not known until a shard is opened, so needs are kept by
	// shard first and split per block on first use.
	for _, smp := range samples {
		k := [2]int{smp.Shard, -1}
		if rs.need[k] == nil {
			rs.need[k] = map[int64]int{}
		}
		rs.need[k][smp.Index]++
	}
	return rs
}

func (rs *recordStore) shard(ctx context.Context, i int) (*shard.Reader, error) {
	if s, ok := rs.readers[i]; ok {
		return s.r, nil
	}
	r, obj, err := rs.ds.OpenShard(ctx, i)
	if err != nil {
		return nil, err
	}
	rs.readers[i] = &openShard{r, obj}
	// Split this shard's needs by block.
	for idx, n := range rs.need[[2]int{i, -1}] {
		b := blockOf(r, idx)
		k := [2]int{i, b}
		if rs.need[k] == nil {
			rs.need[k] = map[int64]int{}
		}
		rs.need[k][idx] += n
	}
	delete(rs.need, [2]int{i, -1})
	return r, nil
}

func blockOf(r *shard.Reader, idx int64) int {
	return sort.Search(r.Blocks(), func(i int) bool {
		bi := r.Block(i)
		return bi.First+int64(bi.Records) > idx
	})
}

func (rs *recordStore) record(ctx context.Context, s order.Sample) ([]byte, error) {
	rs.mu.Lock()
	r, err := rs.shard(ctx, s.Shard)
	if err != nil {
		rs.mu.Unlock()
		return nil, err
	}
	b := blockOf(r, s.Index)
	if b >= r.Blocks() {
		rs.mu.Unlock()
		return nil, fmt.Errorf("dataloader: shard %s has no record %d", rs.ds.Index.Shards[s.Shard].Name, s.Index)
	}
	key := [2]int{s.Shard, b}
	sb, ok := rs.blocks[key]
	if !ok {
		sb = &storedBlock{ready: make(chan struct{})}
		rs.blocks[key] = sb
		rs.mu.Unlock()
		recs, err := r.ReadBlock(b)
		first := r.Block(b).First
		rs.mu.Lock()
		sb.err = err
		if err == nil {
			sb.recs = map[int64][]byte{}
			for idx := range rs.need[key] {
				// A copy, so the block's buffer can go at once.
				sb.recs[idx] = append([]byte(nil), recs[idx-first]...)
			}
		}
		close(sb.ready)
		rs.mu.Unlock()
	} else {
		rs.mu.Unlock()
	}
	<-sb.ready
	if sb.err != nil {
		return nil, sb.err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rec := sb.recs[s.Index]
	if rs.need[key][s.Index]--; rs.need[key][s.Index] <= 0 {
		delete(rs.need[key], s.Index)
		delete(sb.recs, s.Index)
		if len(rs.need[key]) == 0 {
			delete(rs.need, key)
			delete(rs.blocks, key)
		}
	}
	return rec, nil
}

func (rs *recordStore) close() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, s := range rs.readers {
		s.obj.Close()
	}
	rs.readers = map[int]*openShard{}
}
