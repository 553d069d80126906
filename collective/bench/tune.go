package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/stats"
)

// tuneAlgos are the all-reduce algorithms `ringo bench tune` compares.
// On 2 ranks halving-doubling is the ring, step for step, so it is left
// out there.
func tuneAlgos(n int) []collective.Algo {
	if n == 2 {
		return []collective.Algo{collective.AlgoRecursiveDoubling, collective.AlgoRing}
	}
	return []collective.Algo{collective.AlgoRecursiveDoubling, collective.AlgoHalvingDoubling, collective.AlgoRing}
}

// runTune is `ringo bench tune`: the all-reduce sweep once per algorithm,
// c.Rounds times over, the algorithms interleaved within each round (so
// that a machine that gets busier or quieter meanwhile shifts them
// alike); then, for every size, the algorithm with the lowest median
// time, written as a tuning table (collective.Tuning) for this world
// size.
func runTune(ctx context.Context, c Config, stdout, stderr io.Writer) error {
	algos := tuneAlgos(c.NP)
	times := map[collective.Algo]map[int64][]float64{}
	for _, a := range algos {
		times[a] = map[int64][]float64{}
	}
	for round := 1; round <= c.Rounds; round++ {
		for _, a := range algos {
			fmt.Fprintf(stderr, "# tune: round %d of %d, %s\n", round, c.Rounds, a)
			var out bytes.Buffer
			sweep := c
			sweep.Coll.Algo, sweep.JSON = a, true
			if err := runParent(ctx, sweep, &out, dropComments{stderr}, collective.EnvAlgo+"="+a.String()); err != nil {
				return fmt.Errorf("tune: the %s sweep of round %d: %w", a, round, err)
			}
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				var r Row
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					return fmt.Errorf("tune: the %s sweep printed %q: %v", a, sc.Text(), err)
				}
				if r.Algo != a.String() {
					return fmt.Errorf("tune: the %s sweep ran %s at %d bytes", a, r.Algo, r.Bytes)
				}
				times[a][r.Bytes] = append(times[a][r.Bytes], r.TimeUS)
			}
		}
	}
	var sizes []int64
	for b := range times[algos[0]] {
		sizes = append(sizes, b)
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
	if len(sizes) == 0 {
		return fmt.Errorf("tune: the sweeps measured no sizes")
	}

	fmt.Fprintf(stdout, "# ringo bench tune: np %d, transport %s, %d rounds of %d iterations, medians in us\n", c.NP, c.Transport, c.Rounds, c.Iters)
	fmt.Fprintf(stdout, "# %10s", "size (B)")
	for _, a := range algos {
		fmt.Fprintf(stdout, " %10s", a)
	}
	fmt.Fprintf(stdout, "  best\n")
	best := make([]collective.Algo, len(sizes))
	for i, b := range sizes {
		fmt.Fprintf(stdout, "  %10d", b)
		bestT := 0.0
		for _, a := range algos {
			m := stats.Median(times[a][b])
			fmt.Fprintf(stdout, " %10.1f", m)
			if bestT == 0 || m < bestT {
				best[i], bestT = a, m
			}
		}
		fmt.Fprintf(stdout, "  %s\n", best[i])
	}

	host, _ := os.Hostname()
	t := &collective.Tuning{
		Version:  collective.TuningVersion,
		Measured: fmt.Sprintf("ringo bench tune on %s (%d cores), np %d, transport %s, buffers in %s, %s", host, runtime.NumCPU(), c.NP, c.Transport, bufferPlace(c.Device), time.Now().UTC().Format(time.DateOnly)),
		Rules:    bands(c.NP, sizes, best),
	}
	if err := writeTuning(c.Out, t); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# wrote %s: %d rules for a world of %d; use it with %s=%s\n", c.Out, len(t.Rules), c.NP, collective.EnvTuning, c.Out)
	return nil
}

// bands turns the best algorithm per measured size into rules: runs of
// sizes with the same best become one band, which ends where the next
// band's first size begins; the last band has no end.
func bands(world int, sizes []int64, best []collective.Algo) []collective.TuneRule {
	var rules []collective.TuneRule
	for i := range sizes {
		if i+1 < len(sizes) && best[i+1] == best[i] {
			continue
		}
		r := collective.TuneRule{World: world, Algo: best[i].String()}
		if i+1 < len(sizes) {
			r.BelowBytes = sizes[i+1]
		}
		rules = append(rules, r)
	}
	return rules
}

// writeTuning writes t to path atomically (a temporary file renamed over
// it), after checking that it reads back.
func writeTuning(path string, t *collective.Tuning) error {
	b, err := t.Marshal()
	if err != nil {
		return err
	}
	if _, err := collective.ParseTuning(b); err != nil {
		return fmt.Errorf("tune: the table does not read back: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tuning-*")
	if err != nil {
		return fmt.Errorf("tune: writing %s: %w", path, err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("tune: writing %s: %w", path, werr)
	}
	return nil
}

// dropComments passes on what the workers say except the sweeps' own
// preamble lines (those that start with #), which would repeat for every
// sweep.
type dropComments struct{ w io.Writer }

func (d dropComments) Write(p []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			if _, err := io.WriteString(d.w, line); err != nil {
				return 0, err
			}
		}
	}
	return len(p), nil
}
