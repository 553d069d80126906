package rendezvous

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// runStoreSuite is the conformance suite every Store backend passes.
//
// open returns a new client of the store that belongs to the test it is
// given: calls with the same t share one store (that is how a test gets a
// second client), different subtests get stores that share no keys. The
// client is closed when t ends.
func runStoreSuite(t *testing.T, open func(t *testing.T) Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, open func(t *testing.T) Store)
	}{
		{"SetGet", testSetGet},
		{"GetMissing", testGetMissing},
		{"Delete", testDelete},
		{"WaitExisting", testWaitExisting},
		{"WaitSetLaterSameClient", testWaitSetLaterSameClient},
		{"WaitSetLaterOtherClient", testWaitSetLaterOtherClient},
		{"WaitDoesNotBlockOtherCalls", testWaitDoesNotBlockOtherCalls},
		{"WaitChangeAtOnce", testWaitChangeAtOnce},
		{"WaitChangeLater", testWaitChangeLater},
		{"WaitChangeDelete", testWaitChangeDelete},
		{"AddConcurrent", testAddConcurrent},
		{"AddNotACounter", testAddNotACounter},
		{"CompareAndSwap", testCompareAndSwap},
		{"CompareAndSwapRace", testCompareAndSwapRace},
		{"CancelWait", testCancelWait},
		{"CloseUnblocks", testCloseUnblocks},
		{"LargeValues", testLargeValues},
		{"Limits", testLimits},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, open)
		})
	}
}

// ctxFor is a context for one test: generous, so that a hang fails the
// test with a clear error instead of timing out the whole binary.
func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustSet(t *testing.T, s Store, key, value string) {
	t.Helper()
	if err := s.Set(ctxFor(t), key, []byte(value)); err != nil {
		t.Fatalf("set %q: %v", key, err)
	}
}

func mustGet(t *testing.T, s Store, key string) string {
	t.Helper()
	v, err := s.Get(ctxFor(t), key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return string(v)
}

// result carries a blocking call's outcome out of its goroutine.
type result struct {
	vals [][]byte
	err  error
	took time.Duration
}

// async runs f in a goroutine and returns a channel with its outcome.
func async(f func() ([][]byte, error)) <-chan result {
	ch := make(chan result, 1)
	start := time.Now()
	go func() {
		v, err := f()
		ch <- result{v, err, time.Since(start)}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result, what string) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10s", what)
		return result{}
	}
}

// stillBlocked checks that ch has no outcome yet, giving it a moment.
func stillBlocked(t *testing.T, ch <-chan result, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned early: %q, %v", what, r.vals, r.err)
	case <-time.After(50 * time.Millisecond):
	}
}

func testSetGet(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	mustSet(t, s, "a", "1")
	if got := mustGet(t, s, "a"); got != "1" {
		t.Fatalf("get a = %q, want 1", got)
	}
	mustSet(t, s, "a", "2")
	if got := mustGet(t, s, "a"); got != "2" {
		t.Fatalf("after overwrite, get a = %q, want 2", got)
	}
	// Empty and nil values are stored as present and empty.
	for _, v := range [][]byte{{}, nil} {
		if err := s.Set(ctxFor(t), "empty", v); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctxFor(t), "empty")
		if err != nil || got == nil || len(got) != 0 {
			t.Fatalf("get of empty value = %q (nil %v), %v", got, got == nil, err)
		}
	}
	// Keys are opaque bytes.
	for _, k := range []string{"run/1/node/0", "\x00\xff binary", "ключ", strings.Repeat("k", MaxKeyLen)} {
		mustSet(t, s, k, "v:"+k)
		if got := mustGet(t, s, k); got != "v:"+k {
			t.Fatalf("get %q = %q", k, got)
		}
	}
	// A second client sees the first one's writes.
	if got := mustGet(t, open(t), "a"); got != "2" {
		t.Fatalf("other client: get a = %q, want 2", got)
	}
}

func testGetMissing(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	_, err := s.Get(ctxFor(t), "nope")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of a missing key: %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("error does not name the key: %v", err)
	}
}

func testDelete(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	mustSet(t, s, "d", "x")
	if err := s.Delete(ctxFor(t), "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctxFor(t), "d"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := s.Delete(ctxFor(t), "d"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	mustSet(t, s, "d", "again")
	if got := mustGet(t, s, "d"); got != "again" {
		t.Fatalf("set after delete: %q", got)
	}
}

func testWaitExisting(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	mustSet(t, s, "x", "1")
	mustSet(t, s, "y", "2")
	vals, err := s.Wait(ctxFor(t), "y", "x", "y")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"2", "1", "2"}; !equalStrings(vals, want) {
		t.Fatalf("wait = %q, want %q", vals, want)
	}
}

