// Package stats holds the small statistics the benchmarks, the alerts
// and the topology solver share. It is not API.
package stats

import "slices"

// Median returns the median of xs (the mean of the middle two for an
// even count; 0 for none). xs is not changed.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
