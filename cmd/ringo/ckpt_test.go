package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// verify, restore and export show progress on stderr when asked; under a
// test stderr is no terminal, so without --progress they print nothing
// there, and their stdout is the same either way.
func TestCkptProgress(t *testing.T) {
	dir := t.TempDir()
	st := &checkpoint.State{Tensors: []checkpoint.Tensor{
		{Name: "w", DType: safetensors.F32, Shape: []int64{64, 16}, Data: make([]byte, 64*16*4)},
		{Name: "b", DType: safetensors.F32, Shape: []int64{16}, Data: make([]byte, 16*4)},
	}}
	if err := checkpoint.Save(context.Background(), checkpoint.Single{}, dir, 3, st); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		verb string
	}{
		{[]string{"ckpt", "verify", dir}, "verifying"},
		{[]string{"ckpt", "restore", dir, "--world-size", "2", "--out", ""}, "resharding"},
		{[]string{"ckpt", "export", dir, "--out", ""}, "exporting"},
	} {
		var outs [2]string
		for i, force := range []bool{false, true} {
			args := slices.Clone(tc.args)
			if args[len(args)-1] == "" {
				args[len(args)-1] = filepath.Join(t.TempDir(), "out")
			}
			if force {
				args = append(args, "--progress")
			}
			out, errOut, code := ringoExit(t, args...)
			if code != 0 {
				t.Fatalf("ringo %v: exit %d\n%s%s", args, code, out, errOut)
			}
			outs[i] = out
			if !force {
				if errOut != "" {
					t.Errorf("ringo %v printed on stderr, which is not a terminal:\n%q", args, errOut)
				}
				continue
			}
			// One line rewritten with \r, ending at the total, then ended.
			lines := strings.Split(strings.TrimPrefix(errOut, "\r"), "\r")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, tc.verb+" ") || !strings.HasSuffix(last, "\n") || strings.Count(errOut, "\n") != 1 {
				t.Errorf("ringo %v: progress %q, want %q lines ending in a newline", args, errOut, tc.verb)
				continue
			}
			if done, total, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(last, tc.verb+" "), "\n"), " / "); !ok || done != total {
				t.Errorf("ringo %v: last progress %q does not reach the total", args, last)
			}
		}
		if tc.verb == "verifying" && outs[0] != outs[1] {
			t.Errorf("stdout differs with --progress:\n%s\n%s", outs[0], outs[1])
		}
	}
}
