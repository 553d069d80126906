package checkpoint

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/checkpoint/safetensors"
	"github.com/ringo-ml/ringo/internal/audit"
	"github.com/ringo-ml/ringo/internal/iox"
)

// Tensor is one named tensor of the state.
type Tensor struct {
	Name  string
	DType safetensors.DType
	Shape []int64 // the global shape, the same on every rank
	// Data is this rank's bytes, little-endian, row-major: the whole
	// tensor when Split is nil, else rows [Split.Start, Split.End) of
	// dim 0. Save reads it; Load fills it.
	Data  []byte
	Split *Rows
}

// Rows is a range [Start, End) of a tensor's first dimension.
type Rows struct{ Start, End int64 }

// State is what a checkpoint holds: tensors, and the user's metadata as
// JSON (step, epoch, data-loader position, seeds...). Save takes the
// metadata from rank 0.
type State struct {
	Tensors  []Tensor
	Metadata json.RawMessage
}

// planEntry is one tensor as a rank declares it before saving.
type planEntry struct {
	Name  string            `json:"name"`
	DType safetensors.DType `json:"dtype"`
	Shape []int64           `json:"shape"`
	Split *[2]int64         `json:"split,omitempty"`
}

type plan struct {
	Tensors []planEntry `json:"tensors"`
	TmpDir  string      `json:"tmp,omitempty"` // rank 0 only
	Error   string      `json:"error,omitempty"`
}

type shardResult struct {
	Error  string            `json:"error,omitempty"`
	Bytes  int64             `json:"bytes"`
	Hash   string            `json:"hash"`
	Pieces map[string]string `json:"pieces"` // tensor name -> hash of its bytes here
}

func rowBytes(d safetensors.DType, shape []int64) int64 {
	n := int64(d.Size())
	for _, s := range shape[min(1, len(shape)):] {
		n *= s
	}
	return n
}

// check validates one rank's state locally.
func (st *State) check() error {
	seen := map[string]bool{}
	for _, t := range st.Tensors {
		if t.Name == "" || seen[t.Name] {
			return fmt.Errorf("tensor %q: empty or duplicate name", t.Name)
		}
		seen[t.Name] = true
		n, err := safetensors.Numel(t.Shape)
		if err != nil || t.DType.Size() == 0 {
			return fmt.Errorf("tensor %q: bad dtype %q or shape %v", t.Name, t.DType, t.Shape)
		}
		want := n * int64(t.DType.Size())
		if t.Split != nil {
			if len(t.Shape) == 0 || t.Split.Start < 0 || t.Split.End < t.Split.Start || t.Split.End > t.Shape[0] {
				return fmt.Errorf("tensor %q: split rows [%d, %d) do not fit its shape %v", t.Name, t.Split.Start, t.Split.End, t.Shape)
			}
			want = (t.Split.End - t.Split.Start) * rowBytes(t.DType, t.Shape)
		}
		if int64(len(t.Data)) != want {
			return fmt.Errorf("tensor %q: %d bytes, its shape and split need %d", t.Name, len(t.Data), want)
		}
	}
	if len(st.Metadata) > 0 && !json.Valid(st.Metadata) {
		return errors.New("metadata is not valid JSON")
	}
	return nil
}

func (st *State) plan() plan {
	p := plan{}
	for _, t := range st.Tensors {
		e := planEntry{Name: t.Name, DType: t.DType, Shape: t.Shape}
		if t.Split != nil {
			e.Split = &[2]int64{t.Split.Start, t.Split.End}
		}
		p.Tensors = append(p.Tensors, e)
	}
	sort.Slice(p.Tensors, func(a, b int) bool { return p.Tensors[a].Name < p.Tensors[b].Name })
	return p
}

