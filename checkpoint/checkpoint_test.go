package checkpoint_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport/inproc"
)

// spec is one tensor of the test state, global.
type spec struct {
	name  string
	dtype safetensors.DType
	shape []int64
	split bool
}

var specs = []spec{
	{"layer.w", safetensors.F32, []int64{13, 3}, true},
	{"layer.b", safetensors.BF16, []int64{5}, false},
	{"step", safetensors.I64, []int64{}, false},
	{"emb", safetensors.U8, []int64{7, 2}, true},
	{"norm", safetensors.F64, []int64{40}, false},
	{"empty", safetensors.F16, []int64{0, 4}, true},
	{"opt.m", safetensors.I32, []int64{3, 2, 2}, true},
}

func rowsOf(s spec) int64 {
	if len(s.shape) == 0 {
		return 1
	}
	return s.shape[0]
}

func rowBytes(s spec) int64 {
	n := int64(s.dtype.Size())
	if len(s.shape) > 1 {
		for _, d := range s.shape[1:] {
			n *= d
		}
	}
	return n
}

// global is tensor s's full content: bytes that depend on name and index.
func global(s spec) []byte {
	b := make([]byte, rowsOf(s)*rowBytes(s))
	for i := range b {
		b[i] = byte(len(s.name)*31 + i*7)
	}
	return b
}

// stateFor is rank r of n's part of the state, with data or, for Load,
// zeroed buffers of the right size.
func stateFor(r, n int, withData bool) *checkpoint.State {
	st := &checkpoint.State{}
	for _, s := range specs {
		t := checkpoint.Tensor{Name: s.name, DType: s.dtype, Shape: s.shape}
		g := global(s)
		if s.split {
			rows := checkpoint.EvenRows(rowsOf(s), r, n)
			t.Split = &rows
			g = g[rows.Start*rowBytes(s) : rows.End*rowBytes(s)]
		}
		if withData {
			t.Data = append([]byte(nil), g...)
		} else {
			t.Data = make([]byte, len(g))
		}
		st.Tensors = append(st.Tensors, t)
	}
	return st
}

func comms(t *testing.T, n int) []checkpoint.Coordinator {
	t.Helper()
	w := inproc.NewWorld(n)
	cfg := collective.DefaultConfig()
	cfg.Timeout = 10 * time.Second
	out := make([]checkpoint.Coordinator, n)
	for r := range out {
		c, err := collective.New(w.Transport(r), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out[r] = checkpoint.FromComm(c)
	}
	return out
}

// saveAll runs Save on every rank and returns the errors by rank.
func saveAll(t *testing.T, coords []checkpoint.Coordinator, dir string, step int64, state func(r int) *checkpoint.State) []error {
	t.Helper()
	errs := make([]error, len(coords))
	var wg sync.WaitGroup
	for r, c := range coords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = checkpoint.Save(context.Background(), c, dir, step, state(r))
		}()
	}
	wg.Wait()
	return errs
}

func mustSave(t *testing.T, n int, dir string, step int64) {
	t.Helper()
	coords := comms(t, n)
	for r, err := range saveAll(t, coords, dir, step, func(r int) *checkpoint.State {
		st := stateFor(r, n, true)
		st.Metadata = []byte(fmt.Sprintf(`{"step":%d,"saved_by":%d}`, step, n))
		return st
	}) {
		if err != nil {
			t.Fatalf("save by %d ranks: rank %d: %v", n, r, err)
		}
	}
}

// TestEveryWorldSizeOntoEvery: saved by 1..8 ranks, loaded by 1..8, every
// rank gets exactly its rows of every tensor and the metadata.
func TestEveryWorldSizeOntoEvery(t *testing.T) {
	dir := t.TempDir()
	for saved := 1; saved <= 8; saved++ {
		mustSave(t, saved, dir, int64(saved))
	}
	for saved := 1; saved <= 8; saved++ {
		for loaded := 1; loaded <= 8; loaded++ {
			for r := 0; r < loaded; r++ {
				st := stateFor(r, loaded, false)
				if err := checkpoint.Load(context.Background(), dir, int64(saved), st); err != nil {
					t.Fatalf("saved by %d, loaded by %d, rank %d: %v", saved, loaded, r, err)
				}
				want := stateFor(r, loaded, true)
				for i, tn := range st.Tensors {
					if !bytes.Equal(tn.Data, want.Tensors[i].Data) {
						t.Fatalf("saved by %d, loaded by %d, rank %d: tensor %q differs", saved, loaded, r, tn.Name)
					}
				}
				var compact bytes.Buffer
				json.Compact(&compact, st.Metadata)
				if compact.String() != fmt.Sprintf(`{"step":%d,"saved_by":%d}`, saved, saved) {
					t.Fatalf("metadata %s", st.Metadata)
				}
			}
		}
	}
}

