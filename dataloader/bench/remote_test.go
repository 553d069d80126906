package bench

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ringo-ml/ringo/dataloader/source"
)

// latency delays every request by d before h answers it: the round trip
// of remote storage, on loopback.
func latency(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(d)
		h.ServeHTTP(w, r)
	})
}

// serveHTTP serves dir over loopback HTTP with range requests.
func serveHTTP(tb testing.TB, dir string, d time.Duration) source.Source {
	srv := httptest.NewServer(latency(d, http.FileServer(http.Dir(dir))))
	tb.Cleanup(srv.Close)
	return source.HTTP(srv.URL, nil, source.DefaultRetry)
}

// serveS3 uploads dir's files to the loopback S3 server of the tests
// (in memory) and serves them with d added to every request.
func serveS3(tb testing.TB, dir string, d time.Duration) source.Source {
	srv := httptest.NewServer(latency(d, gofakes3.New(s3mem.New()).Server()))
	tb.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	c, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4("k", "s", "")})
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	if err := c.MakeBucket(ctx, "bench", minio.MakeBucketOptions{}); err != nil {
		tb.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := c.PutObject(ctx, "bench", "data/"+e.Name(), bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{DisableContentSha256: true}); err != nil {
			tb.Fatal(err)
		}
	}
	src, err := source.S3(u.Host, "bench", "data", "k", "s", true, source.DefaultRetry)
	if err != nil {
		tb.Fatal(err)
	}
	return src
}

// BenchmarkRemote streams a synthetic dataset from loopback HTTP and S3
// servers that add 20 ms to every request, beside a plain parallel
// range read of the same bytes with as many reads in flight as the
// loader settled on, three rounds each, and reports the medians.
// RINGO_BENCH_REMOTE_MB sets the dataset size (default 64).
func BenchmarkRemote(b *testing.B) {
	mb := 64
	if v, err := strconv.Atoi(os.Getenv("RINGO_BENCH_REMOTE_MB")); err == nil && v > 0 {
		mb = v
	}
	for _, rec := range []int{4 << 10, 64 << 10} {
		dir := b.TempDir()
		if err := MakeSynthetic(dir, int64(mb)<<20, rec, 0); err != nil {
			b.Fatal(err)
		}
		window := 16384
		if rec > 4<<10 {
			window = 1024
		}
		for _, kind := range []string{"http", "s3"} {
			for _, np := range []int{1, 4} {
				b.Run(fmt.Sprintf("%s/record=%dKiB/np=%d", kind, rec>>10, np), func(b *testing.B) {
					serve := serveHTTP
					if kind == "s3" {
						serve = serveS3
					}
					src := serve(b, dir, 20*time.Millisecond)
					var r Result
					for b.Loop() {
						var err error
						r, err = Run(context.Background(), Config{Source: src, NP: np, BatchSize: 64, Window: window, Workers: 4, Rounds: 3, PlainReads: -1})
						if err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(r.RawGBps, "plain-GB/s")
					b.ReportMetric(r.StreamFileGBps, "loader-GB/s")
					b.ReportMetric(r.Ratio, "loader/plain")
					b.ReportMetric(float64(r.LoaderReads), "reads")
					b.ReportMetric(r.ReadAmplification, "read-amp")
					b.Logf("rounds plain %.3f loader %.3f GB/s", r.RawRounds, r.StreamRounds)
				})
			}
		}
	}
}