// agree checks that every rank declared the same tensors and that split
// tensors' rows tile dim 0, and returns, per tensor, the pieces in row
// order (shard = rank), with replicated tensors assigned to the rank with
// the fewest bytes so far.
func agree(plans []plan) (map[string]ManifestTensor, error) {
	ref := plans[0].Tensors
	for r, p := range plans[1:] {
		if len(p.Tensors) != len(ref) {
			return nil, fmt.Errorf("rank %d saves %d tensors, rank 0 saves %d", r+1, len(p.Tensors), len(ref))
		}
		for i, e := range p.Tensors {
			f := ref[i]
			if e.Name != f.Name || e.DType != f.DType || fmt.Sprint(e.Shape) != fmt.Sprint(f.Shape) || (e.Split == nil) != (f.Split == nil) {
				return nil, fmt.Errorf("rank %d's tensor %q (%s %v, split %v) differs from rank 0's %q (%s %v, split %v)",
					r+1, e.Name, e.DType, e.Shape, e.Split != nil, f.Name, f.DType, f.Shape, f.Split != nil)
			}
		}
	}
	out := map[string]ManifestTensor{}
	load := make([]int64, len(plans))
	var replicated []planEntry
	for i, e := range ref {
		mt := ManifestTensor{DType: e.DType, Shape: e.Shape, Split: true}
		if e.Split == nil {
			replicated = append(replicated, e)
			continue
		}
		type slice struct {
			rank int
			rows [2]int64
		}
		var sl []slice
		for r, p := range plans {
			s := p.Tensors[i].Split
			if s[1] > s[0] {
				sl = append(sl, slice{r, *s})
			}
			load[r] += (s[1] - s[0]) * rowBytes(e.DType, e.Shape)
		}
		sort.Slice(sl, func(a, b int) bool { return sl[a].rows[0] < sl[b].rows[0] })
		next := int64(0)
		for _, s := range sl {
			if s.rows[0] != next {
				return nil, fmt.Errorf("tensor %q: rank %d holds rows [%d, %d) but rows from %d are held by nobody or twice", e.Name, s.rank, s.rows[0], s.rows[1], next)
			}
			mt.Pieces = append(mt.Pieces, Piece{Shard: s.rank, Rows: s.rows})
			next = s.rows[1]
		}
		if next != rows(e.Shape) {
			return nil, fmt.Errorf("tensor %q: the ranks' slices cover rows [0, %d) of %d", e.Name, next, rows(e.Shape))
		}
		out[e.Name] = mt
	}
	// Largest first onto the least loaded rank: every rank writes about
	// 1/N of the bytes. The same inputs give the same choice on all ranks.
	sort.SliceStable(replicated, func(a, b int) bool {
		return rowBytes(replicated[a].DType, replicated[a].Shape)*rows(replicated[a].Shape) >
			rowBytes(replicated[b].DType, replicated[b].Shape)*rows(replicated[b].Shape)
	})
	for _, e := range replicated {
		r := 0
		for i := range load {
			if load[i] < load[r] {
				r = i
			}
		}
		load[r] += rowBytes(e.DType, e.Shape) * rows(e.Shape)
		out[e.Name] = ManifestTensor{DType: e.DType, Shape: e.Shape, Pieces: []Piece{{Shard: r, Rows: [2]int64{0, rows(e.Shape)}}}}
	}
	return out, nil
}

// Save writes st as checkpoint step in dir. Every rank of coord calls it
// with its own part of the state; it returns when the checkpoint is
// committed (or has failed) on every rank, with the same error everywhere.
func Save(ctx context.Context, coord Coordinator, dir string, step int64, st *State) error {
	return SaveWith(ctx, coord, dir, step, st, Options{})
}

// SaveWith is Save with options (compression, encryption; retention and
// replication apply only through a Saver).
func SaveWith(ctx context.Context, coord Coordinator, dir string, step int64, st *State, opts Options) error {
	rank, size := coord.Rank(), coord.Size()
	fail := func(err error) error { return fmt.Errorf("checkpoint: saving step %d in %s: %w", step, dir, err) }

	p := st.plan()
	enc, err := newCodec(opts.Compress, opts.Encrypt)
	if err != nil {
		p.Error = fmt.Sprintf("rank %d: %v", rank, err)
	}
	if err := st.check(); err != nil {
		p.Error = fmt.Sprintf("rank %d: %v", rank, err)
	}
	final := filepath.Join(dir, stepDir(step))
	if rank == 0 && p.Error == "" {
		tmp, err := prepareDir(dir, step)
		if err != nil {
			p.Error = fmt.Sprintf("rank 0: %v", err)
		}
		p.TmpDir = tmp
	}
	pb, _ := json.Marshal(p)
	all, err := coord.AllGather(ctx, pb)
	if err != nil {
		return fail(err)
	}
	plans := make([]plan, size)
	var errs []string
	for r, b := range all {
		if err := json.Unmarshal(b, &plans[r]); err != nil {
			return fail(fmt.Errorf("rank %d sent an unreadable plan: %v", r, err))
		}
		if plans[r].Error != "" {
			errs = append(errs, plans[r].Error)
		}
	}
	tmp := plans[0].TmpDir
	abort := func(err error) error {
		if rank == 0 && tmp != "" {
			os.RemoveAll(tmp)
		}
		return fail(err)
	}
	if len(errs) > 0 {
		return abort(errors.New(strings.Join(errs, "; ")))
	}
	layout, err := agree(plans)
	if err != nil {
		return abort(err)
	}

	res := writeShard(tmp, rank, size, st, layout, enc, opts.progress)
	rb, _ := json.Marshal(res)
	results, err := coord.AllGather(ctx, rb)
	if err != nil {
		return abort(err)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion, Step: step, WorldSize: size, Checksum: checksumName, Encoding: enc.name(),
		Tensors: layout, Shards: make([]ManifestShard, size), Metadata: st.Metadata}
	for r, b := range results {
		var sr shardResult
		if err := json.Unmarshal(b, &sr); err != nil {
			return abort(fmt.Errorf("rank %d sent an unreadable result: %v", r, err))
		}
		if sr.Error != "" {
			errs = append(errs, fmt.Sprintf("rank %d: %s", r, sr.Error))
			continue
		}
		m.Shards[r] = ManifestShard{File: shardName(r, size), Bytes: sr.Bytes, Hash: sr.Hash}
		for name, sum := range sr.Pieces {
			t := m.Tensors[name]
			for i := range t.Pieces {
				if t.Pieces[i].Shard == r {
					t.Pieces[i].Hash = sum
				}
			}
		}
	}
	if len(errs) > 0 {
		return abort(errors.New(strings.Join(errs, "; ")))
	}

	// Rank 0 commits; everyone learns how that went.
	var commitErr string
	if rank == 0 {
		if err := commit(dir, tmp, final, m); err != nil {
			commitErr = err.Error()
		} else {
			audit.FromEnv().Record("checkpoint.save", map[string]any{"dir": dir, "step": step, "ranks": size, "tensors": len(m.Tensors)})
			os.RemoveAll(tmp)
		}
	}
	outcome, err := coord.AllGather(ctx, []byte(commitErr))
	if err != nil {
		return fail(err)
	}
	if len(outcome[0]) > 0 {
		return fail(fmt.Errorf("rank 0: %s", outcome[0]))
	}
	return nil
}

