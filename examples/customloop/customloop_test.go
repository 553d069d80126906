package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/proctest"
)

// The properties of mirrored training, each checked on real processes
// under the real launcher.

var ringoBin, loopBin, dataDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "customloop-test-")
	if err != nil {
		panic(err)
	}
	ringoBin, loopBin = filepath.Join(dir, "ringo"), filepath.Join(dir, "customloop")
	for bin, pkg := range map[string]string{ringoBin: "../../cmd/ringo", loopBin: "."} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	dataDir = filepath.Join(dir, "data")
	if out, err := exec.Command(loopBin, "--make-data", dataDir, "--samples", "3072").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "making data: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func launch(t *testing.T, n int, extra []string, args ...string) (string, error) {
	t.Helper()
	cmdArgs := append([]string{"launch", "--nproc-per-node", strconv.Itoa(n)}, extra...)
	cmdArgs = append(cmdArgs, "--", loopBin, "--data", dataDir)
	out, err := exec.Command(ringoBin, append(cmdArgs, args...)...).CombinedOutput()
	return string(out), err
}

func params(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float32, len(b)/4)
	for i := range p {
		p[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return p
}

// 1. N workers with per-worker batch B/N end where one worker with batch
// B does, within float32 rounding of the summation order.
func TestEquivalenceAcrossWorldSizes(t *testing.T) {
	dir := t.TempDir()
	var ref []float32
	for _, n := range []int{1, 2, 3, 4} {
		dump := filepath.Join(dir, fmt.Sprint("params-", n))
		if out, err := launch(t, n, nil, "--batch", "48", "--epochs", "1", "--dump", dump); err != nil {
			t.Fatalf("%d workers: %v\n%s", n, err, out)
		}
		p := params(t, dump)
		if n == 1 {
			ref = p
			continue
		}
		worst := 0.0
		for i := range p {
			worst = max(worst, math.Abs(float64(p[i]-ref[i])))
		}
		t.Logf("%d workers: max |Δparam| = %.2g against 1 worker", n, worst)
		if worst > 1e-5 {
			t.Errorf("%d workers differ from 1 worker by %g (> 1e-5)", n, worst)
		}
	}
}

// 2. A worker killed with SIGKILL mid-run: the launcher restarts the job
// from the newest checkpoint, data position included, and it ends with
// parameters bit-identical to a run that was never interrupted.
func TestRecoveryIsBitIdentical(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--batch", "48", "--epochs", "2", "--save-every", "4", "--step-time", "4ms"}
	clean := filepath.Join(dir, "clean")
	if out, err := launch(t, 3, nil, append(args, "--ckpt", filepath.Join(dir, "ck-clean"), "--dump", clean)...); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}
	ck := filepath.Join(dir, "ck")
	killed := filepath.Join(dir, "killed")
	cmdArgs := append([]string{"launch", "--nproc-per-node", "3", "--max-restarts", "1", "--", loopBin, "--data", dataDir, "--ckpt", ck, "--dump", killed}, args...)
	cmd := exec.Command(ringoBin, cmdArgs...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for a first checkpoint, then kill one worker at a random moment.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(ck, "step-*", "manifest.json")); len(m) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
	kids := proctest.Children(cmd.Process.Pid)
	if len(kids) != 3 {
		t.Fatalf("launcher has %d children, want 3\n%s", len(kids), out.String())
	}
	victim := kids[rand.IntN(3)]
	syscall.Kill(victim, syscall.SIGKILL)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interrupted run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "killed by signal 9") || !strings.Contains(out.String(), "resumed from step") {
		t.Fatalf("the run was not killed and resumed from a checkpoint:\n%s", out.String())
	}
	a, b := params(t, clean), params(t, killed)
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("parameter %d: %v after the kill, %v uninterrupted; want bit-identical\n%s", i, b[i], a[i], out.String())
		}
	}
}

// 3. Stopped at step S on 4 workers, resumed on 2: the checkpoint loads
// onto the smaller world and the data position carries over, so the epoch
// sees every training sample exactly once.
func TestElasticResumeSeesEverySampleOnce(t *testing.T) {
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck")
	seen := filepath.Join(dir, "seen")
	common := []string{"--batch", "48", "--epochs", "1", "--ckpt", ck, "--seen", seen}
	if out, err := launch(t, 4, nil, append(common, "--stop-after", "20")...); err != nil || !strings.Contains(out, "stopped after step 20") {
		t.Fatalf("first part on 4 workers: %v\n%s", err, out)
	}
	out, err := launch(t, 2, nil, common...)
	if err != nil || !strings.Contains(out, "resumed from step 20") {
		t.Fatalf("second part on 2 workers: %v\n%s", err, out)
	}
	count := map[string]int{}
	files, _ := filepath.Glob(seen + ".rank-*")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, id := range strings.Fields(string(b)) {
			count[id]++
		}
	}
	if len(count) != 3072 {
		t.Errorf("%d distinct samples seen, want all 3072", len(count))
	}
	for id, c := range count {
		if c != 1 {
			t.Errorf("sample %s seen %d times", id, c)
		}
	}
}

// 4. A replica that diverges (a planted bug) is caught by the hash check,
// which names it.
func TestDivergenceIsCaughtAndNamed(t *testing.T) {
	out, err := launch(t, 3, nil, "--batch", "48", "--epochs", "1", "--verify-every", "5", "--diverge-rank", "2")
	if err == nil {
		t.Fatalf("the job finished with a diverged replica:\n%s", out)
	}
	if !strings.Contains(out, "replicas diverged at step 5: rank 2 holds parameters that differ") {
		t.Fatalf("no error naming rank 2:\n%s", out)
	}
}
