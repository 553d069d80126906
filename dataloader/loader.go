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

	blocks *blockCache

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
	ctx, cancel := context.WithCancel(ctx)
	l := &Loader[T]{ds: ds, cfg: cfg, decode: decode, cursor: cur,
		ready: make(chan *pending[T], 64), jobs: make(chan job[T], 4*cfg.Workers), cancel: cancel,
		blocks: newBlockCache(ds, 2*cfg.Workers+4), budget: newByteBudget(cfg.MaxInFlight), started: time.Now()}
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

// blockCache keeps the most recently read blocks, so that samples of one
// block cost one read however the window shuffled them.
type blockCache struct {
	ds  *Dataset
	max int

	mu      sync.Mutex
	readers map[int]*openShard
	blocks  map[[2]int]*cachedBlock
	tick    int64
}

type openShard struct {
	r   *shard.Reader
	obj source.Object
}

type cachedBlock struct {
	ready chan struct{}
	recs  [][]byte
	err   error
	used  int64
}

func newBlockCache(ds *Dataset, max int) *blockCache {
	return &blockCache{ds: ds, max: max, readers: map[int]*openShard{}, blocks: map[[2]int]*cachedBlock{}}
}

func (c *blockCache) shard(ctx context.Context, i int) (*shard.Reader, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.readers[i]; ok {
		return s.r, nil
	}
	r, obj, err := c.ds.OpenShard(ctx, i)
	if err != nil {
		return nil, err
	}
	c.readers[i] = &openShard{r, obj}
	return r, nil
}

func (c *blockCache) record(ctx context.Context, s order.Sample) ([]byte, error) {
	r, err := c.shard(ctx, s.Shard)
	if err != nil {
		return nil, err
	}
	b := sort.Search(r.Blocks(), func(i int) bool {
		bi := r.Block(i)
		return bi.First+int64(bi.Records) > s.Index
	})
	if b >= r.Blocks() {
		return nil, fmt.Errorf("dataloader: shard %s has no record %d", c.ds.Index.Shards[s.Shard].Name, s.Index)
	}
	key := [2]int{s.Shard, b}
	c.mu.Lock()
	cb, ok := c.blocks[key]
	c.tick++
	if ok {
		cb.used = c.tick
		c.mu.Unlock()
		<-cb.ready
	} else {
		cb = &cachedBlock{ready: make(chan struct{}), used: c.tick}
		c.blocks[key] = cb
		c.evict()
		c.mu.Unlock()
		cb.recs, cb.err = r.ReadBlock(b)
		close(cb.ready)
	}
	if cb.err != nil {
		return nil, cb.err
	}
	return cb.recs[s.Index-r.Block(b).First], nil
}

// evict drops the least recently used finished blocks beyond max; mu held.
func (c *blockCache) evict() {
	for len(c.blocks) > c.max {
		var oldest [2]int
		var found bool
		var t int64
		for k, b := range c.blocks {
			select {
			case <-b.ready:
			default:
				continue // still being read
			}
			if !found || b.used < t {
				oldest, t, found = k, b.used, true
			}
		}
		if !found {
			return
		}
		delete(c.blocks, oldest)
	}
}

func (c *blockCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.readers {
		s.obj.Close()
	}
	c.readers = map[int]*openShard{}
}
