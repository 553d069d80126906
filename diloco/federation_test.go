package diloco

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// board serves a real rendezvous store on loopback; each caller of dial
// gets its own connection to it, as each rank of a real site would.
type board struct {
	t     *testing.T
	addr  string
	token auth.Token
}

func newBoard(t *testing.T) *board {
	t.Helper()
	tok := auth.NewToken()
	srv, err := rendezvous.NewServer("127.0.0.1:0", tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &board{t: t, addr: srv.Addr(), token: tok}
}

func (b *board) dial() Board {
	c, err := rendezvous.Dial(context.Background(), b.addr, b.token)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { c.Close() })
	return c
}

func (b *board) federation(sites []string, site int) Federation {
	return Federation{Board: b.dial(), NotFound: rendezvous.ErrNotFound, Prefix: "/fed/test", Sites: sites, Site: site}
}

// fedRun is run over a board: each site its own groups and no cross-site
// group. stall makes a site sleep before the given step (a site that falls
// behind); stop makes it quit after one (a site that dies), keeping its
// state in saved.
type fedRun struct {
	run
	stall     map[int]stallAt
	stopAfter map[int]int
	saveAt    map[int]int // keep the site's state in saved after this step, and go on
	keep      int         // Federation.Keep
	// signed gives every site a key (siteKeys); forge, if set, is a
	// holder of the store's token who overwrites each message site b posts,
	// right after it is posted, with what forge returns (nil: leaves it).
	signed bool
	forge  func(key string, genuine []byte) []byte
	// preset is written to the board before the sites start, as a holder
	// of the store's token would (key relative to the prefix).
	preset map[string][]byte
}

// siteKeys returns n sites' keys, the same on every call.
func siteKeys(n int) ([]ed25519.PrivateKey, []ed25519.PublicKey) {
	priv, pub := make([]ed25519.PrivateKey, n), make([]ed25519.PublicKey, n)
	for i := range n {
		seed := make([]byte, ed25519.SeedSize)
		seed[0] = byte(i + 1)
		priv[i] = ed25519.NewKeyFromSeed(seed)
		pub[i] = priv[i].Public().(ed25519.PublicKey)
	}
	return priv, pub
}

// forger is a site's Board with an attacker beside it: once the site's
// rank has posted a message, the attacker, on its own connection to the
// store, overwrites it.
type forger struct {
	Board
	attacker Board
	forge    func(key string, genuine []byte) []byte
}

func (f forger) CompareAndSwap(ctx context.Context, key string, old, new []byte) ([]byte, bool, error) {
	cur, swapped, err := f.Board.CompareAndSwap(ctx, key, old, new)
	if err == nil && swapped && strings.Contains(key, "/msg/") {
		if v := f.forge(key, new); v != nil {
			if err := f.attacker.Set(ctx, key, v); err != nil {
				return nil, false, err
			}
		}
	}
	return cur, swapped, err
}

type stallAt struct {
	step int
	d    time.Duration
}

// siteState is what a checkpoint of one rank holds.
type siteState struct {
	params, anchor, mom, resid []float32
}

type fedResult struct {
	result
	absences [][]Absence
	saved    []siteState // per rank of a stopped site
}

