package checkpoint_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
)

func TestSaveAsyncSnapshotsAndReportsFailures(t *testing.T) {
	dir := t.TempDir()
	s := checkpoint.NewSaver(checkpoint.Single{}, dir, checkpoint.Options{})
	st := stateFor(0, 1, true)
	want := stateFor(0, 1, true)
	p, err := s.SaveAsync(context.Background(), 1, st)
	if err != nil {
		t.Fatal(err)
	}
	// Training goes on and overwrites its buffers at once.
	for i := range st.Tensors {
		for j := range st.Tensors[i].Data {
			st.Tensors[i].Data[j] = 0xEE
		}
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	got := stateFor(0, 1, false)
	if err := checkpoint.Load(context.Background(), dir, 1, got); err != nil {
		t.Fatal(err)
	}
	for i := range got.Tensors {
		if !bytes.Equal(got.Tensors[i].Data, want.Tensors[i].Data) {
			t.Fatalf("tensor %q holds what the caller wrote after SaveAsync returned", got.Tensors[i].Name)
		}
	}
	// Step 1 again cannot commit; the failure surfaces at the next call.
	if _, err := s.SaveAsync(context.Background(), 1, want); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveAsync(context.Background(), 2, want); err == nil || !strings.Contains(err.Error(), "step 1 failed") {
		t.Fatalf("the failed background save was not reported: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("nothing should be in flight after a refused SaveAsync: %v", err)
	}
}

func TestRetention(t *testing.T) {
	dir := t.TempDir()
	s := checkpoint.NewSaver(checkpoint.Single{}, dir, checkpoint.Options{KeepLast: 2, KeepEvery: 10})
	for _, step := range []int64{5, 10, 15, 20, 25, 30, 35} {
		if err := s.Save(context.Background(), step, stateFor(0, 1, true)); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := checkpoint.List(dir)
	var steps []int64
	for _, e := range entries {
		steps = append(steps, e.Step)
	}
	if fmt.Sprint(steps) != "[35 30 20 10]" {
		t.Errorf("kept %v, want the newest two plus every 10th: [35 30 20 10]", steps)
	}
	if removed, err := checkpoint.Retain(dir, 0, 0); err != nil || fmt.Sprint(removed) != "[30 20 10]" {
		t.Errorf("Retain(0) removed %v, %v; the newest must survive", removed, err)
	}
}
