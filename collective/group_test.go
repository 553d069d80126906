package collective_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
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
	for _, algo := range []collective.Algo{collective.AlgoRing, collective.AlgoRecursiveDoubling, collective.AlgoHalvingDoubling} {
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

// TestLargeWorlds runs every collective at world sizes beyond the
// conformance suite's 8, powers of two and not, on the in-process
// transport, with counts that do not divide evenly.
func TestLargeWorlds(t *testing.T) {
	for _, n := range []int{9, 12, 13, 16} {
		for _, algo := range []collective.Algo{collective.AlgoRing, collective.AlgoRecursiveDoubling, collective.AlgoHalvingDoubling} {
			t.Run(fmt.Sprintf("n%d/%v", n, algo), func(t *testing.T) {
				cfg := collective.DefaultConfig()
				cfg.Algo, cfg.ChunkBytes, cfg.Timeout = algo, 64, 10*time.Second
				comms := inprocGroup(t, n, cfg)
				const per = 7 // elements per rank for the scatter/gather ops
				ctx := context.Background()
				errs := each(comms, func(c collective.Comm) error {
					r := int64(c.Rank())
					check := func(what string, got []int64, want func(i int) int64) error {
						for i, v := range got {
							if w := want(i); v != w {
								return fmt.Errorf("%s: rank %d index %d: got %d want %d", what, r, i, v, w)
							}
						}
						return nil
					}
					ar := make([]int64, 2*n+3)
					for i := range ar {
						ar[i] = r*100 + int64(i)
					}
					if err := c.AllReduce(ctx, collective.Int64s(ar), collective.Int64s(ar), collective.Sum); err != nil {
						return err
					}
					sumR := int64(n * (n - 1) / 2)
					if err := check("AllReduce", ar, func(i int) int64 { return 100*sumR + int64(n*i) }); err != nil {
						return err
					}
					rsIn, rsOut := make([]int64, per*n), make([]int64, per)
					for i := range rsIn {
						rsIn[i] = r + int64(i)
					}
					if err := c.ReduceScatter(ctx, collective.Int64s(rsIn), collective.Int64s(rsOut), collective.Max); err != nil {
						return err
					}
					if err := check("ReduceScatter", rsOut, func(i int) int64 { return int64(n-1) + r*per + int64(i) }); err != nil {
						return err
					}
					agIn, agOut := make([]int64, per), make([]int64, per*n)
					for i := range agIn {
						agIn[i] = r*1000 + int64(i)
					}
					if err := c.AllGather(ctx, collective.Int64s(agIn), collective.Int64s(agOut)); err != nil {
						return err
					}
					if err := check("AllGather", agOut, func(i int) int64 { return int64(i/per)*1000 + int64(i%per) }); err != nil {
						return err
					}
					root := n - 1
					bc := make([]int64, 11)
					if c.Rank() == root {
						for i := range bc {
							bc[i] = int64(i * i)
						}
					}
					if err := c.Broadcast(ctx, collective.Int64s(bc), collective.Int64s(bc), root); err != nil {
						return err
					}
					if err := check("Broadcast", bc, func(i int) int64 { return int64(i * i) }); err != nil {
						return err
					}
					red := []int64{r, 1, -r}
					out := make([]int64, 3)
					if err := c.Reduce(ctx, collective.Int64s(red), collective.Int64s(out), collective.Sum, 0); err != nil {
						return err
					}
					if c.Rank() == 0 {
						if err := check("Reduce", out, func(i int) int64 { return []int64{sumR, int64(n), -sumR}[i] }); err != nil {
							return err
						}
					}
					return c.Barrier(ctx)
				})
				for r, err := range errs {
					if err != nil {
						t.Fatalf("rank %d: %v", r, err)
					}
				}
			})
		}
	}
}

// TestScheduleString: a schedule prints one transfer a line, so that an
// algorithm can be read and debugged without running it. The ring's sends
// may be lent, so its all-gather receives, which write over blocks the
// reduce-scatter lent, wait for those loans first.
func TestScheduleIsPrintable(t *testing.T) {
	s := collective.DebugSchedule(collective.AlgoRing, 3, 1, 6, collective.Float32, 4)
	for _, want := range []string{"lend   -> 2", "reduce <- 0", "recv   <- 0", "work[0:4]  step 4  after 1 sends, loans of the first 1 sends read"} {
		if !strings.Contains(s, want) {
			t.Errorf("ring schedule for rank 1 of 3 lacks %q:\n%s", want, s)
		}
	}
}

// TestRootDisagreement: ranks that name different roots wait on different
// peers, so nobody reads the message that would show the disagreement.
// The rank that times out must find it (the peer's message is waiting) and
// report a mismatch naming both calls; every other rank must fail with the
// same explanation by its next call.
func TestRootDisagreement(t *testing.T) {
	for _, tr := range []string{"inproc", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			cfg := collective.DefaultConfig()
			cfg.Timeout = time.Second
			cfg.Algo = collective.AlgoRecursiveDoubling // binomial trees
			var comms []collective.Comm
			if tr == "inproc" {
				comms = inprocGroup(t, 3, cfg)
			} else {
				comms = tcpGroup(t, 3, cfg, tcp.DefaultConfig())
			}
			ctx := context.Background()
			errs := each(comms, func(c collective.Comm) error {
				root := 0
				if c.Rank() == 1 {
					root = 2
				}
				buf := make([]float32, 16)
				err := c.Broadcast(ctx, collective.Float32s(buf), collective.Float32s(buf), root)
				if err == nil {
					// Those who finished learn of it at their next call.
					err = c.Barrier(ctx)
				}
				return err
			})
			for r, err := range errs {
				if !errors.Is(err, collective.ErrMismatch) {
					t.Errorf("rank %d: got %v, want a mismatch", r, err)
					continue
				}
				if msg := err.Error(); !strings.Contains(msg, "root 0") || !strings.Contains(msg, "root 2") {
					t.Errorf("rank %d: the error does not name both roots: %v", r, err)
				}
			}
		})
	}
}

func TestStatsCountCalls(t *testing.T) {
	comms := inprocGroup(t, 4, collective.DefaultConfig())
	errs := each(comms, func(c collective.Comm) error {
		buf := make([]float32, 1000)
		for range 3 {
			if err := c.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil {
				return err
			}
		}
		return c.Barrier(context.Background())
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	st := comms[2].(collective.StatsReporter).Stats()
	if len(st) != 2 || st[0].Op != "AllReduce" || st[0].Calls != 3 || st[0].Bytes != 3*4000 || st[1].Op != "Barrier" || st[1].Calls != 1 {
		t.Fatalf("stats %+v", st)
	}
	if st[0].BusBytes != 3*4000*1.5 || st[0].Time <= 0 {
		t.Fatalf("bus bytes %v (want %v), time %v", st[0].BusBytes, 3*4000*1.5, st[0].Time)
	}
}
