package tcp

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// spinReader reads a TCP connection and, while armed, polls the socket for
// a short while before parking the goroutine in Go's network poller.
// Waking a parked goroutine through the poller costs tens of microseconds,
// most of a small collective's latency; MPI libraries poll for the same
// reason. Between polls it yields, to the process's other goroutines and
// to other processes, so polling never starves them.
//
// It is armed only while the layer above asks for polling (transport.
// Poller): for small messages, and for mid-size calls, where the send lane
// polls too (spinWriter). Polling during bulk transfers measurably took
// CPU from the copies, and it pays only while ranks are at most three
// times as many as cores, so the default (SpinFor) turns it off beyond
// that.
type spinReader struct {
	rc syscall.RawConn
	spinWait

	// The poll callback's arguments and results live here, and the
	// callback is bound once, so that a read allocates nothing.
	p     []byte
	n     int
	rerr  error
	tryFn func(fd uintptr) bool
}

func newSpinReader(c *net.TCPConn, spin time.Duration) (*spinReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &spinReader{rc: rc, spinWait: spinWait{spin: spin}}
	s.tryFn = s.try
	return s, nil
}

// try is the RawConn callback: true when the read is done (data, EOF or
// an error), false to park until the socket is readable.
func (s *spinReader) try(fd uintptr) bool {
	for i := 0; ; i++ {
		s.n, s.rerr = syscall.Read(int(fd), s.p)
		switch s.rerr {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
		default:
			return true
		}
		if !s.again(i) {
			break
		}
	}
	s.n, s.rerr = 0, nil
	return false
}

// spinWait is the polling policy the reader and the writer share.
type spinWait struct {
	spin  time.Duration
	armed bool
	start time.Time
}

// again is asked after the i-th try in a row found nothing to do: while
// armed and within spin of the first, it yields and says to try again;
// otherwise it says to park in the network poller.
func (w *spinWait) again(i int) bool {
	if !w.armed || w.spin <= 0 {
		return false
	}
	if i == 0 {
		w.start = time.Now()
	} else if time.Since(w.start) > w.spin {
		return false
	}
	// Yield twice: to this process's other goroutines (the other lane may
	// need the only P), and to the OS, in case the peer we wait for was
	// scheduled on this core: polling that only yielded to Go lost whole
	// 200 us windows to a co-located peer.
	runtime.Gosched()
	syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	return true
}

func (s *spinReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p = p
	err := s.rc.Read(s.tryFn)
	s.p = nil
	if err != nil {
		return 0, err
	}
	if s.rerr != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: s.rerr}
	}
	if s.n == 0 {
		return 0, io.EOF
	}
	return s.n, nil
}

// spinWriter writes stream 0 of a link: the write Go's net package would
// do (a write or a gathered writev until every byte is out, parking in the
// network poller while the socket has no room), except that while armed it
// first retries for up to spin, yielding between tries.
//
// Both lanes must poll together: a receive that polls with runtime.Gosched
// keeps Go's scheduler from reaching the network poller, so a send parked
// there would not learn that its socket has room until the receive gave
// up polling. With both polling, the two goroutines hand the process's P
// back and forth, as an MPI progress loop drives its sends and receives.
type spinWriter struct {
	rc syscall.RawConn
	spinWait

	// The callback's arguments and results live here, and the callback is
	// bound once, so that a write allocates nothing.
	bufs  [2][]byte
	iov   [][]byte // what is left of bufs to write
	vec   [2]syscall.Iovec
	werr  error
	tryFn func(fd uintptr) bool
}

func newSpinWriter(c *net.TCPConn, spin time.Duration) (*spinWriter, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &spinWriter{rc: rc, spinWait: spinWait{spin: spin}}
	w.tryFn = w.try
	return w, nil
}

// try is the RawConn callback: it writes what is left of w.iov and returns
// true when all of it is written or the write failed, false to park until
// the socket has room.
func (w *spinWriter) try(fd uintptr) bool {
	for i := 0; ; i++ {
		for len(w.iov) > 0 && len(w.iov[0]) == 0 {
			w.iov = w.iov[1:]
		}
		if len(w.iov) == 0 {
			return true
		}
		n, err := w.writev(int(fd))
		if n > 0 {
			for n > 0 {
				k := min(n, len(w.iov[0]))
				w.iov[0] = w.iov[0][k:]
				n -= k
				if len(w.iov[0]) == 0 {
					w.iov = w.iov[1:]
				}
			}
			i = -1 // progress: the spin window starts again
			continue
		}
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN, nil:
		default:
			w.werr = err
			return true
		}
		if !w.again(i) {
			return false
		}
	}
}

// writev writes the (at most two) buffers of w.iov, the first not empty,
// with one system call: a header alone in its own segment would wake the
// receiver before its payload arrives.
func (w *spinWriter) writev(fd int) (int, error) {
	if len(w.iov) == 1 || len(w.iov[1]) == 0 {
		return syscall.Write(fd, w.iov[0])
	}
	for i, b := range w.iov[:2] {
		w.vec[i].Base = &b[0]
		w.vec[i].SetLen(len(b))
	}
	r, _, e := syscall.Syscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&w.vec[0])), 2)
	w.vec = [2]syscall.Iovec{}
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// write writes every byte of a, then of b, with one system call while
// the socket has room, or fails. It polls for room while polling is on.
func (w *spinWriter) write(polling bool, a, b []byte) error {
	w.armed, w.bufs, w.werr = polling, [2][]byte{a, b}, nil
	w.iov = w.bufs[:]
	err := w.rc.Write(w.tryFn)
	w.armed, w.bufs, w.iov = false, [2][]byte{}, nil
	if err != nil {
		return err
	}
	if w.werr != nil {
		return &net.OpError{Op: "write", Net: "tcp", Err: w.werr}
	}
	return nil
}
