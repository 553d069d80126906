package netnstest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pings is how many round trips the tcpclient role times.
const pings = 20

// The test binary doubles as the programs run inside the hosts.
func TestMain(m *testing.M) {
	switch os.Getenv("NETNSTEST_ROLE") {
	case "recv":
		c, err := net.ListenPacket("udp", os.Getenv("NETNSTEST_ADDR"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		got := 0
		buf := make([]byte, 2048)
		for {
			// Long for the first packet (the sender starts after this,
			// slowly on a loaded machine), then a second of quiet ends it.
			wait := time.Second
			if got == 0 {
				wait = 30 * time.Second
			}
			c.SetReadDeadline(time.Now().Add(wait))
			if _, _, err := c.ReadFrom(buf); err != nil {
				break
			}
			got++
		}
		fmt.Println("received", got)
		os.Exit(0)
	case "tcpserve":
		ln, err := net.Listen("tcp", os.Getenv("NETNSTEST_ADDR"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		// Echo the pings, then count the bulk bytes to EOF and say done.
		b := make([]byte, 1<<16)
		for range pings {
			if _, err := io.ReadFull(c, b[:1]); err != nil {
				os.Exit(1)
			}
			c.Write(b[:1])
		}
		io.Copy(io.Discard, c)
		c.Write([]byte{1})
		os.Exit(0)
	case "tcpclient":
		c, err := net.Dial("tcp", os.Getenv("NETNSTEST_ADDR"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		var rtts []time.Duration
		b := make([]byte, 1<<16)
		for range pings {
			t0 := time.Now()
			c.Write(b[:1])
			if _, err := io.ReadFull(c, b[:1]); err != nil {
				os.Exit(1)
			}
			rtts = append(rtts, time.Since(t0))
		}
		slices.Sort(rtts)
		n, _ := strconv.Atoi(os.Getenv("NETNSTEST_N"))
		t0 := time.Now()
		for sent := 0; sent < n; sent += len(b) {
			c.Write(b)
		}
		c.(*net.TCPConn).CloseWrite()
		io.ReadFull(c, b[:1])
		fmt.Printf("rtt %d bps %.0f\n", rtts[len(rtts)/2].Microseconds(), float64(n)*8/time.Since(t0).Seconds())
		os.Exit(0)
	case "send":
		c, err := net.Dial("udp", os.Getenv("NETNSTEST_ADDR"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		n, _ := strconv.Atoi(os.Getenv("NETNSTEST_N"))
		for range n {
			c.Write(make([]byte, 200))
			time.Sleep(200 * time.Microsecond)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Shape's loss drops about that share of the packets into a host. The
// kernel's counters say how many reached the link and how many it let
// through; the receiver sees at most those (on a loaded machine the
// kernel loses more, to full queues, which is not the shaping's doing).
func TestShapeDropsPackets(t *testing.T) {
	h := New(t, 2, "")
	h.Shape(1, "1000mbit", 0.2)
	// A loaded machine drops some of the sender's packets before the
	// shaped link (its backlog queue full): the share is of what reached
	// it, and a run where most never did (other tests' load; once, 11 of
	// 2000) is run again, up to three times.
	var got, n int
	var sent, passed int64
	for attempt := 0; attempt < 3 && sent < int64(n)/2+1; attempt++ {
		sent0, passed0 := h.Stat(0, "rx_packets"), h.Stat(1, "tx_packets")
		got, n = udpThrough(t, h, fmt.Sprintf("%s:%d", h.Addrs[1], 29610+attempt))
		sent, passed = h.Stat(0, "rx_packets")-sent0, h.Stat(1, "tx_packets")-passed0
	}
	if sent < int64(n)/2 || passed < sent*70/100 || passed > sent*90/100 {
		t.Errorf("%d of the %d packets (of %d sent) that reached the shaped link passed it, want about 80%%", passed, sent, n)
	}
	if int64(got) > passed {
		t.Errorf("%d packets arrived, more than the %d that passed", got, passed)
	}
}

// The emulated WAN adds its latency to every round trip, holds a TCP
// stream to its rate, and loses its share of the packets.
func TestWANDelaysThrottlesAndDrops(t *testing.T) {
	h := New(t, 2, "")
	w := h.WAN(Link{Delay: 25 * time.Millisecond, Rate: 20e6})
	addr := w.Addrs[1] + ":29601"
	srv, _ := startRole(t, h.Names[1], "tcpserve", "NETNSTEST_ADDR="+addr)
	defer srv.Wait()
	const bulk = 2 << 20
	cli := exec.Command("ip", "netns", "exec", h.Names[0], os.Args[0])
	cli.Env = append(os.Environ(), "NETNSTEST_ROLE=tcpclient", "NETNSTEST_ADDR="+addr, fmt.Sprintf("NETNSTEST_N=%d", bulk))
	o, err := cli.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v %s", err, o)
	}
	var rttUS int64
	var bps float64
	if _, err := fmt.Sscanf(string(o), "rtt %d bps %f", &rttUS, &bps); err != nil {
		t.Fatalf("client said %q", o)
	}
	crossed := w.Bytes()
	t.Logf("median round trip %d µs, %.1f Mbit/s through a 50 ms, 20 Mbit/s WAN; %d bytes crossed", rttUS, bps/1e6, crossed)
	// At least the latency added; at most that and what a loaded
	// machine can add to a user-space forwarder.
	if rttUS < 50000 || rttUS > 150000 {
		t.Errorf("median round trip %d µs, want 50–150 ms", rttUS)
	}
	if bps > 20e6*1.05 || bps < 20e6*0.3 {
		t.Errorf("a TCP stream moved %.1f Mbit/s through a 20 Mbit/s link", bps/1e6)
	}
	if crossed < bulk {
		t.Errorf("the WAN counted %d bytes, fewer than the %d sent", crossed, bulk)
	}

	if err := w.Set(Link{Loss: 0.2}); err != nil {
		t.Fatal(err)
	}
	d0, s0 := w.Drops()
	got, n := udpThrough(t, h, w.Addrs[1]+":29602")
	d1, s1 := w.Drops()
	d, sent := d1-d0, s1-s0
	if sent < int64(n)/2 || d < sent*15/100 || d > sent*25/100 {
		t.Errorf("the WAN dropped %d of %d packets, want about 20%%", d, sent)
	}
	if int64(got) > sent-d {
		t.Errorf("%d packets arrived, more than the %d the WAN let through", got, sent-d)
	}
}

// startRole starts this test binary in namespace ns as role (TestMain),
// with env, and returns once it said it is ready, with its stdout.
func startRole(t *testing.T, ns, role string, env ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0])
	cmd.Env = append(append(os.Environ(), "NETNSTEST_ROLE="+role), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	if n, _ := out.Read(b); !strings.Contains(string(b[:n]), "ready") {
		t.Fatalf("%s in %s: %q", role, ns, b[:n])
	}
	return cmd, out
}

// udpThrough sends 2000 small UDP datagrams from host 0 to addr on host 1
// and returns how many arrived.
func udpThrough(t *testing.T, h *Hosts, addr string) (got, n int) {
	t.Helper()
	recv, out := startRole(t, h.Names[1], "recv", "NETNSTEST_ADDR="+addr)
	b := make([]byte, 64)
	n = 2000
	send := exec.Command("ip", "netns", "exec", h.Names[0], os.Args[0])
	send.Env = append(os.Environ(), "NETNSTEST_ROLE=send", "NETNSTEST_ADDR="+addr, fmt.Sprintf("NETNSTEST_N=%d", n))
	if o, err := send.CombinedOutput(); err != nil {
		t.Fatalf("sender: %v %s", err, o)
	}
	var rest strings.Builder
	for {
		k, err := out.Read(b)
		rest.Write(b[:k])
		if err != nil {
			break
		}
	}
	recv.Wait()
	if _, err := fmt.Sscanf(strings.TrimSpace(rest.String()), "received %d", &got); err != nil {
		t.Fatalf("receiver said %q", rest.String())
	}
	t.Logf("%d of %d packets arrived through 20%% loss", got, n)
	return got, n
}
