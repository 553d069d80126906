package collective

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

// A Tuning table says which all-reduce algorithm AlgoAuto picks for a
// world size and a message size, from a measurement of the machine it
// runs on (`ringo bench tune` writes one), as NCCL's tuner plugins and
// Open MPI's coll/tuned rule files do. Without one, AlgoAuto uses the
// built-in thresholds of Config.
//
// The file is JSON, version 1:
//
//	{"version": 1, "measured": "2 cores, loopback TCP, 2026-12-06",
//	 "rules": [
//	   {"world": 4, "below_bytes": 262144, "algo": "rd"},
//	   {"world": 4, "below_bytes": 4194304, "algo": "hd"},
//	   {"world": 4, "algo": "ring"}]}
//
// For a world of n ranks the rules of the largest world ≤ n that has
// any apply (a table measured at 4 ranks also steers 5 to 7); within
// them the first whose below_bytes exceeds the message size wins, and a
// rule without below_bytes matches every size. A world smaller than every
// world in the table, or a size past every rule, falls back to the
// built-in thresholds.
type Tuning struct {
	Version  int        `json:"version"`
	Measured string     `json:"measured,omitempty"` // free text: where and when
	Rules    []TuneRule `json:"rules"`
}

// TuneRule is one band of message sizes for one world size.
type TuneRule struct {
	World      int    `json:"world"`
	BelowBytes int64  `json:"below_bytes,omitempty"` // 0: no upper bound
	Algo       string `json:"algo"`

	algo Algo // parsed Algo
}

// TuningVersion is the version of the tuning file this package writes.
const TuningVersion = 1

// ParseTuning reads and checks a tuning table; errors name the rule.
func ParseTuning(b []byte) (*Tuning, error) {
	var t Tuning
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("tuning table: %w", err)
	}
	if t.Version != TuningVersion {
		return nil, fmt.Errorf("tuning table: version %d, this ringo reads version %d", t.Version, TuningVersion)
	}
	if len(t.Rules) == 0 {
		return nil, fmt.Errorf("tuning table: no rules")
	}
	for i := range t.Rules {
		r := &t.Rules[i]
		a, err := ParseAlgo(r.Algo)
		if err != nil || a == AlgoAuto || a == AlgoHier {
			return nil, fmt.Errorf("tuning table: rule %d (world %d): algorithm %q: want ring, rd or hd", i, r.World, r.Algo)
		}
		if r.World < 1 || r.BelowBytes < 0 {
			return nil, fmt.Errorf("tuning table: rule %d: world %d must be positive and below_bytes %d not negative", i, r.World, r.BelowBytes)
		}
		r.algo = a
	}
	// Rules of one world in increasing size bands, unbounded last, so that
	// the first match is the band a size falls into.
	sort.SliceStable(t.Rules, func(i, j int) bool {
		a, b := t.Rules[i], t.Rules[j]
		if a.World != b.World {
			return a.World < b.World
		}
		return a.BelowBytes != 0 && (b.BelowBytes == 0 || a.BelowBytes < b.BelowBytes)
	})
	return &t, nil
}

// LoadTuning reads a tuning file.
func LoadTuning(path string) (*Tuning, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the tuning table: %w", err)
	}
	t, err := ParseTuning(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Marshal returns the table as the JSON a file holds.
func (t *Tuning) Marshal() ([]byte, error) { return json.MarshalIndent(t, "", "  ") }

// lookup is the algorithm the table gives for bytes on a world of n, and
// whether it gives one.
func (t *Tuning) lookup(bytes, n int) (Algo, bool) {
	if t == nil {
		return AlgoAuto, false
	}
	world := 0
	for _, r := range t.Rules {
		if r.World <= n {
			world = max(world, r.World)
		}
	}
	if world == 0 {
		return AlgoAuto, false
	}
	for _, r := range t.Rules {
		if r.World == world && (r.BelowBytes == 0 || int64(bytes) < r.BelowBytes) {
			return r.algo, true
		}
	}
	return AlgoAuto, false
}
