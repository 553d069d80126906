package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/proctest"
	"github.com/ringo-ml/ringo/runtime/rendezvous/etcdtest"
)

// hosts is a small network of Linux network namespaces on a bridge: each
// "host" has its own address, as separate machines would.
type hosts struct {
	t      testing.TB
	names  []string // namespace names
	addrs  []string // their addresses
	veths  []string // root-side veth of each
	bridge string
	gw     string // the bridge's own address, reachable from every host
}

// newHosts makes n hosts, or skips the test where namespaces cannot be
// made (not root, no iproute2, a sandbox that forbids them).
func newHosts(t testing.TB, n int) *hosts {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is not installed")
	}
	id := os.Getpid() % 200
	h := &hosts{t: t, bridge: fmt.Sprintf("rgbr%d", id), gw: fmt.Sprintf("10.231.%d.254", id)}
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("link", "add", h.bridge, "type", "bridge"); err != nil {
		t.Skipf("skipped: cannot create a bridge here: %v", err)
	}
	t.Cleanup(h.close)
	must := func(args ...string) {
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("addr", "add", h.gw+"/24", "dev", h.bridge)
	must("link", "set", h.bridge, "up")
	for i := range n {
		ns := fmt.Sprintf("rgh%d-%d", id, i)
		if err := run("netns", "add", ns); err != nil {
			t.Skipf("skipped: cannot create network namespaces here: %v", err)
		}
		h.names = append(h.names, ns)
		root, inner := fmt.Sprintf("rgv%d-%d", id, i), fmt.Sprintf("rgp%d-%d", id, i)
		must("link", "add", root, "type", "veth", "peer", "name", inner)
		h.veths = append(h.veths, root)
		must("link", "set", inner, "netns", ns)
		must("link", "set", root, "master", h.bridge)
		must("link", "set", root, "up")
		addr := fmt.Sprintf("10.231.%d.%d", id, i+1)
		h.addrs = append(h.addrs, addr)
		must("netns", "exec", ns, "ip", "addr", "add", addr+"/24", "dev", inner)
		must("netns", "exec", ns, "ip", "link", "set", inner, "up")
		must("netns", "exec", ns, "ip", "link", "set", "lo", "up")
	}
	return h
}

func (h *hosts) close() {
	for i, ns := range h.names {
		exec.Command("ip", "netns", "pids", ns).Output()
		if out, _ := exec.Command("ip", "netns", "pids", ns).Output(); len(out) > 0 {
			for _, p := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
		exec.Command("ip", "link", "del", h.veths[i]).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	}
	exec.Command("ip", "link", "del", h.bridge).Run()
}

// cut takes host i off the network, as a pulled cable would.
func (h *hosts) cut(i int) {
	if out, err := exec.Command("ip", "link", "set", h.veths[i], "down").CombinedOutput(); err != nil {
		h.t.Fatalf("cutting host %d: %v %s", i, err, out)
	}
}

// launcher is `ringo launch` running on one host.
type launcher struct {
	cmd  *exec.Cmd
	out  *proctest.Buffer
	done chan error
}

func (h *hosts) launch(i int, args ...string) *launcher {
	h.t.Helper()
	full := append([]string{"netns", "exec", h.names[i], ringoBin, "launch"}, args...)
	cmd := exec.Command("ip", full...)
	l := &launcher{cmd: cmd, out: &proctest.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = l.out, l.out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() { l.done <- cmd.Wait() }()
	h.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-l.done
		h.t.Logf("host %d output:\n%s", i, l.out.String())
	})
	return l
}

func (l *launcher) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-l.done:
		l.done <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("launcher still running after %v:\n%s", within, l.out.String())
		return nil
	}
}

func (l *launcher) waitFor(t *testing.T, re *regexp.Regexp, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if re.MatchString(l.out.String()) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q within %v:\n%s", re, within, l.out.String())
}

var finished = regexp.MustCompile(`rank (\d+) of (\d+): done \d+ steps, last sum \S+, restarts (\d+)`)

// ranksDone returns, for each finished rank, "world/restarts".
func ranksDone(out string) map[string]string {
	m := map[string]string{}
	for _, g := range finished.FindAllStringSubmatch(out, -1) {
		m[g[1]] = g[2] + "/" + g[3]
	}
	return m
}

func tokenFile(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "job.token")
	if err := os.WriteFile(p, []byte("6d1c0e4b9a7f23586d1c0e4b9a7f2358\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Two hosts of two workers each form one job of four, through node 0's
// embedded store or through etcd.
func TestTwoHosts(t *testing.T) {
	h := newHosts(t, 2)
	tok := tokenFile(t)
	for _, backend := range []string{"embedded", "etcd"} {
		t.Run(backend, func(t *testing.T) {
			ep := h.addrs[0] + ":29400"
			if backend == "etcd" {
				ep = etcdtest.Start(t, h.gw)
			}
			var ls []*launcher
			for i := range 2 {
				ls = append(ls, h.launch(i, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", backend,
					"--rdzv-endpoint", ep, "--rdzv-id", "two-"+backend, "--node-rank", fmt.Sprint(i), "--token-file", tok,
					"--rdzv-timeout", "30s", "--", workerBin, "--steps", "20", "--step-time", "5ms"))
			}
			all := ""
			for i, l := range ls {
				if err := l.wait(t, 60*time.Second); err != nil {
					t.Fatalf("host %d: %v", i, err)
				}
				all += l.out.String()
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
			ep := h.addrs[0] + ":29401"
			lost, survivor := 1, 0
			if backend == "etcd" {
				ep = etcdtest.Start(t, h.gw)
				lost, survivor = 0, 1
			}
			var ls []*launcher
			for i := range 2 {
				ls = append(ls, h.launch(i, "--nnodes", "1:2", "--nproc-per-node", "2", "--rdzv-backend", backend,
					"--rdzv-endpoint", ep, "--rdzv-id", "lost-"+backend, "--node-rank", fmt.Sprint(i), "--token-file", tok,
					"--rdzv-last-call", "1s", "--node-timeout", "2s", "--monitor-interval", "200ms", "--max-restarts", "2",
					"--rdzv-timeout", "30s", "--", workerBin, "--steps", "300", "--step-time", "10ms"))
			}
			// Both hosts run generation 1 once their workers heartbeat.
			time.Sleep(2500 * time.Millisecond)
			if backend == "embedded" {
				h.cut(lost)
			} else {
				ls[lost].cmd.Process.Signal(syscall.SIGKILL)
			}
			if err := ls[survivor].wait(t, 60*time.Second); err != nil {
				t.Fatalf("survivor: %v", err)
			}
			done := ranksDone(ls[survivor].out.String())
			if len(done) != 2 || done["0"] != "2/1" || done["1"] != "2/1" {
				t.Fatalf("survivor's ranks (world/restarts): %v; want ranks 0 and 1 of 2 after 1 restart", done)
			}
			if backend == "embedded" {
				exec.Command("ip", "link", "set", h.veths[lost], "up").Run() // for the next subtest
			}
		})
	}
}
