package diloco

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func randomDelta(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64()) * 1e-2
	}
	return v
}

func codecs(t testing.TB, c Config) (*encoder, *decoder) {
	e, err := newEncoder(c)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close(); d.close() })
	return e, d
}

// What a message carries plus what stays in error feedback is what went
// in, exactly, for every precision, with and without top-k and zstd.
func TestMessagePlusResidualIsTheDelta(t *testing.T) {
	for _, prec := range []Precision{F32, BF16, FP16} {
		for _, topK := range []float64{0, 0.01, 0.3} {
			for _, z := range []bool{false, true} {
				e, d := codecs(t, Config{Precision: prec, TopK: topK, Zstd: z})
				for _, n := range []int{0, 1, 7, 1000, 4099} {
					in := randomDelta(n, uint64(n))
					resid := slices.Clone(in)
					msg := e.encode(nil, resid)
					got := make([]float32, n)
					if err := d.addTo(got, msg); err != nil {
						t.Fatalf("%s top-k %v zstd %v n %d: %v", prec, topK, z, n, err)
					}
					kept := 0
					for i := range in {
						if got[i] != 0 {
							kept++
						}
						// got and resid come from in[i] by one rounding and
						// one subtraction, which is exact (Sterbenz).
						if got[i]+resid[i] != in[i] {
							t.Fatalf("%s top-k %v n %d: value %d: sent %v + kept %v != %v", prec, topK, n, i, got[i], resid[i], in[i])
						}
					}
					if want := e.keep(n); kept > want {
						t.Errorf("%s top-k %v n %d: %d values sent, want at most %d", prec, topK, n, kept, want)
					}
					if prec == F32 && topK == 0 && kept != n-zeros(in) {
						t.Errorf("n %d: dense float32 sent %d of %d values", n, kept, n)
					}
				}
			}
		}
	}
}

func zeros(v []float32) int {
	z := 0
	for _, x := range v {
		if x == 0 {
			z++
		}
	}
	return z
}

// Top-k sends the k values of largest magnitude; among equal magnitudes,
// the lowest indices.
func TestTopKChoosesTheLargest(t *testing.T) {
	e, d := codecs(t, Config{Precision: F32, TopK: 0.3})
	in := []float32{1, -5, 2, 5, 0, -2, 2, 3, -1, 2}
	resid := slices.Clone(in)
	got := make([]float32, len(in))
	if err := d.addTo(got, e.encode(nil, resid)); err != nil {
		t.Fatal(err)
	}
	want := []float32{0, -5, 0, 5, 0, 0, 0, 3, 0, 0}
	if !slices.Equal(got, want) {
		t.Errorf("sent %v, want %v", got, want)
	}
	e2, _ := codecs(t, Config{Precision: F32, TopK: 0.5})
	resid = slices.Clone(in)
	got = make([]float32, len(in))
	if err := d.addTo(got, e2.encode(nil, resid)); err != nil {
		t.Fatal(err)
	}
	want = []float32{0, -5, 2, 5, 0, -2, 0, 3, 0, 0} // ties of 2: indices 2 and 5 first
	if !slices.Equal(got, want) {
		t.Errorf("half: sent %v, want %v", got, want)
	}
	for _, n := range []int{1, 2, 3, 100, 1001} {
		v := randomDelta(n, 5)
		for _, k := range []int{1, n / 2, n} {
			if k < 1 {
				continue
			}
			s := make([]float32, n)
			for i, x := range v {
				s[i] = float32(math.Abs(float64(x)))
			}
			sorted := slices.Clone(s)
			slices.Sort(sorted)
			if got, want := nthLargest(s, k), sorted[n-k]; got != want {
				t.Errorf("n %d k %d: %v, want %v", n, k, got, want)
			}
		}
	}
}

// A damaged message is refused, named, and never panics.
func TestBadMessagesAreRefused(t *testing.T) {
	e, d := codecs(t, Config{Precision: BF16, TopK: 0.1, Zstd: true})
	good := e.encode(nil, randomDelta(500, 3))
	flip := func(off int) []byte { m := slices.Clone(good); m[off] ^= 0x40; return m }
	for name, m := range map[string][]byte{
		"short":     good[:10],
		"magic":     flip(0),
		"version":   flip(4),
		"type":      flip(5),
		"count":     flip(8),
		"nnz":       flip(16),
		"crc":       flip(24),
		"length":    flip(28),
		"body":      flip(len(good) - 3),
		"truncated": good[:len(good)-1],
	} {
		err := d.addTo(make([]float32, 500), m)
		if !errors.Is(err, errMessage) {
			t.Errorf("%s: %v, want a bad-message error", name, err)
		}
	}
	if err := d.addTo(make([]float32, 499), good); !errors.Is(err, errMessage) {
		t.Errorf("wrong length: %v", err)
	}
}

// FuzzDecode feeds the decoder arbitrary bytes: it must refuse them or add
// them, never panic or write out of bounds. The seed corpus under testdata
// holds a message of each kind.
func FuzzDecode(f *testing.F) {
	for _, c := range []Config{{Precision: F32}, {Precision: BF16, TopK: 0.2}, {Precision: FP16, TopK: 0.5, Zstd: true}} {
		e, _ := codecs(f, c)
		f.Add(e.encode(nil, randomDelta(64, 9)))
	}
	d, err := newDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		acc := make([]float32, 64)
		if err := d.addTo(acc, msg); err != nil && !errors.Is(err, errMessage) {
			t.Fatalf("error not marked as a bad message: %v", err)
		}
	})
}

// The committed corpus must exist, so that the fuzz target starts from
// real messages even when run alone.
func TestFuzzCorpusIsCommitted(t *testing.T) {
	ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzDecode"))
	if err != nil || len(ents) == 0 {
		t.Fatalf("testdata/fuzz/FuzzDecode: %v (%d files)", err, len(ents))
	}
}
