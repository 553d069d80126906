// Package netnstest runs several "hosts" on one machine for tests: Linux
// network namespaces joined by veth pairs on a bridge, each with its own
// address, links that can be cut or shaped with tc, and `ringo launch`
// started inside a host. Tests that use it skip where namespaces cannot be
// made (not root, no iproute2). It is not API.
package netnstest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/ringo-ml/ringo/internal/proctest"
)

// Hosts is a small network of Linux network namespaces on a bridge: each
// "host" has its own address, as separate machines would.
type Hosts struct {
	T     testing.TB
	Names []string // namespace names
	Addrs []string // their addresses
	Veths []string // root-side veth of each
	// GW is the bridge's own address, reachable from every host.
	GW     string
	bridge string
	ringo  string // the ringo binary Launch runs
}

// New makes n hosts whose Launch runs the ringo binary at ringo, or skips the test where namespaces cannot be
// made (not root, no iproute2, a sandbox that forbids them).
func New(t testing.TB, n int, ringo string) *Hosts {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is not installed")
	}
	id := os.Getpid() % 200
	h := &Hosts{T: t, ringo: ringo, bridge: fmt.Sprintf("rgbr%d", id), GW: fmt.Sprintf("10.231.%d.254", id)}
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
	t.Cleanup(h.Close)
	must := func(args ...string) {
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("addr", "add", h.GW+"/24", "dev", h.bridge)
	must("link", "set", h.bridge, "up")
	for i := range n {
		ns := fmt.Sprintf("rgh%d-%d", id, i)
		if err := run("netns", "add", ns); err != nil {
			t.Skipf("skipped: cannot create network namespaces here: %v", err)
		}
		h.Names = append(h.Names, ns)
		root, inner := fmt.Sprintf("rgv%d-%d", id, i), fmt.Sprintf("rgp%d-%d", id, i)
		must("link", "add", root, "type", "veth", "peer", "name", inner)
		h.Veths = append(h.Veths, root)
		must("link", "set", inner, "netns", ns)
		must("link", "set", root, "master", h.bridge)
		must("link", "set", root, "up")
		addr := fmt.Sprintf("10.231.%d.%d", id, i+1)
		h.Addrs = append(h.Addrs, addr)
		must("netns", "exec", ns, "ip", "addr", "add", addr+"/24", "dev", inner)
		must("netns", "exec", ns, "ip", "link", "set", inner, "up")
		must("netns", "exec", ns, "ip", "link", "set", "lo", "up")
	}
	return h
}

func (h *Hosts) Close() {
	h.KillAll()
	for i, ns := range h.Names {
		exec.Command("ip", "link", "del", h.Veths[i]).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	}
	exec.Command("ip", "link", "del", h.bridge).Run()
}

// KillAll kills, with SIGKILL, every process running in any of the hosts.
func (h *Hosts) KillAll() {
	for _, ns := range h.Names {
		if out, _ := exec.Command("ip", "netns", "pids", ns).Output(); len(out) > 0 {
			for _, p := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
	}
}

// Cut takes host i off the network, as a pulled cable would.
func (h *Hosts) Cut(i int) {
	if out, err := exec.Command("ip", "link", "set", h.Veths[i], "down").CombinedOutput(); err != nil {
		h.T.Fatalf("cutting host %d: %v %s", i, err, out)
	}
}

// Launcher is `ringo launch` running on one host.
type Launcher struct {
	Cmd *exec.Cmd
	Out *proctest.Buffer
	// Done receives the launcher's exit; Wait puts it back for the
	// cleanup, and so must a test that reads it.
	Done chan error
}

// Launch starts `ringo launch args...` on host i.
func (h *Hosts) Launch(i int, args ...string) *Launcher {
	h.T.Helper()
	full := append([]string{"netns", "exec", h.Names[i], h.ringo, "launch"}, args...)
	cmd := exec.Command("ip", full...)
	l := &Launcher{Cmd: cmd, Out: &proctest.Buffer{}, Done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = l.Out, l.Out
	if err := cmd.Start(); err != nil {
		h.T.Fatal(err)
	}
	go func() { l.Done <- cmd.Wait() }()
	h.T.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-l.Done
		h.T.Logf("host %d output:\n%s", i, l.Out.String())
	})
	return l
}

