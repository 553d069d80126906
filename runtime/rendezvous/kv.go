package rendezvous

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
)

// kv is the embedded store's state: a map and, per key that someone is
// waiting on, a channel closed at the key's next change. Per-key channels
// (rather than one broadcast) keep a write from waking every waiter of a
// large job.
type kv struct {
	mu      sync.Mutex
	m       map[string][]byte
	watches map[string]*keyWatch
}

// keyWatch is closed (and forgotten) when its key changes. n counts the
// waiters holding it, so that a waiter that gives up on a key nobody
// writes does not leave the entry behind.
type keyWatch struct {
	ch chan struct{}
	n  int
}

func newKV() *kv {
	return &kv{m: make(map[string][]byte), watches: make(map[string]*keyWatch)}
}

// changed wakes the waiters of key. Callers hold mu.
func (s *kv) changed(key string) {
	if w, ok := s.watches[key]; ok {
		close(w.ch)
		delete(s.watches, key)
	}
}

// watch returns a channel closed at key's next change and a function to
// call when the caller stops waiting. Callers hold mu.
func (s *kv) watch(key string) (<-chan struct{}, func()) {
	w, ok := s.watches[key]
	if !ok {
		w = &keyWatch{ch: make(chan struct{})}
		s.watches[key] = w
	}
	w.n++
	return w.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.n--
		if w.n == 0 && s.watches[key] == w {
			delete(s.watches, key)
		}
	}
}

// Stored values are never modified in place: each comes from a freshly
// decoded frame and is replaced whole, so readers may share it.

func (s *kv) set(key string, v []byte) {
	if v == nil {
		v = []byte{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = v
	s.changed(key)
}

func (s *kv) get(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	return v, ok
}

func (s *kv) del(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		delete(s.m, key)
		s.changed(key)
	}
}

// add adds delta to the decimal counter in key.
func (s *kv) add(key string, delta int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := addCounter(key, s.m[key], delta)
	if err != nil {
		return 0, err
	}
	s.m[key] = strconv.AppendInt(nil, n, 10)
	s.changed(key)
	return n, nil
}

// addCounter parses cur (nil: 0) as a decimal counter and adds delta,
// refusing overflow rather than wrapping. The etcd store shares it so both
// backends agree on what a counter is.
func addCounter(key string, cur []byte, delta int64) (int64, error) {
	var n int64
	if cur != nil {
		var err error
		n, err = strconv.ParseInt(string(cur), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("key %q holds %d bytes that are not a decimal counter; Add only works on keys written by Add", key, len(cur))
		}
	}
	if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
		return 0, fmt.Errorf("counter %q: %d + %d overflows int64", key, n, delta)
	}
	return n + delta, nil
}

// cas sets key to new if its value is old (nil: missing).
func (s *kv) cas(key string, old, new []byte) ([]byte, bool) {
	if new == nil {
		new = []byte{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.m[key]
	if !ok {
		cur = nil
	}
	if differs(cur, old) {
		return cur, false
	}
	s.m[key] = new
	s.changed(key)
	return new, true
}

// differs reports whether a value (nil: missing) differs from old (nil:
// missing). An empty value is present, and so differs from nil.
func differs(cur, old []byte) bool {
	if (cur == nil) != (old == nil) {
		return true
	}
	return !bytes.Equal(cur, old)
}

// wait blocks until every key exists and returns their values, all read
// at one instant.
func (s *kv) wait(ctx context.Context, keys []string) ([][]byte, error) {
	for {
		s.mu.Lock()
		missing := ""
		vals := make([][]byte, len(keys))
		for i, k := range keys {
			v, ok := s.m[k]
			if !ok {
				missing = k
				break
			}
			vals[i] = v
		}
		if missing == "" {
			s.mu.Unlock()
			return vals, nil
		}
		ch, done := s.watch(missing)
		s.mu.Unlock()
		select {
		case <-ch:
			done()
		case <-ctx.Done():
			done()
			return nil, ctx.Err()
		}
	}
}

// waitChange blocks until key's value differs from old and returns it
// (nil: the key is missing).
func (s *kv) waitChange(ctx context.Context, key string, old []byte) ([]byte, error) {
	for {
		s.mu.Lock()
		cur, ok := s.m[key]
		if !ok {
			cur = nil
		}
		if differs(cur, old) {
			s.mu.Unlock()
			return cur, nil
		}
		ch, done := s.watch(key)
		s.mu.Unlock()
		select {
		case <-ch:
			done()
		case <-ctx.Done():
			done()
			return nil, ctx.Err()
		}
	}
}
