package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

// Config is one run.
type Config struct {
	Bytes int64  // total state size
	NP    int    // ranks
	Dir   string // where to write; a temporary directory is made inside it
}

// Result is what a run measured, in bytes per second and seconds.
type Result struct {
	Bytes        int64   `json:"bytes"`
	NP           int     `json:"np"`
	PlainWrite   float64 `json:"plain_write_gbps"`
	PlainRead    float64 `json:"plain_read_gbps"`
	Save         float64 `json:"save_gbps"`
	Load         float64 `json:"load_gbps"`
	AsyncBlockUS float64 `json:"async_block_us"` // slowest rank's SaveAsync
	Memcpy       float64 `json:"memcpy_gbps"`    // every rank copying its share at once
	MemcpyUS     float64 `json:"memcpy_us"`
}

const block = 4 << 20

// state is rank r's part of an np-rank state of total bytes: one split
// float32 matrix holding most of it and a small replicated vector.
func state(total int64, r, np int) *checkpoint.State {
	cols := int64(1024)
	rows := max(int64(np), total/4/cols)
	share := checkpoint.EvenRows(rows, r, np)
	w := make([]byte, (share.End-share.Start)*cols*4)
	for i := range w {
		w[i] = byte(i*31 + r)
	}
	return &checkpoint.State{Tensors: []checkpoint.Tensor{
		{Name: "w", DType: safetensors.F32, Shape: []int64{rows, cols}, Data: w, Split: &share},
		{Name: "b", DType: safetensors.F32, Shape: []int64{cols}, Data: make([]byte, cols*4)},
	}}
}

func gbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e9 }

// Run measures; it removes what it wrote.
func Run(ctx context.Context, c Config) (Result, error) {
	res := Result{Bytes: c.Bytes, NP: c.NP}
	if c.NP < 1 || c.Bytes < 1 {
		return res, fmt.Errorf("need at least 1 rank and 1 byte, got %d ranks and %d bytes", c.NP, c.Bytes)
	}
	work, err := os.MkdirTemp(c.Dir, "ringo-bench-ckpt-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)

	// The disk's own: one file of the same size, written and fsynced, then
	// read back.
	plain := filepath.Join(work, "plain")
	buf := make([]byte, block)
	for i := range buf {
		buf[i] = byte(i)
	}
	start := time.Now()
	f, err := os.Create(plain)
	if err != nil {
		return res, err
	}
	for left := c.Bytes; left > 0; left -= block {
		if _, err := f.Write(buf[:min(left, block)]); err != nil {
			f.Close()
			return res, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return res, err
	}
	f.Close()
	res.PlainWrite = gbps(c.Bytes, time.Since(start))
	start = time.Now()
	f, err = os.Open(plain)
	if err != nil {
		return res, err
	}
	_, err = io.CopyBuffer(io.Discard, f, buf)
	f.Close()
	if err != nil {
		return res, err
	}
	res.PlainRead = gbps(c.Bytes, time.Since(start))
	os.Remove(plain)

	states := make([]*checkpoint.State, c.NP)
	for r := range states {
		states[r] = state(c.Bytes, r, c.NP)
	}
	total := int64(0)
	for _, st := range states {
		for _, t := range st.Tensors {
			if t.Split != nil || st == states[0] {
				total += int64(len(t.Data))
			}
		}
	}
	ckdir := filepath.Join(work, "ckpt")
	coords := checkpoint.LocalGroup(c.NP)
	each := func(f func(r int) error) error {
		errs := make([]error, c.NP)
		var wg sync.WaitGroup
		for r := range c.NP {
			wg.Add(1)
			go func() { defer wg.Done(); errs[r] = f(r) }()
		}
		wg.Wait()
		for _, e := range errs {
			if e != nil {
				return e
			}
		}
		return nil
	}

	start = time.Now()
	if err := each(func(r int) error { return checkpoint.Save(ctx, coords[r], ckdir, 1, states[r]) }); err != nil {
		return res, err
	}
	res.Save = gbps(total, time.Since(start))

	start = time.Now()
	if err := each(func(r int) error { return checkpoint.Load(ctx, ckdir, 1, states[r]) }); err != nil {
		return res, err
	}
	res.Load = gbps(total, time.Since(start))

	// Async: how long SaveAsync holds each rank, next to copying that
	// rank's bytes once.
	savers := make([]*checkpoint.Saver, c.NP)
	blocked := make([]time.Duration, c.NP)
	for r := range savers {
		savers[r] = checkpoint.NewSaver(coords[r], ckdir, checkpoint.Options{})
	}
	if err := each(func(r int) error {
		// The first save allocates the saver's buffers; a training loop
		// saves again and again, so the second one is the one timed.
		if _, err := savers[r].SaveAsync(ctx, 2, states[r]); err != nil {
			return err
		}
		if err := savers[r].Close(); err != nil {
			return err
		}
		t0 := time.Now()
		_, err := savers[r].SaveAsync(ctx, 3, states[r])
		blocked[r] = time.Since(t0)
		if err != nil {
			return err
		}
		return savers[r].Close()
	}); err != nil {
		return res, err
	}
	for _, b := range blocked {
		res.AsyncBlockUS = max(res.AsyncBlockUS, float64(b.Microseconds()))
	}
	// The yardstick: every rank copying its share once, at the same time,
	// into buffers already faulted in, as SaveAsync's reused ones are.
	dsts := make([][]byte, c.NP)
	for r := range dsts {
		dsts[r] = make([]byte, len(states[r].Tensors[0].Data))
		copy(dsts[r], states[r].Tensors[0].Data)
	}
	start = time.Now()
	each(func(r int) error { copy(dsts[r], states[r].Tensors[0].Data); return nil })
	d := time.Since(start)
	res.MemcpyUS = float64(d.Microseconds())
	res.Memcpy = gbps(total, d)
	return res, nil
}
