package shm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// The parent test tells a worker process who it is through these.
const (
	envWorkerRank = "RINGO_SHM_TEST_RANK"
	envWorkerSize = "RINGO_SHM_TEST_SIZE"
	envWorkerAddr = "RINGO_SHM_TEST_RENDEZVOUS"
	envWorkerFS   = "RINGO_SHM_TEST_TMPFS" // 1: rings in /dev/shm files, not memfds
)

// workerTimeout is the collective timeout of the worker processes: the
// survivors of a SIGKILL must fail well within it.
const workerTimeout = 10 * time.Second

// TestWorkerProcess is a rank of TestSIGKILL's group, started by it as a
// separate process. It does nothing in a normal run. It all-reduces 1 MiB
// over and over, printing "ready" after the first call, and when a call
// fails prints "fail <unix ns> <wraps ErrPeerLost> <error>" and exits.
func TestWorkerProcess(t *testing.T) {
	rs := os.Getenv(envWorkerRank)
	if rs == "" {
		t.Skip("only runs as a worker of TestSIGKILL")
	}
	rank, _ := strconv.Atoi(rs)
	size, _ := strconv.Atoi(os.Getenv(envWorkerSize))
	forceTmpfs = os.Getenv(envWorkerFS) == "1"
	cfg := DefaultConfig()
	cfg.SlotBytes, cfg.Slots = 4<<10, 64
	cfg.Rendezvous, cfg.Rank, cfg.Size = os.Getenv(envWorkerAddr), rank, size
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tr, err := Join(ctx, cfg)
	cancel()
	if err != nil {
		fmt.Printf("fail %d false join: %v\n", time.Now().UnixNano(), err)
		return
	}
	ccfg := collective.DefaultConfig()
	ccfg.Timeout = workerTimeout
	comm, err := collective.New(tr, ccfg)
	if err != nil {
		fmt.Printf("fail %d false new: %v\n", time.Now().UnixNano(), err)
		return
	}
	defer comm.Close()
	buf := make([]float32, 1<<18)
	for i := 0; ; i++ {
		if err := comm.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil {
			fmt.Printf("fail %d %v %v\n", time.Now().UnixNano(), errors.Is(err, collective.ErrPeerLost), strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		if i == 0 {
			fmt.Println("ready")
		}
	}
}

func shmNames(t *testing.T) map[string]bool {
	ents, err := os.ReadDir("/dev/shm")
	if err != nil {
		t.Skipf("no /dev/shm to check: %v", err)
	}
	m := map[string]bool{}
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

// TestSIGKILL runs a group of three real processes all-reducing in a loop,
// kills one with SIGKILL, and checks that both survivors fail within the
// collective timeout with an error naming the dead rank, that the rings
// were never files with a name, and that nothing is left in /dev/shm.
func TestSIGKILL(t *testing.T) {
	if os.Getenv(envWorkerRank) != "" {
		t.Skip("worker")
	}
	for _, mode := range []string{"memfd", "tmpfs"} {
		t.Run(mode, func(t *testing.T) {
			before := shmNames(t)
			const n, victim = 3, 1
			addr := proctest.FreeAddr(t)
			type line struct {
				rank int
				text string
			}
			lines := make(chan line, 64)
			cmds := make([]*exec.Cmd, n)
			var readers sync.WaitGroup
			for r := range n {
				cmd := exec.Command(os.Args[0], "-test.run=^TestWorkerProcess$", "-test.count=1")
				cmd.Env = append(os.Environ(), envWorkerRank+"="+strconv.Itoa(r), envWorkerSize+"="+strconv.Itoa(n),
					envWorkerAddr+"="+addr, "GOMAXPROCS=1")
				if mode == "tmpfs" {
					cmd.Env = append(cmd.Env, envWorkerFS+"=1")
				}
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				cmd.Stderr = os.Stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				cmds[r] = cmd
				readers.Add(1)
				go func() {
					defer readers.Done()
					sc := bufio.NewScanner(out)
					for sc.Scan() {
						lines <- line{r, sc.Text()}
					}
				}()
			}
			defer func() {
				for _, c := range cmds {
					c.Process.Kill()
				}
				readers.Wait()
				for _, c := range cmds {
					c.Wait()
				}
			}()
			timeout := time.After(30 * time.Second)
			next := func() line {
				select {
				case l := <-lines:
					return l
				case <-timeout:
					t.Fatal("workers did not report in time")
				}
				return line{}
			}
			for ready := 0; ready < n; {
				l := next()
				if l.text != "ready" {
					t.Fatalf("rank %d before the kill: %s", l.rank, l.text)
				}
				ready++
			}
			// While the group runs, its rings are mapped from descriptors
			// with no name a crash could leave behind.
			maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", cmds[0].Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			rings := 0
			for _, m := range strings.Split(string(maps), "\n") {
				switch {
				case strings.Contains(m, "memfd:ringo-shm"):
					rings++
				case strings.Contains(m, "/dev/shm/"):
					if !strings.HasSuffix(m, "(deleted)") {
						t.Errorf("rank 0 maps a named /dev/shm file: %s", m)
					}
					rings++
				}
			}
			if want := 2 * (n - 1); rings < want {
				t.Errorf("rank 0 maps %d ring segments, want %d:\n%s", rings, want, maps)
			}

			time.Sleep(100 * time.Millisecond) // well into the loop
			killedAt := time.Now()
			if err := cmds[victim].Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for failed := 0; failed < n-1; {
				l := next()
				if !strings.HasPrefix(l.text, "fail ") {
					continue // the test framework's own output
				}
				if l.rank == victim {
					t.Fatalf("the killed rank printed %q", l.text)
				}
				var ns int64
				var lost bool
				if _, err := fmt.Sscanf(l.text, "fail %d %t", &ns, &lost); err != nil {
					t.Fatalf("rank %d: %q", l.rank, l.text)
				}
				msg := strings.SplitN(l.text, " ", 4)[3]
				took := time.Unix(0, ns).Sub(killedAt)
				t.Logf("rank %d failed %v after the kill: %s", l.rank, took.Round(time.Millisecond), msg)
				if took > workerTimeout {
					t.Errorf("rank %d took %v to notice, past the %v timeout", l.rank, took, workerTimeout)
				}
				if !lost || !strings.Contains(msg, "lost rank 1") {
					t.Errorf("rank %d: the error does not wrap ErrPeerLost naming rank 1: %s", l.rank, msg)
				}
				failed++
			}
			for r, c := range cmds {
				err := c.Wait()
				if r != victim && err != nil {
					t.Errorf("rank %d exited with %v", r, err)
				}
			}
			after := shmNames(t)
			for name := range after {
				if !before[name] && strings.Contains(name, "ringo") {
					t.Errorf("/dev/shm/%s was left behind", name)
				}
			}
		})
	}
}

// TestOtherHostRefused: a rank whose host differs from rank 0's is
// refused at the rendezvous, and every rank says why.
func TestOtherHostRefused(t *testing.T) {
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := DefaultConfig()
			c.Rendezvous, c.Rank, c.Size = addr, r, 2
			if r == 1 {
				c.hostID = "elsewhere"
			}
			tr, err := Join(ctx, c)
			if tr != nil {
				tr.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "one host only") || !strings.Contains(err.Error(), "elsewhere") {
			t.Errorf("rank %d: %v, want a refusal naming the other host", r, err)
		}
	}
}

const envEcho = "RINGO_SHM_TEST_ECHO" // the echo worker's message count

// TestEchoProcess is BenchmarkPingPong's partner process: it returns every
// message rank 0 sends it, as many as it is told.
func TestEchoProcess(t *testing.T) {
	ns := os.Getenv(envEcho)
	if ns == "" {
		t.Skip("only runs as BenchmarkPingPong's partner")
	}
	n, _ := strconv.Atoi(ns)
	cfg := DefaultConfig()
	if env, err := cfg.FromEnv(); err == nil {
		cfg = env
	}
	cfg.Rendezvous, cfg.Rank, cfg.Size = os.Getenv(envWorkerAddr), 1, 2
	tr, err := Join(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var h transport.Header
	var buf []byte
	for range n {
		if err := tr.RecvHeader(0, &h, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if uint64(cap(buf)) < h.Length {
			buf = make([]byte, h.Length)
		}
		buf = buf[:h.Length]
		if err := tr.RecvPayload(0, buf, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := tr.Send(0, &h, buf, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkPingPong: a message to a separate process and back, through
// the rings: half of one iteration is the one-way latency. Both processes
// run with GOMAXPROCS=1.
func BenchmarkPingPong(b *testing.B) {
	for _, size := range []int{0, 4 << 10, 64 << 10, 1 << 20} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			addr := proctest.FreeAddr(b)
			cmd := exec.Command(os.Args[0], "-test.run=^TestEchoProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), envEcho+"="+strconv.Itoa(b.N), envWorkerAddr+"="+addr, "GOMAXPROCS=1")
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer cmd.Wait()
			cfg := DefaultConfig()
			if env, err := cfg.FromEnv(); err == nil {
				cfg = env
			}
			cfg.Rendezvous, cfg.Rank, cfg.Size = addr, 0, 2
			tr, err := Join(context.Background(), cfg)
			if err != nil {
				cmd.Process.Kill()
				b.Fatal(err)
			}
			defer tr.Close()
			out, in := make([]byte, size), make([]byte, size)
			var h transport.Header
			b.SetBytes(int64(2 * size))
			b.ResetTimer()
			for range b.N {
				if err := tr.Send(1, &transport.Header{Kind: transport.KindData}, out, time.Time{}); err != nil {
					b.Fatal(err)
				}
				if err := tr.RecvHeader(1, &h, time.Time{}); err != nil {
					b.Fatal(err)
				}
				if err := tr.RecvPayload(1, in, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
