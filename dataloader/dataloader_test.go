package dataloader

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// writeIDX writes an IDX file of unsigned bytes, gzipped when name ends
// in .gz.
func writeIDX(t *testing.T, path string, dims []uint32, data []byte) {
	t.Helper()
	var b bytes.Buffer
	b.Write([]byte{0, 0, 8, byte(len(dims))})
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(data)
	out := b.Bytes()
	if strings.HasSuffix(path, ".gz") {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		w.Write(out)
		w.Close()
		out = z.Bytes()
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mnist(t *testing.T, n int) (images, labels string) {
	dir := t.TempDir()
	px := make([]byte, n*28*28)
	lb := make([]byte, n)
	for i := range px {
		px[i] = byte(i * 7)
	}
	for i := range lb {
		lb[i] = byte(i % 10)
	}
	images, labels = filepath.Join(dir, "train-images-idx3-ubyte.gz"), filepath.Join(dir, "train-labels-idx1-ubyte")
	writeIDX(t, images, []uint32{uint32(n), 28, 28}, px)
	writeIDX(t, labels, []uint32{uint32(n)}, lb)
	return images, labels
}

// readAll reads every record of a dataset in order.
func readAll(t *testing.T, ds *Dataset) [][]byte {
	t.Helper()
	var out [][]byte
	for i := range ds.Index.Shards {
		r, obj, err := ds.OpenShard(context.Background(), i)
		if err != nil {
			t.Fatal(err)
		}
		for b := 0; b < r.Blocks(); b++ {
			recs, err := r.ReadBlock(b)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, recs...)
		}
		obj.Close()
	}
	return out
}

func TestPackMNISTAndReadEverywhere(t *testing.T) {
	images, labels := mnist(t, 300)
	out := t.TempDir()
	opts := DefaultPackOptions()
	opts.ShardBytes = 64 << 10 // several shards
	opts.Shard.BlockSize = 16 << 10
	ix, err := PackMNIST(images, labels, out, opts)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Records != 300 || len(ix.Shards) < 3 {
		t.Fatalf("packed %d records in %d shards", ix.Records, len(ix.Shards))
	}
	ds, err := Open(context.Background(), source.Local(out))
	if err != nil {
		t.Fatal(err)
	}
	local := readAll(t, ds)
	for i, rec := range local {
		f, err := shard.DecodeFields(rec)
		if err != nil {
			t.Fatal(err)
		}
		if len(f["image"]) != 784 || f["label"][0] != byte(i%10) || f["image"][0] != byte(i*784*7) {
			t.Fatalf("record %d: %d image bytes, label %v", i, len(f["image"]), f["label"])
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(out)))
	defer srv.Close()
	hds, err := Open(context.Background(), source.HTTP(srv.URL, srv.Client(), source.DefaultRetry))
	if err != nil {
		t.Fatal(err)
	}
	remote := readAll(t, hds)
	if len(remote) != len(local) {
		t.Fatalf("HTTP gave %d records, local %d", len(remote), len(local))
	}
	for i := range local {
		if !bytes.Equal(local[i], remote[i]) {
			t.Fatalf("record %d differs over HTTP", i)
		}
	}
	if problems, err := ds.Verify(context.Background(), nil); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %v", problems, err)
	}
}

