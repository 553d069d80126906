package netnstest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

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

// Shape's loss drops about that share of the packets into a host.
func TestShapeDropsPackets(t *testing.T) {
	h := New(t, 2, "")
	h.Shape(1, "1000mbit", 0.2)
	addr := h.Addrs[1] + ":29600"
	recv := exec.Command("ip", "netns", "exec", h.Names[1], os.Args[0])
	recv.Env = append(os.Environ(), "NETNSTEST_ROLE=recv", "NETNSTEST_ADDR="+addr)
	out, err := recv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	if n, _ := out.Read(b); !strings.Contains(string(b[:n]), "ready") {
		t.Fatalf("receiver: %q", b[:n])
	}
	const n = 2000
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
	var got int
	if _, err := fmt.Sscanf(strings.TrimSpace(rest.String()), "received %d", &got); err != nil {
		t.Fatalf("receiver said %q", rest.String())
	}
	t.Logf("%d of %d packets arrived through 20%% loss", got, n)
	if got < n*70/100 || got > n*90/100 {
		t.Errorf("%d of %d packets arrived, want about 80%%", got, n)
	}
}
