package netnstest

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// InNS runs f on a thread inside network namespace ns and returns to
// this process's namespace after: sockets f opens belong to ns (and keep
// working from any thread), as a program started there would have them.
func InNS(ns string, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // a thread that cannot return stays locked and dies with the goroutine
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(self)
		target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("entering %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("returning from %s: %w (and %v)", ns, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// Flood starts conns bulk TCP flows from host a to host b, a program
// other than ringo filling the link between them, until the returned
// stop is called (the test's cleanup calls it too).
func (h *Hosts) Flood(a, b, conns int) (stop func()) {
	h.T.Helper()
	var ln net.Listener
	if err := InNS(h.Names[b], func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(h.Addrs[b], "0"))
		return err
	}); err != nil {
		h.T.Fatalf("flood %d->%d: %v", a, b, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			mu.Lock()
			for _, c := range open {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	// Before the first flow starts, so that a Fatalf below stops those
	// already running.
	h.T.Cleanup(stop)
	keep := func(c net.Conn) {
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			keep(c)
			wg.Go(func() { io.Copy(io.Discard, c) })
		}
	})
	for range conns {
		var c net.Conn
		if err := InNS(h.Names[a], func() (err error) {
			c, err = net.Dial("tcp", ln.Addr().String())
			return err
		}); err != nil {
			h.T.Fatalf("flood %d->%d: %v", a, b, err)
		}
		keep(c)
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		})
	}
	return stop
}