func trainFederated(t *testing.T, b *board, r fedRun) fedResult {
	t.Helper()
	n := r.sites * r.local
	sites := []string{"a", "b", "c", "d"}[:r.sites]
	siteComms := make([]collective.Comm, n)
	for s := range r.sites {
		w := inproc.NewWorld(r.local)
		for j := range r.local {
			c, err := collective.New(w.Transport(j), collective.DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			siteComms[s*r.local+j] = c
		}
	}
	for k, v := range r.preset {
		if err := b.dial().Set(context.Background(), "/fed/test/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	res := fedResult{result: result{params: make([][]float32, n), stats: make([]Stats, n), errs: make([]error, n)},
		absences: make([][]Absence, n), saved: make([]siteState, n)}
	var wg sync.WaitGroup
	for rank := range n {
		s := rank / r.local
		fed := b.federation(sites, s)
		fed.Keep = r.keep
		if r.signed {
			priv, pub := siteKeys(r.sites)
			fed.Key, fed.SiteKeys = priv[s], pub
		}
		if r.forge != nil && s == 1 {
			fed.Board = forger{fed.Board, b.dial(), r.forge}
		}
		wg.Go(func() {
			ctx := context.Background()
			inner := siteComms[rank]
			w, g := make([]float32, features+1), make([]float32, features+1)
			o, err := NewFederated(ctx, inner, fed, *r.outer, w)
			if err != nil {
				res.errs[rank] = err
				return
			}
			defer o.Close()
			for step := 1; step <= r.steps; step++ {
				if st, ok := r.stall[s]; ok && st.step == step {
					time.Sleep(st.d)
				}
				if err := innerStep(ctx, inner, r.run, rank, step, w, g); err != nil {
					res.errs[rank] = err
					return
				}
				if err := o.Step(ctx, int64(step)); err != nil {
					res.errs[rank] = err
					return
				}
				save := func() {
					res.saved[rank] = siteState{slices.Clone(w), slices.Clone(o.Anchor()), slices.Clone(o.Momentum()), slices.Clone(o.Residual())}
				}
				if at, ok := r.saveAt[s]; ok && at == step {
					save()
				}
				if stop, ok := r.stopAfter[s]; ok && stop == step {
					if _, ok := r.saveAt[s]; !ok {
						save()
					}
					return
				}
			}
			if err := o.Sync(ctx, int64(r.steps)); err != nil {
				res.errs[rank] = err
				return
			}
			res.stats[rank], res.absences[rank], res.params[rank] = o.Stats(), o.Absences(), w
		})
	}
	wg.Wait()
	return res
}

// With site keys, a sync's members that no site signed are refused by
// every rank: a holder of the store's token cannot decide a sync without
// some sites.
func TestFederationRefusesForgedMembers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every = 5
	base := run{sites: 2, local: 2, steps: 10, batch: 8, lr: 0.5, outer: &cfg}
	x := &boardExchange{Federation: Federation{Prefix: "/fed/test", Sites: []string{"a", "b"}, Key: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)), SiteKeys: []ed25519.PublicKey{nil, nil}}}
	for _, tc := range []struct {
		name, members, why string
	}{
		{"unsigned", "0", `"0" is not signed by a site`},
		{"another key", string(x.signMembers(5, []byte("0"))), `they say site "a" proposed them, but its key`},
		{"no signature", "0;1", "does not end with a site's index and signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := trainFederated(t, newBoard(t), fedRun{run: base, signed: true, preset: map[string][]byte{"sync/5/members": []byte(tc.members)}})
			for rank, err := range res.errs {
				var f *ForgedError
				if !errors.As(err, &f) || f.Site != "" || f.Step != 5 || !strings.Contains(err.Error(), tc.why) || !strings.Contains(err.Error(), "the members of the sync of step 5 are refused") || !strings.Contains(err.Error(), "give the store and every site new credentials") {
					t.Errorf("rank %d: %v; want the members of the sync of step 5 refused (%s)", rank, err, tc.why)
				}
			}
			t.Log(res.errs[0])
		})
	}
}

// With every site in time, the board computes what the cross-site group
// computes, bit for bit: the same messages summed in the same order.
func TestFederationMatchesCrossSiteGroup(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every, cfg.TopK = 5, 0.25
	base := run{sites: 3, local: 2, steps: 30, batch: 16, lr: 0.5, outer: &cfg}
	cross := train(t, base)
	cross.check(t)
	got := trainFederated(t, newBoard(t), fedRun{run: base})
	got.check(t)
	for i, v := range got.params[0] {
		if math.Float32bits(v) != math.Float32bits(cross.params[0][i]) {
			t.Fatalf("parameter %d: %v over the board, %v over the cross-site group", i, v, cross.params[0][i])
		}
	}
	if st := got.stats[0]; st.Syncs != 6 || st.Partial != 0 || st.WireBytes == 0 {
		t.Errorf("stats %+v: want 6 syncs, none partial, bytes sent", st)
	}
	// Signed, the same.
	signed := trainFederated(t, newBoard(t), fedRun{run: base, signed: true})
	signed.check(t)
	for i, v := range signed.params[0] {
		if math.Float32bits(v) != math.Float32bits(cross.params[0][i]) {
			t.Fatalf("parameter %d: %v with signed deltas, %v over the cross-site group", i, v, cross.params[0][i])
		}
	}
}

