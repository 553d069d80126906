package checkpoint_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

// TestDiskFull: on a 1 MiB filesystem, a checkpoint that does not fit
// fails with the disk's error, and the one before it stays complete and
// loadable. Needs root to mount a tmpfs.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	defer exec.Command("umount", dir).Run()
	small := stateFor(0, 1, true)
	if err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, 1, small); err != nil {
		t.Fatal(err)
	}
	big := &checkpoint.State{Tensors: []checkpoint.Tensor{
		{Name: "huge", DType: safetensors.U8, Shape: []int64{2 << 20}, Data: make([]byte, 2<<20)},
	}}
	err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, 2, big)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("saving 2 MiB onto 1 MiB: got %v, want the disk's ENOSPC", err)
	}
	step, _, err := checkpoint.Latest(dir)
	if err != nil || step != 1 {
		t.Fatalf("after the failed save, Latest = %d, %v; want 1", step, err)
	}
	if err := checkpoint.Load(context.Background(), dir, 1, stateFor(0, 1, false)); err != nil {
		t.Fatalf("the previous checkpoint no longer loads: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the failed save left %d entries behind", len(entries))
	}
}
