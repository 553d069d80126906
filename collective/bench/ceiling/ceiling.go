package ceiling

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/internal/stats"
)

// The environment of a child: its rank, its successor's address and the
// measurement's shape. Its listener is file descriptor 3.
const (
	envRank    = "RINGO_CEILING_RANK"
	envNext    = "RINGO_CEILING_NEXT"
	envSockets = "RINGO_CEILING_SOCKETS"
	envWarmup  = "RINGO_CEILING_WARMUP"
	envSeconds = "RINGO_CEILING_SECONDS"
	envBuf     = "RINGO_CEILING_BUF"
	envIO      = "RINGO_CEILING_IO"
)

// Config is one measurement.
type Config struct {
	NP      int           // processes in the ring, at least 2
	Sockets int           // TCP connections per ring link
	Warmup  time.Duration // streaming before the window opens
	Window  time.Duration // the measured window
	Buf     int           // SO_SNDBUF / SO_RCVBUF in bytes
	IO      int           // bytes per write and read
}

// DefaultConfig is 2 processes, 2 sockets per link, 1 s of warm-up, a
// 3 s window, 4 MiB socket buffers and 1 MiB writes.
func DefaultConfig() Config {
	return Config{NP: 2, Sockets: 2, Warmup: time.Second, Window: 3 * time.Second, Buf: 4 << 20, IO: 1 << 20}
}

// Validate names the first field out of range.
func (c Config) Validate() error {
	switch {
	case c.NP < 2:
		return fmt.Errorf("ceiling: a ring needs at least 2 processes, not %d", c.NP)
	case c.Sockets < 1:
		return fmt.Errorf("ceiling: %d sockets per link: want at least 1", c.Sockets)
	case c.Window <= 0 || c.Warmup < 0:
		return fmt.Errorf("ceiling: window %v must be positive and warm-up %v not negative", c.Window, c.Warmup)
	case c.Buf < 1 || c.IO < 1:
		return fmt.Errorf("ceiling: socket buffer %d and write size %d must be positive", c.Buf, c.IO)
	}
	return nil
}

