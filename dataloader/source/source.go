package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Source opens the objects (files) of a dataset by name.
type Source interface {
	Open(ctx context.Context, name string) (Object, error)
	// String says where the source reads from, for messages.
	String() string
}

// Object is one opened object: random access by byte range.
type Object interface {
	io.ReaderAt
	Size() int64
	Close() error
}

// SizedSource is a Source that opens an object whose size the caller
// already knows (a dataset's index records every shard's) without asking
// the storage: one round trip fewer per object on HTTP and S3. Every
// range the storage answers carries the object's total size, which the
// object checks, so an object replaced or truncated since fails its
// first read with an error that says so.
type SizedSource interface {
	Source
	OpenSized(ctx context.Context, name string, size int64) (Object, error)
}

// OpenSized opens name with its known size: without a round trip where
// src is a SizedSource, else by Open, checking the size Open finds.
func OpenSized(ctx context.Context, src Source, name string, size int64) (Object, error) {
	if s, ok := src.(SizedSource); ok {
		return s.OpenSized(ctx, name, size)
	}
	obj, err := src.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	if obj.Size() != size {
		obj.Close()
		return nil, fmt.Errorf("source: %s at %s is %d bytes, expected %d (replaced or truncated?)", name, src, obj.Size(), size)
	}
	return obj, nil
}

// checkTotal checks the total size in a range answer's Content-Range
// ("bytes 0-99/1234") against the size the object was opened with; an
// answer without one (or with "*") is not checked here: the blocks'
// checksums still catch different bytes.
func checkTotal(contentRange string, size int64, what string) error {
	i := strings.LastIndexByte(contentRange, '/')
	if i < 0 {
		return nil
	}
	total, err := strconv.ParseInt(contentRange[i+1:], 10, 64)
	if err != nil || total == size {
		return nil
	}
	return fmt.Errorf("%s is %d bytes, expected %d (replaced or truncated since it was opened?)", what, total, size)
}

// ErrNotFound: the object does not exist at the source.
var ErrNotFound = errors.New("not found")

// ---- local files ----

type local struct{ dir string }

// Local reads objects as files under dir.
func Local(dir string) Source { return local{dir} }

func (l local) String() string { return l.dir }

type file struct {
	*os.File
	size int64
}

func (f file) Size() int64 { return f.size }

func (l local) Open(_ context.Context, name string) (Object, error) {
	path := filepath.Join(l.dir, filepath.FromSlash(name))
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("source: %s: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("source: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("source: %w", err)
	}
	return file{f, fi.Size()}, nil
}

// ---- retries ----

// Retry is how remote sources retry: Attempts tries in all, the first
// wait Backoff, doubling.
type Retry struct {
	Attempts int
	Backoff  time.Duration
}

// DefaultRetry: 5 attempts from 100 ms (about 1.5 s of waiting in all).
var DefaultRetry = Retry{Attempts: 5, Backoff: 100 * time.Millisecond}

// do runs f until it succeeds, fails permanently, or attempts run out.
func (r Retry) do(ctx context.Context, f func() (permanent bool, err error)) error {
	wait := r.Backoff
	var err error
	for i := 0; i < max(1, r.Attempts); i++ {
		var permanent bool
		if permanent, err = f(); err == nil || permanent {
			return err
		}
		if i == r.Attempts-1 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
	return fmt.Errorf("%w (after %d attempts)", err, max(1, r.Attempts))
}

// ---- HTTP ----

type httpSource struct {
	base   string
	client *http.Client
	retry  Retry
}

// defaultClient keeps a connection per read in flight: the default
// transport keeps only 2 idle connections per host, so a loader with more
// range reads in flight would open a new connection for most requests.
var defaultClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256
	return &http.Client{Transport: t}
}()

// HTTP reads objects as base + "/" + name with GET range requests (a nil
// client: one whose transport keeps up to 256 idle connections per host).
func HTTP(base string, client *http.Client, retry Retry) Source {
	if client == nil {
		client = defaultClient
	}
	return httpSource{strings.TrimRight(base, "/"), client, retry}
}

