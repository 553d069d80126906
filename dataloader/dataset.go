package dataloader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sync/semaphore"

	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// Dataset is an opened dataset: its index and where its shards live.
type Dataset struct {
	Src   source.Source
	Index *Index
	// reads is the reads in flight the last loader over the dataset
	// climbed to (see prefetch): the next one starts there, so that only
	// the first epoch pays the climb.
	reads atomic.Int32
	// gate bounds the range reads in flight of all its loaders together:
	// loaders that run at once (the ranks of one process) read from the
	// same storage, and each alone climbs to what saturates it (see
	// readGate).
	gate readGate
	// open holds the shards loaders opened, kept for the next loader:
	// opening a remote shard costs several round trips (size, header,
	// trailer, footer), which every epoch would pay again.
	open shardCache
	// bufs holds the read buffers no read is using, for the next read
	// (of any of its loaders): a fresh buffer costs its page faults and
	// zeroing, and a sync.Pool, emptied by every other collection, gave
	// a later epoch fresh ones (measured: 62,000 page faults, 244 MiB,
	// in one epoch of 1 GiB over HTTP out of four, which ran at 1.2 GB/s
	// against 2.1-2.4). So a dataset holds as many buffers as it once
	// had reads in flight, at most maxReadsCap, until Close.
	// All are bufSize bytes, the largest read any of its plans made:
	// one epoch's largest read is 4.9 MB, the next one's 5.2.
	bufMu   sync.Mutex
	bufs    [][]byte
	bufSize int64
	// order is the block order its last loader made, for the next one
	// with the same order.Config: the loaders of one process (its ranks,
	// its epochs) share it, so an epoch's global order is computed once,
	// not once per rank (the block layout is the opened shards', the same
	// for all). One only: an order keeps its epoch's whole sequence.
	orderMu  sync.Mutex
	orderCfg order.Config
	order    *order.Order
}

// blockOrder returns the order of cfg over the block layout of readers
// (the dataset's opened shards), reusing the last one made for cfg.
func (d *Dataset) blockOrder(readers []*shard.Reader, cfg order.Config) (*order.Order, error) {
	d.orderMu.Lock()
	defer d.orderMu.Unlock()
	if d.order != nil && d.orderCfg == cfg {
		return d.order, nil
	}
	layout := make([][]int64, len(readers))
	for i, r := range readers {
		for b := range r.Blocks() {
			layout[i] = append(layout[i], int64(r.Block(b).Records))
		}
	}
	o, err := order.NewBlocks(layout, cfg)
	if err != nil {
		return nil, err
	}
	d.order, d.orderCfg = o, cfg
	return o, nil
}

// readBuf returns a read buffer of at least n bytes, reused where one is
// free (smaller ones, of an earlier plan, are dropped).
func (d *Dataset) readBuf(n int64) []byte {
	d.bufMu.Lock()
	defer d.bufMu.Unlock()
	d.bufSize = max(d.bufSize, n)
	for len(d.bufs) > 0 {
		b := d.bufs[len(d.bufs)-1]
		d.bufs = d.bufs[:len(d.bufs)-1]
		if int64(cap(b)) >= n {
			return b[:n]
		}
	}
	return make([]byte, n, d.bufSize)
}

// putBuf keeps b for the next read.
func (d *Dataset) putBuf(b []byte) {
	d.bufMu.Lock()
	defer d.bufMu.Unlock()
	if len(d.bufs) < maxReadsCap {
		d.bufs = append(d.bufs, b)
	}
}

// readGate bounds the range reads in flight of every loader over one
// Dataset together, at the most reads in flight any of them climbed to.
// The climb finds how many reads the source, the link and the CPUs
// take before they are the limit; loaders that run at once share that
// limit instead of each climbing to it alone. Four ranks in one process
// each at 64 reads put 256 requests at once on one S3 server and were
// slower than the same four sharing 64 (measured: 1.34-1.44 against
// 1.97-2.02 GB/s, 4 KiB records, 256 MiB, 20 ms per request). One
// loader alone is never held back: its limit is its own climb.
//
// Only the range read holds a slot; checking and decoding the block
// after it do not. A read takes its buffer once it has its slot, so the
// buffers in use are about the reads in flight, not the workers waiting.
type readGate struct {
	mu    sync.Mutex
	sem   *semaphore.Weighted
	limit int64
}

// gateSize is the semaphore's size; the slots past the limit are held
// by the gate itself and handed out as the limit rises.
const gateSize = 1 << 30

// raise lets at least n reads through at once.
func (g *readGate) raise(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sem == nil {
		g.sem = semaphore.NewWeighted(gateSize)
		g.sem.TryAcquire(gateSize)
	}
	if d := int64(n) - g.limit; d > 0 {
		g.limit = int64(n)
		g.sem.Release(d)
	}
}

// reads is the limit.
func (g *readGate) reads() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int(g.limit)
}

// acquire takes a slot for one range read; raise must have run.
func (g *readGate) acquire(ctx context.Context) error { return g.sem.Acquire(ctx, 1) }

// release gives the slot back.
func (g *readGate) release() { g.sem.Release(1) }

type shardCache struct {
	mu      sync.Mutex
	locks   []sync.Mutex // one per shard, so that shards open in parallel
	readers []*shard.Reader
	objs    []source.Object
	closed  bool
}