// RankResult is what one child measured.
type RankResult struct {
	Rank    int     `json:"rank"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	GBps    float64 `json:"gbps"`
}

// Result is a whole ring's measurement.
type Result struct {
	Ranks []RankResult
	// GBps is the median over ranks of what each received per second.
	GBps float64
}

// Min and Max are the slowest and fastest rank's GB/s.
func (r Result) Min() float64 { return extreme(r.Ranks, func(a, b float64) bool { return a < b }) }
func (r Result) Max() float64 { return extreme(r.Ranks, func(a, b float64) bool { return a > b }) }

func extreme(rs []RankResult, better func(a, b float64) bool) float64 {
	if len(rs) == 0 {
		return 0
	}
	m := rs[0].GBps
	for _, r := range rs[1:] {
		if better(r.GBps, m) {
			m = r.GBps
		}
	}
	return m
}

// Measure runs the ring in c.NP child processes of this binary and
// returns what they received. Cancelling ctx stops the children.
func Measure(ctx context.Context, c Config) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return Result{}, fmt.Errorf("ceiling: finding this executable: %w", err)
	}
	// One listener per rank, opened here so that every child can dial its
	// successor before the successor has even started.
	lns := make([]*net.TCPListener, c.NP)
	defer func() {
		for _, l := range lns {
			if l != nil {
				l.Close()
			}
		}
	}()
	for i := range lns {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return Result{}, fmt.Errorf("ceiling: listening on loopback: %w", err)
		}
		lns[i] = l
	}
	procs := make([]*child, 0, c.NP)
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for i := range c.NP {
		p, err := startChild(ctx, self, i, lns[i], lns[(i+1)%c.NP].Addr().String(), c)
		if err != nil {
			return Result{}, fmt.Errorf("ceiling: starting rank %d: %w", i, err)
		}
		procs = append(procs, p)
	}
	for i, l := range lns {
		l.Close() // the children hold their own copies
		lns[i] = nil
	}
	for i, p := range procs {
		s, err := p.expect(ctx, 30*time.Second)
		if err != nil {
			return Result{}, fmt.Errorf("ceiling: rank %d: %w", i, err)
		}
		if s != "ready" {
			return Result{}, fmt.Errorf("ceiling: rank %d said %q, not ready", i, s)
		}
	}
	for i, p := range procs {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			return Result{}, fmt.Errorf("ceiling: starting rank %d: %w", i, err)
		}
	}
	res := Result{Ranks: make([]RankResult, c.NP)}
	wait := c.Warmup + c.Window + 30*time.Second
	for i, p := range procs {
		s, err := p.expect(ctx, wait)
		if err != nil {
			return Result{}, fmt.Errorf("ceiling: rank %d: %w", i, err)
		}
		if err := json.Unmarshal([]byte(s), &res.Ranks[i]); err != nil {
			return Result{}, fmt.Errorf("ceiling: rank %d: bad result %q: %v", i, s, err)
		}
	}
	gb := make([]float64, len(res.Ranks))
	for i, r := range res.Ranks {
		gb[i] = r.GBps
	}
	res.GBps = stats.Median(gb)
	return res, nil // the deferred stop closes stdin, which tells the children to stop
}

// child is one started rank and the lines it printed.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
}

func startChild(ctx context.Context, self string, rank int, ln *net.TCPListener, next string, c Config) (*child, error) {
	f, err := ln.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(),
		envRank+"="+strconv.Itoa(rank),
		envNext+"="+next,
		envSockets+"="+strconv.Itoa(c.Sockets),
		envWarmup+"="+c.Warmup.String(),
		envSeconds+"="+c.Window.String(),
		envBuf+"="+strconv.Itoa(c.Buf),
		envIO+"="+strconv.Itoa(c.IO),
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
	p := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 4), done: make(chan struct{})}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
		case <-p.done:
		}
	}()
	return p, nil
}

func (p *child) expect(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case s, ok := <-p.lines:
		if !ok {
			return "", fmt.Errorf("exited early")
		}
		return s, nil
	case <-t.C:
		return "", fmt.Errorf("no answer within %v", timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// stop closes the child's stdin (its signal to stop streaming) and waits
// for it, killing it after 5 s.
func (p *child) stop() {
	p.stdin.Close()
	exited := make(chan struct{})
	go func() { p.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-exited
	}
	close(p.done)
}

// RunChild runs this process as a rank of a measurement when its
// environment says it is one, and reports whether it was. A binary that
// calls Measure calls RunChild first thing: Measure re-executes it.
func RunChild() (bool, error) {
	r := os.Getenv(envRank)
	if r == "" {
		return false, nil
	}
	return true, runChild(r)
}

func runChild(rankStr string) error {
	rank, err := strconv.Atoi(rankStr)
	if err != nil {
		return fmt.Errorf("%s=%q: not a rank", envRank, rankStr)
	}
	next := os.Getenv(envNext)
	sockets, _ := strconv.Atoi(os.Getenv(envSockets))
	warmup, _ := time.ParseDuration(os.Getenv(envWarmup))
	window, _ := time.ParseDuration(os.Getenv(envSeconds))
	buf, _ := strconv.Atoi(os.Getenv(envBuf))
	ioSize, _ := strconv.Atoi(os.Getenv(envIO))
	if next == "" || sockets < 1 || window <= 0 || buf < 1 || ioSize < 1 {
		return fmt.Errorf("ceiling rank %d: incomplete environment (successor %q, %d sockets, window %v, buffer %d, io %d)", rank, next, sockets, window, buf, ioSize)
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return fmt.Errorf("ceiling rank %d: listener on fd 3: %v", rank, err)
	}
	out, in, err := connect(ln, next, sockets, buf)
	ln.Close()
	if err != nil {
		return fmt.Errorf("ceiling rank %d: %v", rank, err)
	}

	stdin := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	if line, err := stdin.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return nil // the parent gave up
	}

	var received atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, c := range out {
		wg.Go(func() {
			b := make([]byte, ioSize)
			for i := range b {
				b[i] = byte(i)
			}
			for !stop.Load() {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		})
	}
	for _, c := range in {
		wg.Go(func() {
			b := make([]byte, ioSize)
			for {
				n, err := c.Read(b)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}

	time.Sleep(warmup)
	b0, t0 := received.Load(), time.Now()
	time.Sleep(window)
	b1, t1 := received.Load(), time.Now()
	el := t1.Sub(t0).Seconds()
	line, _ := json.Marshal(RankResult{Rank: rank, Bytes: b1 - b0, Seconds: el, GBps: float64(b1-b0) / el / 1e9})
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

// connect dials the successor k times and accepts k connections from
// the predecessor, concurrently (the listeners are already open).
func connect(ln net.Listener, next string, k, buf int) (out, in []*net.TCPConn, err error) {
	tune := func(c *net.TCPConn) {
		c.SetNoDelay(true)
		c.SetWriteBuffer(buf)
		c.SetReadBuffer(buf)
	}
	out, in = make([]*net.TCPConn, k), make([]*net.TCPConn, k)
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
	for range 2 {
		if e := <-errc; e != nil && err == nil {
			err = e
			ln.Close() // a failed dial must not leave Accept waiting
		}
	}
	return out, in, err
}
