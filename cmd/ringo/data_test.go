package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func idx(dims []uint32, data []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0, 0, 8, byte(len(dims))})
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(data)
	return b.Bytes()
}

func TestDataCommands(t *testing.T) {
	in := t.TempDir()
	n := 50
	os.WriteFile(filepath.Join(in, "images"), idx([]uint32{uint32(n), 28, 28}, make([]byte, n*784)), 0o644)
	labels := make([]byte, n)
	for i := range labels {
		labels[i] = byte(i % 10)
	}
	os.WriteFile(filepath.Join(in, "labels"), idx([]uint32{uint32(n)}, labels), 0o644)
	out := filepath.Join(t.TempDir(), "mnist")
	if o, err := ringo(t, "data", "pack", "--from", "mnist", filepath.Join(in, "images"), filepath.Join(in, "labels"), "--out", out, "--shard-size", "16K", "--block-size", "4K"); err != nil || !strings.Contains(o, "packed 50 records") {
		t.Fatalf("pack: %v\n%s", err, o)
	}
	o, err := ringo(t, "data", "inspect", out)
	if err != nil || !strings.Contains(o, "50 records") || !strings.Contains(o, "label=") || !strings.Contains(o, "compression ratio") {
		t.Errorf("inspect: %v\n%s", err, o)
	}
	if o, err := ringo(t, "data", "verify", out); err != nil {
		t.Errorf("verify: %v\n%s", err, o)
	}
	shard := filepath.Join(out, "shard-00000.rgs")
	b, _ := os.ReadFile(shard)
	b[40] ^= 0xff
	os.WriteFile(shard, b, 0o644)
	if o, err := ringo(t, "data", "verify", out); err == nil || !strings.Contains(o, "shard-00000.rgs") {
		t.Errorf("verify of a corrupt dataset: %v\n%s", err, o)
	}
	if _, err := ringo(t, "data", "pack", "--from", "parquet", "x", "--out", t.TempDir()); err == nil {
		t.Errorf("an unknown input format was accepted")
	}
}
