package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ringo-ml/ringo/collective/transport/p2p"
	"github.com/ringo-ml/ringo/internal/audit"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// workerBin is testdata/worker, built once for all tests.
var workerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ringo-launch-test-")
	if err != nil {
		panic(err)
	}
	workerBin = filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", workerBin, "./testdata/worker").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the test worker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type job struct {
	cfg    Config
	out    *proctest.Buffer
	mu     sync.Mutex
	events []Event
	evc    chan Event
}

func newJob(t *testing.T, nproc int, args ...string) *job {
	t.Helper()
	j := &job{out: &proctest.Buffer{}, evc: make(chan Event, 64)}
	j.cfg = DefaultConfig()
	j.cfg.NProc = nproc
	j.cfg.Argv = append([]string{workerBin}, args...)
	j.cfg.Token = auth.NewToken()
	j.cfg.Env = os.Environ()
	j.cfg.Stdout, j.cfg.Stderr = j.out, j.out
	j.cfg.MonitorInterval = 100 * time.Millisecond
	j.cfg.JoinTimeout = 30 * time.Second
	j.cfg.RunID = strings.ReplaceAll(t.Name(), "/", "-")
	j.cfg.OnEvent = func(e Event) {
		j.mu.Lock()
		j.events = append(j.events, e)
		j.mu.Unlock()
		select {
		case j.evc <- e:
		default:
		}
	}
	return j
}

func (j *job) run(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err := Run(ctx, j.cfg)
	t.Logf("launcher output:\n%s", j.out.String())
	return err
}

// waitEvent returns the next event of the given kind.
func (j *job) waitEvent(t *testing.T, kind string) Event {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case e := <-j.evc:
			if e.Kind == kind {
				return e
			}
		case <-timeout:
			t.Errorf("no %q event within 60s", kind)
			return Event{}
		}
	}
}

var doneLine = regexp.MustCompile(`\[rank (\d+)\] rank \d+ of (\d+): done (\d+) steps, last sum (\S+), restarts (\d+)`)

// results returns, per rank, the worker's final line fields.
func results(out string) map[string][]string {
	m := map[string][]string{}
	for _, g := range doneLine.FindAllStringSubmatch(out, -1) {
		m[g[1]] = g[2:]
	}
	return m
}

func TestFourWorkersAllReduceTheSame(t *testing.T) {
	j := newJob(t, 4, "--steps", "20", "--step-time", "1ms")
	if err := j.run(t); err != nil {
		t.Fatal(err)
	}
	res := results(j.out.String())
	if len(res) != 4 {
		t.Fatalf("%d of 4 ranks reported a result", len(res))
	}
	for r, f := range res {
		// world 4, 20 steps, sum at step 20 = 4*5/2 + 4*20 = 90
		if f[0] != "4" || f[1] != "20" || f[2] != "90" || f[3] != "0" {
			t.Errorf("rank %s: world %s steps %s sum %s restarts %s; want 4 20 90 0", r, f[0], f[1], f[2], f[3])
		}
	}
}

func TestKilledWorkerRestartsTheGeneration(t *testing.T) {
	j := newJob(t, 3, "--steps", "40", "--step-time", "20ms")
	j.cfg.MaxRestarts = 1
	errc := make(chan error, 1)
	go func() { errc <- j.run(t) }()
	e := j.waitEvent(t, "started")
	time.Sleep(300 * time.Millisecond) // mid-run
	syscall.Kill(e.PIDs[1], syscall.SIGKILL)
	j.waitEvent(t, "started") // the second generation
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	out := j.out.String()
	res := results(out)
	if len(res) != 3 {
		t.Fatalf("%d of 3 ranks finished after the restart", len(res))
	}
	for r, f := range res {
		if f[3] != "1" {
			t.Errorf("rank %s saw TORCHELASTIC_RESTART_COUNT %s, want 1", r, f[3])
		}
	}
	if !strings.Contains(out, "rank 1 (local rank 1, pid "+fmt.Sprint(e.PIDs[1])+")") || !strings.Contains(out, "killed by signal 9") {
		t.Errorf("the restart message does not name the killed rank and its signal")
	}
}

