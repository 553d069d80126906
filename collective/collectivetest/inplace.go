package collectivetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
)

// CheckInPlace checks that reductions reading their messages where the
// transport holds them (transport.InPlaceReceiver: a shared-memory ring, a
// socket's read buffer) give the bits that copying into scratch first
// gives: for the ring, recursive doubling and halving-doubling, one dtype
// of each width, two ops, and element counts from 1 to 100,003 (odd, so
// that messages end mid-piece and, at 3 ranks, the partial sum arrives
// as the left and as the right operand). trs holds one transport per
// rank; chunkBytes is the pipeline chunk. It fails t if no payload at all
// was reduced in place over (the transport's name, for the message), and
// logs how many were.
func CheckInPlace[T transport.Transport](t testing.TB, over string, trs []T, chunkBytes int) {
	t.Helper()
	n := len(trs)
	var calls atomic.Int64
	inPlace, copied := make([]transport.Transport, n), make([]transport.Transport, n)
	for r, tr := range trs {
		inPlace[r], copied[r] = countingInPlace{tr, &calls}, copyOnly{tr}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, algo := range []collective.Algo{collective.AlgoRing, collective.AlgoRecursiveDoubling, collective.AlgoHalvingDoubling} {
		cfg := collective.DefaultConfig()
		cfg.Algo = algo
		cfg.ChunkBytes = chunkBytes
		a := Form(t, cfg, inPlace, nil)
		b := Form(t, cfg, copied, nil)
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
					got, want := allReduceBytes(t, a, dt, op, in), allReduceBytes(t, b, dt, op, in)
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
		t.Fatalf("no payload was reduced in place over %s", over)
	}
	t.Logf("%d payloads reduced in place over %s", calls.Load(), over)
}

// countingInPlace counts the payloads handed over in place. Polling, the
// other interface the executor asks a transport for, passes through.
type countingInPlace struct {
	transport.Transport
	calls *atomic.Int64
}

func (c countingInPlace) InPlace(p, n int) bool {
	ip, ok := c.Transport.(transport.InPlaceReceiver)
	return ok && ip.InPlace(p, n)
}

func (c countingInPlace) RecvPayloadFunc(p, n int, fn func(int, []byte), d time.Time) error {
	c.calls.Add(1)
	return c.Transport.(transport.InPlaceReceiver).RecvPayloadFunc(p, n, fn, d)
}

func (c countingInPlace) Poll(on bool) bool { return pollOf(c.Transport, on) }

// copyOnly hides InPlaceReceiver: every payload is copied into scratch
// and reduced from there.
type copyOnly struct{ transport.Transport }

func (c copyOnly) Poll(on bool) bool { return pollOf(c.Transport, on) }

func pollOf(tr transport.Transport, on bool) bool {
	p, ok := tr.(transport.Poller)
	return ok && p.Poll(on)
}

// allReduceBytes runs one all-reduce of in (one buffer per rank) on every
// rank of g and returns the results.
func allReduceBytes(t testing.TB, g Group, dt collective.DType, op collective.Op, in [][]byte) [][]byte {
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
