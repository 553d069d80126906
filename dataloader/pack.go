package dataloader

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/internal/iox"
)

// PackOptions tune packing.
type PackOptions struct {
	// ShardBytes is the raw record bytes after which a new shard starts.
	ShardBytes int64
	// Shard sets block size and compression of each shard.
	Shard shard.Options
	// Progress, if set, is told the records packed so far.
	Progress func(records int64)
}

// DefaultPackOptions: 64 MiB shards, the shard format's defaults.
func DefaultPackOptions() PackOptions {
	return PackOptions{ShardBytes: 64 << 20, Shard: shard.DefaultOptions()}
}

// Packer writes records into numbered shards in a directory and finishes
// with index.json.
type Packer struct {
	dir    string
	opts   PackOptions
	index  Index
	f      *os.File
	w      *shard.Writer
	hash   *xxhash.Digest
	count  *iox.CountingWriter
	raw    int64
	closed bool
}

// NewPacker starts a dataset in dir, which must not hold one already.
func NewPacker(dir string, opts PackOptions) (*Packer, error) {
	if opts.ShardBytes <= 0 {
		return nil, fmt.Errorf("dataloader: ShardBytes %d must be positive", opts.ShardBytes)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFile)); err == nil {
		return nil, fmt.Errorf("dataloader: %s already holds a dataset (%s)", dir, IndexFile)
	}
	return &Packer{dir: dir, opts: opts, index: Index{Format: IndexFormat, Version: IndexVersion}}, nil
}

// Add appends one record.
func (p *Packer) Add(rec []byte) error {
	if p.w == nil {
		name := fmt.Sprintf("shard-%05d.rgs", len(p.index.Shards))
		f, err := os.Create(filepath.Join(p.dir, name))
		if err != nil {
			return fmt.Errorf("dataloader: %w", err)
		}
		p.f, p.hash = f, xxhash.New()
		p.count = &iox.CountingWriter{W: io.MultiWriter(f, p.hash)}
		if p.w, err = shard.NewWriter(p.count, p.opts.Shard); err != nil {
			f.Close()
			return err
		}
		p.index.Shards = append(p.index.Shards, ShardInfo{Name: name})
		p.raw = 0
	}
	if err := p.w.Append(rec); err != nil {
		return fmt.Errorf("dataloader: shard %s: %w", p.index.Shards[len(p.index.Shards)-1].Name, err)
	}
	p.raw += int64(len(rec))
	p.index.Records++
	if p.opts.Progress != nil && p.index.Records%1024 == 0 {
		p.opts.Progress(p.index.Records)
	}
	if p.raw >= p.opts.ShardBytes {
		return p.finishShard()
	}
	return nil
}

func (p *Packer) finishShard() error {
	if p.w == nil {
		return nil
	}
	err := iox.SyncClose(p.f, p.w.Close())
	s := &p.index.Shards[len(p.index.Shards)-1]
	if err != nil {
		return fmt.Errorf("dataloader: shard %s: %w", s.Name, err)
	}
	s.Bytes, s.Records, s.XXH64 = p.count.N, p.w.Records(), fmt.Sprintf("%016x", p.hash.Sum64())
	p.w = nil
	return nil
}

// Close finishes the last shard and writes index.json with metadata
// (any JSON-encodable value, or nil).
func (p *Packer) Close(metadata any) (*Index, error) {
	if p.closed {
		return &p.index, nil
	}
	p.closed = true
	if err := p.finishShard(); err != nil {
		return nil, err
	}
	if p.index.Records == 0 {
		return nil, errors.New("dataloader: nothing to pack: the input holds no records")
	}
	if metadata != nil {
		b, err := json.Marshal(metadata)
		if err != nil {
			return nil, fmt.Errorf("dataloader: metadata: %w", err)
		}
		p.index.Metadata = b
	}
	b, _ := json.MarshalIndent(p.index, "", "  ")
	tmp := filepath.Join(p.dir, IndexFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, IndexFile)); err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	if p.opts.Progress != nil {
		p.opts.Progress(p.index.Records)
	}
	return &p.index, nil
}

func openMaybeGzip(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(path, ".gz") {
		return f, nil
	}
	z, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{z, f}, nil
}

// readIDX reads an IDX file (MNIST's format, optionally gzipped): a
// 4-byte magic (0, 0, type 0x08 for uint8, number of dimensions), the
// dimensions as big-endian uint32, then the data.
func readIDX(path string) (dims []int, data []byte, err error) {
	r, err := openMaybeGzip(path)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	br := bufio.NewReader(r)
	var magic [4]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] == 0 || magic[3] > 4 {
		return nil, nil, fmt.Errorf("%s: not an IDX file of unsigned bytes (magic % x)", path, magic)
	}
	total := 1
	for range int(magic[3]) {
		var d uint32
		if err := binary.Read(br, binary.BigEndian, &d); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		if d == 0 || d > 1<<28 || total > (1<<34)/int(d) {
			return nil, nil, fmt.Errorf("%s: implausible dimension %d", path, d)
		}
		dims = append(dims, int(d))
		total *= int(d)
	}
	data = make([]byte, total)
	if _, err := io.ReadFull(br, data); err != nil {
		return nil, nil, fmt.Errorf("%s: %d bytes of data expected: %w (truncated?)", path, total, err)
	}
	return dims, data, nil
}

