package topology

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringo-ml/ringo/internal/tcptest"
)

// pump sends n bytes from c to s and waits for them to arrive.
func pump(t *testing.T, c, s net.Conn, n int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, s, int64(n))
		done <- err
	}()
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestReadTCPInfo(t *testing.T) {
	c, s := tcptest.Pair(t)
	before, err := ReadTCPInfo(c)
	if err != nil {
		t.Fatal(err)
	}
	pump(t, c, s, 8<<20)
	// One small round trip so that the last data is certainly acked.
	pump(t, s, c, 1)
	after, err := ReadTCPInfo(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loopback after 8 MiB: %+v", after)
	if after.RTT <= 0 || after.MinRTT <= 0 || after.MSS == 0 || after.SendCwnd == 0 {
		t.Errorf("RTT %v, min RTT %v, MSS %d, cwnd %d: want all > 0 after traffic", after.RTT, after.MinRTT, after.MSS, after.SendCwnd)
	}
	if after.BytesAcked < before.BytesAcked+8<<20 {
		t.Errorf("bytes acked went from %d to %d after sending 8 MiB", before.BytesAcked, after.BytesAcked)
	}
	if after.DeliveryRate <= 0 {
		t.Errorf("delivery rate %v after traffic", after.DeliveryRate)
	}
	srv, err := ReadTCPInfo(s)
	if err != nil {
		t.Fatal(err)
	}
	if srv.BytesRecv < 8<<20 {
		t.Errorf("receiver saw %d bytes, want at least 8 MiB", srv.BytesRecv)
	}
}

func TestReadTCPInfoNotTCP(t *testing.T) {
	// A Unix socket has a file descriptor but no TCP_INFO.
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := ReadTCPInfo(c.(syscall.Conn)); err == nil || !strings.Contains(err.Error(), "TCP socket") {
		t.Errorf("got %v, want an error saying it is not a TCP socket", err)
	}
	// A closed connection says so too.
	f, _ := os.CreateTemp(t.TempDir(), "x")
	f.Close()
	if _, err := ReadTCPInfo(f); err == nil {
		t.Error("ReadTCPInfo of a closed file succeeded")
	}
}
