package collectivetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// TCP forms a group of n ranks over real loopback TCP sockets, every rank
// joining from its own goroutine through a rendezvous on a free port.
// tune, if not nil, adjusts each rank's tcp.Config (sockets per peer,
// striping) before it joins. Kill drops a rank's sockets without a goodbye,
// as a crashed process would.
func TCP(t testing.TB, n int, cfg collective.Config, tune func(*tcp.Config)) Group {
	t.Helper()
	tts := TCPTransports(t, n, tune)
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	return Form(t, cfg, trs, func(r int) { tts[r].Kill() })
}

// TCPTransports joins n ranks over loopback TCP as TCP does, and returns
// the transports, for a test that forms groups over them itself. They are
// closed when the test ends (a second Close, after a Comm's, does nothing).
func TCPTransports(t testing.TB, n int, tune func(*tcp.Config)) []*tcp.Transport {
	t.Helper()
	return joinEach(t, n, "tcp", func(ctx context.Context, addr string, r int) (*tcp.Transport, error) {
		c := tcp.DefaultConfig()
		c.Spin = tcp.SpinFor(n) // all n ranks share this machine
		if tune != nil {
			tune(&c)
		}
		c.Rendezvous, c.Rank, c.Size = addr, r, n
		return tcp.Join(ctx, c)
	})
}

// SHM forms a group of n ranks over shared memory, as TCP does over
// sockets.
func SHM(t testing.TB, n int, cfg collective.Config, tune func(*shm.Config)) Group {
	t.Helper()
	tts := joinEach(t, n, "shm", func(ctx context.Context, addr string, r int) (*shm.Transport, error) {
		c := shm.DefaultConfig()
		c.Yield = shm.YieldFor(n)
		if tune != nil {
			tune(&c)
		}
		c.Rendezvous, c.Rank, c.Size = addr, r, n
		return shm.Join(ctx, c)
	})
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	return Form(t, cfg, trs, func(r int) { tts[r].Kill() })
}

// joinEach joins n ranks, each from its own goroutine, through a
// rendezvous on a free loopback port, and closes them when the test ends.
func joinEach[T interface{ Close() error }](t testing.TB, n int, kind string, join func(ctx context.Context, addr string, r int) (T, error)) []T {
	t.Helper()
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tts := make([]T, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { tts[r], errs[r] = join(ctx, addr, r) })
	}
	wg.Wait()
	closeAll := func() {
		// All at once: each says goodbye and waits briefly for the others'.
		var wg sync.WaitGroup
		for r, tt := range tts {
			if errs[r] == nil {
				wg.Go(func() { tt.Close() })
			}
		}
		wg.Wait()
	}
	for r, err := range errs {
		if err != nil {
			closeAll()
			t.Fatalf("rank %d: %s join at %s, size %d: %v", r, kind, addr, n, err)
		}
	}
	t.Cleanup(closeAll)
	return tts
}
