package checkpoint

import (
	"fmt"
	"os"

	"github.com/ringo-ml/ringo/internal/audit"
)

// Retain deletes complete checkpoints in dir beyond the newest keepLast,
// sparing those whose step is a multiple of keepEvery (when positive). The
// newest complete checkpoint is never deleted, whatever keepLast says.
// Incomplete directories are left to the next Save's clean-up. It returns
// the steps it removed.
func Retain(dir string, keepLast int, keepEvery int64) ([]int64, error) {
	entries, err := List(dir)
	if err != nil {
		return nil, err
	}
	keepLast = max(keepLast, 1)
	var removed []int64
	kept := 0
	for _, e := range entries { // newest first
		if !e.Complete {
			continue
		}
		if kept < keepLast {
			kept++
			continue
		}
		if keepEvery > 0 && e.Step%keepEvery == 0 {
			continue
		}
		if err := os.RemoveAll(e.Dir); err != nil {
			return removed, fmt.Errorf("removing %s: %w", e.Dir, err)
		}
		removed = append(removed, e.Step)
		audit.FromEnv().Record("checkpoint.delete", map[string]any{"dir": e.Dir, "step": e.Step, "why": "retention"})
	}
	return removed, nil
}