// With site keys, a delta that its site did not sign for that sync and
// place is refused by every rank, which names the site: one that a
// holder of the store's token wrote over the site's (unsigned, or signed
// by another key), and the site's own delta of an earlier sync moved to
// a later one.
func TestFederationRefusesForgedDeltas(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every = 5
	base := run{sites: 2, local: 2, steps: 10, batch: 8, lr: 0.5, outer: &cfg}
	other := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	var mu sync.Mutex
	first := map[string][]byte{} // site b's genuine messages of step 5, by place
	for _, tc := range []struct {
		name  string
		forge func(key string, genuine []byte) []byte
		step  int64 // the sync refused
		why   string
	}{
		{"unsigned", func(_ string, g []byte) []byte {
			return append([]byte{inlineTag}, g[1+ed25519.SignatureSize:]...)
		}, 5, "not signed"},
		{"another key", func(key string, g []byte) []byte {
			step, _ := strconv.ParseInt(strings.Split(key, "/")[4], 10, 64)
			x := &boardExchange{Federation: Federation{Prefix: "/fed/test", Sites: []string{"a", "b"}, Site: 1, Key: other, SiteKeys: []ed25519.PublicKey{nil, nil}}}
			x.place, _ = strconv.Atoi(key[strings.LastIndex(key, "/")+1:])
			msg := g[1+ed25519.SignatureSize:]
			return append(append([]byte{signedInlineTag}, x.sign(step, msg)...), msg...)
		}, 5, "is not that of the site's key"},
		{"replayed", func(key string, g []byte) []byte {
			mu.Lock()
			defer mu.Unlock()
			place := key[strings.LastIndex(key, "/")+1:]
			if strings.Contains(key, "/sync/5/") {
				first[place] = g
				return nil
			}
			return first[place] // step 10 gets step 5's
		}, 10, "is not that of the site's key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := trainFederated(t, newBoard(t), fedRun{run: base, signed: true, forge: tc.forge})
			for rank, err := range res.errs {
				var f *ForgedError
				if !errors.As(err, &f) || f.Site != "b" || f.Step != tc.step || f.Place != rank%2 || !strings.Contains(err.Error(), tc.why) || !strings.Contains(err.Error(), "--federation-peers") {
					t.Errorf("rank %d: %v; want site b's delta for place %d of the sync of step %d refused (%s)", rank, err, rank%2, tc.step, tc.why)
				}
			}
			t.Log(res.errs[0])
		})
	}
}

// A site that falls behind is left out of the syncs it misses by more than
// the deadline; the others go on, it applies those syncs all the same, and
// it is back in by the end, with every replica identical.
func TestFederationGoesOnWithoutALateSite(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every, cfg.Deadline = 5, 200*time.Millisecond
	r := fedRun{run: run{sites: 3, local: 2, steps: 100, batch: 8, lr: 0.5, outer: &cfg},
		stall: map[int]stallAt{2: {step: 10, d: 450 * time.Millisecond}}}
	res := trainFederated(t, newBoard(t), r)
	res.check(t)
	a := res.absences[0]
	if len(a) == 0 || a[0].Step != 10 || !slices.Equal(a[0].Missing, []string{"c"}) || !slices.Equal(a[0].Members, []string{"a", "b"}) {
		t.Fatalf("absences seen by site a: %+v; want the sync of step 10 first, without site c", a)
	}
	if last := a[len(a)-1].Step; last >= int64(r.steps) {
		t.Errorf("site c was still missing from the sync of step %d, the last: it never caught up", last)
	}
	if st := res.stats[4]; st.Missed < 1 || st.Missed != st.Partial {
		t.Errorf("site c: %+v, want it to count the syncs it missed", st)
	}
	if st := res.stats[0]; st.Missed != 0 || st.Partial != int64(len(a)) {
		t.Errorf("site a: %+v with %d absences: want none missed and each partial sync counted", st, len(a))
	}
	if !slices.EqualFunc(res.absences[0], res.absences[5], func(x, y Absence) bool {
		return x.Step == y.Step && slices.Equal(x.Missing, y.Missing) && slices.Equal(x.Members, y.Members)
	}) {
		t.Errorf("site a saw absences %+v, site c %+v: every site must see the same history", res.absences[0], res.absences[5])
	}
	t.Logf("%d syncs without site c, the first %+v", len(a), a[0])
}

