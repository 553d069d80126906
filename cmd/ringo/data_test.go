package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
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
	if !strings.Contains(o, "shard format: version 2 (") {
		t.Errorf("inspect does not say the shards' format version:\n%s", o)
	}
	// Version 1, for readers that know only it, packs, reads and verifies
	// as well; a version no reader knows is a usage error.
	v1 := filepath.Join(t.TempDir(), "v1")
	if o, err := ringo(t, "data", "pack", "--from", "mnist", filepath.Join(in, "images"), filepath.Join(in, "labels"), "--out", v1, "--shard-size", "16K", "--block-size", "4K", "--format-version", "1"); err != nil {
		t.Fatalf("pack --format-version 1: %v\n%s", err, o)
	}
	if o, err := ringo(t, "data", "inspect", v1); err != nil || !strings.Contains(o, "shard format: version 1 (") || !strings.Contains(o, "50 records") {
		t.Errorf("inspect of version 1: %v\n%s", err, o)
	}
	if o, err := ringo(t, "data", "verify", v1); err != nil {
		t.Errorf("verify of version 1: %v\n%s", err, o)
	}
	if o, err := ringo(t, "data", "pack", "--from", "mnist", filepath.Join(in, "images"), filepath.Join(in, "labels"), "--out", t.TempDir(), "--format-version", "3"); err == nil || !strings.Contains(o, "--format-version") || !strings.Contains(o, "Version 3 is not a format version") {
		t.Errorf("pack --format-version 3: %v\n%s", err, o)
	}
}

// bench data packs, reads plainly and streams for every round, and says
// what each round measured and how much the loaders read from storage.
func TestBenchDataRounds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "syn")
	o, err := ringo(t, "bench", "data", dir, "--make", "2M", "--record", "4096", "--np", "2", "--batch", "8", "--window", "64", "--rounds", "2", "--plain-reads", "3", "--json")
	if err != nil {
		t.Fatalf("bench data: %v\n%s", err, o)
	}
	var r struct {
		Records      int64     `json:"records"`
		RawRounds    []float64 `json:"raw_rounds_gbps"`
		StreamRounds []float64 `json:"stream_rounds_gbps"`
		PlainReads   int       `json:"plain_reads"`
		LoaderReads  int       `json:"loader_reads"`
		Amp          float64   `json:"read_amplification"`
	}
	if err := json.Unmarshal([]byte(o), &r); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	if r.Records != 512 || len(r.RawRounds) != 2 || len(r.StreamRounds) != 2 || r.PlainReads != 3 || r.LoaderReads < 4 {
		t.Errorf("result %+v", r)
	}
	// Two ranks of order V2 read disjoint blocks: about the dataset once.
	if r.Amp < 1 || r.Amp > 1.5 {
		t.Errorf("2 ranks read %.2fx the dataset", r.Amp)
	}
}
