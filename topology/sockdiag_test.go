package topology

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringo-ml/ringo/internal/tcptest"
)

func addrPorts(c net.Conn) (local, remote netip.AddrPort) {
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
}

// Asked by address, the kernel gives the TCP_INFO that getsockopt gives
// for the socket: the same connection, each end from its own side.
func TestReadTCPInfoByAddr(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		// A dual-stack listener: the accepted end is an IPv6 socket with
		// v4-mapped addresses, though both ends say 127.0.0.1.
		{"dual-stack", "[::]:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", tc.listen)
			if err != nil {
				t.Skipf("skipped: cannot listen on %s: %v", tc.listen, err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			to := netip.MustParseAddr("127.0.0.1")
			if tc.name == "ipv6" {
				to = netip.IPv6Loopback()
			}
			c, err := net.Dial("tcp", netip.AddrPortFrom(to, uint16(port)).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			pump(t, c, s, 4<<20)
			pump(t, s, c, 1) // the last data is acked
			for _, end := range []struct {
				name string
				conn net.Conn
			}{{"client", c}, {"server", s}} {
				local, remote := addrPorts(end.conn)
				got, err := ReadTCPInfoByAddr(local, remote)
				if err != nil {
					t.Fatalf("%s end %s -> %s: %v", end.name, local, remote, err)
				}
				want, err := ReadTCPInfo(end.conn.(*net.TCPConn))
				if err != nil {
					t.Fatal(err)
				}
				// No traffic between the two reads: the byte counts agree.
				if got.BytesAcked != want.BytesAcked || got.BytesRecv != want.BytesRecv || got.MSS != want.MSS {
					t.Errorf("%s end: by address acked %d received %d MSS %d; getsockopt says %d, %d, %d",
						end.name, got.BytesAcked, got.BytesRecv, got.MSS, want.BytesAcked, want.BytesRecv, want.MSS)
				}
				if got.RTT <= 0 {
					t.Errorf("%s end: RTT %v by address", end.name, got.RTT)
				}
			}
			// The client sent 4 MiB; its end says so, the server's received it.
			cl, _ := ReadTCPInfoByAddr(addrPorts(c))
			if cl.BytesAcked < 4<<20 {
				t.Errorf("the client's end acked %d bytes after sending 4 MiB", cl.BytesAcked)
			}
		})
	}
}

func TestReadTCPInfoByAddrNoSuchConn(t *testing.T) {
	c, s := tcptest.Pair(t)
	local, remote := addrPorts(c)
	c.Close()
	s.Close()
	// A port nobody uses on this side.
	gone := netip.AddrPortFrom(local.Addr(), 1)
	_, err := ReadTCPInfoByAddr(gone, remote)
	if !errors.Is(err, ErrNoSuchConn) {
		t.Fatalf("got %v, want ErrNoSuchConn", err)
	}
	t.Log(err)
	_, err = ReadTCPInfoByAddr(local, netip.MustParseAddrPort("[::1]:80"))
	if err == nil || errors.Is(err, ErrNoSuchConn) {
		t.Fatalf("an IPv4 to IPv6 pair: got %v, want an error saying the families differ", err)
	}
}

// One SockDiag answers question after question, from several goroutines
// at once, each with its own connection's counters; closed, it says so.
func TestSockDiagReused(t *testing.T) {
	d, err := OpenSockDiag()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		c, s := tcptest.Pair(t)
		pump(t, c, s, (i+1)<<16)
		pump(t, s, c, 1)
		wg.Go(func() {
			for range 50 {
				got, err := d.TCPInfo(addrPorts(c))
				if err != nil {
					t.Error(err)
					return
				}
				if got.BytesAcked < uint64(i+1)<<16 || got.BytesAcked > uint64(i+1)<<16+1 {
					t.Errorf("connection %d: acked %d bytes, sent %d: another connection's answer?", i, got.BytesAcked, (i+1)<<16)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	c, _ := tcptest.Pair(t)
	if _, err := d.TCPInfo(addrPorts(c)); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("after Close: %v, want an error saying the socket is closed", err)
	}
}

// A reply to another question (one that timed out before its reply came)
// is passed over; the one to this question is read.
func TestSockDiagReplyMatchesQuestion(t *testing.T) {
	errMsg := func(seq uint32, errno syscall.Errno) syscall.NetlinkMessage {
		data := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
		return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.NLMSG_ERROR, Seq: seq}, Data: data}
	}
	if _, done, _ := diagReply([]syscall.NetlinkMessage{errMsg(6, unix.ENOENT)}, 7); done {
		t.Fatal("a reply to question 6 was taken as the answer to question 7")
	}
	_, done, err := diagReply([]syscall.NetlinkMessage{errMsg(6, unix.EPERM), errMsg(7, unix.ENOENT)}, 7)
	if !done || !errors.Is(err, ErrNoSuchConn) {
		t.Fatalf("question 7's reply: done %v, %v; want ErrNoSuchConn", done, err)
	}
}

// BenchmarkReadTCPInfo: TCP_INFO of one connection by getsockopt on its
// socket, and by address through sock_diag (what Replan pays per libp2p
// peer at each check): a socket opened per question, and one kept open.
func BenchmarkReadTCPInfo(b *testing.B) {
	c, _ := tcptest.Pair(b)
	b.Run("getsockopt", func(b *testing.B) {
		for b.Loop() {
			if _, err := ReadTCPInfo(c); err != nil {
				b.Fatal(err)
			}
		}
	})
	local, remote := addrPorts(c)
	b.Run("sock_diag", func(b *testing.B) {
		for b.Loop() {
			if _, err := ReadTCPInfoByAddr(local, remote); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sock_diag-open", func(b *testing.B) {
		d, err := OpenSockDiag()
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		for b.Loop() {
			if _, err := d.TCPInfo(local, remote); err != nil {
				b.Fatal(err)
			}
		}
	})
}
