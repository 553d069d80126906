package topology

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ringo-ml/ringo/internal/netnstest"
	"github.com/ringo-ml/ringo/internal/tcptest"
)

// startCounters starts the counters or skips the test, in one line, where
// eBPF is not allowed; any other failure fails it.
func startCounters(t *testing.T) *TCPCounters {
	t.Helper()
	c, err := StartTCPCounters()
	// As root, a program the kernel refuses for what it is (not for
	// permissions) is a bug in the program, not a machine without eBPF.
	if errors.Is(err, ErrEBPFUnavailable) && os.Geteuid() == 0 && strings.Contains(err.Error(), "loading the program") && !errors.Is(err, os.ErrPermission) {
		t.Fatalf("StartTCPCounters as root: %v", err)
	}
	if errors.Is(err, ErrEBPFUnavailable) {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatalf("StartTCPCounters: %v, which does not wrap ErrEBPFUnavailable", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestTCPCountersNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("skipped: runs as root; this checks the error a user gets without root")
	}
	_, err := StartTCPCounters()
	if !errors.Is(err, ErrEBPFUnavailable) {
		t.Fatalf("got %v, want ErrEBPFUnavailable", err)
	}
}

func TestTCPCounters(t *testing.T) {
	c := startCounters(t)
	if err := c.RTTErr(); err != nil {
		t.Logf("tcp_probe: %v", err)
	}
	before, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	cl, sv := tcptest.Pair(t)
	pump(t, cl, sv, 4<<20)
	pump(t, sv, cl, 4<<20)
	after, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	t.Logf("after 8 MiB on loopback: %d retransmits, %d segments, mean RTT %v (system-wide)", d.Retransmits, d.Segments, d.MeanRTT())
	if after.Retransmits < before.Retransmits || after.Segments < before.Segments || after.SRTTSumUS < before.SRTTSumUS {
		t.Fatalf("counters went down: %+v then %+v", before, after)
	}
	if c.RTTErr() == nil && (d.Segments == 0 || d.MeanRTT() <= 0) {
		t.Errorf("tcp_probe attached but saw %d segments, mean RTT %v, during 8 MiB of traffic", d.Segments, d.MeanRTT())
	}
	if rtt := d.MeanRTT(); rtt > 10*time.Second {
		t.Errorf("mean RTT %v is not an RTT: is the srtt_us offset from BTF wrong?", rtt)
	}
}

// TestTCPCountersSeeRetransmits drops one in 16 large packets on the
// loopback of a private network namespace and checks that the counter
// sees the retransmits TCP_INFO reports. netem is not always built into
// the kernel (it is not on the CI kernel); a tc BPF program that drops
// packets needs nothing but BPF.
func TestTCPCountersSeeRetransmits(t *testing.T) {
	c := startCounters(t)
	before, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	cl, sv := lossyLoopback(t)
	deadline := time.Now().Add(20 * time.Second)
	var info TCPInfo
	var d TCPCounts
	// Until both have seen one: a connection's single retransmit can be
	// in TCP_INFO a moment before the tracepoint's count is read back.
	for (info.Retransmits == 0 || d.Retransmits == 0) && time.Now().Before(deadline) {
		pump(t, cl, sv, 4<<20)
		if info, err = ReadTCPInfo(cl); err != nil {
			t.Fatal(err)
		}
		after, err := c.Read()
		if err != nil {
			t.Fatal(err)
		}
		d = after.Sub(before)
	}
	t.Logf("lossy loopback: TCP_INFO says %d segments retransmitted; the tracepoint counted %d packets system-wide", info.Retransmits, d.Retransmits)
	if info.Retransmits == 0 {
		t.Fatal("no retransmits on a link dropping 1 in 16 packets")
	}
	if d.Retransmits == 0 {
		t.Fatal("the tcp_retransmit_skb counter did not move while the connection retransmitted")
	}
}

// lossyLoopback returns a TCP connection over the loopback of a new
// network namespace whose egress drops one in 16 packets over 1000 bytes
// (data, never the small acks), or skips where that cannot be set up.
func lossyLoopback(t *testing.T) (client, server *net.TCPConn) {
	type result struct {
		c, s *net.TCPConn
		skip error
	}
	got, stop, exited := make(chan result, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		// A namespace belongs to a thread. This one is never unlocked, so
		// Go ends the thread when the goroutine returns instead of reusing
		// it elsewhere in the wrong namespace.
		runtime.LockOSThread()
		fail := func(format string, args ...any) { got <- result{skip: fmt.Errorf(format, args...)} }
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			fail("cannot create a network namespace: %v", err)
			return
		}
		if err := loopbackUp(); err != nil {
			fail("cannot bring up lo in a new namespace: %v", err)
			return
		}
		prog, err := netnstest.DropProgram(1.0/16, 1000)
		if err != nil {
			fail("cannot load a tc program: %v", err)
			return
		}
		defer prog.Close()
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			fail("no lo in the new namespace: %v", err)
			return
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			fail("cannot attach a tcx program (kernel older than 6.6?): %v", err)
			return
		}
		defer l.Close()
		// Sockets are made here, on the namespaced thread; once made they
		// can be used from any goroutine.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail("listen: %v", err)
			return
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			fail("dial: %v", err)
			return
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			fail("accept: %v", err)
			return
		}
		got <- result{c: c.(*net.TCPConn), s: s.(*net.TCPConn)}
		<-stop
	}()
	r := <-got
	if r.skip != nil {
		<-exited
		t.Skipf("skipped: %v", r.skip)
	}
	t.Cleanup(func() {
		r.c.Close()
		r.s.Close()
		close(stop)
		<-exited
	})
	return r.c, r.s
}

