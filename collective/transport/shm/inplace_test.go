package shm_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
)

// countingInPlace counts the payloads handed over in place.
type countingInPlace struct {
	*shm.Transport
	calls *atomic.Int64
}

func (c countingInPlace) RecvPayloadFunc(p, n int, fn func(int, []byte), d time.Time) error {
	c.calls.Add(1)
	return c.Transport.RecvPayloadFunc(p, n, fn, d)
}

// copyOnly hides InPlaceReceiver: every payload is copied into scratch
// and reduced from there, as before in-place reductions.
type copyOnly struct{ transport.Transport }

// Reducing straight out of the ring gives the bits that copying first
// gives, for every dtype's width, with the operand order of each
// algorithm, at sizes that end mid-slot and that stream through small
// rings; and it is what runs over shared memory.
func TestReduceInPlaceMatchesCopy(t *testing.T) {
	const n = 3 // odd: the partial sum arrives as the left and the right operand
	var calls atomic.Int64
	tts, errs := joinAll(t, n, func(_ int, c *shm.Config) { smallRings(c) })
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	inPlace, copied := make([]transport.Transport, n), make([]transport.Transport, n)
	for r, tt := range tts {
		inPlace[r], copied[r] = countingInPlace{tt, &calls}, copyOnly{tt}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, algo := range []collective.Algo{collective.AlgoRing, collective.AlgoRecursiveDoubling, collective.AlgoHalvingDoubling} {
		cfg := collective.DefaultConfig()
		cfg.Algo = algo
		cfg.ChunkBytes = 64 << 10
		a := collectivetest.Form(t, cfg, inPlace, nil)
		b := collectivetest.Form(t, cfg, copied, nil)
		for _, dt := range []collective.DType{collective.Float32, collective.Float64, collective.BFloat16, collective.Int32} {
			for _, op := range []collective.Op{collective.Sum, collective.Max} {
				for _, count := range []int{1, 7, 4093, 100_003} {
					name := fmt.Sprintf("%v/%v/%v/%d", algo, dt, op, count)
					in := make([][]byte, n)
					for r := range in {
						in[r] = make([]byte, count*dt.Size())
						for i := range in[r] {
							in[r][i] = byte(rng.Uint32() & 0x3f) // small exponents: no infinities
						}
					}
					got, want := allReduce(t, a, dt, op, in), allReduce(t, b, dt, op, in)
					for r := range n {
						if string(got[r]) != string(want[r]) {
							t.Fatalf("%s: rank %d: reduced in place differs from reduced from a copy", name, r)
						}
						if string(got[r]) != string(got[0]) {
							t.Fatalf("%s: rank %d differs from rank 0", name, r)
						}
					}
				}
			}
		}
	}
	if calls.Load() == 0 {
		t.Fatal("no payload was reduced in place over shared memory")
	}
	t.Logf("%d payloads reduced in place", calls.Load())
}

// allReduce runs one all-reduce of in (one buffer per rank) on every rank
// of g and returns the results.
func allReduce(t *testing.T, g collectivetest.Group, dt collective.DType, op collective.Op, in [][]byte) [][]byte {
	t.Helper()
	out := make([][]byte, len(in))
	errs := make([]error, len(in))
	var wg sync.WaitGroup
	for r, c := range g.Comms {
		out[r] = append([]byte(nil), in[r]...)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			buf := collective.BufferOf(dt, out[r])
			errs[r] = c.AllReduce(ctx, buf, buf, op)
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out
}
