package p2p_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// job is a group's identities and rendezvous, before anyone joins.
type job struct {
	keys       []crypto.PrivKey
	ids        []peer.ID
	rendezvous string
}

func newJob(t testing.TB, n int) job {
	t.Helper()
	j := job{keys: make([]crypto.PrivKey, n), ids: make([]peer.ID, n)}
	for r := range n {
		k, err := p2p.NewIdentity()
		if err != nil {
			t.Fatal(err)
		}
		id, err := p2p.PeerID(k)
		if err != nil {
			t.Fatal(err)
		}
		j.keys[r], j.ids[r] = k, id
	}
	rv, err := p2p.RendezvousAddr(proctest.FreeAddr(t), j.ids[0])
	if err != nil {
		t.Fatal(err)
	}
	j.rendezvous = rv
	return j
}

// config is rank r's configuration: the job's identities are its
// allowlist.
func (j job) config(r int) p2p.Config {
	c := p2p.DefaultConfig()
	c.Rank, c.Size = r, len(j.keys)
	c.Identity = j.keys[r]
	c.Rendezvous = j.rendezvous
	c.Allow = j.ids
	return c
}

// joinAll forms the job's group, every rank joining from its own
// goroutine; tune adjusts rank r's configuration. It registers a cleanup
// that closes every transport that joined.
func (j job) joinAll(t testing.TB, timeout time.Duration, tune func(r int, c *p2p.Config)) ([]*p2p.Transport, []error) {
	t.Helper()
	n := len(j.keys)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tts, errs := make([]*p2p.Transport, n), make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := j.config(r)
			if tune != nil {
				tune(r, &c)
			}
			tts[r], errs[r] = p2p.Join(ctx, c)
		}()
	}
	wg.Wait()
	t.Cleanup(func() { closeAll(tts) })
	return tts, errs
}

func closeAll(tts []*p2p.Transport) {
	var wg sync.WaitGroup
	for _, tt := range tts {
		if tt != nil {
			wg.Add(1)
			go func() { defer wg.Done(); tt.Close() }()
		}
	}
	wg.Wait()
}

// mustJoin forms a group of n and fails t if any rank cannot join.
func mustJoin(t testing.TB, n int, tune func(r int, c *p2p.Config)) (job, []*p2p.Transport) {
	t.Helper()
	j := newJob(t, n)
	tts, errs := j.joinAll(t, 20*time.Second, tune)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: p2p.Join(size %d): %v", r, n, err)
		}
	}
	return j, tts
}

// group forms a group of n ranks over libp2p, every rank in its own
// goroutine, and wraps it for the conformance suite; Kill drops a rank's
// connections without a goodbye, as a crashed process would.
func group(t testing.TB, n int, cfg collective.Config, tune func(r int, c *p2p.Config)) collectivetest.Group {
	t.Helper()
	_, tts := mustJoin(t, n, tune)
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	return collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
}

func noiseGroup(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
	return group(t, n, cfg, nil)
}

// TestConformance runs the conformance suite over Noise, with the reduced
// matrix that tcp runs (forming a group costs handshakes).
func TestConformance(t *testing.T) {
	collectivetest.RunQuick(t, noiseGroup)
}