func testWaitSetLaterSameClient(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	mustSet(t, s, "a", "A")
	ch := async(func() ([][]byte, error) { return s.Wait(ctxFor(t), "a", "b", "c") })
	stillBlocked(t, ch, "wait for a, b, c")
	mustSet(t, s, "c", "C")
	stillBlocked(t, ch, "wait for a, b, c with b missing")
	mustSet(t, s, "b", "B")
	r := await(t, ch, "wait")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := []string{"A", "B", "C"}; !equalStrings(r.vals, want) {
		t.Fatalf("wait = %q, want %q", r.vals, want)
	}
}

func testWaitSetLaterOtherClient(t *testing.T, open func(t *testing.T) Store) {
	waiter, setter := open(t), open(t)
	const n = 8
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("rank/%d", i)
	}
	ch := async(func() ([][]byte, error) { return waiter.Wait(ctxFor(t), keys...) })
	stillBlocked(t, ch, "wait")
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := setter.Set(ctxFor(t), keys[i], []byte(strconv.Itoa(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	r := await(t, ch, "wait")
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i, v := range r.vals {
		if string(v) != strconv.Itoa(i) {
			t.Fatalf("wait[%d] = %q", i, v)
		}
	}
}

func testWaitDoesNotBlockOtherCalls(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	w1 := async(func() ([][]byte, error) { return s.Wait(ctxFor(t), "never") })
	w2 := async(func() ([][]byte, error) {
		v, err := s.WaitChange(ctxFor(t), "never", nil)
		return [][]byte{v}, err
	})
	stillBlocked(t, w1, "wait")
	for i := range 20 {
		k := fmt.Sprintf("k%d", i)
		mustSet(t, s, k, k)
		if got := mustGet(t, s, k); got != k {
			t.Fatalf("get %s = %q", k, got)
		}
	}
	stillBlocked(t, w2, "wait for a change")
	mustSet(t, s, "never", "now")
	for _, ch := range []<-chan result{w1, w2} {
		if r := await(t, ch, "wait"); r.err != nil || string(r.vals[0]) != "now" {
			t.Fatalf("wait = %q, %v", r.vals, r.err)
		}
	}
}

func testWaitChangeAtOnce(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	ctx := ctxFor(t)
	mustSet(t, s, "k", "v1")
	check := func(key string, old []byte, want []byte) {
		t.Helper()
		got, err := s.WaitChange(ctx, key, old)
		if err != nil {
			t.Fatalf("wait change %q from %q: %v", key, old, err)
		}
		if differs(got, want) {
			t.Fatalf("wait change %q from %q = %q (nil %v), want %q", key, old, got, got == nil, want)
		}
	}
	check("k", []byte("v0"), []byte("v1"))
	check("k", nil, []byte("v1"))      // exists, old says missing
	check("k", []byte{}, []byte("v1")) // empty is a value, not "missing"
	check("gone", []byte("x"), nil)    // missing, old says present
	mustSet(t, s, "e", "")             // an empty value differs from missing
	check("e", nil, []byte{})
}

func testWaitChangeLater(t *testing.T, open func(t *testing.T) Store) {
	a, b := open(t), open(t)
	mustSet(t, a, "k", "v1")
	ch := async(func() ([][]byte, error) {
		v, err := a.WaitChange(ctxFor(t), "k", []byte("v1"))
		return [][]byte{v}, err
	})
	stillBlocked(t, ch, "wait change")
	mustSet(t, b, "k", "v1") // the same value is no change
	stillBlocked(t, ch, "wait change after a rewrite of the same value")
	mustSet(t, b, "k", "v2")
	if r := await(t, ch, "wait change"); r.err != nil || string(r.vals[0]) != "v2" {
		t.Fatalf("wait change = %q, %v", r.vals, r.err)
	}
	// From missing to present.
	ch = async(func() ([][]byte, error) {
		v, err := a.WaitChange(ctxFor(t), "new", nil)
		return [][]byte{v}, err
	})
	stillBlocked(t, ch, "wait change of a missing key")
	mustSet(t, b, "new", "here")
	if r := await(t, ch, "wait change"); r.err != nil || string(r.vals[0]) != "here" {
		t.Fatalf("wait change = %q, %v", r.vals, r.err)
	}
}

func testWaitChangeDelete(t *testing.T, open func(t *testing.T) Store) {
	a, b := open(t), open(t)
	mustSet(t, a, "k", "v")
	ch := async(func() ([][]byte, error) {
		v, err := a.WaitChange(ctxFor(t), "k", []byte("v"))
		return [][]byte{v}, err
	})
	stillBlocked(t, ch, "wait change")
	if err := b.Delete(ctxFor(t), "k"); err != nil {
		t.Fatal(err)
	}
	r := await(t, ch, "wait change")
	if r.err != nil || r.vals[0] != nil {
		t.Fatalf("wait change over a delete = %q, %v; want nil, nil", r.vals[0], r.err)
	}
}

func testAddConcurrent(t *testing.T, open func(t *testing.T) Store) {
	clients := []Store{open(t), open(t)}
	const goroutines, adds = 6, 20
	var wg sync.WaitGroup
	var maxSeen sync.Map
	for ci, c := range clients {
		for g := range goroutines {
			wg.Go(func() {
				for i := range adds {
					n, err := c.Add(ctxFor(t), "count", 1)
					if err != nil {
						t.Errorf("client %d goroutine %d add %d: %v", ci, g, i, err)
						return
					}
					// Every result is a distinct count.
					if _, dup := maxSeen.LoadOrStore(n, true); dup {
						t.Errorf("two adds returned %d", n)
					}
				}
			})
		}
	}
	wg.Wait()
	want := int64(len(clients) * goroutines * adds)
	if got := mustGet(t, clients[0], "count"); got != strconv.FormatInt(want, 10) {
		t.Fatalf("counter = %q, want %d", got, want)
	}
	n, err := clients[1].Add(ctxFor(t), "count", -want-5)
	if err != nil || n != -5 {
		t.Fatalf("add of a negative delta = %d, %v; want -5", n, err)
	}
	if got := mustGet(t, clients[1], "count"); got != "-5" {
		t.Fatalf("counter = %q, want -5", got)
	}
}

func testAddNotACounter(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	mustSet(t, s, "text", "hello")
	if _, err := s.Add(ctxFor(t), "text", 1); err == nil || !strings.Contains(err.Error(), "counter") {
		t.Fatalf("add to a non-counter: %v", err)
	}
	if got := mustGet(t, s, "text"); got != "hello" {
		t.Fatalf("failed add changed the value to %q", got)
	}
	mustSet(t, s, "big", strconv.FormatInt(1<<62, 10))
	if _, err := s.Add(ctxFor(t), "big", 1<<62); err == nil || !strings.Contains(err.Error(), "overflow") {
		t.Fatalf("overflowing add: %v", err)
	}
}

func testCompareAndSwap(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	ctx := ctxFor(t)
	check := func(key string, old, new []byte, wantCur []byte, wantSwapped bool) {
		t.Helper()
		cur, swapped, err := s.CompareAndSwap(ctx, key, old, new)
		if err != nil {
			t.Fatalf("cas %q %q->%q: %v", key, old, new, err)
		}
		if swapped != wantSwapped || differs(cur, wantCur) {
			t.Fatalf("cas %q %q->%q = %q (nil %v), %v; want %q, %v", key, old, new, cur, cur == nil, swapped, wantCur, wantSwapped)
		}
	}
	check("k", nil, []byte("a"), []byte("a"), true)          // create
	check("k", nil, []byte("b"), []byte("a"), false)         // exists
	check("k", []byte("x"), []byte("b"), []byte("a"), false) // differs
	check("k", []byte("a"), []byte("b"), []byte("b"), true)
	check("missing", []byte("x"), []byte("y"), nil, false) // missing, old present
	check("k", []byte("b"), []byte{}, []byte{}, true)      // to empty
	check("k", []byte{}, []byte("c"), []byte("c"), true)   // empty matches empty
	if got := mustGet(t, s, "k"); got != "c" {
		t.Fatalf("get after cas = %q", got)
	}
	if _, err := s.Get(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed cas created the key: %v", err)
	}
}

func testCompareAndSwapRace(t *testing.T, open func(t *testing.T) Store) {
	clients := []Store{open(t), open(t)}
	const n = 12
	race := func(old []byte) (winner string) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var winners []string
		curs := make([]string, n)
		for i := range n {
			c := clients[i%len(clients)]
			wg.Go(func() {
				mine := fmt.Sprintf("%s/%d", old, i)
				cur, swapped, err := c.CompareAndSwap(ctxFor(t), "leader", old, []byte(mine))
				if err != nil {
					t.Errorf("cas %d: %v", i, err)
					return
				}
				curs[i] = string(cur)
				if swapped {
					mu.Lock()
					winners = append(winners, mine)
					mu.Unlock()
					if string(cur) != mine {
						t.Errorf("winner %d got cur %q", i, cur)
					}
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("cas from %q: %d winners %q, want exactly 1", old, len(winners), winners)
		}
		// Nothing else writes the key during a round, so every loser
		// lost to the winner and must have been told its value.
		for i, cur := range curs {
			if cur != winners[0] {
				t.Fatalf("cas %d saw %q, winner wrote %q", i, cur, winners[0])
			}
		}
		return winners[0]
	}
	w := race(nil)
	race([]byte(w))
}

func testCancelWait(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	ctx, cancel := context.WithCancel(ctxFor(t))
	w := async(func() ([][]byte, error) { return s.Wait(ctx, "never") })
	stillBlocked(t, w, "wait")
	start := time.Now()
	cancel()
	r := await(t, w, "cancelled wait")
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled wait: %v, want context.Canceled", r.err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("cancelled wait took %v to return", took)
	}

	dctx, dcancel := context.WithTimeout(ctxFor(t), 100*time.Millisecond)
	defer dcancel()
	mustSet(t, s, "k", "v")
	wc := async(func() ([][]byte, error) {
		v, err := s.WaitChange(dctx, "k", []byte("v"))
		return [][]byte{v}, err
	})
	r = await(t, wc, "wait change past its deadline")
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("wait change past its deadline: %v, want DeadlineExceeded", r.err)
	}
	if r.took > time.Second+100*time.Millisecond {
		t.Fatalf("wait change with a 100ms deadline took %v", r.took)
	}
	// An already-cancelled context fails at once.
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("get with a cancelled ctx: %v", err)
	}
	// The store still works, and a new wait on the abandoned key sees
	// its value.
	w = async(func() ([][]byte, error) { return s.Wait(ctxFor(t), "never") })
	mustSet(t, open(t), "never", "set")
	if r := await(t, w, "wait"); r.err != nil || string(r.vals[0]) != "set" {
		t.Fatalf("wait after a cancelled one = %q, %v", r.vals, r.err)
	}
}

func testCloseUnblocks(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	other := open(t)
	w := async(func() ([][]byte, error) { return s.Wait(ctxFor(t), "never") })
	wc := async(func() ([][]byte, error) {
		v, err := s.WaitChange(ctxFor(t), "never", nil)
		return [][]byte{v}, err
	})
	stillBlocked(t, w, "wait")
	stillBlocked(t, wc, "wait change")
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for _, ch := range []<-chan result{w, wc} {
		r := await(t, ch, "wait blocked across Close")
		if !errors.Is(r.err, ErrClosed) {
			t.Fatalf("wait blocked across Close: %v, want ErrClosed", r.err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("close took %v to unblock waiters", took)
	}
	if err := s.Set(ctxFor(t), "k", []byte("v")); !errors.Is(err, ErrClosed) {
		t.Fatalf("set after close: %v, want ErrClosed", err)
	}
	if _, err := s.Wait(ctxFor(t), "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("wait after close: %v, want ErrClosed", err)
	}
	s.Close() // twice is fine
	// Closing one client leaves the store and its other clients be.
	mustSet(t, other, "k", "still here")
}

func testLargeValues(t *testing.T, open func(t *testing.T) Store) {
	a, b := open(t), open(t)
	big := make([]byte, 1<<20+7)
	rand.Read(big)
	w := async(func() ([][]byte, error) { return b.Wait(ctxFor(t), "big") })
	if err := a.Set(ctxFor(t), "big", big); err != nil {
		t.Fatal(err)
	}
	if r := await(t, w, "wait"); r.err != nil || !bytes.Equal(r.vals[0], big) {
		t.Fatalf("wait for a large value: %d bytes, %v", len(r.vals[0]), r.err)
	}
	big2 := bytes.Repeat([]byte{0xab}, len(big))
	cur, ok, err := b.CompareAndSwap(ctxFor(t), "big", big, big2)
	if err != nil || !ok || !bytes.Equal(cur, big2) {
		t.Fatalf("cas of large values: swapped %v, %v", ok, err)
	}
	got, err := a.Get(ctxFor(t), "big")
	if err != nil || !bytes.Equal(got, big2) {
		t.Fatalf("get of a large value: %d bytes, %v", len(got), err)
	}
}

func testLimits(t *testing.T, open func(t *testing.T) Store) {
	s := open(t)
	ctx := ctxFor(t)
	long := strings.Repeat("k", MaxKeyLen+1)
	if err := s.Set(ctx, long, []byte("v")); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("set with a %d-byte key: %v", len(long), err)
	}
	if _, err := s.Wait(ctx, "ok", long); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("wait with a %d-byte key: %v", len(long), err)
	}
	if err := s.Set(ctx, "", []byte("v")); err == nil || !strings.Contains(err.Error(), "empty key") {
		t.Fatalf("set with an empty key: %v", err)
	}
	huge := make([]byte, MaxValueSize+1)
	err := s.Set(ctx, "huge", huge)
	if err == nil || !strings.Contains(err.Error(), "limit") || !strings.Contains(err.Error(), `"huge"`) {
		t.Fatalf("set of a %d-byte value: %v", len(huge), err)
	}
	if _, _, err := s.CompareAndSwap(ctx, "huge", nil, huge); err == nil {
		t.Fatal("cas to an oversized value succeeded")
	}
}

func equalStrings(vals [][]byte, want []string) bool {
	if len(vals) != len(want) {
		return false
	}
	for i := range vals {
		if string(vals[i]) != want[i] {
			return false
		}
	}
	return true
}
