package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

var ringoBin string

// workerBin is the launcher's test worker (runtime/launch/testdata/worker).
var workerBin string

// TestMain builds the real binary once; the tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ringo-cmd-test")
	if err != nil {
		panic(err)
	}
	ringoBin = filepath.Join(dir, "ringo")
	out, err := exec.Command("go", "build", "-o", ringoBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building ringo: %v\n%s", err, out)
		os.Exit(1)
	}
	workerBin = filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", workerBin, "../../runtime/launch/testdata/worker").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the test worker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type row struct {
	Op     string  `json:"op"`
	NP     int     `json:"np"`
	Bytes  int64   `json:"bytes"`
	Count  int64   `json:"count"`
	DType  string  `json:"dtype"`
	Algo   string  `json:"algo"`
	Time   float64 `json:"time_us"`
	BusBW  float64 `json:"busbw_gbps"`
	Wrong  int64   `json:"wrong"`
	Ceil   float64 `json:"ceiling_gbps"`
	OfCeil float64 `json:"of_ceiling"`
	Device string  `json:"device"`
	D2H    float64 `json:"d2h_share"`
	Wire   float64 `json:"wire_share"`
	H2D    float64 `json:"h2d_share"`
}

func runBenchJSON(t *testing.T, args ...string) []row {
	t.Helper()
	rows, _ := runBenchJSONStderr(t, args...)
	return rows
}

// runBenchJSONStderr is runBenchJSON that also returns the preamble and
// summary lines, which --json sends to stderr.
func runBenchJSONStderr(t *testing.T, args ...string) ([]row, string) {
	t.Helper()
	return runBenchJSONEnv(t, nil, args...)
}

// runBenchJSONWithEnv is runBenchJSON with env added to the environment.
func runBenchJSONWithEnv(t *testing.T, env []string, args ...string) []row {
	t.Helper()
	rows, _ := runBenchJSONEnv(t, env, args...)
	return rows
}

func runBenchJSONEnv(t *testing.T, env []string, args ...string) ([]row, string) {
	t.Helper()
	cmd := exec.Command(ringoBin, append([]string{"bench"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ringo bench %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
	}
	var rows []row
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r row
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("ringo bench %v: stdout line %q is not JSON: %v", args, line, err)
		}
		rows = append(rows, r)
	}
	return rows, stderr.String()
}

func TestBenchCheckCeiling(t *testing.T) {
	rows, stderr := runBenchJSONStderr(t, "allreduce", "--np", "2", "--min-bytes", "1M", "--max-bytes", "2M",
		"--iters", "2", "--warmup", "1", "--check-ceiling", "--ceiling-window", "200ms", "--json")
	if len(rows) != 2 {
		t.Fatalf("got %d rows, want 2", len(rows))
	}
	for _, r := range rows {
		if r.Ceil <= 0 || r.OfCeil <= 0 || math.Abs(r.OfCeil-r.BusBW/r.Ceil) > 1e-9 {
			t.Errorf("row %+v: want the ceiling and busbw as a fraction of it", r)
		}
	}
	for _, want := range []string{"ring ceiling before the sweep", "ring ceiling after the sweep"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	out, err := exec.Command(ringoBin, "bench", "allreduce", "--transport", "shm", "--check-ceiling").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--check-ceiling measures a TCP ring") {
		t.Errorf("--check-ceiling with shm: err %v, output %s; want a refusal naming the flag", err, out)
	}
}

func TestBenchEveryOpAndDType(t *testing.T) {
	cases := []struct {
		op, dtype, redop string
		np               int
	}{
		{"allreduce", "float32", "sum", 4},
		{"allreduce", "bfloat16", "avg", 3},
		{"allreduce", "float16", "max", 2},
		{"allreduce", "int64", "prod", 3},
		{"allreduce", "float64", "min", 4},
		{"reducescatter", "int32", "sum", 3},
		{"allgather", "float32", "sum", 4},
		{"broadcast", "bfloat16", "sum", 3},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-%s-%s-np%d", c.op, c.dtype, c.redop, c.np), func(t *testing.T) {
			rows := runBenchJSON(t, c.op, "--np", strconv.Itoa(c.np), "--min-bytes", "1", "--max-bytes", "1M",
				"--factor", "4", "--iters", "2", "--warmup", "1", "--dtype", c.dtype, "--op", c.redop, "--json")
			if len(rows) < 8 {
				t.Fatalf("got %d rows, want one per size from 1 B to 1 MiB", len(rows))
			}
			sawRing, sawRD := false, false
			for _, r := range rows {
				if r.Wrong != 0 {
					t.Errorf("%d bytes: %d wrong results", r.Bytes, r.Wrong)
				}
				if r.Op != c.op || r.NP != c.np || r.DType != c.dtype {
					t.Errorf("row %+v does not describe the run", r)
				}
				sawRing = sawRing || r.Algo == "ring" || r.Algo == "hd" // hd: mid sizes on 4 ranks
				sawRD = sawRD || r.Algo == "rd"
			}
			if (c.op == "allreduce" || c.op == "broadcast") && !(sawRing && sawRD) {
				t.Errorf("auto should use rd for small and ring (or hd) for large sizes; rows: %+v", rows)
			}
		})
	}
}

func TestBenchRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "allshuffle"},
		{"bench", "allreduce", "--np", "0"},
		{"bench", "allreduce", "--dtype", "float8"},
		{"bench", "allreduce", "--transport", "carrier-pigeon"},
		{"bench", "allreduce", "--min-bytes", "4Q"},
	} {
		out, err := exec.Command(ringoBin, args...).CombinedOutput()
		if err == nil {
			t.Errorf("ringo %v succeeded; want an error", args)
			continue
		}
		if !strings.Contains(string(out), "ringo bench:") && !strings.Contains(string(out), "invalid value") {
			t.Errorf("ringo %v: error does not say what is wrong:\n%s", args, out)
		}
	}
}

// TestBenchWorkerKilled: SIGKILL one worker in the middle of a run; the
// others must fail with an error naming it, within the timeout plus a
// second, and the command must exit non-zero.
func TestBenchWorkerKilled(t *testing.T) {
	const timeout = 3 * time.Second
	cmd := exec.Command(ringoBin, "bench", "allreduce", "--np", "3", "--min-bytes", "4M", "--max-bytes", "4M",
		"--iters", "1000000", "--warmup", "1", "--timeout", timeout.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pids := map[int]int{}
	re := regexp.MustCompile(`Rank\s+(\d+) Pid\s+(\d+)`)
	sc := bufio.NewScanner(stdout)
	for len(pids) < 3 && sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			r, _ := strconv.Atoi(m[1])
			p, _ := strconv.Atoi(m[2])
			pids[r] = p
		}
	}
	if len(pids) < 3 {
		t.Fatalf("did not see 3 worker pids; stderr:\n%s", stderr.String())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	// Let the group form and the timed loop start.
	time.Sleep(1500 * time.Millisecond)
	if err := syscall.Kill(pids[1], syscall.SIGKILL); err != nil {
		t.Fatalf("killing rank 1: %v", err)
	}
	killed := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(timeout + 10*time.Second):
		t.Fatalf("ringo bench still running %v after a worker was killed; stderr:\n%s", time.Since(killed), stderr.String())
	}
	took := time.Since(killed)
	if werr == nil {
		t.Fatalf("ringo bench exited 0 after a worker was killed")
	}
	// The survivors' own bound is timeout+1s; process exit adds a little.
	if took > timeout+2*time.Second {
		t.Errorf("took %v from the kill to exit; the bound is the %v timeout plus 1s", took, timeout)
	}
	msg := stderr.String()
	for _, r := range []int{0, 2} {
		line := ""
		for _, l := range strings.Split(msg, "\n") {
			if strings.Contains(l, fmt.Sprintf("rank %d: collective:", r)) {
				line = l
			}
		}
		if line == "" || !strings.Contains(line, "rank 1") {
			t.Errorf("rank %d's error does not name rank 1:\n%s", r, msg)
		}
	}
	if !strings.Contains(msg, "rank 1 (pid") || !strings.Contains(msg, "killed") {
		t.Errorf("the summary does not say rank 1 was killed:\n%s", msg)
	}
	t.Logf("exit %v after %v; stderr:\n%s", werr, took, msg)
}

func TestBenchTuneWritesATable(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tuning.json")
	cmd := exec.Command(ringoBin, "bench", "tune", "--np", "3", "--min-bytes", "4K", "--max-bytes", "64K",
		"--factor", "4", "--iters", "2", "--warmup", "1", "--rounds", "1", "--out", out)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ringo bench tune: %v\n%s", err, b)
	}
	for _, want := range []string{"rd", "hd", "ring", "best", "wrote " + out} {
		if !strings.Contains(string(b), want) {
			t.Errorf("output lacks %q:\n%s", want, b)
		}
	}
	tu, err := collective.LoadTuning(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range tu.Rules {
		if r.World != 3 {
			t.Errorf("rule %+v: want world 3", r)
		}
	}
	if last := tu.Rules[len(tu.Rules)-1]; last.BelowBytes != 0 {
		t.Errorf("the last rule %+v must cover every larger size", last)
	}
	// The table steers a sweep: its choice shows in the algo column.
	rows := runBenchJSONWithEnv(t, []string{collective.EnvTuning + "=" + out}, "allreduce", "--np", "3",
		"--min-bytes", "4K", "--max-bytes", "64K", "--factor", "4", "--iters", "1", "--warmup", "0", "--json")
	c := collective.DefaultConfig()
	c.Tuning = tu
	for _, r := range rows {
		if want := c.AlgoFor(int(r.Bytes), 3).String(); r.Algo != want {
			t.Errorf("%d bytes ran %s; the table says %s", r.Bytes, r.Algo, want)
		}
	}
	b, err = exec.Command(ringoBin, "bench", "tune", "--np", "2", "--algo", "ring", "--out", out).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "--algo") {
		t.Errorf("tune with --algo: %v, %s; want a refusal naming the flag", err, b)
	}
}
