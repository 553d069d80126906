package launch

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	ringo "github.com/ringo-ml/ringo/runtime"
)

// tailLines is how many lines of a worker's stderr the root-cause report
// shows.
const tailLines = 20

// panicLines is how much of a Go panic the report keeps: the message and
// the panicking goroutine's first frames.
const panicLines = 12

// worker is one running worker process and the goroutines that carry its
// output and heartbeats.
type worker struct {
	rank, local int
	cmd         *exec.Cmd
	pid         int
	started     time.Time

	hbRead *os.File // the read end of the heartbeat pipe

	mu       sync.Mutex
	tail     []string      // last tailLines lines of stderr
	panicked []string      // a Go panic's message and first frames, kept whole
	blames   *int          // the rank its collective group blamed for failing
	report   *ringo.Report // the latest counters a Go worker reported
	lastBeat time.Time
	lastStep int64
	beats    int64
	goProc   bool        // it heartbeats through runtime.Init, so it is a Go program
	reaped   *exitStatus // set as soon as the process is reaped, before output drains

	pumps   sync.WaitGroup // output and heartbeat readers
	done    chan struct{}  // closed when the process has been reaped
	exit    exitStatus
	errFile string
}

// exitStatus is how a worker ended.
type exitStatus struct {
	at     time.Time
	code   int            // -1 when killed by a signal
	signal syscall.Signal // 0 when it exited
	err    error          // a failure to wait, rare
}

func (e exitStatus) ok() bool { return e.err == nil && e.code == 0 && e.signal == 0 }

func (e exitStatus) String() string {
	switch {
	case e.err != nil:
		return e.err.Error()
	case e.signal != 0:
		return fmt.Sprintf("killed by signal %d (%v)", int(e.signal), e.signal)
	default:
		return fmt.Sprintf("exit code %d", e.code)
	}
}

// console serialises lines written to the launcher's stdout and stderr so
// that lines of different workers never interleave mid-line.
type console struct {
	mu       sync.Mutex
	out, err io.Writer
}

func (c *console) line(toErr bool, prefix string, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.out
	if toErr {
		w = c.err
	}
	w.Write([]byte(prefix))
	w.Write(b)
	if len(b) == 0 || b[len(b)-1] != '\n' {
		w.Write([]byte{'\n'})
	}
}

// spawnSpec is what start needs beyond the environment.
type spawnSpec struct {
	argv    []string
	env     []string
	dir     string // log directory for this attempt, "" for none
	tee     teeMode
	console *console
	rank    int
	local   int
}

// start launches one worker in its own process group, with a pipe for
// heartbeats as file descriptor 3, and output carried to the console and
// the log files.
func start(s spawnSpec) (*worker, error) {
	w := &worker{rank: s.rank, local: s.local, done: make(chan struct{})}
	hbR, hbW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = append(s.env, ringo.EnvHeartbeatFD+"=3")
	cmd.ExtraFiles = []*os.File{hbW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A group of its own, so that stopping a worker stops whatever
		// it started too; and death with the launcher, so that no
		// worker outlives it.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	var sinks [2]*lineSink
	var files []*os.File
	fail := func(err error) (*worker, error) {
		hbR.Close()
		hbW.Close()
		closeAll(files)
		return nil, err
	}
	for i, name := range []string{"out", "err"} {
		ls := &lineSink{stderr: i == 1, console: s.console, toConsole: s.dir == "" || s.tee.has(name),
			prefix: fmt.Sprintf("[rank %d] ", s.rank)}
		if s.dir != "" {
			f, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("rank-%d.%s", s.rank, name)))
			if err != nil {
				return fail(fmt.Errorf("log file: %w", err))
			}
			files = append(files, f)
			ls.file = f
			if i == 1 {
				w.errFile = f.Name()
			}
		}
		sinks[i] = ls
	}
	// Our own pipes rather than exec's, so that a grandchild that keeps
	// the worker's stdout open cannot keep us from seeing the worker exit.
	var reads, writes [2]*os.File
	for i := range reads {
		if reads[i], writes[i], err = os.Pipe(); err != nil {
			closeAll(reads[:i])
			closeAll(writes[:i])
			return fail(err)
		}
	}
	cmd.Stdout, cmd.Stderr = writes[0], writes[1]
	err = cmd.Start()
	hbW.Close() // the worker holds its copies now
	closeAll(writes[:])
	if err != nil {
		closeAll(reads[:])
		hbR.Close()
		closeAll(files)
		return nil, explainStart(s.argv[0], err)
	}
	w.cmd, w.pid, w.started, w.hbRead = cmd, cmd.Process.Pid, time.Now(), hbR
	w.pumps.Add(3)
	go w.pump(reads[0], sinks[0])
	go w.pump(reads[1], sinks[1])
	go w.heartbeats()
	go func() {
		ps, err := cmd.Process.Wait()
		st := exitStatus{at: time.Now()}
		if err != nil {
			st.err = err
		} else {
			st.code = ps.ExitCode()
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				st.signal = ws.Signal()
			}
		}
		w.mu.Lock()
		w.reaped = &st
		w.mu.Unlock()
		// Let the pumps drain what the worker wrote before it died; a
		// child it left behind may hold the pipes open, so do not wait
		// for end of file longer than that.
		drained := make(chan struct{})
		go func() { w.pumps.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(drainGrace):
			closeAll(reads[:])
			w.hbRead.Close()
			<-drained
		}
		closeAll(reads[:])
		closeAll(files)
		w.exit = st
		close(w.done)
	}()
	return w, nil
}

