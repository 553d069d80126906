// Package bench measures the data loader against the storage it reads:
// `ringo bench data` reads every shard of a dataset plainly, then streams
// the dataset shuffled and checksummed (and decompressed) through np loaders (one per rank,
// goroutines of one process), then streams again with a consumer that
// spends a set time on each batch, and reports the consumer's stall.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/source"
	"github.com/ringo-ml/ringo/internal/stats"
)

// Config is one run.
type Config struct {
	Location  string        // directory or URL of a dataset
	Source    source.Source // if set, read instead of Location
	NP        int
	BatchSize int           // per rank
	Window    int           // shuffle window
	Workers   int           // per loader: the reads in flight at its start
	MaxReads  int           // per loader: the most reads in flight (0: the loader's default)
	Consumer  time.Duration // time the slow consumer spends per batch
	// OrderVersion is the order's version (0: order.V2, the one whose
	// ranks read disjoint blocks).
	OrderVersion int
	// Rounds is how many times the plain read and the stream run, one
	// after the other (0: once); the result holds the medians.
	Rounds int
	// PlainReads is how the plain read reads: 0, one sequential reader
	// per shard file in turn; n > 0, n range reads of RangeBytes in flight
	// at once over all the shards' bytes; -1, as many range reads as the
	// loaders of the same round kept in flight together (the stream then
	// runs first in each round).
	PlainReads int
}

// RangeBytes is the size of the plain parallel read's range requests: the
// most the loader reads with one request.
const RangeBytes = dataloader.MaxReadBytes

// Result of a run; bandwidths in GB/s (1e9 bytes), medians over the
// rounds.
type Result struct {
	FileBytes      int64   `json:"file_bytes"`
	Records        int64   `json:"records"`
	RawGBps        float64 `json:"raw_read_gbps"`
	StreamGBps     float64 `json:"stream_gbps"` // record bytes delivered
	StreamFileGBps float64 `json:"stream_file_gbps"`
	// Ratio is the median over the rounds of the stream's file GB/s over
	// the plain read's of the same round.
	Ratio float64 `json:"ratio"`
	// RawRounds, StreamRounds: each round's plain read and stream (file
	// GB/s), in the order they ran.
	RawRounds    []float64 `json:"raw_rounds_gbps"`
	StreamRounds []float64 `json:"stream_rounds_gbps"`
	// PlainReads is the plain read's range reads in flight (0:
	// sequential), LoaderReads what the loaders kept in flight together, in
	// the last round.
	PlainReads  int `json:"plain_reads"`
	LoaderReads int `json:"loader_reads"`
	// StreamReadBytes is what the loaders read from storage together, and
	// ReadAmplification that over the file bytes: 1 when the ranks read
	// disjoint blocks, np when every rank reads every block.
	StreamReadBytes   int64   `json:"stream_read_bytes"`
	ReadAmplification float64 `json:"read_amplification"`
	SamplesPerSec     float64 `json:"samples_per_sec"`
	Stall             float64 `json:"stall_fraction"` // with the slow consumer
	ConsumerMS        float64 `json:"consumer_ms"`
}