func (h httpSource) String() string { return h.base }

type httpObject struct {
	ctx  context.Context
	src  httpSource
	url  string
	size int64
}

func (h httpSource) Open(ctx context.Context, name string) (Object, error) {
	u := h.base + "/" + name
	var size int64
	err := h.retry.do(ctx, func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		if err != nil {
			return true, err
		}
		resp, err := h.client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotFound:
			return true, fmt.Errorf("%s: %w", u, ErrNotFound)
		case resp.StatusCode >= 500:
			return false, fmt.Errorf("%s: %s", u, resp.Status)
		case resp.StatusCode != http.StatusOK:
			return true, fmt.Errorf("%s: %s", u, resp.Status)
		case resp.ContentLength < 0:
			return true, fmt.Errorf("%s: the server does not say the size", u)
		}
		size = resp.ContentLength
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	return &httpObject{ctx: ctx, src: h, url: u, size: size}, nil
}

// OpenSized opens name without a HEAD request; see SizedSource.
func (h httpSource) OpenSized(ctx context.Context, name string, size int64) (Object, error) {
	return &httpObject{ctx: ctx, src: h, url: h.base + "/" + name, size: size}, nil
}

func (o *httpObject) Size() int64  { return o.size }
func (o *httpObject) Close() error { return nil }

func (o *httpObject) ReadAt(p []byte, off int64) (int, error) {
	return readRange(o.ctx, o.src.retry, o.size, p, off, func(off int64, dst []byte) (bool, error) {
		req, err := http.NewRequestWithContext(o.ctx, http.MethodGet, o.url, nil)
		if err != nil {
			return true, err
		}
		end := off + int64(len(dst)) - 1
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
		resp, err := o.src.client.Do(req)
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotFound:
			return true, fmt.Errorf("%s: %w", o.url, ErrNotFound)
		case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
			return true, fmt.Errorf("%s: bytes %d-%d are past its end: it is shorter than the %d bytes expected (replaced or truncated?)", o.url, off, end, o.size)
		case resp.StatusCode >= 500:
			return false, fmt.Errorf("%s: %s", o.url, resp.Status)
		case resp.StatusCode != http.StatusPartialContent:
			return true, fmt.Errorf("%s: range request answered %s (the server must support ranges)", o.url, resp.Status)
		}
		if err := checkTotal(resp.Header.Get("Content-Range"), o.size, o.url); err != nil {
			return true, err
		}
		if _, err := io.ReadFull(resp.Body, dst); err != nil {
			return false, fmt.Errorf("%s: reading bytes %d-%d: %w", o.url, off, end, err)
		}
		return false, nil
	})
}

// readRange fills p from offset off of an object of size bytes, calling
// get (with retries) for the bytes that exist; like io.ReaderAt, a read
// that reaches the end returns io.EOF with what it got.
func readRange(ctx context.Context, retry Retry, size int64, p []byte, off int64, get func(off int64, dst []byte) (permanent bool, err error)) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	if err := retry.do(ctx, func() (bool, error) { return get(off, p[:want]) }); err != nil {
		return 0, fmt.Errorf("source: %w", err)
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// ---- S3 ----

type s3Source struct {
	client *minio.Client
	bucket string
	prefix string
	retry  Retry
}

// S3 reads objects as bucket/prefix/name from an S3-compatible endpoint
// (host:port, https unless insecure).
func S3(endpoint, bucket, prefix, accessKey, secretKey string, insecure bool, retry Retry) (Source, error) {
	c, err := minio.New(endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(accessKey, secretKey, ""),
		Secure: !insecure,
	})
	if err != nil {
		return nil, fmt.Errorf("source: S3 endpoint %s: %w", endpoint, err)
	}
	return s3Source{c, bucket, strings.Trim(prefix, "/"), retry}, nil
}

func (s s3Source) String() string { return "s3://" + s.bucket + "/" + s.prefix }

