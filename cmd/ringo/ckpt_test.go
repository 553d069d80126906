package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

func ringo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(ringoBin, args...).CombinedOutput()
	return string(out), err
}

func TestCkptCommands(t *testing.T) {
	dir := t.TempDir()
	st := &checkpoint.State{
		Tensors: []checkpoint.Tensor{
			{Name: "w", DType: safetensors.F32, Shape: []int64{4, 2}, Data: bytes.Repeat([]byte{1, 2, 3, 4}, 8)},
			{Name: "b", DType: safetensors.BF16, Shape: []int64{3}, Data: []byte{1, 0, 2, 0, 3, 0}},
		},
		Metadata: json.RawMessage(`{"epoch":2}`),
	}
	for _, step := range []int64{5, 6} {
		if err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, step, st); err != nil {
			t.Fatal(err)
		}
	}

	out, err := ringo(t, "ckpt", "list", dir)
	if err != nil || !strings.Contains(out, "complete") || !strings.Contains(out, "6 ") {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = ringo(t, "ckpt", "inspect", dir)
	if err != nil || !strings.Contains(out, "step 6") || !strings.Contains(out, "BF16") || !strings.Contains(out, `"epoch":2`) {
		t.Errorf("inspect: %v\n%s", err, out)
	}
	out, err = ringo(t, "ckpt", "inspect", filepath.Join(dir, "step-00000005"), "--json")
	var m checkpoint.Manifest
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || m.Step != 5 {
		t.Errorf("inspect --json: %v\n%s", err, out)
	}
	if out, err = ringo(t, "ckpt", "verify", dir); err != nil {
		t.Errorf("verify of an intact checkpoint failed: %v\n%s", err, out)
	}

	restored := t.TempDir()
	if out, err = ringo(t, "ckpt", "restore", dir, "--world-size", "3", "--out", restored); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if rm, err := checkpoint.ReadManifest(restored, 6); err != nil || rm.WorldSize != 3 {
		t.Errorf("restored manifest: %+v %v", rm, err)
	}
	model := filepath.Join(t.TempDir(), "model.safetensors")
	if out, err = ringo(t, "ckpt", "export", dir, "--out", model); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(model)
	if _, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("export is not safetensors: %v", err)
	}

	// Corrupt step 6: verify must fail naming the file and the tensor.
	shard := filepath.Join(dir, "step-00000006", "shard-00000-of-00001.safetensors")
	sb, _ := os.ReadFile(shard)
	sb[len(sb)-1] ^= 0xff
	os.WriteFile(shard, sb, 0o644)
	out, err = ringo(t, "ckpt", "verify", dir)
	if err == nil || !strings.Contains(out, "shard-00000-of-00001.safetensors") || !strings.Contains(out, `tensor "`) {
		t.Errorf("verify of a corrupt checkpoint: %v\n%s", err, out)
	}
	if _, err := ringo(t, "ckpt", "verify", t.TempDir()); err == nil {
		t.Errorf("verify of an empty directory succeeded")
	}
}
