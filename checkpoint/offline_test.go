package checkpoint_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

func TestReshardThenLoad(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mustSave(t, 3, src, 9)
	if err := checkpoint.Reshard(context.Background(), src, 9, 5, dst, nil); err != nil {
		t.Fatal(err)
	}
	m, err := checkpoint.ReadManifest(dst, 9)
	if err != nil {
		t.Fatal(err)
	}
	if m.WorldSize != 5 {
		t.Fatalf("resharded world size %d, want 5", m.WorldSize)
	}
	if got := m.Tensors["layer.w"].Pieces; len(got) != 5 || got[4].Rows != [2]int64{11, 13} {
		t.Errorf("layer.w pieces %+v, want 5 even row ranges", got)
	}
	if m.Tensors["norm"].Split || len(m.Tensors["norm"].Pieces) != 1 {
		t.Errorf("replicated tensor norm became %+v", m.Tensors["norm"])
	}
	for r := range 5 {
		st := stateFor(r, 5, false)
		if err := checkpoint.Load(context.Background(), dst, 9, st); err != nil {
			t.Fatal(err)
		}
		want := stateFor(r, 5, true)
		for i := range st.Tensors {
			if !bytes.Equal(st.Tensors[i].Data, want.Tensors[i].Data) {
				t.Fatalf("rank %d tensor %q differs after resharding", r, st.Tensors[i].Name)
			}
		}
	}
}

func TestExportIsOneSafetensorsFile(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 4, dir, 2)
	out := filepath.Join(t.TempDir(), "model.safetensors")
	if err := checkpoint.Export(context.Background(), dir, 2, out, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		info, ok := h.Find(s.name)
		if !ok {
			t.Fatalf("export lacks %q", s.name)
		}
		if !bytes.Equal(b[h.DataStart+info.Begin:h.DataStart+info.End], global(s)) {
			t.Errorf("exported %q differs from the saved tensor", s.name)
		}
	}
	if !strings.Contains(h.Metadata["ringo.metadata"], `"saved_by"`) || h.Metadata["ringo.step"] != "2" {
		t.Errorf("metadata %v", h.Metadata)
	}
}

func TestListAndVerify(t *testing.T) {
	dir := t.TempDir()
	mustSave(t, 2, dir, 1)
	mustSave(t, 2, dir, 2)
	os.MkdirAll(filepath.Join(dir, "step-00000003.tmp-x"), 0o755)
	entries, err := checkpoint.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].Step != 3 || entries[0].Complete || !entries[1].Complete || entries[1].Bytes == 0 {
		t.Fatalf("List = %+v", entries)
	}
	if problems, err := checkpoint.Verify(dir, 2, nil); err != nil || len(problems) != 0 {
		t.Fatalf("intact checkpoint: %v %v", problems, err)
	}
	m, _ := checkpoint.ReadManifest(dir, 2)
	shard := filepath.Join(dir, "step-00000002", m.Shards[1].File)
	b, _ := os.ReadFile(shard)
	b[len(b)-1] ^= 1
	os.WriteFile(shard, b, 0o644)
	problems, err := checkpoint.Verify(dir, 2, nil)
	if err != nil || len(problems) < 2 {
		t.Fatalf("flipped byte: %v %v", problems, err)
	}
	joined := strings.Join(problems, "\n")
	if !strings.Contains(joined, m.Shards[1].File) || !strings.Contains(joined, "tensor") {
		t.Errorf("problems do not name the file and tensor:\n%s", joined)
	}
}

// progressLog checks a progress callback's calls: one at a time, always
// forwards, the same total each time, and the last at exactly the total.
type progressLog struct {
	busy        atomic.Bool
	calls       int
	done, total int64
	problem     string
}

func (p *progressLog) report(done, total int64) {
	if !p.busy.CompareAndSwap(false, true) {
		p.problem = "two calls at once"
		return
	}
	defer p.busy.Store(false)
	switch {
	case p.calls > 0 && done <= p.done:
		p.problem = fmt.Sprintf("went from %d to %d", p.done, done)
	case p.calls > 0 && total != p.total:
		p.problem = fmt.Sprintf("total changed from %d to %d", p.total, total)
	case done > total:
		p.problem = fmt.Sprintf("%d done of %d", done, total)
	}
	p.calls++
	p.done, p.total = done, total
}

func (p *progressLog) check(t *testing.T, what string, want int64) {
	t.Helper()
	if p.problem != "" || p.calls < 2 || p.done != want || p.total != want {
		t.Errorf("%s progress: %d calls, last %d of %d, want %d of %d; %s", what, p.calls, p.done, p.total, want, want, p.problem)
	}
}

func TestReshardAndExportReportProgress(t *testing.T) {
	var data, replicated int64
	for _, s := range specs {
		b := rowsOf(s) * rowBytes(s)
		data += b
		if !s.split {
			replicated += b
		}
	}
	plain, compressed := t.TempDir(), t.TempDir()
	mustSave(t, 3, plain, 9)
	// Compressed shards are smaller on disk than their tensors: progress
	// still counts tensor bytes and ends at the total.
	if err := checkpoint.SaveWith(context.Background(), checkpoint.Single{}, compressed, 9, stateFor(0, 1, true), checkpoint.Options{Compress: true}); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{plain, compressed} {
		var p progressLog
		if err := checkpoint.Reshard(context.Background(), src, 9, 5, t.TempDir(), p.report); err != nil {
			t.Fatal(err)
		}
		// Read: the split tensors once, the replicated ones by every rank;
		// written: everything once.
		p.check(t, "reshard", (data-replicated)+5*replicated+data)

		var e progressLog
		if err := checkpoint.Export(context.Background(), src, 9, filepath.Join(t.TempDir(), "m.safetensors"), e.report); err != nil {
			t.Fatal(err)
		}
		e.check(t, "export", 2*data)
	}
}