// Run measures.
func Run(ctx context.Context, c Config) (Result, error) {
	var res Result
	src := c.Source
	if src == nil {
		var err error
		if src, err = source.Parse(c.Location); err != nil {
			return res, err
		}
	}
	ds, err := dataloader.Open(ctx, src)
	if err != nil {
		return res, err
	}
	res.Records = ds.Index.Records
	for _, s := range ds.Index.Shards {
		res.FileBytes += s.Bytes
	}
	var ratios, recGBps, samples []float64
	var bufs buffers // the plain read's, kept from round to round as the loaders keep theirs
	for round := range max(1, c.Rounds) {
		var st streamed
		if c.PlainReads < 0 {
			if st, err = stream(ctx, ds, c, round, 0); err != nil {
				return res, err
			}
		}
		plain := c.PlainReads
		if plain < 0 {
			plain = st.reads
		}
		raw, err := plainRead(ctx, src, ds, plain, &bufs)
		if err != nil {
			return res, err
		}
		if c.PlainReads >= 0 {
			if st, err = stream(ctx, ds, c, round, 0); err != nil {
				return res, err
			}
		}
		res.PlainReads, res.LoaderReads = plain, st.reads
		fileGBps := float64(res.FileBytes) / st.elapsed.Seconds() / 1e9
		res.RawRounds = append(res.RawRounds, raw)
		res.StreamRounds = append(res.StreamRounds, fileGBps)
		ratios = append(ratios, fileGBps/raw)
		recGBps = append(recGBps, float64(st.bytes)/st.elapsed.Seconds()/1e9)
		samples = append(samples, float64(res.Records)/st.elapsed.Seconds())
		res.StreamReadBytes = st.read
	}
	res.RawGBps, res.StreamFileGBps, res.Ratio = stats.Median(res.RawRounds), stats.Median(res.StreamRounds), stats.Median(ratios)
	res.StreamGBps, res.SamplesPerSec = stats.Median(recGBps), stats.Median(samples)
	res.ReadAmplification = float64(res.StreamReadBytes) / float64(res.FileBytes)
	if c.Consumer > 0 {
		st, err := stream(ctx, ds, c, max(1, c.Rounds), c.Consumer)
		if err != nil {
			return res, err
		}
		res.Stall = st.stall.Seconds() / st.elapsed.Seconds()
		res.ConsumerMS = float64(c.Consumer) / float64(time.Millisecond)
	}
	return res, nil
}

// plainRead reads every byte of every shard and returns GB/s: with reads
// 0, each file front to back through one 4 MiB buffer; else reads range
// requests of RangeBytes at once, each into its own buffer.
func plainRead(ctx context.Context, src source.Source, ds *dataloader.Dataset, reads int, bufs *buffers) (float64, error) {
	start := time.Now()
	var total int64
	if reads <= 0 {
		buf := bufs.get()
		defer bufs.put(buf)
		for _, s := range ds.Index.Shards {
			obj, err := src.Open(ctx, s.Name)
			if err != nil {
				return 0, err
			}
			n, err := io.CopyBuffer(io.Discard, io.NewSectionReader(obj, 0, obj.Size()), buf)
			obj.Close()
			if err != nil {
				return 0, err
			}
			total += n
		}
		return float64(total) / time.Since(start).Seconds() / 1e9, nil
	}
	// Open the shards as the loader does, with the sizes the index gives
	// (its time counts the opens too).
	objs := make([]source.Object, len(ds.Index.Shards))
	defer func() {
		for _, o := range objs {
			if o != nil {
				o.Close()
			}
		}
	}()
	type rng struct {
		obj      int
		off, len int64
	}
	var ranges []rng
	err := forEach(len(objs), reads, func() func(int) error {
		return func(i int) (err error) {
			s := ds.Index.Shards[i]
			objs[i], err = source.OpenSized(ctx, src, s.Name, s.Bytes)
			return err
		}
	})
	if err != nil {
		return 0, err
	}
	for i, o := range objs {
		for off := int64(0); off < o.Size(); off += RangeBytes {
			ranges = append(ranges, rng{i, off, min(RangeBytes, o.Size()-off)})
		}
	}
	var sum atomic.Int64
	held := make([][]byte, min(reads, len(ranges))) // one per reader
	for i := range held {
		held[i] = bufs.get()
	}
	defer func() {
		for _, b := range held {
			bufs.put(b)
		}
	}()
	var next atomic.Int64
	err = forEach(len(ranges), reads, func() func(int) error {
		buf := held[next.Add(1)-1]
		return func(i int) error {
			r := ranges[i]
			n, err := objs[r.obj].ReadAt(buf[:r.len], r.off)
			sum.Add(int64(n))
			return err
		}
	})
	total = sum.Load()
	if err != nil {
		return 0, err
	}
	return float64(total) / time.Since(start).Seconds() / 1e9, nil
}