// TestShardsAreSafetensorsAndBalanced: every shard is a valid
// safetensors file by the format's rules, and the replicated bytes are
// spread over the ranks.
func TestShardsAreSafetensorsAndBalanced(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 4, dir, 7)
	m, err := checkpoint.ReadManifest(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	holders := map[int]bool{}
	for _, s := range specs {
		if !s.split {
			holders[m.Tensors[s.name].Pieces[0].Shard] = true
		}
	}
	if len(holders) < 2 {
		t.Errorf("all replicated tensors went to shards %v; they should be spread", holders)
	}
	for _, sh := range m.Shards {
		path := filepath.Join(dir, "step-00000007", sh.File)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s is not valid safetensors: %v", sh.File, err)
		}
		if h.DataStart%8 != 0 {
			t.Errorf("%s: data starts at %d", sh.File, h.DataStart)
		}
	}
}

func TestCorruptionIsNamed(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 2, dir, 1)
	m, _ := checkpoint.ReadManifest(dir, 1)
	piece := m.Tensors["layer.w"].Pieces[1]
	shard := filepath.Join(dir, "step-00000001", m.Shards[piece.Shard].File)
	orig, _ := os.ReadFile(shard)
	load := func() error {
		return checkpoint.Load(context.Background(), dir, 1, stateFor(0, 1, false))
	}

	flipped := append([]byte(nil), orig...)
	flipped[len(flipped)-1] ^= 0x40 // inside the last tensor's data
	os.WriteFile(shard, flipped, 0o644)
	err := load()
	if err == nil || !strings.Contains(err.Error(), m.Shards[piece.Shard].File) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("flipped byte: got %v, want a checksum error naming the shard", err)
	}

	os.WriteFile(shard, orig[:len(orig)-5], 0o644)
	if err := load(); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated shard: got %v", err)
	}

	os.Remove(shard)
	if err := load(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing shard: got %v", err)
	}
	os.WriteFile(shard, orig, 0o644)
	if err := load(); err != nil {
		t.Fatalf("restored shard: %v", err)
	}

	st := stateFor(0, 1, false)
	st.Tensors[0].Shape = []int64{14, 3}
	st.Tensors[0].Split = nil
	st.Tensors[0].Data = make([]byte, 14*3*4)
	if err := checkpoint.Load(context.Background(), dir, 1, st); err == nil || !strings.Contains(err.Error(), "layer.w") {
		t.Errorf("shape mismatch: got %v", err)
	}
}

func TestLatestSkipsIncompleteAndSaveCleansUp(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 2, dir, 10)
	mustSave(t, 2, dir, 20)
	// What a crash mid-save leaves: a temporary directory, and a step
	// directory without its manifest.
	os.MkdirAll(filepath.Join(dir, "step-00000030.tmp-abc"), 0o755)
	os.MkdirAll(filepath.Join(dir, "step-00000040"), 0o755)
	os.WriteFile(filepath.Join(dir, "step-00000040", "shard-00000-of-00001.safetensors"), []byte("partial"), 0o644)
	step, skipped, err := checkpoint.Latest(dir)
	if err != nil || step != 20 {
		t.Fatalf("Latest = %d, %v; want 20", step, err)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0], "step-00000040") {
		t.Errorf("skipped = %v, want the manifest-less step 40", skipped)
	}
	mustSave(t, 1, dir, 50)
	for _, gone := range []string{"step-00000030.tmp-abc", "step-00000040"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s survived the next save", gone)
		}
	}
	if _, _, err := checkpoint.Latest(t.TempDir()); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		t.Errorf("empty dir: got %v", err)
	}
}

// TestDisagreeingRanksFailTogether: a rank that declares another shape
// makes every rank fail with an error naming it, and nothing is left.
func TestDisagreeingRanksFailTogether(t *testing.T) {
	dir := t.TempDir()
	coords := comms(t, 3)
	errs := saveAll(t, coords, dir, 5, func(r int) *checkpoint.State {
		st := stateFor(r, 3, true)
		if r == 1 {
			st.Tensors[1].Shape = []int64{6}
			st.Tensors[1].Data = make([]byte, 12)
		}
		return st
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 1") || !strings.Contains(err.Error(), "layer.b") {
			t.Errorf("rank %d: got %v, want an error naming rank 1 and layer.b", r, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("a failed save left %v", entries)
	}
}

func TestNeverOverwritesAndReportsWriteErrors(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 1, dir, 3)
	err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, 3, stateFor(0, 1, true))
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("saving step 3 twice: got %v", err)
	}
	notADir := filepath.Join(dir, "file")
	os.WriteFile(notADir, []byte("x"), 0o644)
	if err := checkpoint.Save(context.Background(), checkpoint.Single{}, notADir, 1, stateFor(0, 1, true)); err == nil {
		t.Errorf("saving under a file succeeded")
	}
	if step, _, err := checkpoint.Latest(dir); err != nil || step != 3 {
		t.Errorf("after failed saves, Latest = %d, %v; want 3", step, err)
	}
}
