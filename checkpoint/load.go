package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/ringo-ml/ringo/checkpoint/safetensors"
	"github.com/ringo-ml/ringo/internal/audit"
)

// ErrNoCheckpoint: the directory holds no complete checkpoint.
var ErrNoCheckpoint = errors.New("no complete checkpoint")

// ReadManifest reads and checks DIR/step-N/manifest.json.
func ReadManifest(dir string, step int64) (*Manifest, error) {
	path := filepath.Join(dir, stepDir(step), ManifestFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: %w", path, err)
	}
	if m.Step != step {
		return nil, fmt.Errorf("checkpoint: %s says step %d", path, m.Step)
	}
	return m, nil
}

// Latest returns the newest complete checkpoint's step in dir. skipped
// lists the step directories passed over because they were incomplete or
// unreadable, newest first, each with the reason, for the caller to warn
// about.
func Latest(dir string) (step int64, skipped []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, nil, fmt.Errorf("checkpoint: %w", err)
	}
	var steps []int64
	for _, e := range entries {
		if s, ok := parseStepDir(e.Name()); ok && e.IsDir() {
			steps = append(steps, s)
		}
	}
	sort.Slice(steps, func(a, b int) bool { return steps[a] > steps[b] })
	for _, s := range steps {
		if _, err := ReadManifest(dir, s); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", stepDir(s), err))
			continue
		}
		return s, skipped, nil
	}
	return 0, skipped, fmt.Errorf("checkpoint: %s: %w", dir, ErrNoCheckpoint)
}

// shardFile is an open shard with its parsed header.
type shardFile struct {
	f    *os.File
	head *safetensors.Header
}

// Load fills st's tensors from checkpoint step in dir: each tensor's Data
// (already allocated to the right size) gets the whole tensor, or the rows
// its Split asks for, whatever world size saved it. Every piece read is
// checked against its checksum. st.Metadata is set to the saved metadata.
// Tensors of the checkpoint that st does not list are not read.
func Load(ctx context.Context, dir string, step int64, st *State) error {
	return load(ctx, dir, step, st, nil)
}

// load is Load telling prog, if not nil, the bytes of each tensor filled.
func load(ctx context.Context, dir string, step int64, st *State, prog *tally) error {
	m, err := ReadManifest(dir, step)
	if err != nil {
		return err
	}
	audit.FromEnv().Record("checkpoint.load", map[string]any{"dir": dir, "step": step, "tensors": len(st.Tensors), "pid": os.Getpid()})
	enc, err := codecFor(m.Encoding)
	if err != nil {
		return fmt.Errorf("checkpoint: step %d in %s: %w", step, dir, err)
	}
	base := filepath.Join(dir, stepDir(step))
	shards := map[int]*shardFile{}
	defer func() {
		for _, s := range shards {
			s.f.Close()
		}
	}()
	open := func(i int) (*shardFile, error) {
		if s, ok := shards[i]; ok {
			return s, nil
		}
		ms := m.Shards[i]
		path := filepath.Join(base, ms.File)
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: shard %d: %w", i, err)
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() != ms.Bytes {
			err = fmt.Errorf("is %d bytes, the manifest says %d (truncated or replaced)", fi.Size(), ms.Bytes)
		}
		var h *safetensors.Header
		if err == nil {
			h, err = safetensors.ReadHeader(f, ms.Bytes)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("checkpoint: %s: %w", path, err)
		}
		s := &shardFile{f: f, head: h}
		shards[i] = s
		return s, nil
	}
	for ti := range st.Tensors {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := &st.Tensors[ti]
		mt, ok := m.Tensors[t.Name]
		if !ok {
			return fmt.Errorf("checkpoint: step %d in %s has no tensor %q", step, dir, t.Name)
		}
		if mt.DType != t.DType || fmt.Sprint(mt.Shape) != fmt.Sprint(t.Shape) {
			return fmt.Errorf("checkpoint: tensor %q was saved as %s %v, asked for as %s %v", t.Name, mt.DType, mt.Shape, t.DType, t.Shape)
		}
		want := Rows{0, rows(t.Shape)}
		if t.Split != nil {
			want = *t.Split
		}
		rb := rowBytes(t.DType, t.Shape)
		if want.Start < 0 || want.End < want.Start || want.End > rows(t.Shape) || int64(len(t.Data)) != (want.End-want.Start)*rb {
			return fmt.Errorf("checkpoint: tensor %q: rows [%d, %d) and a %d-byte buffer do not fit shape %v", t.Name, want.Start, want.End, len(t.Data), t.Shape)
		}
		for _, p := range mt.Pieces {
			lo, hi := max(p.Rows[0], want.Start), min(p.Rows[1], want.End)
			if lo >= hi {
				continue
			}
			s, err := open(p.Shard)
			if err != nil {
				return err
			}
			// The whole piece is read so that its checksum can be checked:
			// straight into place when the caller wants all of it, through
			// a buffer when it wants only some rows (resharding).
			plainLen := (p.Rows[1] - p.Rows[0]) * rb
			whole := p.Rows[0] >= want.Start && p.Rows[1] <= want.End && !enc.active()
			var buf []byte
			switch info, ok := s.head.Find(t.Name); {
			case whole:
				buf = t.Data[(p.Rows[0]-want.Start)*rb : (p.Rows[1]-want.Start)*rb]
			case ok && enc.active():
				buf = make([]byte, info.End-info.Begin) // the stored blob
			default:
				buf = make([]byte, plainLen)
			}
			file := filepath.Join(base, m.Shards[p.Shard].File)
			if err := safetensors.ReadTensor(s.f, s.head, t.Name, buf); err != nil {
				return fmt.Errorf("checkpoint: %s: %w", file, err)
			}
			if hashOf(buf) != p.Hash {
				return fmt.Errorf("checkpoint: %s: tensor %q rows [%d, %d): checksum mismatch, the data is corrupt", file, t.Name, p.Rows[0], p.Rows[1])
			}
			if enc.active() {
				if buf, err = enc.decode(buf, t.DType.Size(), plainLen); err != nil {
					return fmt.Errorf("checkpoint: %s: tensor %q: %w", file, t.Name, err)
				}
			}
			if !whole {
				copy(t.Data[(lo-want.Start)*rb:(hi-want.Start)*rb], buf[(lo-p.Rows[0])*rb:(hi-p.Rows[0])*rb])
			}
		}
		prog.add(int64(len(t.Data)))
	}
	st.Metadata = m.Metadata
	return nil
}
