// Command ringceiling measures the machine's own limit for a TCP ring: the
// highest per-rank receive throughput that N processes connected in a ring
// over loopback can sustain when every rank streams to its successor and
// receives from its predecessor at the same time.
//
// A ring all-reduce moves 2(n-1)/n of the buffer through every link, so its
// bus bandwidth (nccl-tests convention) cannot exceed this number: it is the
// busbw ceiling that ringo's TCP transport is compared against.
//
// The parent opens one listener per rank, re-executes itself N times (the
// children find their role in the RINGCEILING_RANK environment variable and
// their listener as file descriptor 3), waits until every child is
// connected, starts them together, and collects one result line from each.
//
//	go build -o bin/ringceiling ./scripts/ringceiling
//	bin/ringceiling --np 4 --sockets 2 --seconds 3 --json
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	envRank    = "RINGCEILING_RANK"
	envNext    = "RINGCEILING_NEXT"
	envSockets = "RINGCEILING_SOCKETS"
	envWarmup  = "RINGCEILING_WARMUP"
	envSeconds = "RINGCEILING_SECONDS"
	envBuf     = "RINGCEILING_BUF"
	envIO      = "RINGCEILING_IO"
)

// childResult is what each child prints (one JSON line) after measuring.
type childResult struct {
	Rank    int     `json:"rank"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	GBps    float64 `json:"gbps"`
}

func main() {
	if r := os.Getenv(envRank); r != "" {
		if err := child(r); err != nil {
			fmt.Fprintf(os.Stderr, "ringceiling rank %s: %v\n", r, err)
			os.Exit(1)
		}
		return
	}
	np := flag.Int("np", 2, "number of processes in the ring")
	sockets := flag.Int("sockets", 2, "TCP sockets per ring link")
	seconds := flag.Float64("seconds", 3, "measurement window in seconds")
	warmup := flag.Float64("warmup", 1, "warm-up in seconds before the window opens")
	bufMiB := flag.Int("buf-mib", 4, "socket buffers (SO_SNDBUF/SO_RCVBUF) in MiB")
	ioKiB := flag.Int("io-kib", 1024, "size of each write and read in KiB")
	asJSON := flag.Bool("json", false, `print one JSON line {"np":N,"sockets":K,"gbps":x}`)
	verbose := flag.Bool("v", false, "also print every rank's throughput (to stderr)")
	flag.Parse()
	if *np < 2 || *sockets < 1 || *seconds <= 0 || *warmup < 0 || *bufMiB < 1 || *ioKiB < 1 {
		fmt.Fprintln(os.Stderr, "ringceiling: need --np >= 2, --sockets >= 1, --seconds > 0, --warmup >= 0, --buf-mib >= 1, --io-kib >= 1")
		os.Exit(2)
	}
	res, err := parent(*np, *sockets, *warmup, *seconds, *bufMiB<<20, *ioKiB<<10)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ringceiling: %v\n", err)
		os.Exit(1)
	}
	gbps := make([]float64, len(res))
	for i, r := range res {
		gbps[i] = r.GBps
		if *verbose {
			fmt.Fprintf(os.Stderr, "rank %d: %.3f GB/s (%d bytes in %.3fs)\n", r.Rank, r.GBps, r.Bytes, r.Seconds)
		}
	}
	med := median(gbps)
	if *asJSON {
		out, _ := json.Marshal(struct {
			NP      int     `json:"np"`
			Sockets int     `json:"sockets"`
			GBps    float64 `json:"gbps"`
		}{*np, *sockets, round3(med)})
		fmt.Println(string(out))
		return
	}
	fmt.Printf("np=%d sockets=%d: ring ceiling %.3f GB/s per rank (median; min %.3f, max %.3f)\n",
		*np, *sockets, med, minOf(gbps), maxOf(gbps))
}

func parent(np, sockets int, warmup, seconds float64, buf, ioSize int) ([]childResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// One listener per rank, opened here so that every child can dial its
	// successor before the successor has even started.
	lns := make([]*net.TCPListener, np)
	for i := range lns {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		lns[i] = l
	}
	type proc struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		lines chan string
	}
	procs := make([]*proc, np)
	defer func() {
		for _, p := range procs {
			if p == nil {
				continue
			}
			p.stdin.Close()
			done := make(chan struct{})
			go func() { p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
				<-done
			}
		}
	}()
	for i := 0; i < np; i++ {
		f, err := lns[i].File()
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(),
			envRank+"="+strconv.Itoa(i),
			envNext+"="+lns[(i+1)%np].Addr().String(),
			envSockets+"="+strconv.Itoa(sockets),
			envWarmup+"="+strconv.FormatFloat(warmup, 'g', -1, 64),
			envSeconds+"="+strconv.FormatFloat(seconds, 'g', -1, 64),
			envBuf+"="+strconv.Itoa(buf),
			envIO+"="+strconv.Itoa(ioSize),
		)
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		f.Close()
		p := &proc{cmd: cmd, stdin: stdin, lines: make(chan string, 4)}
		procs[i] = p
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			close(p.lines)
		}()
	}
	for _, l := range lns {
		l.Close() // the children hold their own copies
	}
	expect := func(i int, timeout time.Duration) (string, error) {
		select {
		case s, ok := <-procs[i].lines:
			if !ok {
				return "", fmt.Errorf("rank %d exited early", i)
			}
			return s, nil
		case <-time.After(timeout):
			return "", fmt.Errorf("rank %d: no answer within %v", i, timeout)
		}
	}
	for i := range procs {
		s, err := expect(i, 30*time.Second)
		if err != nil {
			return nil, err
		}
		if s != "ready" {
			return nil, fmt.Errorf("rank %d: unexpected %q", i, s)
		}
	}
	for _, p := range procs {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			return nil, err
		}
	}
	wait := time.Duration((warmup+seconds)*float64(time.Second)) + 30*time.Second
	res := make([]childResult, np)
	for i := range procs {
		s, err := expect(i, wait)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(s), &res[i]); err != nil {
			return nil, fmt.Errorf("rank %d: bad result %q: %v", i, s, err)
		}
	}
	return res, nil // the deferred stdin close tells the children to stop
}

func child(rankStr string) error {
	rank, _ := strconv.Atoi(rankStr)
	next := os.Getenv(envNext)
	sockets, _ := strconv.Atoi(os.Getenv(envSockets))
	warmup, _ := strconv.ParseFloat(os.Getenv(envWarmup), 64)
	seconds, _ := strconv.ParseFloat(os.Getenv(envSeconds), 64)
	buf, _ := strconv.Atoi(os.Getenv(envBuf))
	ioSize, _ := strconv.Atoi(os.Getenv(envIO))
	if next == "" || sockets < 1 || seconds <= 0 || buf < 1 || ioSize < 1 {
		return fmt.Errorf("bad environment")
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return fmt.Errorf("listener: %v", err)
	}
	tune := func(c *net.TCPConn) {
		c.SetNoDelay(true)
		c.SetWriteBuffer(buf)
		c.SetReadBuffer(buf)
	}
	// Dial the successor K times and accept K connections from the
	// predecessor, concurrently (the listeners are already open).
	out := make([]*net.TCPConn, sockets)
	in := make([]*net.TCPConn, sockets)
	errc := make(chan error, 2)
	go func() {
		for i := range out {
			c, err := net.Dial("tcp", next)
			if err != nil {
				errc <- fmt.Errorf("dial %s: %v", next, err)
				return
			}
			out[i] = c.(*net.TCPConn)
			tune(out[i])
		}
		errc <- nil
	}()
	go func() {
		for i := range in {
			c, err := ln.Accept()
			if err != nil {
				errc <- fmt.Errorf("accept: %v", err)
				return
			}
			in[i] = c.(*net.TCPConn)
			tune(in[i])
		}
		errc <- nil
	}()
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			return err
		}
	}
	ln.Close()

	stdin := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	if line, err := stdin.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return nil // parent gave up
	}

	var received atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, c := range out {
		wg.Add(1)
		go func(c *net.TCPConn) {
			defer wg.Done()
			b := make([]byte, ioSize)
			for i := range b {
				b[i] = byte(i)
			}
			for !stop.Load() {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}(c)
	}
	for _, c := range in {
		wg.Add(1)
		go func(c *net.TCPConn) {
			defer wg.Done()
			b := make([]byte, ioSize)
			for {
				n, err := c.Read(b)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		}(c)
	}

	time.Sleep(time.Duration(warmup * float64(time.Second)))
	b0, t0 := received.Load(), time.Now()
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	b1, t1 := received.Load(), time.Now()
	el := t1.Sub(t0).Seconds()
	line, _ := json.Marshal(childResult{Rank: rank, Bytes: b1 - b0, Seconds: el, GBps: float64(b1-b0) / el / 1e9})
	fmt.Println(string(line))

	// Keep streaming until the parent has every result (stdin closes), so
	// that no rank's window sees a neighbour already gone.
	io.Copy(io.Discard, stdin)
	stop.Store(true)
	for _, c := range out {
		c.Close()
	}
	for _, c := range in {
		c.Close()
	}
	wg.Wait()
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

func round3(x float64) float64 {
	return float64(int64(x*1000+0.5)) / 1000
}
