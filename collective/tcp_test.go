package collective_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

func tcpGroup(t testing.TB, n int, cfg collective.Config, tcfg tcp.Config) []collective.Comm {
	t.Helper()
	return collectivetest.TCP(t, n, cfg, func(c *tcp.Config) { *c = tcfg }).Comms
}

func TestTCPAllReduceSmoke(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			cfg := collective.DefaultConfig()
			cfg.ChunkBytes = 4096
			tcfg := tcp.DefaultConfig()
			tcfg.StripeMin = 1024
			comms := tcpGroup(t, n, cfg, tcfg)
			for _, count := range []int{0, 1, 5, 1000, 100_003} {
				out := make([][]float32, n)
				errs := each(comms, func(c collective.Comm) error {
					buf := make([]float32, count)
					for i := range buf {
						buf[i] = float32(c.Rank() + i%7)
					}
					out[c.Rank()] = buf
					return c.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum)
				})
				for r, err := range errs {
					if err != nil {
						t.Fatalf("count %d rank %d: %v", count, r, err)
					}
				}
				for r := range out {
					for i, v := range out[r] {
						if want := float32(n*(n-1)/2 + n*(i%7)); v != want {
							t.Fatalf("count %d rank %d index %d: got %v want %v", count, r, i, v, want)
						}
					}
				}
			}
		})
	}
}

// pair runs rank 1 of a two-rank group on a persistent goroutine, so that
// measuring rank 0's calls counts no goroutine start-up.
type pair struct {
	comms []collective.Comm
	kick  chan struct{}
	errs  chan error
}

func newPair(t testing.TB, bytes int) (*pair, []float32) {
	cfg := collective.DefaultConfig()
	cfg.Timeout = 30 * time.Second
	p := &pair{comms: tcpGroup(t, 2, cfg, tcp.DefaultConfig()), kick: make(chan struct{}), errs: make(chan error)}
	b0, b1 := make([]float32, bytes/4), make([]float32, bytes/4)
	go func() {
		for range p.kick {
			p.errs <- p.comms[1].AllReduce(context.Background(), collective.Float32s(b1), collective.Float32s(b1), collective.Sum)
		}
	}()
	t.Cleanup(func() { close(p.kick) })
	return p, b0
}

func (p *pair) allReduce(b0 []float32) error {
	p.kick <- struct{}{}
	err := p.comms[0].AllReduce(context.Background(), collective.Float32s(b0), collective.Float32s(b0), collective.Sum)
	if err1 := <-p.errs; err == nil {
		err = err1
	}
	return err
}

// TestSteadyStateAllocatesNothing: once a shape has been seen, an
// all-reduce (both ranks, both algorithms, striped and not) allocates
// nothing in the process.
func TestSteadyStateAllocatesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts are noisy under -short runs")
	}
	// 1 MiB polls on both lanes (Config.PollBytes); 4 MiB sleeps.
	for _, bytes := range []int{4 << 10, 1 << 20, 4 << 20} {
		p, b0 := newPair(t, bytes)
		for range 3 {
			if err := p.allReduce(b0); err != nil {
				t.Fatal(err)
			}
		}
		allocs := testing.AllocsPerRun(20, func() {
			if err := p.allReduce(b0); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 0 {
			t.Errorf("%d-byte all-reduce: %.1f allocations per call in steady state, want 0", bytes, allocs)
		}
	}
}

func BenchmarkAllReduceTCP(b *testing.B) {
	for _, bytes := range []int{4 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprint(bytes), func(b *testing.B) {
			p, b0 := newPair(b, bytes)
			b.SetBytes(int64(bytes))
			for b.Loop() {
				if err := p.allReduce(b0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTCPWholeBufferExchangeLargerThanSocketBuffers forces the algorithms
// whose steps send and receive the same bytes with one peer (recursive
// doubling, and the fold of a world that is not a power of two) on a
// buffer far larger than the pinned socket buffers. Each rank's receive
// must not wait for its own send to finish, or both ends of a link block
// in send until the call's timeout.
//
// Halving-doubling of a call up to Config.PollBytes runs on one goroutine
// in program order (schedule.paired): the lower rank of each pair sends
// first and the higher receives first, so that too must finish.
func TestTCPWholeBufferExchangeLargerThanSocketBuffers(t *testing.T) {
	for _, n := range []int{2, 3, 4} {
		for _, tc := range []struct {
			algo  collective.Algo
			count int
		}{
			{collective.AlgoRecursiveDoubling, 1 << 20},
			{collective.AlgoHalvingDoubling, 1 << 20},
			{collective.AlgoHalvingDoubling, 1 << 19}, // 2 MiB: inline
		} {
			algo, count := tc.algo, tc.count
			t.Run(fmt.Sprintf("%v/n%d/%dKiB", algo, n, count*4>>10), func(t *testing.T) {
				cfg := collective.DefaultConfig()
				cfg.Algo, cfg.Timeout = algo, 20*time.Second
				tcfg := tcp.DefaultConfig()
				tcfg.SocketBuffer = 64 << 10 // the kernel may round it up; still far below 2 MiB
				comms := tcpGroup(t, n, cfg, tcfg)
				out := make([][]float32, n)
				errs := each(comms, func(c collective.Comm) error {
					buf := make([]float32, count)
					for i := range buf {
						buf[i] = float32(c.Rank() + i%3)
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
						if want := float32(n*(n-1)/2 + n*(i%3)); v != want {
							t.Fatalf("rank %d index %d: got %v want %v", r, i, v, want)
						}
					}
				}
			})
		}
	}
}

// Over TCP a reduction reads its message in the socket's read buffer
// (transport.InPlaceReceiver) and gets the bits that copying it into
// scratch first gets, on one socket per peer and with striping, where
// the payloads that are striped (here from 4 KiB) are copied and the
// rest still go in place.
func TestTCPReduceInPlaceMatchesCopy(t *testing.T) {
	for _, tc := range []struct{ n, sockets int }{{3, 1}, {4, 1}, {3, 2}} {
		t.Run(fmt.Sprintf("n%d/sockets%d", tc.n, tc.sockets), func(t *testing.T) {
			tts := collectivetest.TCPTransports(t, tc.n, func(c *tcp.Config) { c.SocketsPerPeer, c.StripeMin = tc.sockets, 4<<10 })
			collectivetest.CheckInPlace(t, "TCP", tts, 64<<10)
		})
	}
}
