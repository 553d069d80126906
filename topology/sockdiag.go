package topology

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoSuchConn is wrapped by ReadTCPInfoByAddr's error when this network
// namespace has no TCP connection between the two addresses (closed, or
// another namespace's).
var ErrNoSuchConn = errors.New("no such TCP connection")

// ReadTCPInfoByAddr reads TCP_INFO of the connection from local to
// remote by asking the kernel by address (sock_diag netlink, as ss(8)
// does), for connections whose socket this process cannot reach: those a
// library keeps to itself, such as libp2p's. It needs no root: a process
// may ask about any TCP connection of its network namespace. It opens a
// netlink socket for the one question; a caller that asks again and
// again keeps a SockDiag open instead.
func ReadTCPInfoByAddr(local, remote netip.AddrPort) (TCPInfo, error) {
	d, err := OpenSockDiag()
	if err != nil {
		return TCPInfo{}, fmt.Errorf("tcp info of %s -> %s: %w", unmap(local), unmap(remote), err)
	}
	defer d.Close()
	return d.TCPInfo(local, remote)
}

// SockDiag is an open sock_diag netlink socket, for reading TCP_INFO of
// connections by address again and again: it saves opening and closing
// a socket per question (measured in BenchmarkReadTCPInfo). It is safe
// for concurrent use; questions take turns.
type SockDiag struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	req []byte
	buf []byte
}

// sockDiagTimeout bounds the wait for the kernel's reply, which comes at
// once: a reply that does not is an error, never a hang.
const sockDiagTimeout = time.Second

// OpenSockDiag opens a sock_diag netlink socket of this network
// namespace.
func OpenSockDiag() (*SockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(sockDiagTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sock_diag netlink socket: setting its receive timeout: %w", err)
	}
	return &SockDiag{fd: fd, req: make([]byte, unix.NLMSG_HDRLEN+diagReqLen), buf: make([]byte, 8192)}, nil
}

// Close closes the socket. A SockDiag closed is closed for good.
func (d *SockDiag) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// TCPInfo reads TCP_INFO of the connection from local to remote (see
// ReadTCPInfoByAddr). It says ErrNoSuchConn when this network namespace
// has no such connection.
func (d *SockDiag) TCPInfo(local, remote netip.AddrPort) (TCPInfo, error) {
	local, remote = unmap(local), unmap(remote)
	if local.Addr().Is4() != remote.Addr().Is4() {
		return TCPInfo{}, fmt.Errorf("tcp info of %s -> %s: one address is IPv4, the other IPv6", local, remote)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return TCPInfo{}, fmt.Errorf("tcp info of %s -> %s: the sock_diag socket is closed", local, remote)
	}
	// A v4 connection is found under AF_INET, or, where its socket is a
	// dual-stack IPv6 one (a Go listener on ":port" makes those), under
	// AF_INET6 with v4-mapped addresses.
	families := []uint8{unix.AF_INET6}
	if local.Addr().Is4() {
		families = []uint8{unix.AF_INET, unix.AF_INET6}
	}
	for _, fam := range families {
		raw, err := d.lookup(fam, local, remote)
		if errors.Is(err, ErrNoSuchConn) {
			continue
		}
		if err != nil {
			return TCPInfo{}, fmt.Errorf("tcp info of %s -> %s: %w", local, remote, err)
		}
		return tcpInfoOf(raw), nil
	}
	return TCPInfo{}, fmt.Errorf("tcp info of %s -> %s: %w in this network namespace", local, remote, ErrNoSuchConn)
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// The kernel's sock_diag request and reply (linux/inet_diag.h).
const (
	inetDiagInfo     = 2          // INET_DIAG_INFO: the reply's struct tcp_info
	inetDiagNoCookie = ^uint32(0) // INET_DIAG_NOCOOKIE: find by address
	diagReqLen       = 56         // struct inet_diag_req_v2
	diagMsgLen       = 72         // struct inet_diag_msg
)

// lookup asks for the one connection local -> remote of family fam and
// returns the struct tcp_info the kernel sent (at most its length). Each
// question has its own sequence number, and replies to other numbers (a
// question that timed out before its reply came) are passed over.
func (d *SockDiag) lookup(fam uint8, local, remote netip.AddrPort) (*unix.TCPInfo, error) {
	req := d.req
	clear(req)
	d.seq++
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], d.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1], r[2] = fam, unix.IPPROTO_TCP, 1<<(inetDiagInfo-1)
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	putDiagAddr(id[4:20], local.Addr(), fam)
	putDiagAddr(id[20:36], remote.Addr(), fam)
	ne.PutUint32(id[40:], inetDiagNoCookie)
	ne.PutUint32(id[44:], inetDiagNoCookie)
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if errors.Is(err, unix.EAGAIN) {
			return nil, fmt.Errorf("sock_diag: no reply within %v", sockDiagTimeout)
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		if info, done, err := diagReply(msgs, d.seq); done {
			return info, err
		}
	}
}

// diagReply reads the reply to question seq out of msgs; done is false
// where msgs answer another question.
func diagReply(msgs []syscall.NetlinkMessage, seq uint32) (info *unix.TCPInfo, done bool, err error) {
	ne := binary.NativeEndian
	mine := false
	for _, m := range msgs {
		if m.Header.Seq != seq {
			continue
		}
		mine = true
		switch m.Header.Type {
		case unix.NLMSG_ERROR:
			if len(m.Data) < 4 {
				return nil, true, errors.New("sock_diag reply: a short error message")
			}
			errno := syscall.Errno(-int32(ne.Uint32(m.Data)))
			if errno == unix.ENOENT {
				return nil, true, ErrNoSuchConn
			}
			if errno == 0 {
				continue
			}
			return nil, true, fmt.Errorf("sock_diag: %w", errno)
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(m.Data) < diagMsgLen {
				return nil, true, errors.New("sock_diag reply: a short inet_diag_msg")
			}
			for a := m.Data[diagMsgLen:]; len(a) >= unix.SizeofRtAttr; {
				l, typ := int(ne.Uint16(a[0:])), ne.Uint16(a[2:])
				if l < unix.SizeofRtAttr || l > len(a) {
					break
				}
				if typ == inetDiagInfo {
					// The kernel's struct tcp_info, as long as it is: older
					// kernels send less (the rest reads 0), newer more.
					var info unix.TCPInfo
					copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info)), a[unix.SizeofRtAttr:l])
					return &info, true, nil
				}
				a = a[min(len(a), (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
			}
			return nil, true, errors.New("sock_diag reply without TCP info (not a TCP connection in a state that has it?)")
		}
	}
	if !mine {
		return nil, false, nil
	}
	return nil, true, errors.New("sock_diag: no reply for the connection")
}

// putDiagAddr writes a as sock_diag's 16-byte address of family fam: a v4
// address in the first 4 bytes under AF_INET, v4-mapped under AF_INET6.
func putDiagAddr(dst []byte, a netip.Addr, fam uint8) {
	if fam == unix.AF_INET {
		b := a.As4()
		copy(dst, b[:])
		return
	}
	b := a.As16()
	copy(dst, b[:])
}
