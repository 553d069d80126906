package shm

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// offerVersion numbers the offer message.
const offerVersion = 2

// shape is what both ends of every pair agree on: the group's nonce and
// rank 0's ring shape.
type shape struct {
	Nonce            uint64
	SlotBytes, Slots int
}

// listenAbstract opens this rank's abstract unix socket: a name in the
// kernel, never a file, gone when the socket closes.
func listenAbstract() (*net.UnixListener, string, error) {
	var b [12]byte
	rand.Read(b[:])
	name := fmt.Sprintf("ringo-shm-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: "@" + name, Net: "unix"})
	if err != nil {
		return nil, "", fmt.Errorf("listening on an abstract unix socket: %w", err)
	}
	return ln, name, nil
}

// The offer hands a peer the ring it will produce into and the two
// eventfds that wake the offering rank: a 32-byte message, "RGSO",
// version u32, nonce u64, from u32, slot bytes u32, slots u32, flags
// u32, with three descriptors attached (SCM_RIGHTS): the segment, the
// "data for me" eventfd and the "room for me" eventfd.
const offerSize = 32

// Offer flags.
const (
	// offerMapsWindows: the offering rank can map the receiver's windows
	// (it sees the receiver's process in /proc), so the receiver may lend
	// it buffers that lie in one.
	offerMapsWindows = 1 << iota
	offerFlagsKnown  = offerMapsWindows
)

var offerMagic = [4]byte{'R', 'G', 'S', 'O'}

type offer struct {
	nonce            uint64
	from             int
	slotBytes, slots int
	flags            uint32
}

func (o offer) encode() []byte {
	b := make([]byte, offerSize)
	copy(b, offerMagic[:])
	binary.LittleEndian.PutUint32(b[4:], offerVersion)
	binary.LittleEndian.PutUint64(b[8:], o.nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(o.from))
	binary.LittleEndian.PutUint32(b[20:], uint32(o.slotBytes))
	binary.LittleEndian.PutUint32(b[24:], uint32(o.slots))
	binary.LittleEndian.PutUint32(b[28:], o.flags)
	return b
}

// decodeOffer parses an offer; it never panics.
func decodeOffer(b []byte) (offer, error) {
	if len(b) != offerSize || [4]byte(b[:4]) != offerMagic || binary.LittleEndian.Uint32(b[28:])&^offerFlagsKnown != 0 {
		return offer{}, errors.New("not a ringo shm offer")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != offerVersion {
		return offer{}, fmt.Errorf("offer version %d, this build speaks %d: run the same ringo on every rank", v, offerVersion)
	}
	return offer{
		nonce:     binary.LittleEndian.Uint64(b[8:]),
		from:      int(int32(binary.LittleEndian.Uint32(b[16:]))),
		slotBytes: int(binary.LittleEndian.Uint32(b[20:])),
		slots:     int(binary.LittleEndian.Uint32(b[24:])),
		flags:     binary.LittleEndian.Uint32(b[28:]),
	}, nil
}

// rings are what two ranks set up between them: the ring each consumes,
// the ring each produces into, and the eventfds.
type rings struct {
	in, out   *ring
	myData    *evfd // I sleep on it waiting for data in `in`
	mySpace   *evfd // I sleep on it waiting for room in `out`
	peerData  *evfd // I write it after publishing into `out`
	peerSpace *evfd // I write it after releasing slots of `in`

	// Windows (window.go): lend says the peer can map this process's
	// windows, so sends may lend it buffers in one; theirs maps the
	// peer's windows that it lends to this rank.
	lend   bool
	theirs peerWindows
}

func (l *rings) close() {
	l.in.unmap()
	l.out.unmap()
	l.myData.close()
	l.mySpace.close()
	l.peerData.close()
	l.peerSpace.close()
	l.theirs.close()
}

// exchange sets up the rings with peer p over c: each side makes the ring
// it will consume and its two eventfds, and passes them over; both write
// first and read after, so neither waits on the other.
//
// lend says whether this rank takes loans of the peer's windows; the peer
// lends only if it does.
func exchange(c *net.UnixConn, me, p int, t shape, lend bool, deadline time.Time) (l *rings, err error) {
	l = &rings{}
	fds := []int{-1, -1, -1}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		if err != nil {
			l.close()
			l = nil
		}
	}()
	l.in, fds[0], err = newSegment(t.SlotBytes, t.Slots, p, me)
	if err != nil {
		return nil, err
	}
	for i := 1; i <= 2; i++ {
		if fds[i], err = newEventfd(); err != nil {
			return nil, err
		}
	}
	// The files keep their own descriptors; fds[1:] are duplicates for
	// passing.
	d1, err := unix.FcntlInt(uintptr(fds[1]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup eventfd: %w", err)
	}
	l.myData = fileEventfd(d1, fmt.Sprintf("shm-data-from-%d", p))
	d2, err := unix.FcntlInt(uintptr(fds[2]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup eventfd: %w", err)
	}
	l.mySpace = fileEventfd(d2, fmt.Sprintf("shm-room-to-%d", p))

	l.theirs.pid = peerPID(c)
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	o := offer{nonce: t.Nonce, from: me, slotBytes: t.SlotBytes, slots: t.Slots}
	if lend && canSee(l.theirs.pid) {
		o.flags |= offerMapsWindows
	}
	if _, _, err := c.WriteMsgUnix(o.encode(), unix.UnixRights(fds...), nil); err != nil {
		return nil, fmt.Errorf("passing rank %d its ring: %w", p, err)
	}
	got, rights, err := readOffer(c)
	if err != nil {
		return nil, fmt.Errorf("receiving rank %d's ring: %w", p, err)
	}
	// From here on the received descriptors are ours to close.
	closeRights := func() {
		for _, fd := range rights {
			unix.Close(fd)
		}
	}
	switch {
	case len(rights) != 3:
		closeRights()
		return nil, fmt.Errorf("rank %d passed %d descriptors, want 3", p, len(rights))
	case got.nonce != t.Nonce || got.from != p:
		closeRights()
		return nil, fmt.Errorf("offer from rank %d of another group (nonce or rank wrong)", got.from)
	case got.slotBytes != t.SlotBytes || got.slots != t.Slots:
		closeRights()
		return nil, fmt.Errorf("rank %d offers rings of %d slots of %d bytes, the group agreed on %d of %d", p, got.slots, got.slotBytes, t.Slots, t.SlotBytes)
	}
	l.out, err = mapSegment(rights[0], t.SlotBytes, t.Slots)
	unix.Close(rights[0])
	if err != nil {
		unix.Close(rights[1])
		unix.Close(rights[2])
		return nil, fmt.Errorf("rank %d's ring: %w", p, err)
	}
	l.lend = got.flags&offerMapsWindows != 0
	l.peerData = fileEventfd(rights[1], fmt.Sprintf("shm-data-to-%d", p))
	l.peerSpace = fileEventfd(rights[2], fmt.Sprintf("shm-room-from-%d", p))
	if err := l.out.check(me, p); err != nil {
		return nil, fmt.Errorf("rank %d's ring: %w", p, err)
	}
	return l, nil
}

// peerPID is the process at the other end of c as this process numbers
// it (SO_PEERCRED), 0 where it cannot tell or the peer lives in a PID
// namespace this one does not see.
func peerPID(c *net.UnixConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	rc.Control(func(fd uintptr) {
		if u, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(u.Pid)
		}
	})
	return pid
}

// readOffer reads one offer and the descriptors that came with it.
func readOffer(c *net.UnixConn) (offer, []int, error) {
	b := make([]byte, offerSize)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var rights []int
	for n := 0; n < offerSize; {
		k, oobn, flags, _, err := c.ReadMsgUnix(b[n:], oob)
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			if perr == nil {
				for _, m := range msgs {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						rights = append(rights, fds...)
					}
				}
			}
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = errors.New("too many descriptors attached")
		}
		if err == nil && k == 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			for _, fd := range rights {
				unix.Close(fd)
			}
			return offer{}, nil, err
		}
		n += k
	}
	o, err := decodeOffer(b)
	if err != nil {
		for _, fd := range rights {
			unix.Close(fd)
		}
		return offer{}, nil, err
	}
	return o, rights, nil
}
