package mix_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

// Buffers in shm windows are lent inside a host by the hierarchical
// all-reduce and by the flat ring (whose every other hop crosses hosts
// over pairs), and the result is bit for bit the one of the same call on
// ordinary memory, which is copied through the rings: for hosts of two
// and of three ranks, every dtype width, an op whose order shows (sum)
// and one that does not, and sizes that end mid-chunk; and all-gather
// into windows. Half the lending ranks scribble over their buffers as
// soon as their calls return, so a call that returned before its peers
// had read its loans shows in the other ranks' results.
func TestLentMatchesCopied(t *testing.T) {
	for _, tc := range []struct {
		n      int
		choose func(a, b transport.Member) string
		algo   collective.Algo
		// scribblers: the ranks r with r%2 == scribblers scribble; they
		// must be lenders (in the flat ring over pairs, only the even
		// ranks' next rank shares their host).
		scribblers int
	}{{4, pairs, collective.AlgoHier, 1}, {6, hostsOf(3), collective.AlgoHier, 1}, {4, pairs, collective.AlgoRing, 0}} {
		tts := join(t, tc.n, tc.choose)
		trs := make([]transport.Transport, tc.n)
		for r, tt := range tts {
			trs[r] = tt
		}
		cfg := collective.DefaultConfig()
		cfg.Algo, cfg.ChunkBytes, cfg.LendBytes = tc.algo, 64<<10, 0
		g := collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
		const maxBytes = 3 << 20
		wins := make([]*shm.Window, tc.n)
		for r := range wins {
			w, err := shm.NewWindow(maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			wins[r] = w
		}
		for _, dt := range []collective.DType{collective.Float32, collective.Float64, collective.BFloat16} {
			for _, op := range []collective.Op{collective.Sum, collective.Max} {
				for _, count := range []int{70_001, 300_007} {
					n := count * dt.Size()
					if n > maxBytes {
						continue
					}
					in := make([][]byte, tc.n)
					lent := make([][]byte, tc.n)
					for r := range in {
						in[r] = make([]byte, n)
						rng := rand.New(rand.NewPCG(uint64(r), uint64(count)))
						for i := range in[r] {
							in[r][i] = byte(rng.Uint32() & 0x3f) // small exponents: no infinities
						}
						lent[r] = wins[r].Bytes()[:n]
						copy(lent[r], in[r])
					}
					allReduce(t, g, dt, op, lent, tc.scribblers)
					allReduce(t, g, dt, op, in, -1) // on the Go heap: copied
					for r := range in {
						if r%2 != tc.scribblers && !bytes.Equal(lent[r], in[r]) {
							t.Fatalf("%d ranks, %v, %v %v ×%d: rank %d's result from lent buffers differs from the copied one", tc.n, tc.algo, dt, op, count, r)
						}
						if !bytes.Equal(in[r], in[0]) {
							t.Fatalf("%d ranks, %v %v ×%d: rank %d's result differs from rank 0's", tc.n, dt, op, count, r)
						}
					}
				}
			}
		}
		// All-gather into windows: each block is lent on inside a host.
		for _, count := range []int{40_003, 100_003} {
			per := count * 4
			sends := make([][]byte, tc.n)
			var want []byte
			for r := range sends {
				sends[r] = make([]byte, per)
				for i := range sends[r] {
					sends[r][i] = byte(i*13 + r)
				}
				want = append(want, sends[r]...)
			}
			recvs := make([][]byte, tc.n)
			errs := make([]error, tc.n)
			var wg sync.WaitGroup
			for r, c := range g.Comms {
				recvs[r] = wins[r].Bytes()[:per*tc.n]
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					errs[r] = c.AllGather(ctx, collective.BufferOf(collective.Float32, sends[r]), collective.BufferOf(collective.Float32, recvs[r]))
					if r%2 == tc.scribblers {
						clear(recvs[r])
					}
				})
			}
			wg.Wait()
			for r := range recvs {
				if errs[r] != nil {
					t.Fatalf("rank %d: AllGather: %v", r, errs[r])
				}
				if r%2 != tc.scribblers && !bytes.Equal(recvs[r], want) {
					t.Fatalf("%d ranks, %v, all-gather of %d elements: rank %d gathered other bytes than were sent", tc.n, tc.algo, count, r)
				}
			}
		}
		for r, tt := range tts {
			t.Logf("%d ranks, %v: rank %d lent %d bytes, sent %v", tc.n, tc.algo, r, tt.LentBytes(), tt.SentBytes())
			shmSent := tt.SentBytes()[shm.Name]
			if l := tt.LentBytes(); l < shmSent/4 {
				t.Errorf("%d ranks, %v: rank %d lent %d of the %d bytes it sent over shm", tc.n, tc.algo, r, l, shmSent)
			}
		}
	}
}

// allReduce runs one in-place all-reduce of bufs[r] on every rank r.
// The ranks with r%2 == scribblers overwrite their buffers the moment
// their calls return, as a training loop may: a peer still reading one
// as a loan would get the scribble into its result.
func allReduce(t *testing.T, g collectivetest.Group, dt collective.DType, op collective.Op, bufs [][]byte, scribblers int) {
	t.Helper()
	errs := make([]error, len(bufs))
	var wg sync.WaitGroup
	for r, c := range g.Comms {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			b := collective.BufferOf(dt, bufs[r])
			errs[r] = c.AllReduce(ctx, b, b, op)
			if r%2 == scribblers {
				for i := range bufs[r] {
					bufs[r][i] = 0xff
				}
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}
