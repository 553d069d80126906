package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/topology"
)

// slow limits the traffic between hosts a and b to rate with an htb
// class on each one's bridge-side veth, chosen by a u32 filter on the
// other's address: tbf alone would slow a whole interface, every pair.
func (h *hosts) slow(a, b int, rate string) {
	h.T.Helper()
	for _, p := range [][2]int{{a, b}, {b, a}} {
		dev, src := h.Veths[p[1]], h.Addrs[p[0]]
		// One root qdisc per device; unclassified traffic bypasses it.
		exec.Command("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb").Run()
		class := fmt.Sprintf("1:%d", 10+p[0])
		for _, args := range [][]string{
			{"class", "replace", "dev", dev, "parent", "1:", "classid", class, "htb", "rate", rate},
			{"filter", "add", "dev", dev, "protocol", "ip", "parent", "1:", "prio", "1", "u32", "match", "ip", "src", src + "/32", "flowid", class},
		} {
			if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
				h.T.Skipf("skipped: tc cannot shape links here (%v: %s)", err, out)
			}
		}
	}
}

// unshape removes every limit.
func (h *hosts) unshape() {
	for _, v := range h.Veths {
		exec.Command("tc", "qdisc", "del", "dev", v, "root").Run()
	}
}

var allreduceTime = regexp.MustCompile(`all-reduce of \d+ bytes: median (\S+) s`)

// runJob launches one worker on each host, with or without the topology
// probe, and returns the median all-reduce time of bytes and the output.
func (h *hosts) runJob(t testing.TB, tok, logDir, id string, probe bool, bytes int) (float64, string) {
	t.Helper()
	var ls []*launcher
	for i := range h.Names {
		args := []string{"--nnodes", strconv.Itoa(len(h.Names)), "--nproc-per-node", "1", "--rdzv-endpoint", h.Addrs[0] + ":29410",
			"--rdzv-id", id, "--node-rank", strconv.Itoa(i), "--token-file", tok, "--rdzv-timeout", "60s", "--log-dir", logDir, "--tee", "all"}
		if probe {
			args = append(args, "--topology", "probe")
		}
		args = append(args, "--", workerBin, "--steps", "1", "--bench-bytes", strconv.Itoa(bytes), "--bench-iters", "5")
		ls = append(ls, h.Launch(i, args...))
	}
	all := ""
	for i, l := range ls {
		if err := l.Wait(t, 120*time.Second); err != nil {
			t.Fatalf("host %d: %v\n%s", i, err, l.Out.String())
		}
		all += l.Out.String()
	}
	m := allreduceTime.FindStringSubmatch(all)
	if m == nil {
		t.Fatalf("no all-reduce time in the output:\n%s", all)
	}
	sec, _ := strconv.ParseFloat(m[1], 64)
	return sec, all
}

// Four hosts; the links 0-1 and 2-3 are slow. The rank order 0-1-2-3
// crosses both; the probe finds them and the launcher orders the ring
// around them, so the same all-reduce runs much faster. Then the limits
// move to 0-2 and 1-3, and a new probe changes the plan.
func TestTopologyProbeAvoidsSlowLinks(t *testing.T) {
	if _, err := exec.LookPath("tc"); err != nil {
		t.Skip("skipped: tc (iproute2) is not installed")
	}
	h := newHosts(t, 4)
	tok := tokenFile(t)
	h.slow(0, 1, "200mbit")
	h.slow(2, 3, "200mbit")
	logDir := t.TempDir()

	naive, _ := h.runJob(t, tok, logDir, "naive", false, 16<<20)
	solved, out := h.runJob(t, tok, logDir, "solved", true, 16<<20)
	t.Logf("16 MiB all-reduce: %.3f s in rank order, %.3f s in the solved order (%.1fx)", naive, solved, naive/solved)
	if !strings.Contains(out, "topology: probed 4 nodes") {
		t.Fatalf("no topology line:\n%s", out)
	}
	if naive < 1.5*solved {
		t.Errorf("the solved ring (%.3f s) is not 1.5x faster than rank order (%.3f s)", solved, naive)
	}
	m, err := topology.ReadMatrix(filepath.Join(logDir, "solved", "topology-gen1.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The probe within 20% of the configured 200 Mbit/s (25 MB/s), and
	// the other links far faster. Hosts are in rendezvous order, node
	// rank = host index.
	idx := map[string]int{}
	for i, a := range h.Addrs {
		idx[a] = i
	}
	var slowBW, fastBW []float64
	defer func() { t.Logf("probe: slow links %.1f MB/s, unlimited links %.0f MB/s", slowBW, fastBW) }()
	for i := range 4 {
		for j := range 4 {
			if i == j {
				continue
			}
			a, b := idx[m.Hosts[i]], idx[m.Hosts[j]]
			bw := m.Bandwidth[i][j] / 1e6
			slowPair := (a == 0 && b == 1) || (a == 1 && b == 0) || (a == 2 && b == 3) || (a == 3 && b == 2)
			if slowPair {
				slowBW = append(slowBW, bw)
			} else {
				fastBW = append(fastBW, bw)
			}
			if slowPair && (bw < 20 || bw > 30) {
				t.Errorf("link %d->%d measured %.1f MB/s, configured 25 MB/s", a, b, bw)
			}
			if !slowPair && bw < 75 {
				t.Errorf("unlimited link %d->%d measured only %.1f MB/s", a, b, bw)
			}
		}
	}
	ring := ringOf(out)
	for _, bad := range [][2]string{{h.Addrs[0], h.Addrs[1]}, {h.Addrs[2], h.Addrs[3]}} {
		if adjacent(ring, bad[0], bad[1]) {
			t.Errorf("the solved ring %v crosses the slow link %s-%s", ring, bad[0], bad[1])
		}
	}

	h.unshape()
	h.slow(0, 2, "200mbit")
	h.slow(1, 3, "200mbit")
	_, out2 := h.runJob(t, tok, logDir, "moved", true, 16<<20)
	ring2 := ringOf(out2)
	for _, bad := range [][2]string{{h.Addrs[0], h.Addrs[2]}, {h.Addrs[1], h.Addrs[3]}} {
		if adjacent(ring2, bad[0], bad[1]) {
			t.Errorf("after moving the limits the ring %v still crosses the slow link %s-%s", ring2, bad[0], bad[1])
		}
	}
	if fmt.Sprint(ring) == fmt.Sprint(ring2) {
		t.Errorf("moving the limits did not change the plan: %v", ring)
	}
	os.RemoveAll(logDir)
}

var ringLine = regexp.MustCompile(`topology: probed \d+ nodes in \S+; ring (.*), slowest link`)

func ringOf(out string) []string {
	m := ringLine.FindStringSubmatch(out)
	if m == nil {
		return nil
	}
	return strings.Split(m[1], " -> ")
}

// adjacent says whether a and b are neighbours on the ring.
func adjacent(ring []string, a, b string) bool {
	for i := range ring {
		x, y := ring[i], ring[(i+1)%len(ring)]
		if (x == a && y == b) || (x == b && y == a) {
			return true
		}
	}
	return false
}
