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
	"time"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/order"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// Config is one run.
type Config struct {
	Location  string // directory or URL of a dataset
	NP        int
	BatchSize int           // per rank
	Window    int           // shuffle window
	Workers   int           // per loader
	Consumer  time.Duration // time the slow consumer spends per batch
	// OrderVersion is the order's version (0: order.V2, the one whose
	// ranks read disjoint blocks).
	OrderVersion int
}

// Result of a run; bandwidths in GB/s (1e9 bytes).
type Result struct {
	FileBytes      int64   `json:"file_bytes"`
	Records        int64   `json:"records"`
	RawGBps        float64 `json:"raw_read_gbps"`
	StreamGBps     float64 `json:"stream_gbps"` // record bytes delivered
	StreamFileGBps float64 `json:"stream_file_gbps"`
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
	src, err := source.Parse(c.Location)
	if err != nil {
		return res, err
	}
	ds, err := dataloader.Open(ctx, src)
	if err != nil {
		return res, err
	}
	res.Records = ds.Index.Records
	buf := make([]byte, 4<<20)
	start := time.Now()
	for _, s := range ds.Index.Shards {
		obj, err := src.Open(ctx, s.Name)
		if err != nil {
			return res, err
		}
		n, err := io.CopyBuffer(io.Discard, io.NewSectionReader(obj, 0, obj.Size()), buf)
		obj.Close()
		if err != nil {
			return res, err
		}
		res.FileBytes += n
	}
	res.RawGBps = float64(res.FileBytes) / time.Since(start).Seconds() / 1e9

	bytes, read, _, elapsed, err := stream(ctx, ds, c, 0)
	if err != nil {
		return res, err
	}
	res.StreamReadBytes = read
	res.ReadAmplification = float64(read) / float64(res.FileBytes)
	res.StreamGBps = float64(bytes) / elapsed.Seconds() / 1e9
	res.StreamFileGBps = float64(res.FileBytes) / elapsed.Seconds() / 1e9
	res.SamplesPerSec = float64(res.Records) / elapsed.Seconds()
	if c.Consumer > 0 {
		_, _, stall, total, err := stream(ctx, ds, c, c.Consumer)
		if err != nil {
			return res, err
		}
		res.Stall = stall.Seconds() / total.Seconds()
		res.ConsumerMS = float64(c.Consumer) / float64(time.Millisecond)
	}
	return res, nil
}

// stream runs np loaders over one epoch; each consumer sleeps delay per
// batch. It returns the record bytes delivered, the bytes read from
// storage, the slowest rank's stall and the elapsed time.
func stream(ctx context.Context, ds *dataloader.Dataset, c Config, delay time.Duration) (int64, int64, time.Duration, time.Duration, error) {
	v := c.OrderVersion
	if v == 0 {
		v = order.V2
	}
	cfg := order.Config{Version: v, Seed: 1, Shuffle: true, Window: c.Window, BatchSize: c.BatchSize}
	o, err := order.New(ds.Index.Counts(), cfg)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	var mu sync.Mutex
	var bytes, read int64
	var stall time.Duration
	errs := make([]error, c.NP)
	var wg sync.WaitGroup
	start := time.Now()
	for r := range c.NP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := dataloader.NewLoader(ctx, ds, dataloader.LoaderConfig{Order: cfg, Rank: r, World: c.NP, State: o.Start(0), Workers: c.Workers},
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
			bytes += s.Bytes
			read += s.Read
			stall = max(stall, s.Stall)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return 0, 0, 0, 0, fmt.Errorf("rank: %w", e)
		}
	}
	return bytes, read, stall, time.Since(start), nil
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
