package collective_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

func inprocGroup(t testing.TB, n int, cfg collective.Config) []collective.Comm {
	t.Helper()
	w := inproc.NewWorld(n)
	comms := make([]collective.Comm, n)
	for r := range comms {
		c, err := collective.New(w.Transport(r), cfg)
		if err != nil {
			t.Fatal(err)
		}
		comms[r] = c
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// each runs f on every rank concurrently and returns the errors by rank.
func each(comms []collective.Comm, f func(c collective.Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(c)
		}()
	}
	wg.Wait()
	return errs
}

func TestAllReduceSmoke(t *testing.T) {
	for _, algo := range []collective.Algo{collective.AlgoRing, collective.AlgoRecursiveDoubling} {
		for n := 1; n <= 6; n++ {
			for _, count := range []int{0, 1, 3, 7, 100, 1001} {
				t.Run(fmt.Sprintf("%v/n%d/c%d", algo, n, count), func(t *testing.T) {
					cfg := collective.DefaultConfig()
					cfg.Algo = algo
					cfg.ChunkBytes = 64
					cfg.Timeout = 5 * time.Second
					comms := inprocGroup(t, n, cfg)
					out := make([][]float32, n)
					errs := each(comms, func(c collective.Comm) error {
						buf := make([]float32, count)
						for i := range buf {
							buf[i] = float32(c.Rank()*1000 + i)
						}
						out[c.Rank()] = buf
						return c.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum)
					})
					for r, err := range errs {
						if err != nil {
							t.Fatalf("rank %d: %v", r, err)
						}
					}
					for r := range out {
						for i, v := range out[r] {
							want := float32(1000*n*(n-1)/2 + n*i)
							if v != want {
								t.Fatalf("rank %d index %d: got %v want %v", r, i, v, want)
							}
						}
					}
				})
			}
		}
	}
}
