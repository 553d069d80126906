package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/netnstest"
	"github.com/ringo-ml/ringo/runtime/rendezvous/etcdtest"
)

// hosts is netnstest's network, with this package's own helpers.
type hosts struct{ *netnstest.Hosts }

type launcher = netnstest.Launcher

func newHosts(t testing.TB, n int) *hosts { return &hosts{netnstest.New(t, n, ringoBin)} }

func tokenFile(t testing.TB) string { return netnstest.TokenFile(t) }

var finished = regexp.MustCompile(`rank (\d+) of (\d+): done \d+ steps, last sum \S+, restarts (\d+)`)

// ranksDone returns, for each finished rank, "world/restarts".
func ranksDone(out string) map[string]string {
	m := map[string]string{}
	for _, g := range finished.FindAllStringSubmatch(out, -1) {
		m[g[1]] = g[2] + "/" + g[3]
	}
	return m
}

// Two hosts of two workers each form one job of four, through node 0's
// embedded store or through etcd.
func TestTwoHosts(t *testing.T) {
	h := newHosts(t, 2)
	tok := tokenFile(t)
	for _, backend := range []string{"embedded", "etcd"} {
		t.Run(backend, func(t *testing.T) {
			ep := h.Addrs[0] + ":29400"
			if backend == "etcd" {
				ep = etcdtest.Start(t, h.GW)
			}
			var ls []*launcher
			for i := range 2 {
				ls = append(ls, h.Launch(i, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", backend,
					"--rdzv-endpoint", ep, "--rdzv-id", "two-"+backend, "--node-rank", fmt.Sprint(i), "--token-file", tok,
					"--rdzv-timeout", "30s", "--", workerBin, "--steps", "20", "--step-time", "5ms"))
			}
			all := ""
			for i, l := range ls {
				if err := l.Wait(t, 60*time.Second); err != nil {
					t.Fatalf("host %d: %v", i, err)
				}
				all += l.Out.String()
			}
			done := ranksDone(all)
			if len(done) != 4 {
				t.Fatalf("want ranks 0-3 done, got %v", done)
			}
			for r, v := range done {
				if v != "4/0" {
					t.Errorf("rank %s: world/restarts %s, want 4/0", r, v)
				}
			}
		})
	}
}

// A host is lost mid-run; with --nnodes 1:2 the survivor re-forms alone
// and finishes. Embedded store: host 1's cable is cut, and host 0 notices
// its launcher went silent. etcd: host 0 itself, the would-be store host
// of an embedded job, dies, and host 1 carries on.
func TestHostLost(t *testing.T) {
	h := newHosts(t, 2)
	tok := tokenFile(t)
	for _, backend := range []string{"embedded", "etcd"} {
		t.Run(backend, func(t *testing.T) {
			ep := h.Addrs[0] + ":29401"
			lost, survivor := 1, 0
			if backend == "etcd" {
				ep = etcdtest.Start(t, h.GW)
				lost, survivor = 0, 1
			}
			var ls []*launcher
			for i := range 2 {
				ls = append(ls, h.Launch(i, "--nnodes", "1:2", "--nproc-per-node", "2", "--rdzv-backend", backend,
					"--rdzv-endpoint", ep, "--rdzv-id", "lost-"+backend, "--node-rank", fmt.Sprint(i), "--token-file", tok,
					"--rdzv-last-call", "1s", "--node-timeout", "2s", "--monitor-interval", "200ms", "--max-restarts", "2",
					"--rdzv-timeout", "30s", "--", workerBin, "--steps", "300", "--step-time", "10ms"))
			}
			// Both hosts run generation 1 once their workers heartbeat.
			time.Sleep(2500 * time.Millisecond)
			if backend == "embedded" {
				h.Cut(lost)
			} else {
				ls[lost].Cmd.Process.Signal(syscall.SIGKILL)
			}
			if err := ls[survivor].Wait(t, 60*time.Second); err != nil {
				t.Fatalf("survivor: %v", err)
			}
			done := ranksDone(ls[survivor].Out.String())
			if len(done) != 2 || done["0"] != "2/1" || done["1"] != "2/1" {
				t.Fatalf("survivor's ranks (world/restarts): %v; want ranks 0 and 1 of 2 after 1 restart", done)
			}
			if backend == "embedded" {
				exec.Command("ip", "link", "set", h.Veths[lost], "up").Run() // for the next subtest
			}
		})
	}
}
