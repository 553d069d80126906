package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
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

// startLaunch starts `ringo launch` with n long-running workers and
// returns once all n are running the worker binary: a child seen between
// fork and exec still has the launcher's image and environment.
func startLaunch(t *testing.T, n int, extraEnv ...string) (*exec.Cmd, *proctest.Buffer, []int) {
	t.Helper()
	cmd := exec.Command(ringoBin, "launch", "--nproc-per-node", strconv.Itoa(n), "--",
		workerBin, "--steps", "100000", "--step-time", "10ms")
	out := &proctest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), extraEnv...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if kids := proctest.Children(cmd.Process.Pid); len(kids) == n && runsBinary(kids, workerBin) {
			return cmd, out, kids
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%d workers did not start; output:\n%s", n, out.String())
	return nil, nil, nil
}

// runsBinary says whether every pid has exec'd bin.
func runsBinary(pids []int, bin string) bool {
	want, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return false
	}
	for _, p := range pids {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p)); err != nil || exe != want {
			return false
		}
	}
	return true
}

func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		left := 0
		for _, p := range pids {
			if proctest.Alive(p) {
				left++
			}
		}
		if left == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("workers %v outlived the launcher", pids)
}

func TestLaunchForwardsSIGTERM(t *testing.T) {
	cmd, out, kids := startLaunch(t, 2)
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Fatalf("launcher exit: %v (want 143)\n%s", err, out)
	}
	waitGone(t, kids)
}

func TestLaunchForwardsSIGINT(t *testing.T) {
	cmd, out, kids := startLaunch(t, 2)
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("launcher exit: %v (want 130)\n%s", err, out)
	}
	waitGone(t, kids)
}

// A launcher killed with SIGKILL cannot stop its workers; the kernel does
// (parent-death signal), so none is orphaned.
func TestNoOrphansAfterTheLauncherIsKilled(t *testing.T) {
	cmd, _, kids := startLaunch(t, 3)
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, kids)
}

// The job token reaches workers as a private file, never in their
// command line or environment, where ps and /proc would show it.
func TestTokenNotInArgvOrEnvironment(t *testing.T) {
	_, out, kids := startLaunch(t, 2)
	for _, pid := range kids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		var tokenFile string
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("RINGO_TOKEN_FILE=")); ok {
				tokenFile = string(v)
			}
		}
		if tokenFile == "" {
			t.Fatalf("worker %d has no RINGO_TOKEN_FILE\n%s", pid, out)
		}
		fi, err := os.Stat(tokenFile)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("token file %s: %v mode %v", tokenFile, err, fi.Mode())
		}
		tok, _ := os.ReadFile(tokenFile)
		tok = bytes.TrimSpace(tok)
		argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if len(tok) < 16 || bytes.Contains(env, tok) || bytes.Contains(argv, tok) {
			t.Fatalf("worker %d: the token shows in its environment or argv", pid)
		}
	}
}

func TestLaunchBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--nproc-per-node", "0", "--", "true"}, nil, "--nproc-per-node 0"},
		{[]string{"--nproc-per-node", "lots", "--", "true"}, nil, `want a number, gpu, cpu or auto`},
		{[]string{"--nnodes", "3:2", "--", "true"}, nil, "MIN 3 is larger than MAX 2"},
		{[]string{"--nnodes", "2", "--", "true"}, nil, "needs --rdzv-endpoint"},
		{[]string{"--", "/no/such/program"}, nil, `"/no/such/program" does not exist`},
		{[]string{"--"}, nil, "no program to launch"},
		{[]string{"--tee", "sometimes", "--", "true"}, nil, "--tee"},
		{[]string{"--", "true"}, []string{"RINGO_NPROC_PER_NODE=-3"}, "--nproc-per-node -3"},
		{[]string{"--monitor-interval", "soon", "--", "true"}, nil, "not a duration"},
	} {
		cmd := exec.Command(ringoBin, append([]string{"launch"}, tc.args...)...)
		cmd.Env = append(os.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("ringo launch %v (env %v): %v\n%s\nwant %q", tc.args, tc.env, err, out, tc.want)
		}
	}
}

