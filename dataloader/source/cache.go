package source

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// Expect is what a cached object must be: its size and XXH64 (hex), as a
// dataset's index lists them.
type Expect struct {
	Size  int64
	XXH64 string
}

// cache is a Source that keeps whole copies of another source's objects
// on local disk, at most maxBytes of them, least recently used out.
type cache struct {
	src    Source
	dir    string
	max    int64
	expect func(name string) (Expect, bool)

	mu       sync.Mutex
	lru      *list.List // of *cached, most recent at the front
	byName   map[string]*list.Element
	total    int64
	inflight map[string]chan struct{}
}

type cached struct {
	name string
	path string
	size int64
}

// Cached wraps src with a disk cache in dir bounded by maxBytes. expect,
// if not nil, gives the size and checksum an object must have; a download
// that does not match is an error naming the object, and is not kept.
func Cached(src Source, dir string, maxBytes int64, expect func(name string) (Expect, bool)) (Source, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("source: cache: %w", err)
	}
	return &cache{src: src, dir: dir, max: maxBytes, expect: expect, lru: list.New(),
		byName: map[string]*list.Element{}, inflight: map[string]chan struct{}{}}, nil
}

func (c *cache) String() string { return c.src.String() + " (cached in " + c.dir + ")" }

func (c *cache) Open(ctx context.Context, name string) (Object, error) {
	for {
		c.mu.Lock()
		if e, ok := c.byName[name]; ok {
			c.lru.MoveToFront(e)
			path := e.Value.(*cached).path
			c.mu.Unlock()
			return Local(filepath.Dir(path)).Open(ctx, filepath.Base(path))
		}
		if wait, ok := c.inflight[name]; ok {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		c.inflight[name] = done
		c.mu.Unlock()
		err := c.fetch(ctx, name)
		c.mu.Lock()
		delete(c.inflight, name)
		close(done)
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// fetch downloads name into the cache, verifies it, and evicts others.
func (c *cache) fetch(ctx context.Context, name string) error {
	obj, err := c.src.Open(ctx, name)
	if err != nil {
		return err
	}
	defer obj.Close()
	path := filepath.Join(c.dir, url.PathEscape(name))
	tmp, err := os.CreateTemp(c.dir, ".download-*")
	if err != nil {
		return fmt.Errorf("source: cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := xxhash.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), io.NewSectionReader(obj, 0, obj.Size()))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("source: downloading %s from %s: %w", name, c.src, err)
	}
	if c.expect != nil {
		if want, ok := c.expect(name); ok {
			got := fmt.Sprintf("%016x", h.Sum64())
			if obj.Size() != want.Size || (want.XXH64 != "" && got != want.XXH64) {
				return fmt.Errorf("source: %s from %s is %d bytes with XXH64 %s; the index says %d bytes, %s (changed or corrupt)", name, c.src, obj.Size(), got, want.Size, want.XXH64)
			}
		}
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("source: cache: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byName[name] = c.lru.PushFront(&cached{name: name, path: path, size: obj.Size()})
	c.total += obj.Size()
	for c.total > c.max && c.lru.Len() > 1 {
		old := c.lru.Back()
		o := old.Value.(*cached)
		// Open files keep their data after the name goes (Unix), so a
		// reader of an evicted object is not disturbed.
		os.Remove(o.path)
		c.lru.Remove(old)
		delete(c.byName, o.name)
		c.total -= o.size
	}
	return nil
}