// A site that dies and comes back from its checkpoint replays the syncs
// the others took without it and ends with their parameters, bit for bit.
func TestFederationSiteRestartsAndCatchesUp(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every, cfg.Deadline = 5, 500*time.Millisecond
	b := newBoard(t)
	r := fedRun{run: run{sites: 3, local: 2, steps: 40, batch: 8, lr: 0.5, outer: &cfg}, stopAfter: map[int]int{2: 10}}
	res := trainFederated(t, b, r)
	for rank, err := range res.errs {
		if err != nil {
			t.Fatalf("rank %d: %v", rank, err)
		}
	}
	// Site c comes back: two ranks restore their state and catch up.
	caught := catchUpSite(b, []string{"a", "b", "c"}, 2, res.saved[4:6], cfg, 10)
	errs, resumed := make([]error, 2), make([]int64, 2)
	got := make([][]float32, 2)
	for j, c := range caught {
		errs[j], resumed[j], got[j] = c.err, c.resumed, c.params
	}
	for j, err := range errs {
		if err != nil {
			t.Fatalf("site c, rank %d: %v", j, err)
		}
		if resumed[j] != 40 {
			t.Errorf("site c, rank %d caught up to step %d, want 40", j, resumed[j])
		}
		for i, v := range got[j] {
			if math.Float32bits(v) != math.Float32bits(res.params[0][i]) {
				t.Fatalf("site c, rank %d, parameter %d: %v after catching up, site a has %v", j, i, v, res.params[0][i])
			}
		}
	}
	if a := res.absences[0]; len(a) != 6 || a[0].Step != 15 {
		t.Errorf("site a's absences %+v: want the 6 syncs from step 15 without site c", a)
	}
	// Down, site c was waited for at the first 3 syncs it missed (GiveUp),
	// not at all 6.
	for rank := range 4 {
		if w := res.stats[rank].DeadlineWaits; w != 3 {
			t.Errorf("rank %d waited out the deadline %d times, want 3", rank, w)
		}
	}
	// Back, it said so, after the last sync it replayed.
	v, err := b.dial().Get(context.Background(), "/fed/test/back/2")
	if err != nil || string(v) != "40" {
		t.Errorf("site c's back key: %q, %v; want 40", v, err)
	}
}

// caughtUp is what one rank of a restarted site ended with.
type caughtUp struct {
	err           error
	resumed       int64
	params, resid []float32
}

// catchUpSite restarts site (its ranks' saved states) over the board and
// catches it up from the checkpoint of step from, one goroutine per rank.
func catchUpSite(b *board, sites []string, site int, saved []siteState, cfg Config, from int64) []caughtUp {
	w := inproc.NewWorld(len(saved))
	out := make([]caughtUp, len(saved))
	var wg sync.WaitGroup
	for j, st := range saved {
		fed := b.federation(sites, site)
		wg.Go(func() {
			ctx := context.Background()
			c, err := collective.New(w.Transport(j), collective.DefaultConfig())
			if err != nil {
				out[j].err = err
				return
			}
			defer c.Close()
			p := slices.Clone(st.params)
			o, err := NewFederated(ctx, c, fed, cfg, p)
			if err != nil {
				out[j].err = err
				return
			}
			defer o.Close()
			copy(o.Anchor(), st.anchor)
			copy(o.Momentum(), st.mom)
			copy(o.Residual(), st.resid)
			out[j].resumed, out[j].err = o.CatchUp(ctx, from)
			out[j].params, out[j].resid = p, slices.Clone(o.Residual())
		})
	}
	wg.Wait()
	return out
}