// A node that cannot reach the store, or holds another job's token, fails
// within the join timeout with an error that names the endpoint.
func TestLaunchUnreachableOrWrongToken(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "tok")
	os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	start := time.Now()
	out, err := exec.Command(ringoBin, "launch", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:1", "--node-rank", "1",
		"--token-file", tok, "--rdzv-timeout", "2s", "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "127.0.0.1:1") {
		t.Fatalf("unreachable endpoint: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("took %v to give up with a 2s join timeout", d)
	}

	// A real job serves its store on a known port; a second launcher with
	// another token is refused.
	port := freeTCPPort(t)
	ep := fmt.Sprintf("127.0.0.1:%d", port)
	host := exec.Command(ringoBin, "launch", "--nnodes", "2", "--rdzv-endpoint", ep, "--node-rank", "0",
		"--token-file", tok, "--rdzv-timeout", "20s", "--", "true")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { host.Process.Kill(); host.Wait() }()
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("fedcba9876543210fedcba9876543210\n"), 0o600)
	time.Sleep(300 * time.Millisecond)
	out, err = exec.Command(ringoBin, "launch", "--nnodes", "2", "--rdzv-endpoint", ep, "--node-rank", "1",
		"--token-file", other, "--rdzv-timeout", "5s", "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), ep) || !strings.Contains(string(out), "token") {
		t.Fatalf("wrong token: %v\n%s", err, out)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestFirstSlurmHost(t *testing.T) {
	for in, want := range map[string]string{
		"node01":              "node01",
		"gpu[03-05,07],cpu01": "gpu03",
		"a01,b[1-2]":          "a01",
		"rack1-n[7]":          "rack1-n7",
		"":                    "",
	} {
		if got := firstSlurmHost(in); got != want {
			t.Errorf("firstSlurmHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLaunchHelpNamesEveryFlag(t *testing.T) {
	out, _ := exec.Command(ringoBin, "launch", "--help").CombinedOutput()
	for _, f := range []string{"nproc-per-node", "nnodes", "node-rank", "rdzv-backend", "rdzv-endpoint", "rdzv-id",
		"standalone", "max-restarts", "monitor-interval", "log-dir", "tee", "master-addr", "master-port",
		"hang-timeout", "token-file", "RINGO_<FLAG>"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}

// A PyTorch DDP script written for torchrun runs under ringo launch
// unchanged (gloo on CPU here).
func TestLaunchPyTorchDDP(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import torch.distributed as d; assert d.is_gloo_available()").Run(); err != nil {
		t.Skip("skipped: /usr/bin/python3 has no torch with gloo (apt-get install python3-torch)")
	}
	out, err := exec.Command(ringoBin, "launch", "--nproc-per-node", "2", "--",
		"/usr/bin/python3", "../../examples/pytorch-ddp/train.py", "--steps", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for r := range 2 {
		want := fmt.Sprintf("ddp rank %d/2 local %d backend gloo", r, r)
		if !strings.Contains(string(out), want) {
			t.Errorf("no line %q", want)
		}
	}
	if strings.Count(string(out), "replicas identical True restarts 0") != 2 {
		t.Errorf("replicas differ or the restart count is wrong:\n%s", out)
	}
}

// Every worker gets torchrun's environment, ringo's own variables, and one
// GPU each from CUDA_VISIBLE_DEVICES.
func TestLaunchWorkerEnvironment(t *testing.T) {
	cmd := exec.Command(ringoBin, "launch", "--nproc-per-node", "gpu", "--max-restarts", "2", "--rdzv-id", "envjob", "--",
		"sh", "-c", `echo "R=$RANK L=$LOCAL_RANK W=$WORLD_SIZE LW=$LOCAL_WORLD_SIZE G=$GROUP_RANK RR=$ROLE_RANK MA=$MASTER_ADDR MP=$MASTER_PORT RC=$TORCHELASTIC_RESTART_COUNT MR=$TORCHELASTIC_MAX_RESTARTS ID=$TORCHELASTIC_RUN_ID CUDA=$CUDA_VISIBLE_DEVICES GEN=$RINGO_GENERATION COLL=$RINGO_COLLECTIVE_ADDR HB=$RINGO_HEARTBEAT_FD OMP=$OMP_NUM_THREADS"`)
	cmd.Env = append(os.Environ(), "CUDA_VISIBLE_DEVICES=3,5")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for r, gpu := range []string{"3", "5"} {
		want := fmt.Sprintf("[rank %d] R=%d L=%d W=2 LW=2 G=0 RR=%d MA=127.0.0.1 MP=", r, r, r, r)
		if !strings.Contains(string(out), want) {
			t.Errorf("no %q in\n%s", want, out)
		}
		want = fmt.Sprintf("RC=0 MR=2 ID=envjob CUDA=%s GEN=1 COLL=127.0.0.1:", gpu)
		if !strings.Contains(string(out), want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if !strings.Contains(string(out), "HB=3 OMP=1") {
		t.Errorf("heartbeat fd or OMP_NUM_THREADS missing:\n%s", out)
	}
}

// Under srun, the job id and node count come from Slurm.
func TestLaunchUnderSlurm(t *testing.T) {
	cmd := exec.Command(ringoBin, "launch", "--", "sh", "-c", `echo "ID=$TORCHELASTIC_RUN_ID W=$WORLD_SIZE"`)
	cmd.Env = append(os.Environ(), "SLURM_JOB_ID=4242", "SLURM_JOB_NUM_NODES=1", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=localhost")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ID=slurm-4242 W=1") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// torchrun's static rendezvous: --master-addr and --master-port with fixed
// node ranks; node 0 serves the store on that port.
func TestLaunchStaticTwoNodes(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	port := fmt.Sprint(freeTCPPort(t))
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := range 2 {
		c := exec.Command(ringoBin, "launch", "--nnodes", "2", "--node-rank", fmt.Sprint(i), "--nproc-per-node", "2",
			"--master-addr", "127.0.0.1", "--master-port", port, "--token-file", tok, "--rdzv-timeout", "30s", "--",
			workerBin, "--steps", "10", "--step-time", "1ms")
		var b bytes.Buffer
		c.Stdout, c.Stderr = &b, &b
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, c), append(outs, &b)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("node %d: %v\n%s", i, err, outs[i])
		}
	}
	for i, b := range outs {
		for l := range 2 {
			want := fmt.Sprintf("rank %d of 4: done 10 steps", 2*i+l)
			if !strings.Contains(b.String(), want) {
				t.Errorf("node %d: no %q in\n%s", i, want, b)
			}
		}
	}
}

func TestLaunchPortInUse(t *testing.T) {
	l, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	out, err := exec.Command(ringoBin, "launch", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", l.Addr().String(),
		"--token-file", tok, "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") || !strings.Contains(string(out), l.Addr().String()) {
		t.Fatalf("%v\n%s", err, out)
	}
}

// The audit log of a job whose workers checkpoint holds the launcher's
// events and the workers' saves; ringo audit verify passes it, and finds
// an edited line.
func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	data := filepath.Join(dir, "data")
	cl := filepath.Join(dir, "customloop")
	if out, err := exec.Command("go", "build", "-o", cl, "../../examples/customloop").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := exec.Command(cl, "--make-data", data, "--samples", "512").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := exec.Command(ringoBin, "launch", "--nproc-per-node", "2", "--audit-log", log, "--",
		cl, "--data", data, "--epochs", "1", "--batch", "32", "--ckpt", filepath.Join(dir, "ck"), "--save-every", "4").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := exec.Command(ringoBin, "audit", "verify", log).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "chain intact") {
		t.Fatalf("%v\n%s", err, out)
	}
	b, _ := os.ReadFile(log)
	for _, ev := range []string{"launch.start", "launch.join", "checkpoint.save", "checkpoint.delete", "launch.exit"} {
		if !strings.Contains(string(b), `"event":"`+ev+`"`) {
			t.Errorf("no %s event", ev)
		}
	}
	edited := strings.Replace(string(b), `"event":"checkpoint.save"`, `"event":"checkpoint.zave"`, 1)
	os.WriteFile(log, []byte(edited), 0o600)
	out, err = exec.Command(ringoBin, "audit", "verify", log).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "was edited") {
		t.Fatalf("edited log passed: %v\n%s", err, out)
	}
}