func TestNoRestartsLeftReportsTheRootCause(t *testing.T) {
	j := newJob(t, 3, "--steps", "40", "--fail-rank", "2", "--at", "3")
	err := j.run(t)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("launcher returned %v, want exit 1", err)
	}
	out := j.out.String()
	for _, want := range []string{"root cause", "rank:       2 (local rank 2)", "exit:       exit code 3",
		"| rank 2: something went wrong at step 3"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The root cause is rank 2, not the ranks that failed because of it.
	if i := strings.Index(out, "root cause"); i >= 0 && strings.Contains(out[i:], "rank:       0") {
		t.Error("report blames rank 0")
	}
}

func TestHungWorkerIsReportedAndRestarted(t *testing.T) {
	j := newJob(t, 2, "--steps", "30", "--step-time", "10ms", "--hang-rank", "1", "--at", "4")
	j.cfg.MaxRestarts = 1
	j.cfg.HangTimeout = time.Second
	if err := j.run(t); err != nil {
		t.Fatal(err)
	}
	out := j.out.String()
	if !regexp.MustCompile(`hung: no progress for \S+ after step 3; stalled: .*rank 1 \(pid \d+\) at step 3`).MatchString(out) {
		t.Error("no hang report naming rank 1 and its last step")
	}
	if !strings.Contains(out, "[rank 1] goroutine ") {
		t.Error("the hung Go worker's goroutine stacks (SIGQUIT) are not in its output")
	}
	if len(results(out)) != 2 {
		t.Error("the job did not finish after the restart")
	}
}

func TestLogDirAndTee(t *testing.T) {
	j := newJob(t, 2, "--steps", "3", "--step-time", "1ms")
	j.cfg.LogDir = t.TempDir()
	j.cfg.Tee = teeErr
	if err := j.run(t); err != nil {
		t.Fatal(err)
	}
	for r := range 2 {
		b, err := os.ReadFile(filepath.Join(j.cfg.LogDir, j.cfg.RunID, "0", fmt.Sprintf("rank-%d.out", r)))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), fmt.Sprintf("rank %d of 2: done 3 steps", r)) {
			t.Errorf("rank-%d.out: %q", r, b)
		}
	}
	if strings.Contains(j.out.String(), "done 3 steps") {
		t.Error("stdout reached the console though --tee is err")
	}
}

func TestProgramNotFound(t *testing.T) {
	j := newJob(t, 2)
	j.cfg.Argv = []string{filepath.Join(t.TempDir(), "no-such-program")}
	err := j.run(t)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("got %v", err)
	}
	j.cfg.Argv = []string{"no-such-program-in-path"}
	if err := j.run(t); err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Fatalf("got %v", err)
	}
	notExec := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	j.cfg.Argv = []string{notExec}
	if err := j.run(t); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Fatalf("got %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	base := newJob(t, 1).cfg
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.NProc = 0 }, "--nproc-per-node 0"},
		{func(c *Config) { c.Nodes.Min, c.Nodes.Max = 3, 2 }, "minimum is larger"},
		{func(c *Config) { c.Argv = nil }, "no program"},
		{func(c *Config) { c.Nodes.Max = 2 }, "needs --rdzv-endpoint"},
		{func(c *Config) { c.Nodes.Max, c.Endpoint, c.Token = 2, "127.0.0.1:1", nil }, "--token-file"},
		{func(c *Config) { c.Backend = "zookeeper" }, "--rdzv-backend"},
		{func(c *Config) {
			c.Federation, c.FederationSites, c.Site, c.TokenFile = "127.0.0.1:1", []string{"a", "b"}, "c", "job.token"
		}, `--site "c" must be one of --federation-sites "a,b"`},
		{func(c *Config) {
			c.Federation, c.FederationSites, c.Site, c.TokenFile = "127.0.0.1:1", []string{"a", "b"}, "a", ""
		}, "--federation 127.0.0.1:1 needs --token-file"},
		{func(c *Config) { c.FederationIdentity, c.FederationPeers = "a.identity", "a=x" }, "give --federation too"},
		{func(c *Config) {
			c.Federation, c.FederationSites, c.Site, c.TokenFile, c.FederationIdentity = "127.0.0.1:1", []string{"a", "b"}, "a", "job.token", "a.identity"
		}, "give both (this site's identity, and every site's peer ID) or neither"},
	} {
		c := base
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error with %q, got %v", tc.want, err)
		}
	}
}

