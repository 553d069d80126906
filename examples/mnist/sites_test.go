package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/netnstest"
)

// siteRun is one job on two namespace hosts, each host a site of two
// workers, over links shaped as a wide-area link.
type siteRun struct {
	out     string        // both hosts' output
	crossed int64         // bytes that went between the hosts, both ways
	took    time.Duration // from start to the end of both launchers
	// firstAt is when rank 0 first printed an epoch's test accuracy of at
	// least 0.95 (0: never).
	firstAt time.Duration
}

var epochAcc = regexp.MustCompile(`\[rank 0\] epoch \d+/\d+ .* test accuracy ([0-9.]+)`)

// shapedHosts makes two hosts whose links run at rate with loss.
func shapedHosts(t testing.TB, rate string, loss float64) *netnstest.Hosts {
	t.Helper()
	binaries(t)
	h := netnstest.New(t, 2, ringoBin)
	for i := range 2 {
		h.Shape(i, rate, loss)
	}
	return h
}

// runSites runs mnist on h, one site per host, with args.
func runSites(t testing.TB, h *netnstest.Hosts, port int, data string, args ...string) siteRun {
	t.Helper()
	tok := netnstest.TokenFile(t)
	before := h.TxBytes(0) + h.TxBytes(1)
	start := time.Now()
	var ls []*netnstest.Launcher
	for i := range 2 {
		full := append([]string{"--nnodes", "2", "--node-rank", strconv.Itoa(i), "--nproc-per-node", "2",
			"--rdzv-endpoint", fmt.Sprintf("%s:%d", h.Addrs[0], port), "--token-file", tok, "--rdzv-timeout", "60s",
			"--max-restarts", "0", "--site", fmt.Sprintf("site-%d", i), "--", mnistBin, "--data", data}, args...)
		ls = append(ls, h.Launch(i, full...))
	}
	var r siteRun
	for _, l := range ls {
		for done := false; !done; {
			select {
			case err := <-l.Done:
				l.Done <- err
				if err != nil {
					t.Fatalf("a launcher failed: %v\n%s\n%s", err, ls[0].Out.String(), ls[1].Out.String())
				}
				done = true
			case <-time.After(50 * time.Millisecond):
			}
			if r.firstAt == 0 {
				for _, m := range epochAcc.FindAllStringSubmatch(ls[0].Out.String(), -1) {
					if v, _ := strconv.ParseFloat(m[1], 64); v >= 0.95 {
						r.firstAt = time.Since(start)
						break
					}
				}
			}
		}
	}
	r.took = time.Since(start)
	r.crossed = h.TxBytes(0) + h.TxBytes(1) - before
	r.out = ls[0].Out.String() + ls[1].Out.String()
	return r
}

var finalAcc = regexp.MustCompile(`final test accuracy ([0-9.]+) on \d+ digits after (\d+) steps`)

func (r siteRun) final(t testing.TB) (acc float64, steps int) {
	t.Helper()
	m := finalAcc.FindStringSubmatch(r.out)
	if m == nil || !strings.Contains(r.out, "replicas hold identical weights") {
		t.Fatalf("no final accuracy and agreement:\n%s", r.out)
	}
	acc, _ = strconv.ParseFloat(m[1], 64)
	steps, _ = strconv.Atoi(m[2])
	return acc, steps
}

// Two sites of two workers each, on links of 100 Mbit/s that lose 1% of
// their packets: the sites sync every 20 steps, with bfloat16 and a
// quarter of each delta, and still learn the digits; every replica ends
// with the same weights; and far fewer bytes cross between the sites than
// a per-step all-reduce sends.
func TestAcrossShapedSites(t *testing.T) {
	h := shapedHosts(t, "100mbit", 0.01)
	dir := t.TempDir()
	synthDataset(t, dir, 1280, 400)
	common := []string{"--epochs", "2", "--batch", "32", "--eval-batch", "50", "--verify-every", "20"}
	dl := runSites(t, h, 29510, dir, append(common, "--outer-every", "20", "--outer-topk", "0.25")...)
	acc, steps := dl.final(t)
	if acc < 0.95 {
		t.Errorf("across sites, every 20 steps: final test accuracy %.4f, want at least 0.95\n%s", acc, dl.out)
	}
	// The per-step all-reduce over the same links, for a few steps.
	const few = 10
	ps := runSites(t, h, 29511, dir, append(common, "--max-steps", strconv.Itoa(few))...)
	perStep := float64(ps.crossed) / few
	per := float64(dl.crossed) / float64(steps)
	t.Logf("every 20 steps: accuracy %.4f, %d steps in %v, %.0f bytes across sites per step; per-step all-reduce: %.0f per step (%.0fx)",
		acc, steps, dl.took.Round(time.Millisecond), per, perStep, perStep/per)
	// Each run's start (broadcasting the weights, forming the groups) is
	// in its count, and weighs more in the short one: the ratio measured
	// here understates the steady state, which BENCHMARKS.md reports.
	if perStep < 20*per {
		t.Errorf("across sites %.0f bytes per step, per-step all-reduce %.0f: want at least 20x fewer", per, perStep)
	}
}

// BenchmarkAcrossSites trains on the real digits (make data) across two
// sites of two workers on links of 100 Mbit/s with 1% loss: the
// per-step all-reduce against syncs every 20 steps with bfloat16 top-25%
// deltas, each for 5 epochs, reporting the time to 0.95 test accuracy,
// the wall time and the bytes that crossed between the sites per step.
func BenchmarkAcrossSites(b *testing.B) {
	data, _ := filepath.Abs("../../data/mnist")
	if _, err := os.Stat(filepath.Join(data, "train")); err != nil {
		b.Skip("skipped: no real digits in data/mnist; run make data")
	}
	h := shapedHosts(b, "100mbit", 0.01)
	common := []string{"--epochs", "5", "--verify-every", "20"}
	for range b.N {
		for i, tc := range []struct {
			name string
			args []string
		}{
			{"per-step", nil},
			{"every-20", []string{"--outer-every", "20", "--outer-topk", "0.25"}},
		} {
			r := runSites(b, h, 29520+i, data, append(common, tc.args...)...)
			acc, steps := r.final(b)
			b.Logf("%s: final accuracy %.4f, 0.95 reached at %v, %d steps in %v, %.0f bytes across sites per step",
				tc.name, acc, r.firstAt.Round(100*time.Millisecond), steps, r.took.Round(100*time.Millisecond), float64(r.crossed)/float64(steps))
		}
	}
}