// PackMNIST packs an IDX image file and its label file into records with
// fields "image" (rows×cols bytes) and "label" (1 byte).
func PackMNIST(images, labels, out string, opts PackOptions) (*Index, error) {
	idims, ibytes, err := readIDX(images)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	ldims, lbytes, err := readIDX(labels)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	if len(idims) != 3 || len(ldims) != 1 || idims[0] != ldims[0] {
		return nil, fmt.Errorf("dataloader: images %v and labels %v do not match (want [n rows cols] and [n])", idims, ldims)
	}
	p, err := NewPacker(out, opts)
	if err != nil {
		return nil, err
	}
	n, px := idims[0], idims[1]*idims[2]
	for i := 0; i < n; i++ {
		rec := shard.EncodeFields(map[string][]byte{"image": ibytes[i*px : (i+1)*px], "label": lbytes[i : i+1]})
		if err := p.Add(rec); err != nil {
			return nil, err
		}
	}
	return p.Close(map[string]any{
		"source": "mnist",
		"fields": map[string]string{"image": fmt.Sprintf("uint8[%d,%d]", idims[1], idims[2]), "label": "uint8"},
	})
}

// PackJSONL packs one record per non-empty line.
func PackJSONL(in, out string, opts PackOptions) (*Index, error) {
	r, err := openMaybeGzip(in)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	defer r.Close()
	p, err := NewPacker(out, opts)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		if !json.Valid(b) {
			return nil, fmt.Errorf("dataloader: %s line %d is not valid JSON", in, line)
		}
		if err := p.Add(append([]byte(nil), b...)); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dataloader: %s: %w", in, err)
	}
	return p.Close(map[string]any{"source": "jsonl"})
}

// PackCSV packs one record per row, with the header's columns as fields.
func PackCSV(in, out string, opts PackOptions) (*Index, error) {
	r, err := openMaybeGzip(in)
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	defer r.Close()
	cr := csv.NewReader(r)
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("dataloader: %s: reading the header: %w", in, err)
	}
	p, err := NewPacker(out, opts)
	if err != nil {
		return nil, err
	}
	for row := 2; ; row++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dataloader: %s row %d: %w", in, row, err)
		}
		fields := make(map[string][]byte, len(header))
		for i, h := range header {
			fields[h] = []byte(rec[i])
		}
		if err := p.Add(shard.EncodeFields(fields)); err != nil {
			return nil, err
		}
	}
	return p.Close(map[string]any{"source": "csv", "columns": header})
}

// PackDir packs a directory of files: files sharing a basename (the path
// without its extension) form one sample, WebDataset's convention, with a
// field per extension and "__key__" the basename; a file alone is a sample
// of one field.
func PackDir(in, out string, opts PackOptions) (*Index, error) {
	groups := map[string]map[string]string{}
	var keys []string
	err := filepath.WalkDir(in, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(in, path)
		rel = filepath.ToSlash(rel)
		dir, base := filepath.Split(rel)
		key, ext, _ := strings.Cut(base, ".")
		key = dir + key
		if groups[key] == nil {
			groups[key] = map[string]string{}
			keys = append(keys, key)
		}
		if ext == "" {
			ext = "data"
		}
		groups[key][ext] = path
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dataloader: %w", err)
	}
	sort.Strings(keys)
	p, err := NewPacker(out, opts)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		fields := map[string][]byte{"__key__": []byte(k)}
		for ext, path := range groups[k] {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("dataloader: %w", err)
			}
			fields[ext] = b
		}
		if err := p.Add(shard.EncodeFields(fields)); err != nil {
			return nil, err
		}
	}
	return p.Close(map[string]any{"source": "directory"})
}

// PackTar packs WebDataset-style tar shards: consecutive files sharing a
// basename (the path up to the first dot of its last element) form one
// sample, with a field per extension and "__key__" the basename.
func PackTar(inputs []string, out string, opts PackOptions) (*Index, error) {
	p, err := NewPacker(out, opts)
	if err != nil {
		return nil, err
	}
	for _, in := range inputs {
		if err := packOneTar(p, in); err != nil {
			return nil, err
		}
	}
	return p.Close(map[string]any{"source": "webdataset"})
}

func packOneTar(p *Packer, in string) error {
	r, err := openMaybeGzip(in)
	if err != nil {
		return fmt.Errorf("dataloader: %w", err)
	}
	defer r.Close()
	tr := tar.NewReader(r)
	var key string
	var fields map[string][]byte
	flush := func() error {
		if fields == nil {
			return nil
		}
		err := p.Add(shard.EncodeFields(fields))
		fields = nil
		return err
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("dataloader: %s: %w (truncated or not a tar file?)", in, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		dir, base := path.Split(h.Name)
		k, ext, _ := strings.Cut(base, ".")
		k = dir + k
		if k != key {
			if err := flush(); err != nil {
				return err
			}
			key, fields = k, map[string][]byte{"__key__": []byte(k)}
		}
		if ext == "" {
			ext = "data"
		}
		if h.Size > 1<<30 {
			return fmt.Errorf("dataloader: %s: member %s is %d bytes, over 1 GiB", in, h.Name, h.Size)
		}
		b, err := io.ReadAll(io.LimitReader(tr, h.Size))
		if err != nil {
			return fmt.Errorf("dataloader: %s: member %s: %w", in, h.Name, err)
		}
		fields[ext] = b
	}
	return flush()
}
