package topology

import (
	"bytes"
	"image/png"
	"math/rand/v2"
	"strings"
	"testing"
)

func sampleMatrix() *Matrix {
	m := NewMatrix(3)
	m.Hosts = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	m.Bandwidth = [][]float64{{0, 1.1e9, 2.5e8}, {1.05e9, 0, 9e8}, {2.6e8, 8.8e8, 0}}
	m.LatencyUS = [][]float64{{0, 35.2, 80}, {36, 0, 41.25}, {79.9, 40, 0}}
	m.Errors = []string{"1 -> 2: retried once"}
	return m
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, sampleMatrix()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"bandwidth MB/s", "latency µs", "0 10.0.0.1", "1100", "250", "35.2", "41.2", "not measured: 1 -> 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	if !strings.HasSuffix(strings.TrimRight(lines[2], " "), "-  1100  250") {
		t.Errorf("first bandwidth row %q, want it to end in \"-  1100  250\"", lines[2])
	}
}

func TestWriteHeatMap(t *testing.T) {
	for _, m := range []*Matrix{sampleMatrix(), NewMatrix(1), NewMatrix(0), randomMatrix(rand.New(rand.NewPCG(1, 1)), 16, "hosts")} {
		if m.Size() == 0 {
			var b bytes.Buffer
			if err := WriteHeatMap(&b, m, nil, 400, 300); err == nil {
				t.Error("an empty matrix drew")
			}
			continue
		}
		ring, _ := SolveRing(m)
		var b bytes.Buffer
		if err := WriteHeatMap(&b, m, ring, 640, 480); err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(&b)
		if err != nil {
			t.Fatalf("%d ranks: not a PNG: %v", m.Size(), err)
		}
		if r := img.Bounds(); r.Dx() != 640 || r.Dy() != 480 {
			t.Errorf("%d ranks: %v, want 640×480", m.Size(), r)
		}
		// A drawing, not a blank page: count the distinct colours.
		colours := map[[4]uint32]bool{}
		for y := 0; y < 480; y += 4 {
			for x := 0; x < 640; x += 4 {
				r, g, bl, a := img.At(x, y).RGBA()
				colours[[4]uint32{r, g, bl, a}] = true
			}
		}
		if len(colours) < 10 {
			t.Errorf("%d ranks: only %d colours in the image", m.Size(), len(colours))
		}
	}
	if err := WriteHeatMap(&bytes.Buffer{}, sampleMatrix(), nil, 20, 20); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("a 20×20 heat map: %v", err)
	}
}
