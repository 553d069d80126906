package tcp

import (
	"io"
	"net"
	"syscall"
	"time"
)

// spinReader reads a TCP connection, polling the socket for a short while
// before parking the goroutine in Go's network poller. Waking a parked
// goroutine costs tens of microseconds on a busy or virtualised machine,
// which is most of a small collective's latency; MPI implementations poll
// for the same reason. Between polls it yields the CPU, so that on a
// machine with more ranks than cores the peer it waits for can run.
type spinReader struct {
	rc   syscall.RawConn
	spin time.Duration
}

func newSpinReader(c *net.TCPConn, spin time.Duration) (io.Reader, error) {
	if spin <= 0 {
		return c, nil
	}
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
			if i == 0 {
				start = time.Now()
			} else if time.Since(start) > s.spin {
				n, rerr = 0, nil
				return false // park in the poller until data arrives
			}
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
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