// prepareDir (rank 0) removes leftovers of interrupted saves, refuses to
// overwrite a committed step, and creates the temporary directory.
func prepareDir(dir string, step int64) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := cleanIncomplete(dir); err != nil {
		return "", err
	}
	final := filepath.Join(dir, stepDir(step))
	if _, err := os.Stat(final); err == nil {
		return "", fmt.Errorf("%s already exists; a committed checkpoint is never overwritten", final)
	}
	var id [6]byte
	rand.Read(id[:])
	tmp := fmt.Sprintf("%s.tmp-%x", final, id[:])
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", err
	}
	return tmp, nil
}

// cleanIncomplete removes ".tmp-" directories and step directories
// without a manifest: what a crash mid-save leaves behind.
func cleanIncomplete(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "step-") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		_, isStep := parseStepDir(e.Name())
		if strings.Contains(e.Name(), ".tmp-") || (isStep && !exists(filepath.Join(path, ManifestFile))) {
			if err := os.RemoveAll(path); err != nil {
				return fmt.Errorf("removing the incomplete %s: %w", path, err)
			}
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeShard writes this rank's shard: its slices of split tensors and
// the replicated tensors assigned to it. The file is fsynced. prog, if not
// nil, is told the tensor bytes written.
func writeShard(tmp string, rank, size int, st *State, layout map[string]ManifestTensor, enc codec, prog *tally) shardResult {
	res := shardResult{Pieces: map[string]string{}}
	var tensors []safetensors.Tensor
	var plain int64
	for _, t := range st.Tensors {
		mine := false
		for _, p := range layout[t.Name].Pieces {
			mine = mine || p.Shard == rank
		}
		if !mine {
			continue
		}
		shape := t.Shape
		if t.Split != nil {
			shape = append([]int64{t.Split.End - t.Split.Start}, t.Shape[1:]...)
		}
		stored := safetensors.Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: t.Data}
		if enc.active() {
			blob, err := enc.encode(t.Data, t.DType.Size())
			if err != nil {
				res.Error = fmt.Sprintf("encoding tensor %q: %v", t.Name, err)
				return res
			}
			stored = safetensors.Tensor{Name: t.Name, DType: safetensors.U8, Shape: []int64{int64(len(blob))}, Data: blob}
		}
		tensors = append(tensors, stored)
		plain += int64(len(t.Data))
		res.Pieces[t.Name] = hashOf(stored.Data)
	}
	path := filepath.Join(tmp, shardName(rank, size))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	h := xxhash.New()
	cw := &iox.CountingWriter{W: io.MultiWriter(f, h)}
	meta := map[string]string{"format": FormatName, "shard": fmt.Sprint(rank)}
	pw := newProgressWriter(cw, prog, tensors, meta, plain)
	err = safetensors.Write(pw, tensors, meta)
	err = iox.SyncClose(f, err)
	if err != nil {
		res.Error = fmt.Sprintf("writing %s: %v", path, err)
		return res
	}
	pw.finish()
	res.Bytes = cw.N
	res.Hash = fmt.Sprintf("%016x", h.Sum64())
	return res
}

// commit writes and fsyncs the manifest, renames tmp to final and fsyncs
// dir: the step appears complete or not at all.
func commit(dir, tmp, final string, m *Manifest) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("refusing to commit an inconsistent manifest: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, ManifestFile), b); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(dir)
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, bytes.NewReader(b))
	err = iox.SyncClose(f, err)
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