func (l *Launcher) Wait(t testing.TB, within time.Duration) error {
	t.Helper()
	select {
	case err := <-l.Done:
		l.Done <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("launcher still running after %v:\n%s", within, l.Out.String())
		return nil
	}
}

func (l *Launcher) WaitFor(t testing.TB, re *regexp.Regexp, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if re.MatchString(l.Out.String()) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q within %v:\n%s", re, within, l.Out.String())
}

// TokenFile writes a job token (mode 0600) and returns its path.
func TokenFile(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "job.token")
	if err := os.WriteFile(p, []byte("6d1c0e4b9a7f23586d1c0e4b9a7f2358\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Shape slows the link into host i, as a wide-area link would be: a
// token bucket of rate (tc's syntax, "100mbit") on the bridge's side of
// its veth, and, with loss > 0, an eBPF program on that side's egress
// that drops that fraction of packets at random. Traffic between two
// shaped hosts crosses two of these, one each way. Traffic inside a host
// (between its ranks) is not shaped. Shape skips the test where tc or
// eBPF cannot do this here.
//
// Latency is not added: netem, and fq, which honours the departure times
// a BPF program can set, are not in every kernel.
func (h *Hosts) Shape(i int, rate string, loss float64) {
	h.T.Helper()
	dev := h.Veths[i]
	if _, err := exec.LookPath("tc"); err != nil {
		h.T.Skip("skipped: tc (iproute2) is not installed")
	}
	if out, err := exec.Command("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "200ms").CombinedOutput(); err != nil {
		h.T.Skipf("skipped: tc cannot shape %s here: %v: %s", dev, err, out)
	}
	if loss <= 0 {
		return
	}
	if loss > 1 {
		h.T.Fatalf("Shape: loss %v is a fraction, at most 1", loss)
	}
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		h.T.Fatal(err)
	}
	prog, err := DropProgram(loss, 0)
	if err != nil {
		h.T.Skipf("skipped: cannot load the packet-loss program (eBPF): %v", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		prog.Close()
		h.T.Skipf("skipped: cannot attach the packet-loss program to %s (tcx): %v", dev, err)
	}
	h.T.Cleanup(func() { l.Close(); prog.Close() })
}

// TxBytes is what the bridge's side of host i's veth has sent into it:
// every byte that reached host i from the other hosts, headers included.
func (h *Hosts) TxBytes(i int) int64 {
	h.T.Helper()
	return h.Stat(i, "tx_bytes")
}

// Stat reads one of the kernel's counters of the bridge's side of host
// i's veth (/sys/class/net/DEV/statistics/NAME): tx_packets are the
// packets that reached host i, rx_packets those it sent.
func (h *Hosts) Stat(i int, name string) int64 {
	h.T.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/net", h.Veths[i], "statistics", name))
	if err != nil {
		h.T.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		h.T.Fatal(err)
	}
	return n
}

// DropProgram is a tc (tcx) program that drops the fraction loss of the
// packets of at least minLen bytes, at random, and passes the rest: packet
// loss where netem is not built into the kernel. The caller attaches and
// closes it.
func DropProgram(loss float64, minLen int32) (*ebpf.Program, error) {
	var insns asm.Instructions
	if minLen > 0 {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // skb->len
			asm.JLT.Imm(asm.R2, minLen, "pass"))
	}
	// Drop when a random u32 falls below loss·2^32. The threshold goes in
	// a register: as a 32-bit immediate it would turn negative from 0.5.
	insns = append(insns,
		asm.FnGetPrandomU32.Call(),
		asm.LoadImm(asm.R1, int64(loss*(1<<32)), asm.DWord),
		asm.JGE.Reg(asm.R0, asm.R1, "pass"),
		asm.Mov.Imm(asm.R0, 2), // TCX_DROP
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("pass"), // TCX_PASS
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ringo_drop", Type: ebpf.SchedCLS, Instructions: insns, License: "Apache-2.0"})
}
