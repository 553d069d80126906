package launch

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
	"github.com/ringo-ml/ringo/runtime/rendezvous/etcdtest"
)

// node is one launcher of a several-node job, run in this process with
// its own context; its workers are real processes.
type node struct {
	*job
	cancel context.CancelCauseFunc
	errc   chan error
}

func startNode(t *testing.T, name string, mod func(*Config), args ...string) *node {
	j := newJob(t, 2, args...)
	j.cfg.RunID = strings.ReplaceAll(t.Name(), "/", "-")
	mod(&j.cfg)
	ctx, cancel := context.WithCancelCause(context.Background())
	n := &node{job: j, cancel: cancel, errc: make(chan error, 1)}
	go func() {
		err := Run(ctx, j.cfg)
		t.Logf("node %s output:\n%s", name, j.out.String())
		n.errc <- err
	}()
	t.Cleanup(func() { cancel(Signaled{Sig: syscall.SIGKILL}) })
	return n
}

// testRemoveNode runs two nodes of two workers with --nnodes 1:2, stops
// one mid-run as if its host died, and checks the survivor re-forms alone
// and finishes.
func testRemoveNode(t *testing.T, backend, endpoint string, killFirst bool) {
	tok := auth.NewToken()
	mod := func(rank int) func(*Config) {
		return func(c *Config) {
			c.Nodes.Min, c.Nodes.Max, c.Nodes.LastCall = 1, 2, time.Second
			c.Backend, c.Endpoint, c.Token, c.NodeRank = backend, endpoint, tok, rank
			c.MaxRestarts = 2
			c.Host = "127.0.0.1"
		}
	}
	args := []string{"--steps", "150", "--step-time", "10ms"}
	a := startNode(t, "A", mod(0), args...)
	time.Sleep(100 * time.Millisecond) // A serves the embedded store
	b := startNode(t, "B", mod(1), args...)
	ea, eb := a.waitEvent(t, "started"), b.waitEvent(t, "started")
	if ea.Gen != 1 || eb.Gen != 1 {
		t.Fatalf("first generation: A %d, B %d", ea.Gen, eb.Gen)
	}
	time.Sleep(300 * time.Millisecond)
	gone, survivor := b, a
	if killFirst {
		gone, survivor = a, b
	}
	// The host dies: its launcher and workers vanish at once.
	gone.cancel(Signaled{Sig: syscall.SIGKILL})
	<-gone.errc
	if err := <-survivor.errc; err != nil {
		t.Fatalf("survivor: %v", err)
	}
	res := results(survivor.out.String())
	if len(res) != 2 {
		t.Fatalf("survivor's 2 workers did not both finish: %v", res)
	}
	for r, f := range res {
		if f[0] != "2" || f[3] != "1" {
			t.Errorf("rank %s finished in a world of %s after %s restarts; want 2 and 1", r, f[0], f[3])
		}
	}
}

func TestRemoveANodeEmbedded(t *testing.T) {
	testRemoveNode(t, BackendEmbedded, proctest.FreeAddr(t), false)
}

// With etcd the store outlives every node, so even node 0 may go.
func TestRemoveNodeZeroEtcd(t *testing.T) {
	testRemoveNode(t, BackendEtcd, etcdtest.Start(t, "127.0.0.1"), true)
}

// A node that arrives while a smaller job runs makes it re-form with
// every node at the next restart point, without using up a restart.
func TestANodeJoinsARunningJob(t *testing.T) {
	tok := auth.NewToken()
	ep := proctest.FreeAddr(t)
	mod := func(rank int) func(*Config) {
		return func(c *Config) {
			c.Nodes.Min, c.Nodes.Max, c.Nodes.LastCall = 1, 2, 300*time.Millisecond
			c.Backend, c.Endpoint, c.Token, c.NodeRank = BackendEmbedded, ep, tok, rank
			c.Host = "127.0.0.1"
		}
	}
	args := []string{"--steps", "100", "--step-time", "10ms"}
	a := startNode(t, "A", mod(0), args...)
	if e := a.waitEvent(t, "started"); e.Gen != 1 {
		t.Fatalf("A alone started generation %d", e.Gen)
	}
	b := startNode(t, "B", mod(1), args...)
	if e := b.waitEvent(t, "started"); e.Gen != 2 {
		t.Fatalf("B started in generation %d, want 2", e.Gen)
	}
	for name, n := range map[string]*node{"A": a, "B": b} {
		if err := <-n.errc; err != nil {
			t.Fatalf("node %s: %v", name, err)
		}
	}
	all := a.out.String() + b.out.String()
	res := results(all)
	if len(res) != 4 {
		t.Fatalf("want 4 ranks to finish in the re-formed job, got %v", res)
	}
	for r, f := range res {
		if f[0] != "4" || f[3] != "0" {
			t.Errorf("rank %s: world %s restarts %s; want 4 and 0", r, f[0], f[3])
		}
	}
	if !strings.Contains(all, "waiting to join") {
		t.Error("no message says why the job re-formed")
	}
}

// Nodes must agree on --nproc-per-node.
func TestNodesDisagreeOnNProc(t *testing.T) {
	tok := auth.NewToken()
	ep := proctest.FreeAddr(t)
	a := startNode(t, "A", func(c *Config) {
		c.Nodes.Min, c.Nodes.Max = 2, 2
		c.Backend, c.Endpoint, c.Token, c.NodeRank, c.Host = BackendEmbedded, ep, tok, 0, "127.0.0.1"
		c.JoinTimeout = 5 * time.Second
	}, "--steps", "1")
	time.Sleep(200 * time.Millisecond)
	b := startNode(t, "B", func(c *Config) {
		c.NProc = 3
		c.Nodes.Min, c.Nodes.Max = 2, 2
		c.Backend, c.Endpoint, c.Token, c.NodeRank, c.Host = BackendEmbedded, ep, tok, 1, "127.0.0.1"
	}, "--steps", "1")
	err := <-b.errc
	if err == nil || !strings.Contains(err.Error(), "--nproc-per-node 3") || !strings.Contains(err.Error(), "with 2") {
		t.Fatalf("node with 3 workers joining a job of 2: %v", err)
	}
	a.cancel(fmt.Errorf("test over"))
	<-a.errc
}
