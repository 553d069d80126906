package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

var quick = Retry{Attempts: 4, Backoff: time.Millisecond}

func files(t *testing.T) (string, map[string][]byte) {
	dir := t.TempDir()
	want := map[string][]byte{}
	for i, n := range []int{0, 1, 1000, 1 << 20} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(j*13 + i)
		}
		name := fmt.Sprintf("shard-%d.bin", i)
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
		want[name] = b
	}
	return dir, want
}

// checkSource reads every file whole and in odd ranges.
func checkSource(t *testing.T, src Source, want map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	for name, b := range want {
		obj, err := src.Open(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if obj.Size() != int64(len(b)) {
			t.Fatalf("%s: size %d, want %d", name, obj.Size(), len(b))
		}
		for _, r := range [][2]int64{{0, int64(len(b))}, {int64(len(b)) / 3, int64(len(b)) / 2}, {int64(len(b)) - 1, int64(len(b))}} {
			if r[0] < 0 || r[1] <= r[0] {
				continue
			}
			got := make([]byte, r[1]-r[0])
			if _, err := obj.ReadAt(got, r[0]); err != nil {
				t.Fatalf("%s [%d,%d): %v", name, r[0], r[1], err)
			}
			if !bytes.Equal(got, b[r[0]:r[1]]) {
				t.Fatalf("%s [%d,%d): wrong bytes", name, r[0], r[1])
			}
		}
		obj.Close()
	}
	if _, err := src.Open(ctx, "missing.bin"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing object: got %v, want ErrNotFound", err)
	}
	checkSized(t, src, want)
}

// sizedRead opens name as OpenSized does with the given size and reads
// its first byte: the errors of either.
func sizedRead(src Source, name string, size int64) error {
	obj, err := OpenSized(context.Background(), src, name, size)
	if err != nil {
		return err
	}
	defer obj.Close()
	_, err = obj.ReadAt(make([]byte, 1), 0)
	return err
}

// checkSized opens objects with their size known: the right size reads
// the right bytes, a wrong one (the object replaced since an index was
// written) or a missing object fails at the open or the first read,
// saying which.
func checkSized(t *testing.T, src Source, want map[string][]byte) {
	t.Helper()
	for name, b := range want {
		if len(b) < 2 {
			continue
		}
		obj, err := OpenSized(context.Background(), src, name, int64(len(b)))
		if err != nil {
			t.Fatalf("%s: OpenSized: %v", name, err)
		}
		got := make([]byte, len(b)-1)
		if _, err := obj.ReadAt(got, 1); err != nil || !bytes.Equal(got, b[1:]) {
			t.Fatalf("%s: OpenSized read: %v (bytes equal: %v)", name, err, bytes.Equal(got, b[1:]))
		}
		obj.Close()
		if err := sizedRead(src, name, int64(len(b))-1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes, expected %d", len(b), len(b)-1)) {
			t.Errorf("%s opened as 1 byte shorter: got %v, want it named as %d bytes, expected %d", name, err, len(b), len(b)-1)
		}
	}
	if err := sizedRead(src, "missing.bin", 100); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing object opened with a size: got %v, want ErrNotFound", err)
	}
}

func TestLocal(t *testing.T) {
	dir, want := files(t)
	checkSource(t, Local(dir), want)
}

func TestHTTPWithRangesAndRetries(t *testing.T) {
	dir, want := files(t)
	var calls atomic.Int64
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every third request fails: the retries must hide it.
		if calls.Add(1)%3 == 0 {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		fs.ServeHTTP(w, r)
	}))
	defer srv.Close()
	checkSource(t, HTTP(srv.URL, srv.Client(), quick), want)

	down := HTTP("http://127.0.0.1:1", nil, quick)
	if _, err := down.Open(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "attempts") {
		t.Errorf("unreachable server: got %v", err)
	}
}

func TestS3InProcessServer(t *testing.T) {
	_, want := files(t)
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	c, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4("key", "secret", "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.MakeBucket(ctx, "data", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, b := range want {
		if _, err := c.PutObject(ctx, "data", "mnist/"+name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{DisableContentSha256: true}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := S3(u.Host, "data", "/mnist/", "key", "secret", true, quick)
	if err != nil {
		t.Fatal(err)
	}
	checkSource(t, src, want)

	t.Setenv(EnvS3Endpoint, srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "key")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	parsed, err := Parse("s3://data/mnist")
	if err != nil {
		t.Fatal(err)
	}
	checkSource(t, parsed, want)
}

func TestCacheVerifiesAndEvicts(t *testing.T) {
	dir, want := files(t)
	var fetches atomic.Int64
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			fetches.Add(1)
		}
		fs.ServeHTTP(w, r)
	}))
	defer srv.Close()
	expect := func(name string) (Expect, bool) {
		b, ok := want[name]
		return Expect{Size: int64(len(b)), XXH64: fmt.Sprintf("%016x", xxhash.Sum64(b))}, ok
	}
	cdir := t.TempDir()
	// Room for the 1 MiB file and little else.
	c, err := Cached(HTTP(srv.URL, srv.Client(), quick), cdir, (1<<20)+2000, expect)
	if err != nil {
		t.Fatal(err)
	}
	checkSource(t, c, want)
	before := fetches.Load()
	checkSource(t, c, map[string][]byte{"shard-3.bin": want["shard-3.bin"]})
	if fetches.Load() != before+2 { // +2: the missing object's lookups, by Open and by OpenSized
		t.Errorf("a cached object was fetched again (%d fetches)", fetches.Load()-before)
	}
	var total int64
	entries, _ := os.ReadDir(cdir)
	for _, e := range entries {
		fi, _ := e.Info()
		total += fi.Size()
	}
	if total > (1<<20)+2000 {
		t.Errorf("cache holds %d bytes, over its bound", total)
	}
	// A file that changed at the source is refused.
	os.WriteFile(filepath.Join(dir, "shard-2.bin"), bytes.Repeat([]byte{9}, 1000), 0o644)
	c2, _ := Cached(HTTP(srv.URL, srv.Client(), quick), t.TempDir(), 1<<30, expect)
	if _, err := c2.Open(context.Background(), "shard-2.bin"); err == nil || !strings.Contains(err.Error(), "shard-2.bin") {
		t.Errorf("changed object: got %v", err)
	}
}
