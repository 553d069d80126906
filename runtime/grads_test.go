package runtime

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
)

// each runs f on every rank of an n-rank TCP group concurrently and
// fails t if any rank returns an error.
func each(t *testing.T, n int, f func(c collective.Comm) error) {
	t.Helper()
	for r, err := range eachErr(t, n, collective.DefaultConfig(), f) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// eachErr runs f on every rank of an n-rank TCP group formed with cfg,
// concurrently, and returns each rank's error.
func eachErr(t *testing.T, n int, cfg collective.Config, f func(c collective.Comm) error) []error {
	t.Helper()
	g := collectivetest.TCP(t, n, cfg, nil)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for r, c := range g.Comms {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = f(c) }()
	}
	wg.Wait()
	return errs
}

// Gradients of many sizes, fused into small buckets (so that some hold
// several tensors and some tensors fill a bucket alone), average exactly
// like one all-reduce per tensor would.
func TestAverageFusesAndMatchesThePlainAverage(t *testing.T) {
	const n = 3
	sizes := []int{1, 7, 1000, 0, 33, 5000, 2, 250}
	for _, comp := range []Compression{NoCompression, BF16, FP16} {
		t.Run(string(comp)+"x", func(t *testing.T) {
			results := make([][][]float32, n)
			each(t, n, func(c collective.Comm) error {
				g, err := NewGradients(c, GradConfig{BucketBytes: 4 * 1024, Compress: comp})
				if err != nil {
					return err
				}
				grads := make([][]float32, len(sizes))
				for i, sz := range sizes {
					grads[i] = make([]float32, sz)
					for j := range grads[i] {
						grads[i][j] = float32(c.Rank()+1) * float32(j%17-8) / 8
					}
				}
				// Twice: the second call reuses the bucket buffers.
				for range 2 {
					for i := range grads {
						for j := range grads[i] {
							grads[i][j] = float32(c.Rank()+1) * float32(j%17-8) / 8
						}
					}
					if err := g.AverageAsync(context.Background(), grads...).Wait(context.Background()); err != nil {
						return err
					}
				}
				results[c.Rank()] = grads
				return nil
			})
			tol := 0.0
			if comp != NoCompression {
				tol = 1.0 / 64 // a few ulps of an 8-bit mantissa on values up to 2
			}
			for i, sz := range sizes {
				for j := range sz {
					want := float64(2) * float64(j%17-8) / 8 // mean of 1, 2, 3 times the value
					for r := range n {
						got := float64(results[r][i][j])
						if math.Abs(got-want) > tol {
							t.Fatalf("rank %d tensor %d element %d: %v, want %v", r, i, j, got, want)
						}
						if math.Float32bits(results[r][i][j]) != math.Float32bits(results[0][i][j]) {
							t.Fatalf("ranks disagree at tensor %d element %d", i, j)
						}
					}
				}
			}
		})
	}
}

func TestAverage64AndBroadcast(t *testing.T) {
	each(t, 3, func(c collective.Comm) error {
		g, err := NewGradients(c, GradConfig{BucketBytes: 64})
		if err != nil {
			return err
		}
		a, b := []float64{float64(c.Rank()), 1}, make([]float64, 20)
		for i := range b {
			b[i] = float64(c.Rank() * i)
		}
		if err := g.Average64(context.Background(), a, b); err != nil {
			return err
		}
		if a[0] != 1 || a[1] != 1 || b[3] != 3 {
			t.Errorf("rank %d: averages %v %v", c.Rank(), a, b[:4])
		}
		p := []float32{float32(c.Rank() + 5)}
		if err := BroadcastParams(context.Background(), c, p); err != nil {
			return err
		}
		if p[0] != 5 {
			t.Errorf("rank %d: broadcast gave %v, want rank 0's 5", c.Rank(), p[0])
		}
		return nil
	})
}

func TestGradConfigValidate(t *testing.T) {
	if _, err := NewGradients(nil, GradConfig{BucketBytes: 1 << 20, Compress: "int8"}); err == nil {
		t.Error("int8 compression accepted")
	}
	if _, err := NewGradients(nil, GradConfig{BucketBytes: 2}); err == nil {
		t.Error("a 2-byte bucket accepted")
	}
	if _, err := NewGradients(nil, GradConfig{BucketBytes: 1 << 20, Staging: collective.StagingConfig{Slots: 2}}); err == nil {
		t.Error("2 staging slots accepted")
	}
	if _, err := NewGradients(nil, GradConfig{BucketBytes: 1 << 20, Staging: collective.StagingConfig{ChunkBytes: 1 << 10}}); err != nil {
		t.Errorf("a staging config with only ChunkBytes set: %v", err)
	}
}

// Over shared memory, the buckets of 2 MiB and more lie in shm windows,
// which the ranks of a host lend each other instead of copying, and the
// averages are exact as on the plain path, also after Close has freed
// the windows and the next average made them again. Over TCP nothing is
// put in a window.
func TestAverageKeepsLargeBucketsInWindows(t *testing.T) {
	const n = 3
	sizes := []int{300_000, 5, 400_001, 700_000, 1000}
	g := collectivetest.SHM(t, n, collective.DefaultConfig(), nil)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for r, c := range g.Comms {
		wg.Go(func() { errs[r] = averageTwiceWithClose(c, sizes) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	each(t, 2, func(c collective.Comm) error {
		gr, err := NewGradients(c, GradConfig{BucketBytes: 4 << 20})
		if err != nil {
			return err
		}
		// One fused bucket of 3.6 MB, which would lie in a window where a
		// peer shared this host's memory.
		if err := gr.Average(context.Background(), make([]float32, 300_000), make([]float32, 300_000), make([]float32, 300_000)); err != nil {
			return err
		}
		if collective.Lends(c, 4<<20) || gr.windows() != 0 {
			return fmt.Errorf("over TCP: Lends %v, %d buckets in windows", collective.Lends(c, 4<<20), gr.windows())
		}
		return nil
	})
}

func averageTwiceWithClose(c collective.Comm, sizes []int) error {
	if !collective.Lends(c, 2<<20) || collective.Lends(c, 2<<20-1) {
		return fmt.Errorf("a group over shared memory: Lends at 2 MiB %v, just below %v; want from LendBytes (2 MiB) up", collective.Lends(c, 2<<20), collective.Lends(c, 2<<20-1))
	}
	gr, err := NewGradients(c, GradConfig{BucketBytes: 4 << 20})
	if err != nil {
		return err
	}
	defer gr.Close()
	grads := make([][]float32, len(sizes))
	for i, sz := range sizes {
		grads[i] = make([]float32, sz)
	}
	for round := range 3 {
		if round == 2 {
			gr.Close()
		}
		for i := range grads {
			for j := range grads[i] {
				grads[i][j] = float32(c.Rank()+1) * float32((j+round)%17-8) / 8
			}
		}
		if err := gr.Average(context.Background(), grads...); err != nil {
			return err
		}
		if gr.windows() != 2 {
			return fmt.Errorf("round %d: %d bucket buffers lie in windows, want both (2.8 MB each)", round, gr.windows())
		}
		for i := range grads {
			for j, v := range grads[i] {
				if want := float32(2) * float32((j+round)%17-8) / 8; v != want { // mean of 1, 2, 3 times the value
					return fmt.Errorf("round %d: tensor %d element %d: %v, want %v", round, i, j, v, want)
				}
			}
		}
	}
	return nil
}