// A site that posted its delta to a sync and went down before it saved
// its next checkpoint is a member of that sync when it catches up from
// the checkpoint before: what the delta carried went out once, and the
// error feedback the checkpoint restores must not send it again. After
// catching up, the residual is the checkpoint's with every value that
// message carried cleared, and nothing else changed.
func TestFederationCatchUpDoesNotResendItsDelta(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every, cfg.Deadline, cfg.TopK = 5, 500*time.Millisecond, 0.25
	b := newBoard(t)
	// Site c checkpoints after the sync of step 10, posts to the sync of
	// step 15, which goes ahead with it, and is gone after it.
	r := fedRun{run: run{sites: 3, local: 2, steps: 30, batch: 8, lr: 0.5, outer: &cfg}, saveAt: map[int]int{2: 10}, stopAfter: map[int]int{2: 15}}
	res := trainFederated(t, b, r)
	for rank, err := range res.errs {
		if err != nil {
			t.Fatalf("rank %d: %v", rank, err)
		}
	}
	sites := []string{"a", "b", "c"}
	caught := catchUpSite(b, sites, 2, res.saved[4:6], cfg, 10)
	errs, resid := make([]error, 2), make([][]float32, 2)
	for j, c := range caught {
		errs[j], resid[j] = c.err, c.resid
	}
	d, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for j, err := range errs {
		if err != nil {
			t.Fatalf("site c, rank %d: %v", j, err)
		}
		before := res.saved[4+j].resid
		x := &boardExchange{Federation: b.federation(sites, 2), place: j, places: 2}
		msgs, err := x.fetch(context.Background(), 15, []int{2}, false)
		if err != nil {
			t.Fatal(err)
		}
		// The residual is padded to the longest shard: the message's
		// header says this place's length.
		sent := make([]float32, len(resid[j]))
		if err := d.addTo(sent[:binary.LittleEndian.Uint64(msgs[0][8:])], msgs[0]); err != nil {
			t.Fatal(err)
		}
		cleared := 0
		for i, v := range resid[j] {
			switch {
			case sent[i] != 0 && v != 0:
				t.Fatalf("rank %d, value %d: its sync-15 delta sent %v, and its error feedback still holds %v to send again", j, i, sent[i], v)
			case sent[i] == 0 && math.Float32bits(v) != math.Float32bits(before[i]):
				t.Fatalf("rank %d, value %d: not sent, yet its error feedback went from %v to %v", j, i, before[i], v)
			case sent[i] != 0 && before[i] != 0:
				cleared++
			}
		}
		if cleared == 0 {
			t.Errorf("rank %d: no value of the checkpoint's error feedback was sent at step 15; the test shows nothing", j)
		}
		t.Logf("rank %d: %d of %d values of the error feedback cleared, sent with the sync of step 15", j, cleared, len(before))
	}
}

