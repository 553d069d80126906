package checkpoint

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

// Entry describes one step directory of a checkpoint directory.
type Entry struct {
	Step     int64
	Dir      string
	Complete bool   // has a valid manifest
	Problem  string // why not, when not complete
	Bytes    int64  // of all files in it
	Modified time.Time
	Manifest *Manifest
}

// List describes every step directory in dir (temporary ones of
// interrupted saves included, as incomplete), newest step first.
func List(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	var out []Entry
	for _, de := range des {
		if !de.IsDir() || !strings.HasPrefix(de.Name(), "step-") {
			continue
		}
		path := filepath.Join(dir, de.Name())
		e := Entry{Dir: path}
		name := de.Name()
		tmp := strings.Contains(name, ".tmp-")
		if tmp {
			name = name[:strings.Index(name, ".tmp-")]
		}
		step, ok := parseStepDir(name)
		if !ok {
			continue
		}
		e.Step = step
		files, _ := os.ReadDir(path)
		for _, f := range files {
			if fi, err := f.Info(); err == nil {
				e.Bytes += fi.Size()
				if fi.ModTime().After(e.Modified) {
					e.Modified = fi.ModTime()
				}
			}
		}
		switch m, err := ReadManifest(dir, step); {
		case tmp:
			e.Problem = "interrupted save (temporary directory)"
		case err != nil:
			e.Problem = err.Error()
		default:
			e.Complete, e.Manifest = true, m
		}
		out = append(out, e)
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Step > out[b].Step })
	return out, nil
}

// Verify re-reads every shard of step in dir and checks sizes, the
// safetensors layout, whole-file checksums and every piece's checksum. It
// returns one line per problem, naming the file and tensor; none means the
// checkpoint is intact. progress, if not nil, is told the bytes checked.
func Verify(dir string, step int64, progress func(done, total int64)) ([]string, error) {
	m, err := ReadManifest(dir, step)
	if err != nil {
		return nil, err
	}
	base := filepath.Join(dir, stepDir(step))
	var total, done int64
	for _, s := range m.Shards {
		total += s.Bytes
	}
	var problems []string
	for i, s := range m.Shards {
		path := filepath.Join(base, s.File)
		problems = append(problems, verifyShard(path, i, s, m)...)
		done += s.Bytes
		if progress != nil {
			progress(done, total)
		}
	}
	return problems, nil
}

// verifyShard streams one shard: size, whole-file checksum, layout, then
// each piece's checksum.
func verifyShard(path string, i int, s ManifestShard, m *Manifest) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	defer f.Close()
	var problems []string
	fi, err := f.Stat()
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	if fi.Size() != s.Bytes {
		problems = append(problems, fmt.Sprintf("%s: %d bytes, the manifest says %d (truncated or replaced)", path, fi.Size(), s.Bytes))
	}
	h := xxhash.New()
	if _, err := io.Copy(h, f); err != nil {
		return append(problems, fmt.Sprintf("%s: %v", path, err))
	}
	if fmt.Sprintf("%016x", h.Sum64()) != s.Hash {
		problems = append(problems, fmt.Sprintf("%s: file checksum mismatch", path))
	}
	head, err := safetensors.ReadHeader(io.NewSectionReader(f, 0, fi.Size()), fi.Size())
	if err != nil {
		return append(problems, fmt.Sprintf("%s: %v", path, err))
	}
	for _, name := range sortedNames(m) {
		for _, p := range m.Tensors[name].Pieces {
			if p.Shard != i {
				continue
			}
			info, ok := head.Find(name)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: tensor %q is missing", path, name))
				continue
			}
			ph := xxhash.New()
			if _, err := io.Copy(ph, io.NewSectionReader(f, head.DataStart+info.Begin, info.End-info.Begin)); err != nil {
				problems = append(problems, fmt.Sprintf("%s: tensor %q: %v", path, name, err))
			} else if fmt.Sprintf("%016x", ph.Sum64()) != p.Hash {
				problems = append(problems, fmt.Sprintf("%s: tensor %q rows [%d, %d): checksum mismatch", path, name, p.Rows[0], p.Rows[1]))
			}
		}
	}
	return problems
}

func sortedNames(m *Manifest) []string {
	names := make([]string, 0, len(m.Tensors))
	for n := range m.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
