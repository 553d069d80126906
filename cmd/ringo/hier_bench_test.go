package main

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var sweepRow = regexp.MustCompile(`sweep \S+ \S*: all-reduce of (\d+) bytes: median (\S+) s`)

// BenchmarkHierTwoHosts: two namespace hosts of two workers each, float32
// sum all-reduce from 4 KiB to 256 MiB (sizes x4; RINGO_BENCH_SWEEP=MIN:MAX
// narrows it), under six setups run one after another in each iteration:
// the flat algorithms over TCP only, the flat ones over mix (shm within a
// host, TCP across), the hierarchical one forced at every size, the
// default (auto: flat below HierBytes, hierarchical above), and the flat
// and the default ones again on a buffer in an shm window, which ranks on
// one host lend each other from LendBytes (2 MiB) up;
// RINGO_BENCH_SETUPS=mix-hier,tcp-flat runs only those named. Each job
// reports the median of 3 timed calls per size; the table is the median
// over iterations (-benchtime=3x for three), printed on stdout.
func BenchmarkHierTwoHosts(b *testing.B) {
	sweep := "4K:256M"
	if v := os.Getenv("RINGO_BENCH_SWEEP"); v != "" {
		sweep = v
	}
	type setup struct {
		name string
		args []string
	}
	setups := []setup{
		{"tcp-flat", []string{"--transport", "tcp"}},
		{"mix-flat", []string{"--transport", "mix"}},
		{"mix-hier", []string{"--transport", "mix"}},
		{"mix-auto", []string{"--transport", "mix"}},
		{"window-flat", []string{"--transport", "mix"}},
		{"window-auto", []string{"--transport", "mix"}},
	}
	if v := os.Getenv("RINGO_BENCH_SETUPS"); v != "" {
		keep := strings.Split(v, ",")
		setups = slices.DeleteFunc(setups, func(s setup) bool { return !slices.Contains(keep, s.name) })
		if len(setups) == 0 {
			b.Fatalf("RINGO_BENCH_SETUPS=%q names none of tcp-flat, mix-flat, mix-hier, mix-auto, window-flat, window-auto", v)
		}
	}
	worker := map[string][]string{
		"tcp-flat": {"--algo", "auto"},
		"mix-flat": {"--algo", "auto", "--hier-bytes", "1G"},
		"mix-hier": {"--algo", "hier"},
		"mix-auto": {},
		// mix-flat and mix-auto on buffers in shm windows: from LendBytes
		// up, ranks on one host lend each other their buffers instead of
		// copying them through the rings.
		"window-flat": {"--algo", "auto", "--hier-bytes", "1G", "--window"},
		"window-auto": {"--window"},
	}
	h := newHosts(b, 2)
	tok := tokenFile(b)
	times := map[string]map[int][]float64{}
	var sizes []int
	port := 29440
	for i := 0; i < b.N; i++ {
		// Each iteration starts one setup later, so that none always runs
		// first or last.
		for k := range setups {
			s := setups[(k+i)%len(setups)]
			port++
			var ls []*launcher
			for j := range h.Names {
				args := append([]string{"--nnodes", "2", "--nproc-per-node", "2", "--rdzv-endpoint", fmt.Sprintf("%s:%d", h.Addrs[0], port),
					"--rdzv-id", s.name, "--node-rank", strconv.Itoa(j), "--token-file", tok, "--rdzv-timeout", "60s", "--max-restarts", "0"}, s.args...)
				args = append(append(args, "--", workerBin, "--steps", "1", "--bench-sweep", sweep, "--bench-iters", "3"), worker[s.name]...)
				ls = append(ls, h.Launch(j, args...))
			}
			out := ""
			for j, l := range ls {
				if err := <-l.Done; err != nil {
					b.Fatalf("%s: host %d: %v\n%s", s.name, j, err, l.Out.String())
				}
				l.Done <- nil
				out += l.Out.String()
			}
			if times[s.name] == nil {
				times[s.name] = map[int][]float64{}
			}
			for _, m := range sweepRow.FindAllStringSubmatch(out, -1) {
				size, _ := strconv.Atoi(m[1])
				sec, _ := strconv.ParseFloat(m[2], 64)
				times[s.name][size] = append(times[s.name][size], sec)
				if !slices.Contains(sizes, size) {
					sizes = append(sizes, size)
				}
			}
		}
	}
	b.StopTimer()
	med := func(xs []float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		ys := slices.Clone(xs)
		slices.Sort(ys)
		return ys[len(ys)/2]
	}
	slices.Sort(sizes)
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| bytes | tcp-flat | mix-flat | mix-hier | mix-auto | window-flat | window-auto | hier vs tcp | hier vs mix-flat | auto vs mix-flat | window-auto vs tcp | window-auto vs window-flat |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, size := range sizes {
		tf, mf, mh, ma := med(times["tcp-flat"][size]), med(times["mix-flat"][size]), med(times["mix-hier"][size]), med(times["mix-auto"][size])
		wf, wa := med(times["window-flat"][size]), med(times["window-auto"][size])
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", human(size), dur(tf), dur(mf), dur(mh), dur(ma), dur(wf), dur(wa),
			ratio(tf, mh), ratio(mf, mh), ratio(mf, ma), ratio(tf, wa), ratio(wf, wa))
		if size == 64<<20 && tf > 0 && mh > 0 {
			b.ReportMetric(tf/mh, "hier/tcp@64MiB")
		}
		if size == 64<<20 && tf > 0 && wa > 0 {
			b.ReportMetric(tf/wa, "window-auto/tcp@64MiB")
		}
	}
	// On stdout as well as in the log, which go test truncates for
	// benchmarks without -v.
	fmt.Print(sb.String())
	b.Log(sb.String())
}

func human(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// ratio is a/b as a speed-up, or a dash where a setup did not run.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func dur(s float64) string {
	switch {
	case s == 0:
		return "–"
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.2f ms", s*1e3)
	}
	return fmt.Sprintf("%.0f µs", s*1e6)
}