func TestPackDirJSONLAndCSV(t *testing.T) {
	in := t.TempDir()
	for _, f := range []struct{ name, body string }{
		{"a.jpg", "JPEG-A"}, {"a.cls", "3"}, {"b.jpg", "JPEG-B"}, {"b.cls", "7"}, {"sub/c.txt", "hello"},
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(in, f.name)), 0o755)
		os.WriteFile(filepath.Join(in, f.name), []byte(f.body), 0o644)
	}
	out := t.TempDir()
	if _, err := PackDir(in, out, DefaultPackOptions()); err != nil {
		t.Fatal(err)
	}
	ds, err := Open(context.Background(), source.Local(out))
	if err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, ds)
	if len(recs) != 3 {
		t.Fatalf("%d samples, want 3 (a, b, sub/c)", len(recs))
	}
	f, _ := shard.DecodeFields(recs[1])
	if string(f["__key__"]) != "b" || string(f["jpg"]) != "JPEG-B" || string(f["cls"]) != "7" {
		t.Errorf("sample b: %q", f)
	}

	jl := filepath.Join(t.TempDir(), "x.jsonl")
	os.WriteFile(jl, []byte("{\"a\":1}\n\n{\"a\":2}\n"), 0o644)
	if ix, err := PackJSONL(jl, t.TempDir(), DefaultPackOptions()); err != nil || ix.Records != 2 {
		t.Errorf("jsonl: %+v %v", ix, err)
	}
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	os.WriteFile(bad, []byte("{\"a\":1}\nnot json\n"), 0o644)
	if _, err := PackJSONL(bad, t.TempDir(), DefaultPackOptions()); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad jsonl: got %v, want an error naming line 2", err)
	}
	cs := filepath.Join(t.TempDir(), "x.csv")
	os.WriteFile(cs, []byte("x,y\n1,2\n3,4\n"), 0o644)
	cout := t.TempDir()
	if _, err := PackCSV(cs, cout, DefaultPackOptions()); err != nil {
		t.Fatal(err)
	}
	cds, _ := Open(context.Background(), source.Local(cout))
	rows := readAll(t, cds)
	if f, _ := shard.DecodeFields(rows[1]); string(f["x"]) != "3" || string(f["y"]) != "4" {
		t.Errorf("csv row 2: %q", f)
	}
}

func TestBadDatasetsAreNamed(t *testing.T) {
	images, labels := mnist(t, 100)
	out := t.TempDir()
	opts := DefaultPackOptions()
	opts.Shard.BlockSize = 8 << 10
	ix, err := PackMNIST(images, labels, out, opts)
	if err != nil {
		t.Fatal(err)
	}
	name := ix.Shards[0].Name
	path := filepath.Join(out, name)
	orig, _ := os.ReadFile(path)

	flipped := append([]byte(nil), orig...)
	flipped[100] ^= 0xff
	os.WriteFile(path, flipped, 0o644)
	ds, _ := Open(context.Background(), source.Local(out))
	problems, err := ds.Verify(context.Background(), nil)
	joined := strings.Join(problems, "\n")
	if err != nil || !strings.Contains(joined, name) || !strings.Contains(joined, "block") {
		t.Errorf("flipped byte: %v\n%s", err, joined)
	}

	os.WriteFile(path, orig[:len(orig)-10], 0o644)
	if _, _, err := ds.OpenShard(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated shard: got %v", err)
	}
	os.Remove(path)
	if _, _, err := ds.OpenShard(context.Background(), 0); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("missing shard: got %v", err)
	}

	if _, err := Open(context.Background(), source.Local(t.TempDir())); err == nil || !strings.Contains(err.Error(), IndexFile) {
		t.Errorf("no index: got %v", err)
	}
	if _, err := PackJSONL(filepath.Join(t.TempDir(), "none.jsonl"), t.TempDir(), DefaultPackOptions()); err == nil {
		t.Errorf("missing input accepted")
	}
	empty := filepath.Join(t.TempDir(), "e.jsonl")
	os.WriteFile(empty, nil, 0o644)
	if _, err := PackJSONL(empty, t.TempDir(), DefaultPackOptions()); err == nil || !strings.Contains(err.Error(), "no records") {
		t.Errorf("empty input: got %v", err)
	}
}

