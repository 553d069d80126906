package checkpoint_test

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

const testKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

func TestEncodedCheckpoints(t *testing.T) {
	t.Setenv(checkpoint.EnvKey, testKey)
	for _, o := range []checkpoint.Options{{Compress: true}, {Encrypt: true}, {Compress: true, Encrypt: true}} {
		dir := t.TempDir()
		coords := comms(t, 3)
		errs := make(chan error, 3)
		for r, c := range coords {
			go func() { errs <- checkpoint.SaveWith(context.Background(), c, dir, 2, stateFor(r, 3, true), o) }()
		}
		for range 3 {
			if err := <-errs; err != nil {
				t.Fatalf("%+v: %v", o, err)
			}
		}
		m, _ := checkpoint.ReadManifest(dir, 2)
		if m.Encoding == "" {
			t.Fatalf("%+v: the manifest does not record the encoding", o)
		}
		for loaded := 1; loaded <= 4; loaded++ {
			for r := range loaded {
				st := stateFor(r, loaded, false)
				if err := checkpoint.Load(context.Background(), dir, 2, st); err != nil {
					t.Fatalf("%+v: load by %d ranks: %v", o, loaded, err)
				}
				want := stateFor(r, loaded, true)
				for i := range st.Tensors {
					if !bytes.Equal(st.Tensors[i].Data, want.Tensors[i].Data) {
						t.Fatalf("%+v: tensor %q differs", o, st.Tensors[i].Name)
					}
				}
			}
		}
		if problems, err := checkpoint.Verify(dir, 2, nil); err != nil || len(problems) > 0 {
			t.Fatalf("%+v: verify: %v %v", o, problems, err)
		}
		if o.Encrypt {
			t.Setenv(checkpoint.EnvKey, strings.Repeat("ab", 32))
			err := checkpoint.Load(context.Background(), dir, 2, stateFor(0, 1, false))
			if err == nil || !strings.Contains(err.Error(), "wrong key") {
				t.Errorf("wrong key: got %v", err)
			}
			t.Setenv(checkpoint.EnvKey, "")
			err = checkpoint.Load(context.Background(), dir, 2, stateFor(0, 1, false))
			if err == nil || !strings.Contains(err.Error(), checkpoint.EnvKey) {
				t.Errorf("no key: got %v, want it to say how to give one", err)
			}
			t.Setenv(checkpoint.EnvKey, testKey)
		}
	}
}

// Shuffled byte planes make smooth float32 data compress; the shard must
// shrink well below the raw size.
func TestCompressionShrinksFloats(t *testing.T) {
	n := 1 << 16
	data := make([]byte, 4*n)
	for i := range n {
		v := math.Float32bits(float32(math.Sin(float64(i) / 1000)))
		data[4*i], data[4*i+1], data[4*i+2], data[4*i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	st := &checkpoint.State{Tensors: []checkpoint.Tensor{{Name: "w", DType: safetensors.F32, Shape: []int64{int64(n)}, Data: data}}}
	dir := t.TempDir()
	if err := checkpoint.SaveWith(context.Background(), checkpoint.Single{}, dir, 1, st, checkpoint.Options{Compress: true}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "step-00000001", "shard-00000-of-00001.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if ratio := float64(len(data)) / float64(fi.Size()); ratio < 1.5 {
		t.Errorf("compressed shard is %d bytes for %d raw (ratio %.2f)", fi.Size(), len(data), ratio)
	}
}