func (s s3Source) key(name string) string {
	if s.prefix == "" {
		return name
	}
	return s.prefix + "/" + name
}

type s3Object struct {
	ctx  context.Context
	src  s3Source
	key  string
	size int64
}

func (s s3Source) Open(ctx context.Context, name string) (Object, error) {
	key := s.key(name)
	var size int64
	err := s.retry.do(ctx, func() (bool, error) {
		info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
		if err != nil {
			if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
				return true, fmt.Errorf("s3://%s/%s: %w", s.bucket, key, ErrNotFound)
			}
			return false, fmt.Errorf("s3://%s/%s: %w", s.bucket, key, err)
		}
		size = info.Size
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	return &s3Object{ctx: ctx, src: s, key: key, size: size}, nil
}

// OpenSized opens name without a HEAD (stat) request; see SizedSource.
func (s s3Source) OpenSized(ctx context.Context, name string, size int64) (Object, error) {
	return &s3Object{ctx: ctx, src: s, key: s.key(name), size: size}, nil
}

func (o *s3Object) Size() int64  { return o.size }
func (o *s3Object) Close() error { return nil }

func (o *s3Object) ReadAt(p []byte, off int64) (int, error) {
	return readRange(o.ctx, o.src.retry, o.size, p, off, func(off int64, dst []byte) (bool, error) {
		end := off + int64(len(dst)) - 1
		opts := minio.GetObjectOptions{}
		if err := opts.SetRange(off, end); err != nil {
			return true, err
		}
		// Core's GetObject sends the one GET at once and gives its
		// headers; the Client's lazy Object would send a HEAD first for
		// Stat.
		what := fmt.Sprintf("s3://%s/%s", o.src.bucket, o.key)
		obj, _, hdr, err := minio.Core{Client: o.src.client}.GetObject(o.ctx, o.src.bucket, o.key, opts)
		if err != nil {
			switch minio.ToErrorResponse(err).StatusCode {
			case http.StatusNotFound:
				return true, fmt.Errorf("%s: %w", what, ErrNotFound)
			case http.StatusRequestedRangeNotSatisfiable:
				return true, fmt.Errorf("%s: bytes %d-%d are past its end: it is shorter than the %d bytes expected (replaced or truncated?)", what, off, end, o.size)
			}
			return false, fmt.Errorf("%s: reading bytes %d-%d: %w", what, off, end, err)
		}
		defer obj.Close()
		if err := checkTotal(hdr.Get("Content-Range"), o.size, what); err != nil {
			return true, err
		}
		if _, err := io.ReadFull(obj, dst); err != nil {
			return false, fmt.Errorf("%s: reading bytes %d-%d: %w", what, off, end, err)
		}
		return false, nil
	})
}

// Environment variables Parse reads for S3.
const (
	EnvS3Endpoint = "RINGO_S3_ENDPOINT"
	EnvS3Insecure = "RINGO_S3_INSECURE" // "1": plain http to the endpoint
)

// Parse returns the source for a location (see the package doc).
func Parse(location string) (Source, error) {
	u, err := url.Parse(location)
	if err != nil || u.Scheme == "" {
		return Local(location), nil
	}
	switch u.Scheme {
	case "file":
		return Local(u.Path), nil
	case "http", "https":
		return HTTP(location, nil, DefaultRetry), nil
	case "s3":
		endpoint := os.Getenv(EnvS3Endpoint)
		if endpoint == "" {
			endpoint = os.Getenv("AWS_ENDPOINT_URL")
		}
		insecure := os.Getenv(EnvS3Insecure) == "1"
		if e, err := url.Parse(endpoint); err == nil && e.Host != "" {
			insecure = insecure || e.Scheme == "http"
			endpoint = e.Host
		}
		if endpoint == "" {
			endpoint = "s3.amazonaws.com"
		}
		return S3(endpoint, u.Host, u.Path, os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), insecure, DefaultRetry)
	}
	return nil, fmt.Errorf("source: unknown scheme %q in %s (want a directory, file://, http(s):// or s3://)", u.Scheme, location)
}
