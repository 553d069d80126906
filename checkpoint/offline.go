package checkpoint

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/ringo-ml/ringo/checkpoint/safetensors"
	"github.com/ringo-ml/ringo/internal/iox"
)

// localGroup coordinates goroutines standing in for ranks, for tools that
// rewrite a checkpoint in one process.
type localGroup struct {
	n       int
	mu      sync.Mutex
	cond    *sync.Cond
	gen     int
	arrived int
	slots   [][]byte
	result  [][]byte
}

func newLocalGroup(n int) *localGroup {
	g := &localGroup{n: n, slots: make([][]byte, n)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *localGroup) gather(rank int, b []byte) [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen := g.gen
	g.slots[rank] = b
	g.arrived++
	if g.arrived == g.n {
		g.result, g.slots, g.arrived = g.slots, make([][]byte, g.n), 0
		g.gen++
		g.cond.Broadcast()
	}
	for gen == g.gen {
		g.cond.Wait()
	}
	return g.result
}

type localRank struct {
	g    *localGroup
	rank int
}

func (l localRank) Rank() int { return l.rank }
func (l localRank) Size() int { return l.g.n }
func (l localRank) Barrier(ctx context.Context) error {
	_, err := l.AllGather(ctx, nil)
	return err
}
func (l localRank) AllGather(_ context.Context, b []byte) ([][]byte, error) {
	return l.g.gather(l.rank, b), nil
}

// EvenRows is rank r of n's share of rows: the first rows%n ranks get one
// more, like torch.chunk's remainder rule.
func EvenRows(rows int64, r, n int) Rows {
	base, extra := rows/int64(n), rows%int64(n)
	start := int64(r)*base + min(int64(r), extra)
	end := start + base
	if int64(r) < extra {
		end++
	}
	return Rows{Start: start, End: end}
}

// stateForRank is what rank r of n loads from m: split tensors' share of
// rows, replicated tensors whole, as empty buffers to fill.
func stateForRank(m *Manifest, r, n int) *State {
	st := &State{}
	for _, name := range sortedNames(m) {
		mt := m.Tensors[name]
		t := Tensor{Name: name, DType: mt.DType, Shape: mt.Shape}
		want := Rows{0, rows(mt.Shape)}
		if mt.Split {
			want = EvenRows(rows(mt.Shape), r, n)
			t.Split = &want
		}
		t.Data = make([]byte, (want.End-want.Start)*rowBytes(mt.DType, mt.Shape))
		st.Tensors = append(st.Tensors, t)
	}
	return st
}

// tally adds up the bytes done by one or more goroutines (Reshard's ranks)
// for a progress callback, which it calls one at a time so that whatever
// the callback prints stays in order. A nil *tally counts nothing.
type tally struct {
	mu          sync.Mutex
	fn          func(done, total int64)
	done, total int64
}

func newTally(fn func(done, total int64), total int64) *tally {
	if fn == nil {
		return nil
	}
	return &tally{fn: fn, total: total}
}

func (t *tally) add(n int64) {
	if t == nil || n == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done += n
	t.fn(t.done, t.total)
}

// progressWriter tells a tally about the tensor bytes written through it:
// it passes over the first skip bytes (the safetensors header) and counts
// at most left, the tensor bytes the file stands for, keeping the last one
// back for finish, which runs once the file is durable. So the total is
// reached once, and only when the work is done, even where compression or
// encryption makes the stored bytes fewer than the tensors'.
type progressWriter struct {
	w          io.Writer
	t          *tally
	skip, left int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	c := int64(n)
	s := min(c, p.skip)
	p.skip -= s
	if d := min(c-s, p.left-1); d > 0 {
		p.left -= d
		p.t.add(d)
	}
	return n, err
}

func (p *progressWriter) finish() {
	p.t.add(p.left)
	p.left = 0
}

// newProgressWriter is a progressWriter over w for a safetensors file of
// tensors and meta, standing for left tensor bytes.
func newProgressWriter(w io.Writer, t *tally, tensors []safetensors.Tensor, meta map[string]string, left int64) *progressWriter {
	p := &progressWriter{w: w, t: t, left: left}
	if t != nil { // the header is laid out again only for progress
		if head, _, err := safetensors.Layout(tensors, meta); err == nil {
			p.skip = int64(len(head))
		}
	}
	return p
}

// tensorBytes is the size of a whole tensor of m.
func tensorBytes(mt ManifestTensor) int64 {
	return rows(mt.Shape) * rowBytes(mt.DType, mt.Shape)
}

// Reshard rewrites checkpoint step of src as the checkpoint a job of world
// ranks would have saved, into dst: split tensors are cut evenly into world
// row ranges, replicated ones stay whole. It is what a user runs before
// restarting on another number of GPUs (Load can also reshard on the fly).
// progress, if not nil, is told the tensor bytes read and written so far
// out of the total of both (every rank reads the replicated tensors); it
// is called from the ranks' goroutines, one call at a time.
func Reshard(ctx context.Context, src string, step int64, world int, dst string, progress func(done, total int64)) error {
	if world < 1 {
		return fmt.Errorf("checkpoint: world size %d must be at least 1", world)
	}
	m, err := ReadManifest(src, step)
	if err != nil {
		return err
	}
	var total int64
	for _, mt := range m.Tensors {
		b := tensorBytes(mt)
		total += b // written once, split or not
		if mt.Split {
			total += b
		} else {
			total += int64(world) * b
		}
	}
	prog := newTally(progress, total)
	compress, encrypt, _ := parseEncoding(m.Encoding)
	opts := Options{Compress: compress, Encrypt: encrypt, progress: prog} // keep the source's encoding
	coords := LocalGroup(world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := stateForRank(m, r, world)
			if err := load(ctx, src, step, st, prog); err != nil {
				errs[r] = err
				st = nil
			}
			if st == nil {
				// Still take part, declaring the failure, so that the others
				// do not wait for this rank forever.
				st = &State{Tensors: []Tensor{{Name: ""}}}
			}
			if err := SaveWith(ctx, coords[r], dst, step, st, opts); err != nil && errs[r] == nil {
				errs[r] = err
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Export writes checkpoint step of dir as one consolidated safetensors
// file at out (every tensor whole), which Python's safetensors and
// Hugging Face tools load directly. The user metadata goes into the file's
// __metadata__ under "ringo.metadata", and the step under "ringo.step".
// progress, if not nil, is told the tensor bytes read and written so far
// out of the total of both.
func Export(ctx context.Context, dir string, step int64, out string, progress func(done, total int64)) error {
	m, err := ReadManifest(dir, step)
	if err != nil {
		return err
	}
	var data int64
	for _, mt := range m.Tensors {
		data += tensorBytes(mt)
	}
	prog := newTally(progress, 2*data)
	st := stateForRank(m, 0, 1)
	for i := range st.Tensors {
		st.Tensors[i].Split = nil // whole tensors
	}
	if err := load(ctx, dir, step, st, prog); err != nil {
		return err
	}
	tensors := make([]safetensors.Tensor, 0, len(st.Tensors))
	for _, t := range st.Tensors {
		tensors = append(tensors, safetensors.Tensor{Name: t.Name, DType: t.DType, Shape: t.Shape, Data: t.Data})
	}
	sort.Slice(tensors, func(a, b int) bool { return tensors[a].Name < tensors[b].Name })
	meta := map[string]string{"format": "pt", "ringo.step": fmt.Sprint(step)}
	if len(m.Metadata) > 0 {
		meta["ringo.metadata"] = string(m.Metadata)
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("checkpoint: export: %w", err)
	}
	pw := newProgressWriter(f, prog, tensors, meta, data)
	err = safetensors.Write(pw, tensors, meta)
	err = iox.SyncClose(f, err)
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint: export to %s: %w", out, err)
	}
	if err := syncDir(filepath.Dir(out)); err != nil {
		return err
	}
	pw.finish()
	return nil
}

// LocalGroup returns n Coordinators for n goroutines of one process that
// act as the ranks of a job: for tools and benchmarks that save or reshard
// a checkpoint without a network.
func LocalGroup(n int) []Coordinator {
	g := newLocalGroup(n)
	out := make([]Coordinator, n)
	for r := range out {
		out[r] = localRank{g, r}
	}
	return out
}
