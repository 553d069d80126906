package topology

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TCPInfo is what the kernel knows about one TCP connection (Linux
// TCP_INFO). It is the passive view of a link while training runs: no
// extra traffic, works without root on any Linux. Fields a kernel is too
// old to fill read 0.
type TCPInfo struct {
	RTT    time.Duration // smoothed round-trip time
	RTTVar time.Duration // its mean deviation
	MinRTT time.Duration // the lowest seen recently: the path, without queues

	// DeliveryRate is the most recent sample of bytes delivered per second,
	// the rate the link actually gave (BBR's bandwidth estimate is built
	// from these); 0 until the connection has carried data.
	DeliveryRate float64

	Retransmits  uint32 // segments retransmitted over the connection's life
	Lost         uint32 // segments now presumed lost
	BytesAcked   uint64 // bytes sent and acknowledged
	BytesRecv    uint64 // bytes received
	BytesRetrans uint64 // bytes retransmitted
	NotSent      uint32 // bytes queued but not yet sent

	SendCwnd uint32 // congestion window, in segments
	MSS      uint32 // sender's maximum segment size

	// What held the sender back, summed over the connection's life: busy
	// time is time with data in flight; of it, RwndLimited is time limited
	// by the receiver's window and SndbufLimited by our own send buffer.
	// Much time rwnd-limited means a slow reader, not a slow link.
	BusyTime, RwndLimited, SndbufLimited time.Duration
}

// ReadTCPInfo reads TCP_INFO from a TCP connection, such as a
// *net.TCPConn. It does not disturb the connection and is cheap (one
// getsockopt), so it can be called every step.
func ReadTCPInfo(c syscall.Conn) (TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return TCPInfo{}, fmt.Errorf("tcp info: %w", err)
	}
	var raw *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		raw, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return TCPInfo{}, fmt.Errorf("tcp info: %w", err)
	}
	if serr != nil {
		return TCPInfo{}, fmt.Errorf("tcp info: getsockopt TCP_INFO (is this a TCP socket?): %w", serr)
	}
	return tcpInfoOf(raw), nil
}

// tcpInfoOf picks TCPInfo's fields out of the kernel's struct tcp_info.
func tcpInfoOf(raw *unix.TCPInfo) TCPInfo {
	us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	return TCPInfo{
		RTT:           us(raw.Rtt),
		RTTVar:        us(raw.Rttvar),
		MinRTT:        us(raw.Min_rtt),
		DeliveryRate:  float64(raw.Delivery_rate),
		Retransmits:   raw.Total_retrans,
		Lost:          raw.Lost,
		BytesAcked:    raw.Bytes_acked,
		BytesRecv:     raw.Bytes_received,
		BytesRetrans:  raw.Bytes_retrans,
		NotSent:       raw.Notsent_bytes,
		SendCwnd:      raw.Snd_cwnd,
		MSS:           raw.Snd_mss,
		BusyTime:      time.Duration(raw.Busy_time) * time.Microsecond,
		RwndLimited:   time.Duration(raw.Rwnd_limited) * time.Microsecond,
		SndbufLimited: time.Duration(raw.Sndbuf_limited) * time.Microsecond,
	}
}