// loaderShard returns shard i opened (OpenShard's checks), opening it
// the first time; the Dataset keeps it until Close. Failures are not
// kept, so a later loader tries again.
func (d *Dataset) loaderShard(ctx context.Context, i int) (*shard.Reader, error) {
	c := &d.open
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("dataloader: %s: the dataset is closed (open it again with dataloader.Open for a new loader)", d.Src)
	}
	if c.locks == nil {
		n := len(d.Index.Shards)
		c.locks, c.readers, c.objs = make([]sync.Mutex, n), make([]*shard.Reader, n), make([]source.Object, n)
	}
	lk := &c.locks[i]
	c.mu.Unlock()
	lk.Lock()
	defer lk.Unlock()
	c.mu.Lock()
	r := c.readers[i]
	c.mu.Unlock()
	if r != nil {
		return r, nil
	}
	r, obj, err := d.OpenShard(ctx, i)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		obj.Close()
		return nil, fmt.Errorf("dataloader: %s: the dataset is closed (open it again with dataloader.Open for a new loader)", d.Src)
	}
	c.readers[i], c.objs[i] = r, obj
	return r, nil
}

// Close releases the shards the dataset's loaders opened and their read
// buffers. Close the loaders first; a loader made after Close fails.
func (d *Dataset) Close() error {
	c := &d.open
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	d.bufMu.Lock()
	d.bufs = nil
	d.bufMu.Unlock()
	var errs []error
	for i, o := range c.objs {
		if o != nil {
			errs = append(errs, o.Close())
			c.objs[i], c.readers[i] = nil, nil
		}
	}
	return errors.Join(errs...)
}

// Open reads index.json from src.
func Open(ctx context.Context, src source.Source) (*Dataset, error) {
	obj, err := src.Open(ctx, IndexFile)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %s has no readable %s: %w", src, IndexFile, err)
	}
	defer obj.Close()
	if obj.Size() > maxIndexBytes {
		return nil, fmt.Errorf("dataloader: %s/%s is %d bytes, over the %d limit", src, IndexFile, obj.Size(), maxIndexBytes)
	}
	b := make([]byte, obj.Size())
	if _, err := obj.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("dataloader: reading %s/%s: %w", src, IndexFile, err)
	}
	ix, err := ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %s/%s: %w", src, IndexFile, err)
	}
	if ix.Records == 0 {
		return nil, fmt.Errorf("dataloader: %s is an empty dataset (no records)", src)
	}
	return &Dataset{Src: src, Index: ix}, nil
}

// OpenShard opens shard i and checks it against the index (size and
// record count; the hash is checked by Verify and by cached sources).
// The caller closes the returned object when done with the reader.
func (d *Dataset) OpenShard(ctx context.Context, i int) (*shard.Reader, source.Object, error) {
	info := d.Index.Shards[i]
	// The index knows the size: remote sources skip asking for it, and
	// check it on every read instead.
	obj, err := source.OpenSized(ctx, d.Src, info.Name, info.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("dataloader: shard %s (the index says %d bytes): %w", info.Name, info.Bytes, err)
	}
	r, err := shard.Open(obj, obj.Size(), info.Name)
	if err != nil {
		obj.Close()
		return nil, nil, err
	}
	if r.Records() != info.Records {
		obj.Close()
		return nil, nil, fmt.Errorf("dataloader: shard %s holds %d records, the index says %d", info.Name, r.Records(), info.Records)
	}
	return r, obj, nil
}

// Verify reads every shard whole: its hash against the index, then every
// block's checksum. It returns one line per problem, naming shard and
// block.
func (d *Dataset) Verify(ctx context.Context, progress func(done, total int)) ([]string, error) {
	var problems []string
	for i, info := range d.Index.Shards {
		if err := ctx.Err(); err != nil {
			return problems, err
		}
		if progress != nil {
			progress(i, len(d.Index.Shards))
		}
		obj, err := d.Src.Open(ctx, info.Name)
		if err != nil {
			problems = append(problems, fmt.Sprintf("shard %s: %v", info.Name, err))
			continue
		}
		h := xxhash.New()
		_, err = io.Copy(h, io.NewSectionReader(obj, 0, obj.Size()))
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("shard %s: reading: %v", info.Name, err))
		case obj.Size() != info.Bytes:
			problems = append(problems, fmt.Sprintf("shard %s: %d bytes, the index says %d", info.Name, obj.Size(), info.Bytes))
		case fmt.Sprintf("%016x", h.Sum64()) != info.XXH64:
			problems = append(problems, fmt.Sprintf("shard %s: XXH64 %016x, the index says %s", info.Name, h.Sum64(), info.XXH64))
		}
		r, err := shard.Open(obj, obj.Size(), info.Name)
		if err != nil {
			problems = append(problems, err.Error())
			obj.Close()
			continue
		}
		for b := 0; b < r.Blocks(); b++ {
			if _, err := r.ReadBlock(b); err != nil {
				problems = append(problems, err.Error())
			}
		}
		obj.Close()
	}
	if progress != nil {
		progress(len(d.Index.Shards), len(d.Index.Shards))
	}
	return problems, nil
}
