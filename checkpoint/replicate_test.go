package checkpoint_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
)

func TestReplicate(t *testing.T) {
	dir, far := t.TempDir(), t.TempDir()
	s := checkpoint.NewSaver(checkpoint.Single{}, dir, checkpoint.Options{ReplicateTo: far})
	if err := s.Save(context.Background(), 4, stateFor(0, 1, true)); err != nil {
		t.Fatal(err)
	}
	if problems, err := checkpoint.Verify(far, 4, nil); err != nil || len(problems) > 0 {
		t.Fatalf("the replica does not verify: %v %v", problems, err)
	}
	// A source that went bad is not copied into a replica that looks fine.
	mustSave(t, 1, dir, 5)
	m, _ := checkpoint.ReadManifest(dir, 5)
	shard := filepath.Join(dir, "step-00000005", m.Shards[0].File)
	b, _ := os.ReadFile(shard)
	b[len(b)-1] ^= 1
	os.WriteFile(shard, b, 0o644)
	err := checkpoint.Replicate(context.Background(), dir, 5, far)
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("replicating a corrupt checkpoint: got %v", err)
	}
	if step, _, _ := checkpoint.Latest(far); step != 4 {
		t.Errorf("the replica's newest step is %d, want 4: the corrupt copy must not appear", step)
	}
}
