package stats

import "testing"

func TestMedian(t *testing.T) {
	in := []float64{5, 1, 4, 2}
	for _, c := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {in, 3}} {
		if got := Median(c.xs); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
	if in[0] != 5 || in[3] != 2 {
		t.Errorf("Median sorted its argument: %v", in)
	}
}