// Sites that disagree on the site list or on their size are refused, by
// name.
func TestFederationRefusesMismatchedSites(t *testing.T) {
	b := newBoard(t)
	ctx := context.Background()
	cfg := DefaultConfig()
	if _, err := NewFederated(ctx, nil, b.federation([]string{"a", "b"}, 0), cfg, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	_, err := NewFederated(ctx, nil, b.federation([]string{"a", "c"}, 1), cfg, make([]float32, 4))
	if err == nil || !strings.Contains(err.Error(), `site "c" has sites a,c, the federation a,b`) {
		t.Errorf("a site with another site list: %v", err)
	}
	w := inproc.NewWorld(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for j := range 2 {
		fed := b.federation([]string{"a", "b"}, 1)
		wg.Go(func() {
			c, err := collective.New(w.Transport(j), collective.DefaultConfig())
			if err != nil {
				errs[j] = err
				return
			}
			defer c.Close()
			_, errs[j] = NewFederated(ctx, c, fed, cfg, make([]float32, 4))
		})
	}
	wg.Wait()
	for j, err := range errs {
		if err == nil || !strings.Contains(err.Error(), `site "b" has ranks per site 2, the federation 1`) {
			t.Errorf("rank %d of a two-rank site among one-rank sites: %v", j, err)
		}
	}
	if _, err := New(nil, nil, Config{Every: 1, LR: 1, Precision: F32, Deadline: time.Second}); err == nil || !strings.Contains(err.Error(), "only a federation") {
		t.Errorf("a deadline without a federation: %v", err)
	}
	// Site keys: every site the same, and this site's key among them.
	priv, pub := siteKeys(2)
	signed := b.federation([]string{"a", "b"}, 0)
	signed.Prefix, signed.Key, signed.SiteKeys = "/fed/signed", priv[0], pub
	if _, err := NewFederated(ctx, nil, signed, cfg, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	unsigned := b.federation([]string{"a", "b"}, 1)
	unsigned.Prefix = "/fed/signed"
	if _, err := NewFederated(ctx, nil, unsigned, cfg, make([]float32, 4)); err == nil || !strings.Contains(err.Error(), `site "b" has site keys none, the federation sha256:`) {
		t.Errorf("a site without keys in a federation with them: %v", err)
	}
	for _, tc := range []struct {
		name string
		key  ed25519.PrivateKey
		keys []ed25519.PublicKey
		want string
	}{
		{"key only", priv[1], nil, "a key but no site keys"},
		{"site keys only", nil, pub, "site keys but no key of its own"},
		{"another site's key", priv[0], pub, `site "b"'s key is ed25519:`},
		{"too few keys", priv[1], pub[:1], "1 site keys for 2 sites"},
		{"short key", priv[1], []ed25519.PublicKey{pub[0], pub[1][:8]}, "not an Ed25519 public key's 32"},
	} {
		f := b.federation([]string{"a", "b"}, 1)
		f.Key, f.SiteKeys = tc.key, tc.keys
		if _, err := NewFederated(ctx, nil, f, cfg, make([]float32, 4)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, f := range []Federation{
		{Board: b.dial(), NotFound: rendezvous.ErrNotFound, Prefix: "/p", Sites: []string{"a", "a"}},
		{Board: b.dial(), NotFound: rendezvous.ErrNotFound, Prefix: "/p", Sites: []string{"a"}, Site: 1},
		{Board: b.dial(), NotFound: rendezvous.ErrNotFound, Sites: []string{"a"}},
		{NotFound: rendezvous.ErrNotFound, Prefix: "/p", Sites: []string{"a"}},
	} {
		if _, err := NewFederated(ctx, nil, f, cfg, make([]float32, 4)); err == nil || !strings.HasPrefix(err.Error(), "federation: ") {
			t.Errorf("%+v: %v, want a federation error", f, err)
		}
	}
}

// A message over 1 MiB travels in parts; posting a sync again (a rank
// restarted before it was decided) replaces the message and is not
// counted twice.
func TestFederationLargeMessagesAndReposts(t *testing.T) {
	b := newBoard(t)
	ctx := context.Background()
	x := &boardExchange{Federation: b.federation([]string{"a", "b"}, 1), places: 1, every: 5, missedRun: make([]int, 2)}
	big := make([]byte, 2*partBytes+12345)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for _, msg := range [][]byte{[]byte("first"), big} {
		if err := x.post(ctx, 5, msg); err != nil {
			t.Fatal(err)
		}
		for _, fresh := range []bool{true, false} {
			got, err := x.fetch(ctx, 5, []int{1}, fresh)
			if err != nil || len(got) != 1 || string(got[0]) != string(msg) {
				t.Fatalf("fetched %d bytes (%v), want the %d posted", len(got[0]), err, len(msg))
			}
		}
	}
	v, err := x.Board.Get(ctx, x.key(5, "ready", "1"))
	if err != nil || string(v) != "1" {
		t.Errorf("site b's ready count after posting twice: %q %v, want 1", v, err)
	}
	if _, err := x.fetch(ctx, 10, []int{1}, false); err == nil || !strings.Contains(err.Error(), "no longer on the board") {
		t.Errorf("a missing delta: %v", err)
	}
}

// With Keep 2 the board holds the last two syncs: every older one's
// messages, members, bell and ready counters are gone, the pruned mark
// says how far, and a site restarted from before it is told it is too far
// behind instead of taking the missing members for the end of the
// decided syncs.
func TestFederationPrunesOldSyncs(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Every, cfg.Deadline = 5, 500*time.Millisecond
	b := newBoard(t)
	r := fedRun{run: run{sites: 3, local: 2, steps: 40, batch: 8, lr: 0.5, outer: &cfg}, stopAfter: map[int]int{2: 10}, keep: 2}
	res := trainFederated(t, b, r)
	for rank, err := range res.errs {
		if err != nil {
			t.Fatalf("rank %d: %v", rank, err)
		}
	}
	ctx := context.Background()
	c := b.dial()
	x := &boardExchange{Federation: b.federation([]string{"a", "b", "c"}, 0)}
	for step := int64(5); step <= 40; step += 5 {
		keys := []string{x.key(step, "members"), x.key(step, "bell"), x.key(step, "ready", "0"), x.msgKey(step, 0, 0), x.msgKey(step, 1, 1)}
		for _, k := range keys {
			_, err := c.Get(ctx, k)
			switch gone := errors.Is(err, rendezvous.ErrNotFound); {
			case step <= 30 && !gone:
				t.Errorf("%s is still on the board (%v)", k, err)
			case step > 30 && err != nil:
				t.Errorf("%s: %v", k, err)
			}
		}
	}
	if v, err := c.Get(ctx, "/fed/test/pruned"); err != nil || string(v) != "30" {
		t.Errorf("pruned mark %q, %v; want 30", v, err)
	}
	// Site c, down since step 10, restarts from its checkpoint there.
	w := inproc.NewWorld(2)
	catchUp, step := make([]error, 2), make([]error, 2)
	var wg sync.WaitGroup
	for j := range 2 {
		fed := b.federation([]string{"a", "b", "c"}, 2)
		fed.Keep = 2
		wg.Go(func() {
			comm, err := collective.New(w.Transport(j), collective.DefaultConfig())
			if err != nil {
				catchUp[j] = err
				return
			}
			defer comm.Close()
			o, err := NewFederated(ctx, comm, fed, cfg, slices.Clone(res.saved[4+j].params))
			if err != nil {
				catchUp[j] = err
				return
			}
			defer o.Close()
			_, catchUp[j] = o.CatchUp(ctx, 10)
			// Posting to a pruned sync is refused too, before anything
			// is written.
			step[j] = o.Step(ctx, 15)
		})
	}
	wg.Wait()
	for j := range 2 {
		if err := catchUp[j]; err == nil || !strings.Contains(err.Error(), "further behind") || !strings.Contains(err.Error(), `site "c"`) {
			t.Errorf("site c, rank %d, catching up from step 10 past a pruned board: %v", j, err)
		}
		if err := step[j]; err == nil || !strings.Contains(err.Error(), "further behind") {
			t.Errorf("site c, rank %d, a sync at step 15 past a pruned board: %v", j, err)
		}
	}
	if _, err := c.Get(ctx, x.key(15, "members")); !errors.Is(err, rendezvous.ErrNotFound) {
		t.Errorf("the pruned sync of step 15 was decided again: %v", err)
	}
}

// A rank that finds the members already written while the bell does not
// say so yet (their proposer died in between, or has not rung yet) takes
// them and rings the bell itself, at once: it used to read the bell again
// and again, proposing in vain, until someone rang it.
func TestFederationDecidedWithoutTheBell(t *testing.T) {
	b := newBoard(t)
	ctx := context.Background()
	x := &boardExchange{Federation: b.federation([]string{"a", "b"}, 1), places: 1, every: 5, deadline: time.Minute, missedRun: make([]int, 2)}
	if _, err := x.Board.Add(ctx, x.key(5, "bell"), 2); err != nil { // both sites posted
		t.Fatal(err)
	}
	if err := x.Board.Set(ctx, x.key(5, "members"), []byte("0,1")); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	m, waited, err := x.decide(dctx, 5, time.Now())
	if err != nil || !slices.Equal(m, []int{0, 1}) || waited {
		t.Fatalf("decide = %v, waited %v, %v; want [0 1] at once", m, waited, err)
	}
	v, err := x.Board.Get(ctx, x.key(5, "bell"))
	if n, _ := strconv.ParseInt(string(v), 10, 64); err != nil || n < decidedBell {
		t.Errorf("the bell reads %q (%v) after the decision was found; want it rung", v, err)
	}
}

// A proposal for a sync pruned while it was being made lands (its members
// are gone), and is taken back: the rank is told it is too far behind.
func TestFederationProposalForAPrunedSync(t *testing.T) {
	b := newBoard(t)
	ctx := context.Background()
	x := &boardExchange{Federation: b.federation([]string{"a", "b"}, 1), places: 1, every: 5, deadline: time.Minute, missedRun: make([]int, 2)}
	if _, err := x.Board.Add(ctx, x.key(10, "bell"), 2); err != nil { // both sites posted
		t.Fatal(err)
	}
	if err := x.markPruned(ctx, 10); err != nil {
		t.Fatal(err)
	}
	_, _, err := x.decide(ctx, 10, time.Now())
	if err == nil || !strings.Contains(err.Error(), "further behind") {
		t.Fatalf("deciding a pruned sync: %v", err)
	}
	if _, err := x.Board.Get(ctx, x.key(10, "members")); !errors.Is(err, rendezvous.ErrNotFound) {
		t.Errorf("the proposal for the pruned sync stayed: %v", err)
	}
	// The mark only rises.
	if err := x.markPruned(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if at, err := x.pruned(ctx); err != nil || at != 10 {
		t.Errorf("pruned mark %d, %v after raising it to 10 and then 5; want 10", at, err)
	}
}