// buffers are the plain read's read buffers of RangeBytes, kept for the
// next round: the loaders reuse theirs from one loader to the next, and
// fresh ones cost the read their page faults and zeroing, and the rounds
// after it the collection of the old ones (before, the plain read's own
// rounds varied from 0.5 to 3 GB/s).
type buffers struct {
	mu   sync.Mutex
	free [][]byte
}

func (b *buffers) get() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.free); n > 0 {
		buf := b.free[n-1]
		b.free = b.free[:n-1]
		return buf
	}
	return make([]byte, RangeBytes)
}

func (b *buffers) put(buf []byte) {
	b.mu.Lock()
	b.free = append(b.free, buf)
	b.mu.Unlock()
}

type streamed struct {
	bytes, read    int64
	stall, elapsed time.Duration
	reads          int
}

// stream runs np loaders over one epoch (epoch: each round streams an
// epoch of its own, as training does, so no round reuses another's
// order); each consumer sleeps delay per batch. It returns the record bytes delivered, the bytes read from
// storage, the slowest rank's stall and the elapsed time.
func stream(ctx context.Context, ds *dataloader.Dataset, c Config, epoch int, delay time.Duration) (streamed, error) {
	v := c.OrderVersion
	if v == 0 {
		v = order.V2
	}
	cfg := order.Config{Version: v, Seed: 1, Shuffle: true, Window: c.Window, BatchSize: c.BatchSize}
	o, err := order.New(ds.Index.Counts(), cfg)
	if err != nil {
		return streamed{}, err
	}
	var mu sync.Mutex
	var st streamed
	errs := make([]error, c.NP)
	var wg sync.WaitGroup
	start := time.Now()
	for r := range c.NP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := dataloader.NewLoader(ctx, ds, dataloader.LoaderConfig{Order: cfg, Rank: r, World: c.NP, State: o.Start(epoch), Workers: c.Workers, MaxReads: c.MaxReads},
				func(b []byte) (int, error) { return len(b), nil })
			if err != nil {
				errs[r] = err
				return
			}
			defer l.Close()
			for {
				_, err := l.Next(ctx)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					errs[r] = err
					return
				}
				if delay > 0 {
					time.Sleep(delay)
				}
			}
			s := l.Stats()
			mu.Lock()
			st.bytes += s.Bytes
			st.read += s.Read
			st.stall = max(st.stall, s.Stall)
			st.reads = max(st.reads, s.DatasetReads) // one limit shared by all
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return streamed{}, fmt.Errorf("rank: %w", e)
		}
	}
	st.elapsed = time.Since(start)
	return st, nil
}

// MakeSynthetic packs a dataset of total bytes of records of recordSize
// pseudo-random bytes into dir, blocks compressed at level (0: none).
func MakeSynthetic(dir string, total int64, recordSize int, level int) error {
	opts := dataloader.DefaultPackOptions()
	opts.Shard.Level = level
	p, err := dataloader.NewPacker(dir, opts)
	if err != nil {
		return err
	}
	rec := make([]byte, recordSize)
	x := uint64(0x9e3779b97f4a7c15)
	for written := int64(0); written < total; written += int64(recordSize) {
		for i := 0; i+8 <= len(rec); i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			for k := range 8 {
				rec[i+k] = byte(x >> (8 * k))
			}
		}
		if err := p.Add(rec); err != nil {
			return err
		}
	}
	_, err = p.Close(map[string]any{"source": "synthetic", "record_bytes": recordSize})
	return err
}

// forEach calls a function for every i in [0, n) on up to workers
// goroutines, each with its own function from newWorker, and returns the
// first error.
func forEach(n, workers int, newWorker func() func(int) error) error {
	var mu sync.Mutex
	var first error
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		f := newWorker()
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}