func TestParseIndexRejects(t *testing.T) {
	good := `{"format":"ringo-dataset","version":1,"records":3,"shards":[{"name":"a.rgs","bytes":10,"records":3,"xxh64":"0123456789abcdef"}]}`
	if _, err := ParseIndex([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for name, js := range map[string]string{
		"sum":     strings.Replace(good, `"records":3,"shards"`, `"records":4,"shards"`, 1),
		"escape":  strings.Replace(good, `a.rgs`, `../a.rgs`, 1),
		"abs":     strings.Replace(good, `a.rgs`, `/etc/a.rgs`, 1),
		"version": strings.Replace(good, `"version":1`, `"version":9`, 1),
		"hash":    strings.Replace(good, `0123456789abcdef`, `xyz`, 1),
	} {
		if _, err := ParseIndex([]byte(js)); err == nil {
			t.Errorf("%s: accepted %s", name, js)
		}
	}
}

func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"format":"ringo-dataset","version":1,"records":3,"shards":[{"name":"a.rgs","bytes":10,"records":3,"xxh64":"0123456789abcdef"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ParseIndex(b)
		if err != nil {
			return
		}
		var sum int64
		for _, s := range ix.Shards {
			if s.Records < 0 || strings.HasPrefix(s.Name, "..") {
				t.Fatalf("accepted %+v", s)
			}
			sum += s.Records
		}
		if sum != ix.Records {
			t.Fatalf("accepted counts that do not add up")
		}
	})
}

func TestPackWebDatasetTar(t *testing.T) {
	tarPath := filepath.Join(t.TempDir(), "shard-000.tar")
	f, _ := os.Create(tarPath)
	tw := tar.NewWriter(f)
	for _, m := range []struct{ name, body string }{
		{"s/0001.jpg", "img1"}, {"s/0001.cls", "1"}, {"s/0002.jpg", "img2"}, {"s/0002.cls", "2"}, {"s/0002.json", "{}"},
	} {
		tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(m.body))
	}
	tw.Close()
	f.Close()
	out := t.TempDir()
	ix, err := PackTar([]string{tarPath}, out, DefaultPackOptions())
	if err != nil || ix.Records != 2 {
		t.Fatalf("tar: %+v %v", ix, err)
	}
	ds, _ := Open(context.Background(), source.Local(out))
	recs := readAll(t, ds)
	if f, _ := shard.DecodeFields(recs[1]); string(f["__key__"]) != "s/0002" || string(f["json"]) != "{}" || string(f["cls"]) != "2" {
		t.Errorf("sample 2: %q", f)
	}
	b, _ := os.ReadFile(tarPath)
	os.WriteFile(tarPath, b[:2*1024+512+2], 0o644) // inside the second sample's image
	if _, err := PackTar([]string{tarPath}, t.TempDir(), DefaultPackOptions()); err == nil || !strings.Contains(err.Error(), "shard-000.tar") {
		t.Errorf("truncated tar: got %v", err)
	}
}

func TestSameSamplesFromS3(t *testing.T) {
	images, labels := mnist(t, 120)
	out := t.TempDir()
	opts := DefaultPackOptions()
	opts.ShardBytes = 32 << 10
	if _, err := PackMNIST(images, labels, out, opts); err != nil {
		t.Fatal(err)
	}
	local, _ := Open(context.Background(), source.Local(out))
	want := readAll(t, local)

	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	c, _ := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4("k", "s", "")})
	ctx := context.Background()
	c.MakeBucket(ctx, "dsets", minio.MakeBucketOptions{})
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(out, e.Name()))
		if _, err := c.PutObject(ctx, "dsets", "mnist/"+e.Name(), bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{DisableContentSha256: true}); err != nil {
			t.Fatal(err)
		}
	}
	src, _ := source.S3(u.Host, "dsets", "mnist", "k", "s", true, source.DefaultRetry)
	remote, err := Open(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, remote)
	if len(got) != len(want) {
		t.Fatalf("S3 gave %d records, local %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d differs from S3", i)
		}
	}
}

func TestIndexDisagreeingWithShards(t *testing.T) {
	images, labels := mnist(t, 40)
	out := t.TempDir()
	if _, err := PackMNIST(images, labels, out, DefaultPackOptions()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(out, IndexFile))
	ix, _ := ParseIndex(b)
	ix.Shards[0].Records++
	ix.Records++
	nb, _ := json.Marshal(ix)
	os.WriteFile(filepath.Join(out, IndexFile), nb, 0o644)
	ds, err := Open(context.Background(), source.Local(out))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ds.OpenShard(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "the index says") {
		t.Errorf("record count mismatch: got %v", err)
	}
}
