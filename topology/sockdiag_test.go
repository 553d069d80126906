package topology

import (
	"errors"
	"net"
	"net/netip"
	"testing"
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
	c, s := tcpPair(t)
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

// BenchmarkReadTCPInfo: TCP_INFO of one connection by getsockopt on its
// socket, and by address through sock_diag (what Replan pays per libp2p
// peer at each check).
func BenchmarkReadTCPInfo(b *testing.B) {
	c, _ := tcpPair(b)
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
}