// drainGrace bounds how long output is read after a worker exits.
const drainGrace = 300 * time.Millisecond

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// explainStart turns exec's errors into ones that say what to fix.
func explainStart(prog string, err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return fmt.Errorf("program %q not found in PATH", prog)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("program %q does not exist", prog)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("program %q is not executable (check its mode: chmod +x)", prog)
	}
	return fmt.Errorf("starting %q: %w", prog, err)
}

// lineSink writes a worker's stream whole to its log files and line by
// line, prefixed, to the console; stderr lines also feed the tail.
type lineSink struct {
	stderr    bool
	file      *os.File
	console   *console
	toConsole bool
	prefix    string
}

// pump copies one output stream until the worker closes it. A worker that
// writes a line longer than 64 KiB has it split: the console and the tail
// are for people, the log file keeps every byte.
func (w *worker) pump(r io.Reader, s *lineSink) {
	defer w.pumps.Done()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if s.file != nil {
				s.file.Write(line)
			}
			if s.toConsole {
				s.console.line(s.stderr, s.prefix, line)
			}
			if s.stderr {
				w.addTail(line)
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (w *worker) addTail(line []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := strings.TrimRight(string(line), "\r\n")
	// A Go panic's message comes before its stacks, so the last lines
	// alone would lose it: keep the message and the frames that follow.
	switch {
	case w.panicked == nil && (strings.HasPrefix(s, "panic: ") || strings.HasPrefix(s, "fatal error: ")):
		w.panicked = []string{s}
	case w.panicked != nil && len(w.panicked) < panicLines:
		w.panicked = append(w.panicked, s)
	}
	if len(w.tail) == tailLines {
		copy(w.tail, w.tail[1:])
		w.tail = w.tail[:tailLines-1]
	}
	w.tail = append(w.tail, s)
}

func (w *worker) heartbeats() {
	defer w.pumps.Done()
	buf := make([]byte, ringo.BeatSize)
	for {
		if _, err := io.ReadFull(w.hbRead, buf); err != nil {
			return
		}
		if buf[0] == ringo.BeatReport {
			n := binary.LittleEndian.Uint64(buf[1:])
			if n > ringo.MaxReport {
				return // not a worker of ours: stop listening to it
			}
			payload := make([]byte, n)
			if _, err := io.ReadFull(w.hbRead, payload); err != nil {
				return
			}
			var rep ringo.Report
			if json.Unmarshal(payload, &rep) == nil {
				w.mu.Lock()
				w.report = &rep
				w.mu.Unlock()
			}
			continue
		}
		w.mu.Lock()
		switch buf[0] {
		case ringo.BeatInit:
			w.goProc = true
		case ringo.BeatFault:
			if w.blames == nil {
				b := int(int64(binary.LittleEndian.Uint64(buf[1:])))
				w.blames = &b
			}
		case ringo.BeatGo:
			w.goProc = true
			w.lastBeat, w.lastStep = time.Now(), int64(binary.LittleEndian.Uint64(buf[1:]))
			w.beats++
		}
		w.mu.Unlock()
	}
}

// progress returns the last heartbeat: its time, step, and whether there
// was one at all.
func (w *worker) progress() (time.Time, int64, bool, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastBeat, w.lastStep, w.beats > 0, w.goProc
}

// reapedStatus returns the exit status once the process has been reaped,
// which may be before done is closed.
func (w *worker) reapedStatus() (exitStatus, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reaped == nil {
		return exitStatus{}, false
	}
	return *w.reaped, true
}

func (w *worker) stderrTail() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.tail...)
}

// blamed returns the rank the worker's group blamed for its failure.
func (w *worker) blamed() (int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.blames == nil {
		return 0, false
	}
	return *w.blames, true
}

func (w *worker) panicText() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.panicked...)
}

// signal sends sig to the worker's whole process group.
func (w *worker) signal(sig syscall.Signal) {
	syscall.Kill(-w.pid, sig)
}

// stop asks the worker's group to end with sig, waits up to grace, then
// kills the group. It returns when the process has been reaped.
func (w *worker) stop(sig syscall.Signal, grace time.Duration) {
	select {
	case <-w.done:
		w.signal(syscall.SIGKILL) // anything it left behind in its group
		return
	default:
	}
	w.signal(sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	}
	w.signal(syscall.SIGKILL)
	<-w.done
}

// teeMode says which streams go to the console when logs go to files.
type teeMode uint8

const (
	teeOut teeMode = 1 << iota
	teeErr
)

func (t teeMode) has(stream string) bool {
	if stream == "out" {
		return t&teeOut != 0
	}
	return t&teeErr != 0
}

// ParseTee reads --tee: none, out, err or all, or torchrun's 0-3.
func ParseTee(s string) (teeMode, error) {
	switch strings.ToLower(s) {
	case "", "0", "none":
		return 0, nil
	case "1", "out", "stdout":
		return teeOut, nil
	case "2", "err", "stderr":
		return teeErr, nil
	case "3", "all", "both":
		return teeOut | teeErr, nil
	}
	return 0, fmt.Errorf("--tee %q: want none, out, err or all (or 0-3)", s)
}