// loopbackUp sets IFF_UP on lo in the calling thread's namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func TestTCPSockOffsets(t *testing.T) {
	// The offsets come from the running kernel's BTF, readable without
	// root; a wrong one would show as nonsense RTTs or byte counts in
	// TestTCPCounters and TestTCPCountersPerConnection.
	for _, name := range []string{"srtt_us", "bytes_acked"} {
		off, err := tcpSockOffset(name)
		if err != nil {
			t.Skipf("skipped: %v", err)
		}
		if off <= 0 || off > 4096 {
			t.Fatalf("tcp_sock.%s at byte %d: implausible", name, off)
		}
		t.Logf("tcp_sock.%s is at byte %d", name, off)
	}
}

// Each end of a connection has its own entry in the per-connection
// counters, under its own addresses: the segments it received and its
// RTT; and under a lossy link the sender's entry counts its retransmits.
func TestTCPCountersPerConnection(t *testing.T) {
	c := startCounters(t)
	if err := c.ConnsErr(); err != nil {
		if os.Geteuid() == 0 && strings.Contains(err.Error(), "refused the programs") && !errors.Is(err, os.ErrPermission) {
			t.Fatalf("as root: %v", err) // a bug in the program, as in startCounters
		}
		t.Skipf("skipped: %v", err)
	}
	cl, sv := tcptest.Pair(t)
	pump(t, cl, sv, 4<<20)
	pump(t, sv, cl, 4<<20)
	// A few one-byte round trips: an entry holds bytes_acked as it was
	// when its latest segment arrived, before that segment's ACK counted.
	for range 3 {
		pump(t, cl, sv, 1)
		pump(t, sv, cl, 1)
	}
	conns, err := c.Conns()
	if err != nil {
		t.Fatal(err)
	}
	for _, end := range []*net.TCPConn{cl, sv} {
		k := TCPConn{Local: end.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: end.RemoteAddr().(*net.TCPAddr).AddrPort()}
		got, ok := conns[k]
		t.Logf("%s -> %s: %+v (mean RTT %v)", k.Local, k.Remote, got, got.MeanRTT())
		if !ok || got.Segments == 0 {
			t.Errorf("no segments counted for %s -> %s, which received 4 MiB (%d connections counted)", k.Local, k.Remote, len(conns))
		}
		if c.RTTErr() == nil && (got.MeanRTT() <= 0 || got.MeanRTT() > 10*time.Second) {
			t.Errorf("%s -> %s: mean RTT %v", k.Local, k.Remote, got.MeanRTT())
		}
		// Each end sent 4 MiB and 3 bytes, all but the last acknowledged
		// by segments it received before its last one.
		if c.AckedErr() == nil && (got.BytesAcked < 4<<20 || got.BytesAcked > 4<<20+64) {
			t.Errorf("%s -> %s sent 4 MiB; its entry says %d bytes acknowledged", k.Local, k.Remote, got.BytesAcked)
		}
	}
	if err := c.AckedErr(); err != nil {
		t.Errorf("as root, no bytes acknowledged per connection: %v", err)
	}
	// The system-wide counters hold at least what one connection counted.
	all, _ := c.Read()
	if k := (TCPConn{Local: cl.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: cl.RemoteAddr().(*net.TCPAddr).AddrPort()}); all.Segments < conns[k].Segments {
		t.Errorf("system-wide %d segments, fewer than one connection's %d", all.Segments, conns[k].Segments)
	}

	lc, ls := lossyLoopback(t)
	deadline := time.Now().Add(20 * time.Second)
	k := TCPConn{Local: lc.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: lc.RemoteAddr().(*net.TCPAddr).AddrPort()}
	var got TCPCounts
	for got.Retransmits == 0 && time.Now().Before(deadline) {
		pump(t, lc, ls, 4<<20)
		conns, err := c.Conns()
		if err != nil {
			t.Fatal(err)
		}
		got = conns[k]
	}
	info, _ := ReadTCPInfo(lc)
	t.Logf("lossy loopback, the sender %s -> %s: %+v; TCP_INFO says %d retransmitted", k.Local, k.Remote, got, info.Retransmits)
	if got.Retransmits == 0 {
		t.Errorf("the sender's entry counted no retransmits on a link dropping 1 in 16 packets (TCP_INFO: %d)", info.Retransmits)
	}
}
