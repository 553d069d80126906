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
// reason. Between polls it yields, to the process's other goroutines and
// to other processes, so polling never starves them.
//
// It is armed only while the layer above asks for polling (transport.
// Poller): for small messages received with no send running beside them.
// Polling during bulk transfers measurably took CPU from the copies, and
// it pays only while ranks are at most twice as many as cores, so the
// default (SpinFor) turns it off beyond that.
type spinReader struct {
	rc    syscall.RawConn
	spin  time.Duration
	armed bool

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
	s := &spinReader{rc: rc, spin: spin}
	s.tryFn = s.try
	return s, nil
}

// try is the RawConn callback: true when the read is done (data, EOF or
// an error), false to park until the socket is readable.
func (s *spinReader) try(fd uintptr) bool {
	var start time.Time
	for i := 0; ; i++ {
		s.n, s.rerr = syscall.Read(int(fd), s.p)
		switch s.rerr {
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
		// Yield twice: to this process's other goroutines (the send lane
		// may need the only P), and to the OS, in case the peer we wait
		// for was scheduled on this core: polling that only yielded to
		// Go lost whole 200 us windows to a co-located peer.
		runtime.Gosched()
		syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	}
	s.n, s.rerr = 0, nil
	return false
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
