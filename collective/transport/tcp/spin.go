package tcp

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"
)

// spinReader reads a TCP connection and, while armed, polls the socket for
// a short while before parking the goroutine in Go's network poller.
// Waking a parked goroutine through the poller costs tens of microseconds,
// most of a small collective's latency; MPI libraries poll for the same
// reason. Between polls it yields to the process's other goroutines (the
// send lane), so polling never starves them.
//
// Only the wait for a message header is armed: payload bytes follow their
// header closely, and polling during bulk transfers measurably took CPU
// from the copies. Polling pays only while every rank has a core of its
// own, so the default (SpinFor) turns it off when ranks outnumber cores.
type spinReader struct {
	rc    syscall.RawConn
	spin  time.Duration
	armed bool
}

func newSpinReader(c *net.TCPConn, spin time.Duration) (*spinReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &spinReader{rc: rc, spin: spin}, nil
}

func (s *spinReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		var start time.Time
		for i := 0; ; i++ {
			n, rerr = syscall.Read(int(fd), p)
			switch rerr {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
			default:
				return true
			}
			if !s.armed || s.spin <= 0 {
				break
			}
			if i == 0 {
				start = time.Now()
			} else if time.Since(start) > s.spin {
				break
			}
			runtime.Gosched()
		}
		n, rerr = 0, nil
		return false // park in the poller until the socket is readable
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: rerr}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