// A worker without the job token cannot join the collective group: the
// job fails naming it, instead of letting it read or inject data.
func TestWorkerWithoutTheTokenIsRefused(t *testing.T) {
	j := newJob(t, 2, "--steps", "5", "--no-token-rank", "1")
	err := j.run(t)
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("launcher returned %v, want a failed job", err)
	}
	out := j.out.String()
	if !strings.Contains(out, "rank:       1") || !strings.Contains(out, "refused") {
		t.Errorf("the report does not name rank 1 as refused")
	}
	if len(results(out)) != 0 {
		t.Error("a rank finished in a group with an intruder")
	}
}

// A Go worker that panics: the report shows the panic message, which
// comes before the goroutine stacks and so is not among the last lines.
func TestPanicShowsInTheReport(t *testing.T) {
	j := newJob(t, 2, "--steps", "20", "--panic-rank", "1", "--at", "2")
	err := j.run(t)
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("launcher returned %v, want a failed job", err)
	}
	out := j.out.String()
	i := strings.Index(out, "root cause")
	if i < 0 || !strings.Contains(out[i:], "it panicked:\n    | panic: rank 1: index out of range at step 2") ||
		!strings.Contains(out[i:], "rank:       1") || !strings.Contains(out[i:], "exit code 2") {
		t.Errorf("the report does not show rank 1's panic")
	}
}

