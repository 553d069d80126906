package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"time"
)

// MatrixVersion is the version of the matrix file format.
const MatrixVersion = 1

// Matrix is what a probe measured between every pair of ranks: bandwidth
// in bytes per second and one-way latency, both for traffic from row to
// column. The diagonal is unused (0). It is saved as JSON:
//
//	{"version": 1, "time": "2026-11-28T23:40:00Z", "hosts": ["10.0.0.1", ...],
//	 "bandwidth": [[0, 1.1e9, ...], ...], "latency_us": [[0, 35.2, ...], ...]}
//
// A pair that could not be measured has bandwidth 0 and its reason in
// Errors.
type Matrix struct {
	Version   int         `json:"version"`
	Time      time.Time   `json:"time"`
	Hosts     []string    `json:"hosts"`      // who each rank is, for people
	Bandwidth [][]float64 `json:"bandwidth"`  // bytes/s, row -> column
	LatencyUS [][]float64 `json:"latency_us"` // microseconds, row -> column
	Errors    []string    `json:"errors,omitempty"`
}

// NewMatrix returns an n×n matrix of zeros stamped now.
func NewMatrix(n int) *Matrix {
	m := &Matrix{Version: MatrixVersion, Time: time.Now().UTC(), Hosts: make([]string, n),
		Bandwidth: make([][]float64, n), LatencyUS: make([][]float64, n)}
	for i := range n {
		m.Bandwidth[i] = make([]float64, n)
		m.LatencyUS[i] = make([]float64, n)
	}
	return m
}

// Size is the number of ranks.
func (m *Matrix) Size() int { return len(m.Bandwidth) }

// Link is the bandwidth usable both ways between a and b: the smaller of
// the two directions, since a ring may use either.
func (m *Matrix) Link(a, b int) float64 { return math.Min(m.Bandwidth[a][b], m.Bandwidth[b][a]) }

// Validate reports a matrix of the wrong shape, or with negative or
// non-finite numbers, naming the row and column.
func (m *Matrix) Validate() error {
	if m.Version != MatrixVersion {
		return fmt.Errorf("matrix version %d, want %d", m.Version, MatrixVersion)
	}
	n := len(m.Bandwidth)
	if n == 0 {
		return errors.New("matrix has no ranks")
	}
	if len(m.LatencyUS) != 0 && len(m.LatencyUS) != n {
		return fmt.Errorf("latency has %d rows, bandwidth %d", len(m.LatencyUS), n)
	}
	if len(m.Hosts) != 0 && len(m.Hosts) != n {
		return fmt.Errorf("%d hosts for %d ranks", len(m.Hosts), n)
	}
	for name, rows := range map[string][][]float64{"bandwidth": m.Bandwidth, "latency_us": m.LatencyUS} {
		for i, row := range rows {
			if len(row) != n {
				return fmt.Errorf("%s row %d has %d columns, want %d", name, i, len(row), n)
			}
			for j, v := range row {
				if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("%s[%d][%d] = %v: want a finite number of at least 0", name, i, j, v)
				}
			}
		}
	}
	return nil
}

// ReadMatrix reads and validates a matrix file.
func ReadMatrix(path string) (*Matrix, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Matrix
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a matrix file: %v", path, err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

// WriteMatrix writes m as indented JSON.
func WriteMatrix(path string, m *Matrix) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