// The audit log records the start, the join, a worker's failure, the
// restart and the checkpoint saves of the workers, in one unbroken chain.
func TestAuditLog(t *testing.T) {
	j := newJob(t, 2, "--steps", "10", "--fail-rank", "1", "--at", "3")
	j.cfg.MaxRestarts = 1
	j.cfg.AuditLog = filepath.Join(t.TempDir(), "audit.jsonl")
	if err := j.run(t); err != nil {
		t.Fatal(err)
	}
	n, err := audit.Verify(j.cfg.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(j.cfg.AuditLog)
	for _, ev := range []string{"launch.start", "launch.join", "launch.worker_failed", "launch.restart", "launch.exit"} {
		if !strings.Contains(string(b), `"event":"`+ev+`"`) {
			t.Errorf("no %s event in %d lines", ev, n)
		}
	}
	if strings.Contains(string(b), string(j.cfg.Token)) {
		t.Error("the token is in the audit log")
	}
}

// With --metrics-addr the launcher serves its workers' figures: a running
// 2-worker job shows both ranks stepping and all-reducing.
func TestMetricsOfARunningJob(t *testing.T) {
	j := newJob(t, 2, "--steps", "400", "--step-time", "5ms")
	addr := proctest.FreeAddr(t)
	j.cfg.MetricsAddr = addr
	errc := make(chan error, 1)
	go func() { errc <- j.run(t) }()
	j.waitEvent(t, "started")
	want := []string{`ringo_workers_up 2`, `ringo_step{rank="1"}`, `ringo_collective_calls_total{op="AllReduce",rank="0"}`}
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(body, w)
			}
			if ok && !strings.Contains(body, `ringo_collective_calls_total{op="AllReduce",rank="0"} 0`) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("no %q in the metrics:\n%s", w, body)
		}
	}
	resp, err := http.Get("http://" + addr + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"rank":1`) || !strings.Contains(string(b), `"run_id":"TestMetricsOfARunningJob"`) {
		t.Errorf("status.json: %s", b)
	}
	if os.Geteuid() == 0 && !strings.Contains(body, "ringo_tcp_retransmits_total") && !strings.Contains(j.out.String(), "no TCP retransmit counters") {
		t.Error("as root, neither TCP counters from eBPF nor a word on why not")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// A process without the job's token that reaches the launcher's store is
// refused and logged, sends garbage that only drops its own connection,
// and the job goes on to finish.
func TestStrangersAtTheStoreAreRefused(t *testing.T) {
	j := newJob(t, 2, "--steps", "60", "--step-time", "10ms")
	j.cfg.Endpoint = proctest.FreeAddr(t)
	errc := make(chan error, 1)
	go func() { errc <- j.run(t) }()
	j.waitEvent(t, "started")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := rendezvous.Dial(ctx, j.cfg.Endpoint, auth.NewToken()); err == nil {
		c.Close()
		t.Fatal("a client with another token joined the store")
	} else if !errors.Is(err, rendezvous.ErrAuth) {
		t.Fatalf("wrong token: %v", err)
	}
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 1<<16), {'R', 'D', 'Z', 'V', 1, 0, 0, 0}} {
		c, err := net.Dial("tcp", j.cfg.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 4096)
		n, _ := io.ReadFull(c, b)
		c.Close()
		if n > 64 {
			t.Errorf("a stranger read %d bytes from the store", n)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("the job did not survive strangers: %v", err)
	}
	if !strings.Contains(j.out.String(), "refused a connection to the rendezvous store from 127.0.0.1") {
		t.Error("the refusal was not logged")
	}
	if len(results(j.out.String())) != 2 {
		t.Error("the job did not finish")
	}
}

// Workers on one host use shared memory unless told otherwise; tcp and
// libp2p (with an identity per worker and the job's allowlist) on demand.
func TestTransports(t *testing.T) {
	for want, cfg := range map[string]string{"shm": "", "tcp": "tcp", "libp2p": "libp2p"} {
		t.Run(want, func(t *testing.T) {
			j := newJob(t, 3, "--steps", "10", "--step-time", "1ms")
			j.cfg.Transport = cfg
			if err := j.run(t); err != nil {
				t.Fatal(err)
			}
			out := j.out.String()
			if n := strings.Count(out, "transport "+want+"\n"); n != 3 {
				t.Errorf("%d of 3 workers report transport %s", n, want)
			}
			if len(results(out)) != 3 {
				t.Error("not every worker finished")
			}
		})
	}
}

// A libp2p peer that is not in the job's allowlist is refused by the
// workers' handshake, and the refusal lands in the job's audit log with
// the peer ID it proved.
func TestStrangerRefusedIsAudited(t *testing.T) {
	j := newJob(t, 2, "--steps", "400", "--step-time", "10ms", "--print-p2p")
	j.cfg.Transport = "libp2p"
	j.cfg.AuditLog = filepath.Join(t.TempDir(), "audit.jsonl")
	done := make(chan error, 1)
	go func() { done <- j.run(t) }()
	line := regexp.MustCompile(`p2p rank 0 is (\S+) at (\S+):(\d+)`)
	var m []string
	for end := time.Now().Add(30 * time.Second); m == nil && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		m = line.FindStringSubmatch(j.out.String())
	}
	if m == nil {
		t.Fatalf("rank 0 did not say where it listens:\n%s", j.out.String())
	}
	id, err := peer.Decode(m[1])
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%s", m[2], m[3]))
	if err != nil {
		t.Fatal(err)
	}
	key, err := p2p.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := libp2p.New(libp2p.Identity(key), libp2p.NoListenAddrs, libp2p.DisableRelay(), libp2p.DisableMetrics(), libp2p.Ping(false))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	me, _ := p2p.PeerID(key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stranger.Connect(ctx, peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{addr}}) // refused, whatever it returns
	var logged bool
	for end := time.Now().Add(10 * time.Second); !logged && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(j.cfg.AuditLog)
		logged = strings.Contains(string(b), `"collective.refused"`) && strings.Contains(string(b), me.String())
	}
	if err := <-done; err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	if !logged {
		b, _ := os.ReadFile(j.cfg.AuditLog)
		t.Fatalf("no collective.refused entry naming %s in the audit log:\n%s", me, b)
	}
	if !strings.Contains(j.out.String(), "refused a libp2p connection") {
		t.Errorf("the worker did not say it refused the stranger:\n%s", j.out.String())
	}
	if _, err := audit.Verify(j.cfg.AuditLog); err != nil {
		t.Errorf("the audit log's chain: %v", err)
	}
}
