package collectivetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
)

// Group is a freshly formed group of n ranks; Kill simulates rank r's
// process dying (its peers must see it as lost at once).
type Group struct {
	Comms []collective.Comm
	Kill  func(rank int)
}

// Factory forms a group of n ranks with cfg over the transport under test.
// It registers a t.Cleanup that closes every Comm (Close is safe to call
// twice), and calls t.Fatal if the group cannot be formed.
type Factory func(t testing.TB, n int, cfg collective.Config) Group

// Options sizes the matrix that RunOptions covers.
type Options struct {
	// Worlds are the world sizes of the op matrix; nil means 1 to 8.
	Worlds []int
	// Quick trims the matrix: fewer counts, dtype/op pairs and
	// configurations, and fewer world sizes in the fault cases.
	Quick bool
}

// Run runs the whole suite: every op, dtype and reduction on world sizes
// 1 to 8 under every algorithm, then the determinism, special value, bad
// argument, fault and leak cases.
func Run(t *testing.T, f Factory) { RunOptions(t, f, Options{}) }

// RunQuick runs a reduced matrix (world sizes 1, 2, 3, 4, 5 and 8, fewer
// counts) with the same kinds of checks, for transports whose groups are
// slower to form.
func RunQuick(t *testing.T, f Factory) {
	RunOptions(t, f, Options{Worlds: []int{1, 2, 3, 4, 5, 8}, Quick: true})
}

// RunOptions runs the suite sized by o.
func RunOptions(t *testing.T, f Factory, o Options) {
	s := &suite{f: f, o: o}
	if len(s.o.Worlds) == 0 {
		s.o.Worlds = []int{1, 2, 3, 4, 5, 6, 7, 8}
	}
	t.Run("Ops", s.testOps)
	t.Run("LargeDefaultConfig", s.testLargeDefault)
	t.Run("Determinism", s.testDeterminism)
	t.Run("NaNInf", s.testNaNInf)
	t.Run("BadArgs", s.testBadArgs)
	t.Run("DeadPeer", s.testDeadPeer)
	t.Run("HungPeer", s.testHungPeer)
	t.Run("Canceled", s.testCanceled)
	t.Run("Mismatch", s.testMismatch)
	t.Run("Leaks", s.testLeaks)
}

type suite struct {
	f Factory
	o Options
}

const (
	// callTimeout bounds every call the suite makes, through its context,
	// so that a hang is reported as a failure.
	callTimeout = 20 * time.Second
	// hangGrace is how long past callTimeout a rank may take to return
	// before the suite gives up on it.
	hangGrace = 10 * time.Second
	// promptly bounds a call on a group that has already failed: it must
	// fail at once with the recorded error, not wait for a timeout.
	promptly = 500 * time.Millisecond
	// slack is added to cfg.Timeout to bound how long live ranks may take
	// to fail when a peer dies, hangs or disagrees.
	slack = time.Second
	// poison fills out-of-place receive buffers, so that elements the call
	// should have written and did not are caught. No exact test produces it.
	poison = 99
)

// ---- running calls on every rank ----

type rankFunc func(ctx context.Context, r int, c collective.Comm) error

// onAll runs fn on every rank at once, each under a callTimeout context,
// and returns each rank's error. A rank that is still blocked well past
// its deadline stops the test, naming it.
func onAll(t testing.TB, g Group, fn rankFunc) []error {
	t.Helper()
	n := len(g.Comms)
	errs := make([]error, n)
	returned := make([]atomic.Bool, n)
	var wg sync.WaitGroup
	for r, c := range g.Comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			errs[r] = fn(ctx, r, c)
			returned[r].Store(true)
		}()
	}
	waitOrFatal(t, &wg, callTimeout+hangGrace, func() string {
		var stuck []int
		for r := range returned {
			if !returned[r].Load() {
				stuck = append(stuck, r)
			}
		}
		return fmt.Sprintf("ranks %v did not return within %v although their contexts expired after %v", stuck, callTimeout+hangGrace, callTimeout)
	})
	return errs
}

func waitOrFatal(t testing.TB, wg *sync.WaitGroup, limit time.Duration, why func() string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("%s\n%s", why(), goroutineDump())
	}
}

func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return "goroutines:\n" + string(buf[:runtime.Stack(buf, true)])
}

// runCall runs call on every rank and reports every error. It returns
// false if any rank failed (the group is then unusable).
func runCall(t testing.TB, g Group, desc string, call rankFunc) bool {
	t.Helper()
	ok := true
	for r, err := range onAll(t, g, call) {
		if err != nil {
			t.Errorf("rank %d: %s: unexpected error: %v", r, desc, err)
			ok = false
		}
	}
	return ok
}

// ---- groups shared by many subtests ----

// env owns a group that a run of subtests share. A subtest that fails
// may leave the group broken, so every later subtest forms its own.
type env struct {
	f       Factory
	n       int
	cfg     collective.Config
	shared  Group
	healthy bool
	failed  int // subtests failed so far
}

// maxFailures is how many failed subtests a configuration may have before
// the rest of it is skipped: one bug tends to fail every later subtest
// the same way, each after a timeout.
const maxFailures = 3

func newEnv(t *testing.T, f Factory, n int, cfg collective.Config) *env {
	return &env{f: f, n: n, cfg: cfg, shared: f(t, n, cfg), healthy: true}
}

func (e *env) sub(t *testing.T, name string, body func(t *testing.T, g Group)) {
	t.Run(name, func(t *testing.T) {
		if e.failed >= maxFailures {
			t.Skipf("skipped: %d earlier subtests of this configuration failed", e.failed)
		}
		g := e.shared
		if !e.healthy {
			g = e.f(t, e.n, e.cfg) // closed by this subtest's cleanup
		}
		defer func() {
			if t.Failed() {
				e.healthy = false
				e.failed++
			}
		}()
		body(t, g)
	})
}

// ---- configurations ----

type algoCase struct {
	name string
	cfg  func(n int) collective.Config
}

// baseConfig is the configuration of the correctness cases: every call
// there is small, so a call that takes seconds is stuck.
func baseConfig() collective.Config {
	cfg := collective.DefaultConfig()
	cfg.Timeout = 10 * time.Second
	return cfg
}

// Small chunks make even modest buffers take several pipeline steps.
const smallChunk = 256

var (
	algoRing = algoCase{"ring", func(int) collective.Config {
		c := baseConfig()
		c.Algo, c.ChunkBytes = collective.AlgoRing, smallChunk
		return c
	}}
	algoRD = algoCase{"rd", func(int) collective.Config {
		c := baseConfig()
		c.Algo = collective.AlgoRecursiveDoubling
		return c
	}}
	// hd with small chunks pipelines every halving and doubling step.
	algoHD = algoCase{"hd", func(int) collective.Config {
		c := baseConfig()
		c.Algo, c.ChunkBytes = collective.AlgoHalvingDoubling, smallChunk
		return c
	}}
	// auto with a low threshold takes both branches within the matrix.
	algoAuto = algoCase{"auto", func(int) collective.Config {
		c := baseConfig()
		c.Algo, c.SmallBytes, c.ChunkBytes = collective.AlgoAuto, 512, smallChunk
		return c
	}}
	// ring-order runs the ring over a permutation of the ranks.
	algoRingOrder = algoCase{"ring-order", func(n int) collective.Config {
		c := baseConfig()
		c.Algo, c.ChunkBytes = collective.AlgoRing, smallChunk
		c.RingOrder = interleaved(n)
		return c
	}}
)

// interleaved returns the even ranks, then the odd ones: 0 2 4 … 1 3 5 …
func interleaved(n int) []int {
	var order []int
	for _, start := range []int{0, 1} {
		for r := start; r < n; r += 2 {
			order = append(order, r)
		}
	}
	return order
}

// counts returns the element counts the matrix covers on a world of n:
// empty, single, tiny, fewer than the ranks, not divisible by n, a prime,
// divisible by n, and a larger prime that takes several pipeline chunks of
// smallChunk bytes per ring block.
func counts(n int, quick bool) []int {
	var cs []int
	if quick {
		cs = []int{0, 1, n - 1, n + 1, 13, 1009}
	} else {
		cs = []int{0, 1, 2, n - 1, n + 1, 13, 64 * n, 1009}
	}
	var out []int
	for _, c := range cs {
		if c >= 0 && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// largeCount is big enough that every ring block of every dtype spans
// several smallChunk chunks on up to 8 ranks.
const largeCount = 10007

func form(inPlace bool) string {
	if inPlace {
		return "in place"
	}
	return "out of place"
}

// ---- Ops: the correctness matrix ----

func (s *suite) testOps(t *testing.T) {
	algos := []algoCase{algoRing, algoRD, algoHD, algoAuto}
	if !s.o.Quick {
		algos = append(algos, algoRingOrder)
	}
	for _, n := range s.o.Worlds {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			for _, a := range algos {
				if a.name == "ring-order" && n < 3 {
					continue
				}
				t.Run(a.name, func(t *testing.T) {
					e := newEnv(t, s.f, n, a.cfg(n))
					s.opsMatrix(t, e, a.name == "ring-order")
				})
			}
		})
	}
}

func (s *suite) opsMatrix(t *testing.T, e *env, reduced bool) {
	n := e.n
	quick := s.o.Quick || reduced
	cs := counts(n, quick)
	dtypes, ops := collective.DTypes, collective.Ops

	// The form (in place or out of place) alternates with the count and
	// the other parameters, so that every op meets both forms on every
	// world without doubling the matrix.
	odd := func(xs ...int) bool {
		sum := 0
		for _, x := range xs {
			sum += x
		}
		return sum%2 == 1
	}

	// AllReduce: every dtype × reduction × count.
	for di, dt := range dtypes {
		for oi, op := range ops {
			if reduced && (di+oi)%3 != 0 {
				continue
			}
			e.sub(t, fmt.Sprintf("AllReduce/%v/%v", dt, op), func(t *testing.T, g Group) {
				for ci, count := range cs {
					if !checkAllReduce(t, g, dt, op, count, odd(ci, di, oi), ci) {
						return
					}
				}
			})
		}
	}
	e.sub(t, "AllReduce/large", func(t *testing.T, g Group) {
		for di, dt := range dtypes {
			op := collective.Sum
			if di%2 == 1 {
				op = collective.Avg
			}
			if !checkAllReduce(t, g, dt, op, largeCount, di%3 == 0, di) {
				return
			}
		}
	})

	// ReduceScatter: every dtype × count, the reduction rotating (in
	// place means recv is this rank's block of send).
	for di, dt := range dtypes {
		e.sub(t, fmt.Sprintf("ReduceScatter/%v", dt), func(t *testing.T, g Group) {
			for ci, count := range cs {
				op := ops[(ci+di)%len(ops)]
				if !checkReduceScatter(t, g, dt, op, count, odd(ci, di/2), ci) {
					return
				}
			}
		})
	}

	// AllGather: every dtype × count (in place means send is this rank's
	// block of recv).
	e.sub(t, "AllGather", func(t *testing.T, g Group) {
		for di, dt := range dtypes {
			for ci, count := range cs {
				if !checkAllGather(t, g, dt, count, odd(ci, di), ci) {
					return
				}
			}
		}
	})

	// Broadcast and Reduce from every root; dtypes and reductions rotate
	// with the root and count so that every one is met on every world.
	e.sub(t, "Broadcast", func(t *testing.T, g Group) {
		for root := range n {
			for ci, count := range cs {
				dt := dtypes[(root+ci)%len(dtypes)]
				if !checkBroadcast(t, g, dt, count, root, odd(root, ci, ci/len(dtypes)), ci) {
					return
				}
			}
		}
	})
	e.sub(t, "Reduce", func(t *testing.T, g Group) {
		for root := range n {
			for ci, count := range cs {
				dt := dtypes[(root+ci)%len(dtypes)]
				op := ops[(root+2*ci)%len(ops)]
				if !checkReduce(t, g, dt, op, count, root, odd(root, ci, ci/len(dtypes)), ci) {
					return
				}
			}
		}
	})
	e.sub(t, "RootedLarge", func(t *testing.T, g Group) {
		for _, root := range distinct(0, n-1) {
			if !checkBroadcast(t, g, collective.Float16, largeCount, root, false, 1) ||
				!checkReduce(t, g, collective.Float32, collective.Sum, largeCount, root, false, 2) ||
				!checkReduce(t, g, collective.BFloat16, collective.Max, largeCount, root, true, 3) {
				return
			}
		}
		if !checkReduceScatter(t, g, collective.Int64, collective.Sum, largeCount/n+1, false, 4) {
			return
		}
		checkAllGather(t, g, collective.Float64, largeCount/n+1, false, 5)
	})

	e.sub(t, "Barrier", func(t *testing.T, g Group) { checkBarrier(t, g) })
	if n > 1 {
		e.sub(t, "SendRecv", func(t *testing.T, g Group) {
			for ci, count := range cs {
				if !checkSendRecv(t, g, dtypes[ci%len(dtypes)], count, ci) {
					return
				}
			}
			checkSendRecv(t, g, collective.Float32, largeCount, 9)
		})
	}
	e.sub(t, "AllReduceAsync", func(t *testing.T, g Group) { checkAsync(t, g) })
}

// distinct returns its arguments without repeats, in order.
func distinct(xs ...int) []int {
	var out []int
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func filled(count int, v float64) []float64 {
	out := make([]float64, count)
	for i := range out {
		out[i] = v
	}
	return out
}

// sub views elements [lo, hi) of b.
func sub(b collective.Buffer, lo, hi int) collective.Buffer {
	es := b.DType().Size()
	return collective.BufferOf(b.DType(), b.Bytes()[lo*es:hi*es])
}

func checkValues(t testing.TB, r int, desc, what string, b collective.Buffer, want []float64) {
	t.Helper()
	if d := diff(values(b), want); d != "" {
		t.Errorf("rank %d: %s: %s: %s", r, desc, what, d)
	}
}

// prepare builds every rank's input (input(r)), its send buffer, and a
// poisoned recv buffer of recvLen elements; in place, recv is send itself,
// or the part of it that within(r, send) picks.
func prepare(n int, dt collective.DType, recvLen int, inPlace bool, input func(r int) []float64,
	within func(r int, send collective.Buffer) collective.Buffer) (in [][]float64, send, recv []collective.Buffer) {
	in = make([][]float64, n)
	send, recv = make([]collective.Buffer, n), make([]collective.Buffer, n)
	for r := range n {
		in[r] = input(r)
		send[r], recv[r] = newBuffer(dt, in[r]), newBuffer(dt, filled(recvLen, poison))
		switch {
		case inPlace && within != nil:
			recv[r] = within(r, send[r])
		case inPlace:
			recv[r] = send[r]
		}
	}
	return in, send, recv
}

func checkAllReduce(t testing.TB, g Group, dt collective.DType, op collective.Op, count int, inPlace bool, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("AllReduce(%v, %v, count %d, %s)", dt, op, count, form(inPlace))
	in, send, recv := prepare(n, dt, count, inPlace, func(r int) []float64 { return exactInputs(op, seed, r, count) }, nil)
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.AllReduce(ctx, send[r], recv[r], op)
	}) {
		return false
	}
	want := refReduce(dt, op, in)
	for r := range n {
		checkValues(t, r, desc, "recv", recv[r], want)
		if !inPlace {
			checkValues(t, r, desc, "send buffer changed", send[r], in[r])
		}
	}
	return true
}

func checkReduceScatter(t testing.TB, g Group, dt collective.DType, op collective.Op, count int, inPlace bool, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("ReduceScatter(%v, %v, recv count %d, %s)", dt, op, count, form(inPlace))
	in, send, recv := prepare(n, dt, count, inPlace, func(r int) []float64 { return exactInputs(op, seed, r, n*count) }, func(r int, s collective.Buffer) collective.Buffer { return sub(s, r*count, (r+1)*count) })
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.ReduceScatter(ctx, send[r], recv[r], op)
	}) {
		return false
	}
	full := refReduce(dt, op, in)
	for r := range n {
		checkValues(t, r, desc, fmt.Sprintf("recv (block %d, elements %d..%d of the reduction)", r, r*count, (r+1)*count), recv[r], full[r*count:(r+1)*count])
		if !inPlace {
			checkValues(t, r, desc, "send buffer changed", send[r], in[r])
		}
	}
	return true
}

func checkAllGather(t testing.TB, g Group, dt collective.DType, count int, inPlace bool, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("AllGather(%v, send count %d, %s)", dt, count, form(inPlace))
	in := make([][]float64, n)
	var want []float64
	send, recv := make([]collective.Buffer, n), make([]collective.Buffer, n)
	for r := range n {
		in[r] = exactInputs(collective.Sum, seed, r, count)
		want = append(want, in[r]...)
	}
	for r := range n {
		send[r], recv[r] = newBuffer(dt, in[r]), newBuffer(dt, filled(n*count, poison))
		if inPlace {
			init := filled(n*count, poison)
			copy(init[r*count:], in[r])
			recv[r] = newBuffer(dt, init)
			send[r] = sub(recv[r], r*count, (r+1)*count)
		}
	}
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.AllGather(ctx, send[r], recv[r])
	}) {
		return false
	}
	for r := range n {
		checkValues(t, r, desc, "recv", recv[r], want)
		if !inPlace {
			checkValues(t, r, desc, "send buffer changed", send[r], in[r])
		}
	}
	return true
}

func checkBroadcast(t testing.TB, g Group, dt collective.DType, count, root int, inPlace bool, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("Broadcast(%v, count %d, root %d, %s)", dt, count, root, form(inPlace))
	// Non-roots' send buffers hold other values: they must be ignored.
	in, send, recv := prepare(n, dt, count, inPlace, func(r int) []float64 { return exactInputs(collective.Sum, seed+r, r, count) }, nil)
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.Broadcast(ctx, send[r], recv[r], root)
	}) {
		return false
	}
	for r := range n {
		checkValues(t, r, desc, "recv", recv[r], in[root])
		if !inPlace {
			checkValues(t, r, desc, "send buffer changed", send[r], in[r])
		}
	}
	return true
}

func checkReduce(t testing.TB, g Group, dt collective.DType, op collective.Op, count, root int, inPlace bool, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("Reduce(%v, %v, count %d, root %d, %s)", dt, op, count, root, form(inPlace))
	in, send, recv := prepare(n, dt, count, inPlace, func(r int) []float64 { return exactInputs(op, seed, r, count) }, nil)
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.Reduce(ctx, send[r], recv[r], op, root)
	}) {
		return false
	}
	want := refReduce(dt, op, in)
	for r := range n {
		switch {
		case r == root:
			checkValues(t, r, desc, "recv on the root", recv[r], want)
		case !inPlace:
			checkValues(t, r, desc, "recv off the root (must stay untouched)", recv[r], filled(count, poison))
		default:
			checkValues(t, r, desc, "buffer off the root (must stay untouched)", recv[r], in[r])
		}
		if !inPlace {
			checkValues(t, r, desc, "send buffer changed", send[r], in[r])
		}
	}
	return true
}

// checkBarrier makes rank 0 arrive late, three times over, and checks
// that no rank leaves a barrier before rank 0 has entered it.
func checkBarrier(t testing.TB, g Group) {
	t.Helper()
	for round := range 3 {
		var entered atomic.Bool
		desc := fmt.Sprintf("Barrier (round %d, rank 0 arrives 20ms late)", round)
		errs := onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
			if r == 0 {
				time.Sleep(20 * time.Millisecond)
				entered.Store(true)
			}
			if err := c.Barrier(ctx); err != nil {
				return err
			}
			if !entered.Load() {
				return errors.New("returned before rank 0 entered the barrier")
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Errorf("rank %d: %s: %v", r, desc, err)
			}
		}
		if t.Failed() {
			return
		}
	}
}

// checkSendRecv passes two messages of different lengths around the ring
// 0 -> 1 -> … -> n-1 -> 0. Rank 0 sends first and everyone else receives
// first, so no rank depends on a transport buffering a whole message.
func checkSendRecv(t testing.TB, g Group, dt collective.DType, count, seed int) bool {
	t.Helper()
	n := len(g.Comms)
	desc := fmt.Sprintf("Send/Recv ring (%v, counts %d and %d)", dt, count, count+1)
	msg := func(r, k int) []float64 { return exactInputs(collective.Sum, seed+k, r, count+k) }
	got := make([][2]collective.Buffer, n)
	for r := range n {
		got[r] = [2]collective.Buffer{newBuffer(dt, filled(count, poison)), newBuffer(dt, filled(count+1, poison))}
	}
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		next, prev := (r+1)%n, (r+n-1)%n
		send := func() error {
			for k := range 2 {
				if err := c.Send(ctx, newBuffer(dt, msg(r, k)), next); err != nil {
					return fmt.Errorf("Send %d to rank %d: %w", k, next, err)
				}
			}
			return nil
		}
		recv := func() error {
			for k := range 2 {
				if err := c.Recv(ctx, got[r][k], prev); err != nil {
					return fmt.Errorf("Recv %d from rank %d: %w", k, prev, err)
				}
			}
			return nil
		}
		if r == 0 {
			if err := send(); err != nil {
				return err
			}
			return recv()
		}
		if err := recv(); err != nil {
			return err
		}
		return send()
	}) {
		return false
	}
	for r := range n {
		prev := (r + n - 1) % n
		for k := range 2 {
			checkValues(t, r, desc, fmt.Sprintf("message %d from rank %d", k, prev), got[r][k], msg(prev, k))
		}
	}
	return true
}

// checkAsync keeps four all-reduces of different shapes in flight, then a
// blocking one, and checks results and completion order.
func checkAsync(t testing.TB, g Group) {
	t.Helper()
	n := len(g.Comms)
	type shape struct {
		dt    collective.DType
		op    collective.Op
		count int
	}
	shapes := []shape{
		{collective.Float32, collective.Sum, 1009},
		{collective.Int64, collective.Max, 13},
		{collective.BFloat16, collective.Avg, 2},
		{collective.Float64, collective.Prod, 0},
		{collective.Float16, collective.Min, 257}, // the blocking one
	}
	in := make([][][]float64, len(shapes))
	send := make([][]collective.Buffer, len(shapes))
	recv := make([][]collective.Buffer, len(shapes))
	for i, sh := range shapes {
		in[i], send[i], recv[i] = make([][]float64, n), make([]collective.Buffer, n), make([]collective.Buffer, n)
		for r := range n {
			in[i][r] = exactInputs(sh.op, i, r, sh.count)
			send[i][r] = newBuffer(sh.dt, in[i][r])
			recv[i][r] = newBuffer(sh.dt, filled(sh.count, poison))
			if i%2 == 1 {
				recv[i][r] = send[i][r]
			}
		}
	}
	errs := onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
		last := len(shapes) - 1
		reqs := make([]*collective.Request, last)
		for i := range last {
			reqs[i] = c.AllReduceAsync(ctx, send[i][r], recv[i][r], shapes[i].op)
		}
		if err := c.AllReduce(ctx, send[last][r], recv[last][r], shapes[last].op); err != nil {
			return fmt.Errorf("blocking AllReduce after %d async ones: %w", last, err)
		}
		// Calls run in order, so every earlier async call is complete.
		for i, req := range reqs {
			select {
			case <-req.Done():
			default:
				return fmt.Errorf("async AllReduce %d is not done after the blocking AllReduce made after it returned", i)
			}
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			if err := reqs[i].Wait(ctx); err != nil {
				return fmt.Errorf("async AllReduce %d: %w", i, err)
			}
		}
		// Several in flight again, waited for from the last: the earlier
		// ones must be done by then.
		for i := range last {
			reqs[i] = c.AllReduceAsync(ctx, send[i][r], recv[i][r], shapes[i].op)
		}
		if err := reqs[last-1].Wait(ctx); err != nil {
			return fmt.Errorf("second round, async AllReduce %d: %w", last-1, err)
		}
		for i, req := range reqs[:last-1] {
			select {
			case <-req.Done():
				if err := req.Wait(ctx); err != nil {
					return fmt.Errorf("second round, async AllReduce %d: %w", i, err)
				}
			default:
				return fmt.Errorf("second round: async AllReduce %d is not done although %d, made after it, is", i, last-1)
			}
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: AllReduceAsync: %v", r, err)
		}
	}
	if t.Failed() {
		return
	}
	// The second round reran every async call. Out-of-place ones reduced
	// the same inputs again; in-place ones reduced their first results.
	for i, sh := range shapes {
		want := refReduce(sh.dt, sh.op, in[i])
		if i%2 == 1 && i < len(shapes)-1 {
			twice := make([][]float64, n)
			for r := range n {
				twice[r] = want
			}
			want = refReduce(sh.dt, sh.op, twice)
		}
		desc := fmt.Sprintf("AllReduceAsync #%d (%v, %v, count %d, %s)", i, sh.dt, sh.op, sh.count, form(i%2 == 1))
		for r := range n {
			checkValues(t, r, desc, "recv", recv[i][r], want)
		}
	}
}

// ---- a large buffer with the default configuration ----

func (s *suite) testLargeDefault(t *testing.T) {
	// 3 MiB of float32: the ring with more than one 1 MiB chunk per block
	// on two ranks, and the default threshold picking the ring.
	worlds := []int{2, 3}
	if s.o.Quick {
		worlds = []int{2}
	}
	for _, n := range worlds {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			cfg := baseConfig()
			g := s.f(t, n, cfg)
			checkAllReduce(t, g, collective.Float32, collective.Sum, 3<<18, false, 1)
		})
	}
}

// ---- determinism ----

func randomInputs(rng *rand.Rand, count int) []float64 {
	out := make([]float64, count)
	for i := range out {
		out[i] = float64(float32(rng.Float64()*2 - 1))
	}
	return out
}

func (s *suite) testDeterminism(t *testing.T) {
	worlds := []int{2, 3, 4, 5, 8}
	if s.o.Quick {
		worlds = []int{2, 3, 5}
	}
	for _, n := range worlds {
		for _, a := range []algoCase{algoRing, algoRD, algoHD, algoAuto} {
			t.Run(fmt.Sprintf("world=%d/%s", n, a.name), func(t *testing.T) {
				g := s.f(t, n, a.cfg(n))
				for _, dt := range []collective.DType{collective.Float32, collective.BFloat16} {
					for _, count := range []int{7, largeCount} {
						checkDeterministic(t, g, dt, count)
						if t.Failed() {
							return
						}
					}
				}
			})
		}
	}
}

// checkDeterministic all-reduces random values twice and reduce-scatters
// them twice, and checks that every rank got the same bits, that the
// second call gave the same bits as the first, and that the sum is close
// to the exact one.
func checkDeterministic(t *testing.T, g Group, dt collective.DType, count int) {
	t.Helper()
	n := len(g.Comms)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(count)))
	in := make([][]float64, n)
	send := make([]collective.Buffer, n)
	var recv [2][]collective.Buffer
	for r := range n {
		in[r] = randomInputs(rng, count)
		send[r] = newBuffer(dt, in[r])
		in[r] = values(send[r]) // as rounded to dt
	}
	for k := range recv {
		recv[k] = make([]collective.Buffer, n)
		for r := range n {
			recv[k][r] = newBuffer(dt, filled(count, poison))
		}
		desc := fmt.Sprintf("AllReduce(%v, sum, count %d, random values), call %d", dt, count, k+1)
		if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
			return c.AllReduce(ctx, send[r], recv[k][r], collective.Sum)
		}) {
			return
		}
	}
	desc := fmt.Sprintf("AllReduce(%v, sum, count %d, random values)", dt, count)
	for r := range n {
		if i := firstDiff(recv[0][r].Bytes(), recv[0][0].Bytes(), dt.Size()); i >= 0 {
			t.Errorf("rank %d: %s: element %d is %v on this rank but %v on rank 0; every rank must get the same bits",
				r, desc, i, values(recv[0][r])[i], values(recv[0][0])[i])
		}
		if i := firstDiff(recv[1][r].Bytes(), recv[0][r].Bytes(), dt.Size()); i >= 0 {
			t.Errorf("rank %d: %s: element %d is %v on the second call but %v on the first; the same call must give the same bits",
				r, desc, i, values(recv[1][r])[i], values(recv[0][r])[i])
		}
	}
	// Closeness to the exact sum (a loose bound: it catches dropped or
	// doubled contributions, not rounding).
	tol := 1e-4
	if dt == collective.BFloat16 {
		tol = 0.5
	}
	got := values(recv[0][0])
	for i := range count {
		var exact float64
		for r := range n {
			exact += in[r][i]
		}
		if math.Abs(got[i]-exact) > tol {
			t.Errorf("rank 0: %s: index %d: got %v, the exact sum is %v", desc, i, got[i], exact)
			break
		}
	}

	// ReduceScatter twice over the same input.
	per := count/n + 1
	rs := make([]collective.Buffer, n)
	for r := range n {
		rs[r] = newBuffer(dt, randomInputs(rng, n*per))
	}
	var out [2][]collective.Buffer
	for k := range out {
		out[k] = make([]collective.Buffer, n)
		for r := range n {
			out[k][r] = newBuffer(dt, filled(per, poison))
		}
		d := fmt.Sprintf("ReduceScatter(%v, sum, recv count %d, random values), call %d", dt, per, k+1)
		if !runCall(t, g, d, func(ctx context.Context, r int, c collective.Comm) error {
			return c.ReduceScatter(ctx, rs[r], out[k][r], collective.Sum)
		}) {
			return
		}
	}
	for r := range n {
		if i := firstDiff(out[1][r].Bytes(), out[0][r].Bytes(), dt.Size()); i >= 0 {
			t.Errorf("rank %d: ReduceScatter(%v, sum, recv count %d, random values): element %d differs between two identical calls (%v, then %v)",
				r, dt, per, i, values(out[0][r])[i], values(out[1][r])[i])
		}
	}
}

// firstDiff returns the first element index where a and b differ, or -1.
func firstDiff(a, b []byte, esize int) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i / esize
		}
	}
	return min(len(a), len(b)) / esize
}

// ---- NaN and Inf ----

func (s *suite) testNaNInf(t *testing.T) {
	worlds := []int{2, 3, 4}
	if s.o.Quick {
		worlds = []int{2, 3}
	}
	floats := []collective.DType{collective.Float32, collective.Float64, collective.BFloat16, collective.Float16}
	for _, n := range worlds {
		for _, a := range []algoCase{algoRing, algoRD, algoHD} {
			t.Run(fmt.Sprintf("world=%d/%s", n, a.name), func(t *testing.T) {
				g := s.f(t, n, a.cfg(n))
				for _, dt := range floats {
					for _, op := range []collective.Op{collective.Sum, collective.Avg, collective.Max, collective.Min} {
						if !checkSpecial(t, g, dt, op) {
							return
						}
					}
				}
			})
		}
	}
}

// checkSpecial plants NaN and infinities in an all-reduce of small
// integers:
//
//	index 0:       NaN on the last rank          -> NaN (every op)
//	index count/2: +Inf on rank 0                -> +Inf for sum, avg, max
//	index count-1: +Inf on rank 0, -Inf on 1     -> NaN for sum and avg,
//	                                                +Inf for max, -Inf for min
func checkSpecial(t testing.TB, g Group, dt collective.DType, op collective.Op) bool {
	t.Helper()
	n := len(g.Comms)
	const count = 1009
	mid, last := count/2, count-1
	inf := math.Inf(1)
	in := make([][]float64, n)
	send, recv := make([]collective.Buffer, n), make([]collective.Buffer, n)
	for r := range n {
		in[r] = exactInputs(collective.Sum, 3, r, count)
		in[r][mid] = 1
		if r == n-1 {
			in[r][0] = math.NaN()
		}
		if r == 0 {
			in[r][mid], in[r][last] = inf, inf
		}
		if r == 1 {
			in[r][last] = -inf
		}
		send[r], recv[r] = newBuffer(dt, in[r]), newBuffer(dt, filled(count, poison))
	}
	desc := fmt.Sprintf("AllReduce(%v, %v, count %d, NaN at index 0, +Inf at %d, +Inf and -Inf at %d)", dt, op, count, mid, last)
	if !runCall(t, g, desc, func(ctx context.Context, r int, c collective.Comm) error {
		return c.AllReduce(ctx, send[r], recv[r], op)
	}) {
		return false
	}
	want := refReduce(dt, op, in)
	// The reference follows IEEE arithmetic (NaN + x = NaN, Inf + 1 = Inf,
	// Inf - Inf = NaN) for sum and avg; Go's math.Max and math.Min, which
	// it uses, propagate NaN and order the infinities as well. Spell the
	// expectations out so that a reference bug cannot hide one.
	nan := math.NaN()
	switch op {
	case collective.Sum, collective.Avg:
		if n == 1 {
			break
		}
		want[0], want[mid], want[last] = nan, inf, nan
	case collective.Max:
		want[0], want[mid], want[last] = nan, inf, inf
	case collective.Min:
		want[0], want[last] = nan, -inf
		if n == 1 {
			want[last] = inf
		}
	}
	for r := range n {
		checkValues(t, r, desc, "recv", recv[r], want)
	}
	return true
}

// ---- bad arguments ----

type badCase struct {
	name string
	// call makes the bad call on rank r; ok reports that this rank makes
	// no bad call in this case.
	call func(ctx context.Context, r, n int, c collective.Comm) (err error, ok bool)
}

func f32s(n int) collective.Buffer { return collective.Float32s(make([]float32, n)) }

func badCases() []badCase {
	all := func(f func(ctx context.Context, r, n int, c collective.Comm) error) func(context.Context, int, int, collective.Comm) (error, bool) {
		return func(ctx context.Context, r, n int, c collective.Comm) (error, bool) { return f(ctx, r, n, c), false }
	}
	rank0 := func(f func(ctx context.Context, r, n int, c collective.Comm) error) func(context.Context, int, int, collective.Comm) (error, bool) {
		return func(ctx context.Context, r, n int, c collective.Comm) (error, bool) {
			if r != 0 {
				return nil, true
			}
			return f(ctx, r, n, c), false
		}
	}
	type cc = collective.Comm
	return []badCase{
		{"AllReduce/recv-shorter", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduce(ctx, f32s(10), f32s(9), collective.Sum)
		})},
		{"AllReduce/recv-other-dtype", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduce(ctx, f32s(10), collective.Int32s(make([]int32, 10)), collective.Sum)
		})},
		{"AllReduce/op-0", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduce(ctx, f32s(10), f32s(10), collective.Op(0))
		})},
		{"AllReduce/op-99", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduce(ctx, f32s(10), f32s(10), collective.Op(99))
		})},
		{"AllReduce/unknown-dtype", all(func(ctx context.Context, r, n int, c cc) error {
			b := collective.BufferOf(collective.DType(99), make([]byte, 40))
			return c.AllReduce(ctx, b, b, collective.Sum)
		})},
		{"AllReduce/zero-value-buffer", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduce(ctx, collective.Buffer{}, collective.Buffer{}, collective.Sum)
		})},
		{"AllReduce/ragged-bytes", all(func(ctx context.Context, r, n int, c cc) error {
			b := collective.BufferOf(collective.Float32, make([]byte, 10))
			return c.AllReduce(ctx, b, collective.BufferOf(collective.Float32, make([]byte, 10)), collective.Sum)
		})},
		{"AllReduce/partial-overlap", all(func(ctx context.Context, r, n int, c cc) error {
			x := make([]float32, 11)
			return c.AllReduce(ctx, collective.Float32s(x[:10]), collective.Float32s(x[1:]), collective.Sum)
		})},
		{"AllReduceAsync/op-99", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduceAsync(ctx, f32s(10), f32s(10), collective.Op(99)).Wait(ctx)
		})},
		{"AllReduceAsync/recv-longer", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllReduceAsync(ctx, f32s(10), f32s(11), collective.Sum).Wait(ctx)
		})},
		{"ReduceScatter/send-not-size-times-recv", all(func(ctx context.Context, r, n int, c cc) error {
			return c.ReduceScatter(ctx, f32s(4*n+1), f32s(4), collective.Sum)
		})},
		{"ReduceScatter/op-99", all(func(ctx context.Context, r, n int, c cc) error {
			return c.ReduceScatter(ctx, f32s(4*n), f32s(4), collective.Op(99))
		})},
		{"AllGather/recv-not-size-times-send", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllGather(ctx, f32s(4), f32s(4*n+1))
		})},
		{"AllGather/recv-other-dtype", all(func(ctx context.Context, r, n int, c cc) error {
			return c.AllGather(ctx, f32s(4), collective.Int32s(make([]int32, 4*n)))
		})},
		{"Broadcast/root-minus-1", all(func(ctx context.Context, r, n int, c cc) error {
			return c.Broadcast(ctx, f32s(4), f32s(4), -1)
		})},
		{"Broadcast/root-size", all(func(ctx context.Context, r, n int, c cc) error {
			return c.Broadcast(ctx, f32s(4), f32s(4), n)
		})},
		{"Broadcast/root-send-recv-lengths", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Broadcast(ctx, f32s(4), f32s(5), 0)
		})},
		{"Reduce/root-size", all(func(ctx context.Context, r, n int, c cc) error {
			return c.Reduce(ctx, f32s(4), f32s(4), collective.Sum, n)
		})},
		{"Reduce/root-minus-1", all(func(ctx context.Context, r, n int, c cc) error {
			return c.Reduce(ctx, f32s(4), f32s(4), collective.Sum, -1)
		})},
		{"Reduce/op-0", all(func(ctx context.Context, r, n int, c cc) error {
			return c.Reduce(ctx, f32s(4), f32s(4), collective.Op(0), 0)
		})},
		{"Send/to-self", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Send(ctx, f32s(4), r)
		})},
		{"Send/to-size", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Send(ctx, f32s(4), n)
		})},
		{"Send/to-minus-1", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Send(ctx, f32s(4), -1)
		})},
		{"Recv/from-self", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Recv(ctx, f32s(4), r)
		})},
		{"Recv/from-size", rank0(func(ctx context.Context, r, n int, c cc) error {
			return c.Recv(ctx, f32s(4), n)
		})},
	}
}

func (s *suite) testBadArgs(t *testing.T) {
	worlds := []int{1, 3}
	for _, n := range worlds {
		t.Run(fmt.Sprintf("world=%d", n), func(t *testing.T) {
			cfg := baseConfig()
			cfg.Timeout = 5 * time.Second
			e := newEnv(t, s.f, n, cfg)
			for i, bc := range badCases() {
				e.sub(t, bc.name, func(t *testing.T, g Group) {
					errs := onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
						err, skip := bc.call(ctx, r, n, c)
						if skip {
							return nil
						}
						var ae *collective.ArgError
						switch {
						case err == nil:
							return errors.New("the call succeeded; want a *collective.ArgError")
						case !errors.As(err, &ae):
							return fmt.Errorf("got error %q (%T); want a *collective.ArgError", err, err)
						case ae.Rank != r:
							return fmt.Errorf("ArgError %q names rank %d", err, ae.Rank)
						case ae.Op == "" || ae.Reason == "":
							return fmt.Errorf("ArgError %q lacks its Op or Reason", err)
						}
						return nil
					})
					for r, err := range errs {
						if err != nil {
							t.Errorf("rank %d: %s: %v", r, bc.name, err)
						}
					}
					// The group must still work.
					checkAllReduce(t, g, collective.Float32, collective.Sum, 13, false, i)
				})
			}
		})
	}
}

// ---- faults ----

// faultConfig has a short timeout, so that a fault that the group
// fails to notice costs seconds, not minutes.
func faultConfig(timeout time.Duration) collective.Config {
	cfg := collective.DefaultConfig()
	cfg.Timeout = timeout
	cfg.ChunkBytes = 16 << 10
	return cfg
}

// allSentinels are the errors a failure may wrap.
var allSentinels = []error{collective.ErrPeerLost, collective.ErrTimeout, collective.ErrMismatch,
	collective.ErrCanceled, collective.ErrClosed, collective.ErrProtocol}

type outcome struct {
	err     error
	elapsed time.Duration
}

// expectFault checks one live rank's outcome: an error within bound that
// wraps one of want and is a *PeerError naming culprit (or, if culprit is
// -1, some rank of the group).
func expectFault(t testing.TB, desc string, r, n int, o outcome, bound time.Duration, culprit int, want ...error) {
	t.Helper()
	if o.err == nil {
		t.Errorf("rank %d: %s: returned no error after %v; want one wrapping %v", r, desc, o.elapsed, want)
		return
	}
	if o.elapsed > bound {
		t.Errorf("rank %d: %s: took %v to fail, want at most %v (cfg.Timeout + %v): %v", r, desc, o.elapsed.Round(time.Millisecond), bound, slack, o.err)
	}
	matched := false
	for _, w := range want {
		matched = matched || errors.Is(o.err, w)
	}
	if !matched {
		t.Errorf("rank %d: %s: error %q wraps none of %v", r, desc, o.err, want)
	}
	var pe *collective.PeerError
	switch {
	case !errors.As(o.err, &pe):
		t.Errorf("rank %d: %s: error %q (%T) is not a *collective.PeerError", r, desc, o.err, o.err)
	case culprit >= 0 && pe.Rank != culprit:
		t.Errorf("rank %d: %s: PeerError names rank %d, want rank %d: %v", r, desc, pe.Rank, culprit, o.err)
	case culprit < 0 && (pe.Rank < 0 || pe.Rank >= n):
		t.Errorf("rank %d: %s: PeerError names rank %d, want a rank of the group: %v", r, desc, pe.Rank, o.err)
	}
}

// checkUnusable makes another call on each of ranks, which must fail
// within bound, wrapping the same sentinels as that rank's first error.
func checkUnusable(t testing.TB, g Group, desc string, ranks []int, first []error, bound time.Duration) {
	t.Helper()
	n := len(g.Comms)
	outs := make([]outcome, n)
	onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
		if !slices.Contains(ranks, r) {
			return nil
		}
		start := time.Now()
		err := c.AllReduce(ctx, f32s(64), f32s(64), collective.Sum)
		outs[r] = outcome{err, time.Since(start)}
		return nil
	})
	for _, r := range ranks {
		o := outs[r]
		d := fmt.Sprintf("AllReduce after %s", desc)
		if o.err == nil {
			t.Errorf("rank %d: %s: succeeded; the group failed before and must stay unusable", r, d)
			continue
		}
		if o.elapsed > bound {
			t.Errorf("rank %d: %s: took %v to fail, want at most %v: %v", r, d, o.elapsed.Round(time.Millisecond), bound, o.err)
		}
		if first == nil || first[r] == nil {
			continue
		}
		for _, s := range allSentinels {
			if errors.Is(first[r], s) && !errors.Is(o.err, s) {
				t.Errorf("rank %d: %s: error %q does not wrap %v like the first error %q", r, d, o.err, s, first[r])
			}
		}
	}
}

func others(n int, except ...int) []int {
	var out []int
	for r := range n {
		if !slices.Contains(except, r) {
			out = append(out, r)
		}
	}
	return out
}

func (s *suite) faultWorlds(full, quick []int) []int {
	if s.o.Quick {
		return quick
	}
	return full
}

// testDeadPeer kills one rank, either before it makes its call (its peers
// wait for it) or while every rank loops over large all-reduces, and
// checks that every live rank fails quickly, naming the dead rank.
func (s *suite) testDeadPeer(t *testing.T) {
	const timeout = 2 * time.Second
	bound := timeout + slack
	for _, n := range s.faultWorlds([]int{2, 3, 4, 8}, []int{2, 3, 4}) {
		for _, k := range distinct(0, n/2, n-1) {
			t.Run(fmt.Sprintf("world=%d/rank=%d/before-call", n, k), func(t *testing.T) {
				g := s.f(t, n, faultConfig(timeout))
				outs := make([]outcome, n)
				var kills sync.WaitGroup
				kills.Add(1)
				go func() {
					defer kills.Done()
					time.Sleep(50 * time.Millisecond)
					g.Kill(k)
				}()
				onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
					if r == k {
						return nil
					}
					start := time.Now()
					err := c.AllReduce(ctx, f32s(1<<16), f32s(1<<16), collective.Sum)
					outs[r] = outcome{err, time.Since(start)}
					return nil
				})
				kills.Wait()
				desc := fmt.Sprintf("AllReduce while rank %d dies before calling", k)
				first := make([]error, n)
				for _, r := range others(n, k) {
					expectFault(t, desc, r, n, outs[r], bound, k, collective.ErrPeerLost)
					first[r] = outs[r].err
				}
				checkUnusable(t, g, desc, others(n, k), first, promptly)
			})
			t.Run(fmt.Sprintf("world=%d/rank=%d/mid-call", n, k), func(t *testing.T) {
				g := s.f(t, n, faultConfig(timeout))
				outs := make([]outcome, n)
				var killedAt atomic.Int64 // unix nanoseconds; 0 before the kill
				var kills sync.WaitGroup
				kills.Add(1)
				go func() {
					defer kills.Done()
					time.Sleep(30 * time.Millisecond)
					killedAt.Store(time.Now().UnixNano())
					g.Kill(k)
				}()
				const count = 1 << 17 // 512 KiB of float32, 32 chunks
				onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
					send, recv := f32s(count), f32s(count)
					for {
						start := time.Now()
						err := c.AllReduce(ctx, send, recv, collective.Sum)
						end := time.Now()
						if r == k {
							if err != nil || ctx.Err() != nil {
								return nil // the dead rank's own fate is not specified
							}
							continue
						}
						kt := killedAt.Load()
						if err != nil {
							from := start
							if kt != 0 && time.Unix(0, kt).After(from) {
								from = time.Unix(0, kt)
							}
							outs[r] = outcome{err, end.Sub(from)}
							return nil
						}
						if kt != 0 && end.Sub(time.Unix(0, kt)) > bound {
							outs[r] = outcome{nil, end.Sub(time.Unix(0, kt))}
							return nil
						}
					}
				})
				kills.Wait()
				desc := fmt.Sprintf("AllReduce loop while rank %d is killed", k)
				first := make([]error, n)
				for _, r := range others(n, k) {
					expectFault(t, desc, r, n, outs[r], bound, k, collective.ErrPeerLost)
					first[r] = outs[r].err
				}
				checkUnusable(t, g, desc, others(n, k), first, promptly)
			})
		}
	}
}

// testHungPeer has one rank never make its call; the others must fail
// within the timeout (plus slack), and every rank, the hung one included
// once it has heard, must refuse later calls.
func (s *suite) testHungPeer(t *testing.T) {
	const timeout = time.Second
	bound := timeout + slack
	type hungCall struct {
		name string
		call func(ctx context.Context, r, k, n int, c collective.Comm) error
	}
	calls := []hungCall{
		{"AllReduce", func(ctx context.Context, r, k, n int, c collective.Comm) error {
			return c.AllReduce(ctx, f32s(4096), f32s(4096), collective.Sum)
		}},
		{"Broadcast-from-hung-root", func(ctx context.Context, r, k, n int, c collective.Comm) error {
			return c.Broadcast(ctx, f32s(64), f32s(64), k)
		}},
		{"Barrier", func(ctx context.Context, r, k, n int, c collective.Comm) error {
			return c.Barrier(ctx)
		}},
	}
	for _, n := range s.faultWorlds([]int{2, 3, 4}, []int{2, 3}) {
		for _, k := range distinct(0, n-1) {
			for ci, hc := range calls {
				// AllReduce everywhere; the others on three ranks, one
				// hung rank each.
				if hc.name != "AllReduce" && (n != 3 || k != distinct(0, n-1)[ci%2]) {
					continue
				}
				t.Run(fmt.Sprintf("world=%d/rank=%d/%s", n, k, hc.name), func(t *testing.T) {
					// These cases spend their time waiting for the timeout,
					// so they wait together.
					t.Parallel()
					g := s.f(t, n, faultConfig(timeout))
					outs := make([]outcome, n)
					onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
						if r == k {
							return nil
						}
						start := time.Now()
						err := hc.call(ctx, r, k, n, c)
						outs[r] = outcome{err, time.Since(start)}
						return nil
					})
					desc := fmt.Sprintf("%s while rank %d never calls", hc.name, k)
					first := make([]error, n)
					for _, r := range others(n, k) {
						expectFault(t, desc, r, n, outs[r], bound, -1, collective.ErrTimeout, collective.ErrPeerLost)
						first[r] = outs[r].err
					}
					checkUnusable(t, g, desc, others(n, k), first, promptly)
					// The hung rank has been told (or its own call times out).
					checkUnusable(t, g, desc+" (on the hung rank)", []int{k}, nil, bound)
				})
			}
		}
	}
	// A point-to-point receive from a rank that never sends.
	t.Run("world=2/Recv-from-silent-rank", func(t *testing.T) {
		t.Parallel()
		g := s.f(t, 2, faultConfig(timeout))
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		err := g.Comms[1].Recv(ctx, f32s(8), 0)
		expectFault(t, "Recv from rank 0, which never sends", 1, 2, outcome{err, time.Since(start)}, bound, -1, collective.ErrTimeout, collective.ErrPeerLost)
	})
}

// testCanceled cancels one rank's context while it waits in an all-reduce
// that the others have not joined yet; that aborts the group, so the others
// must fail promptly when they do call, naming the cancelled rank.
func (s *suite) testCanceled(t *testing.T) {
	const timeout = 2 * time.Second
	bound := timeout + slack
	for _, n := range s.faultWorlds([]int{2, 4}, []int{2, 3}) {
		k := n - 1
		t.Run(fmt.Sprintf("world=%d/rank=%d", n, k), func(t *testing.T) {
			g := s.f(t, n, faultConfig(timeout))
			outs := make([]outcome, n)
			onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
				if r == k {
					cctx, cancel := context.WithCancel(ctx)
					time.AfterFunc(50*time.Millisecond, cancel)
					start := time.Now()
					err := c.AllReduce(cctx, f32s(1024), f32s(1024), collective.Sum)
					outs[r] = outcome{err, time.Since(start)}
					return nil
				}
				time.Sleep(300 * time.Millisecond)
				start := time.Now()
				err := c.AllReduce(ctx, f32s(1024), f32s(1024), collective.Sum)
				outs[r] = outcome{err, time.Since(start)}
				return nil
			})
			desc := fmt.Sprintf("AllReduce whose context is cancelled on rank %d", k)
			ok := outs[k]
			if ok.err == nil {
				t.Errorf("rank %d: %s: returned no error", k, desc)
			} else if !errors.Is(ok.err, collective.ErrCanceled) && !errors.Is(ok.err, context.Canceled) {
				t.Errorf("rank %d: %s: error %q wraps neither collective.ErrCanceled nor context.Canceled", k, desc, ok.err)
			} else if ok.elapsed > 50*time.Millisecond+slack {
				t.Errorf("rank %d: %s: took %v to return after a cancel at 50ms", k, desc, ok.elapsed)
			}
			first := make([]error, n)
			for _, r := range others(n, k) {
				expectFault(t, desc+" (called after the cancel)", r, n, outs[r], bound, k, collective.ErrCanceled)
				first[r] = outs[r].err
			}
			checkUnusable(t, g, desc, others(n), first, promptly)
		})
	}
}

// testMismatch has rank 1 disagree with the others about the call. Every
// rank must fail with ErrMismatch and a message that names both calls.
func (s *suite) testMismatch(t *testing.T) {
	const timeout = 2 * time.Second
	bound := timeout + slack
	type mcase struct {
		name   string
		words  []string // the message must name both calls
		common rankFunc // what every other rank calls
		odd    rankFunc // what rank 1 calls
	}
	allReduce := func(dt collective.DType, count int, op collective.Op) rankFunc {
		return func(ctx context.Context, r int, c collective.Comm) error {
			return c.AllReduce(ctx, newBuffer(dt, filled(count, 1)), newBuffer(dt, filled(count, 0)), op)
		}
	}
	cases := []mcase{
		{"count", []string{"1000", "1003"}, allReduce(collective.Float32, 1000, collective.Sum), allReduce(collective.Float32, 1003, collective.Sum)},
		{"dtype", []string{"float32", "int32"}, allReduce(collective.Float32, 1000, collective.Sum), allReduce(collective.Int32, 1000, collective.Sum)},
		{"op", []string{"sum", "max"}, allReduce(collective.Float32, 1000, collective.Sum), allReduce(collective.Float32, 1000, collective.Max)},
		{"Broadcast-vs-AllReduce", []string{"AllReduce", "Broadcast"}, allReduce(collective.Float32, 1000, collective.Sum),
			func(ctx context.Context, r int, c collective.Comm) error {
				return c.Broadcast(ctx, f32s(1000), f32s(1000), 0)
			}},
		{"Barrier-vs-AllReduce", []string{"AllReduce", "Barrier"}, allReduce(collective.Float32, 1000, collective.Sum),
			func(ctx context.Context, r int, c collective.Comm) error { return c.Barrier(ctx) }},
		{"AllGather-vs-ReduceScatter", []string{"ReduceScatter", "AllGather"},
			func(ctx context.Context, r int, c collective.Comm) error {
				n := c.Size()
				return c.ReduceScatter(ctx, f32s(100*n), f32s(100), collective.Sum)
			},
			func(ctx context.Context, r int, c collective.Comm) error {
				n := c.Size()
				return c.AllGather(ctx, f32s(100), f32s(100*n))
			}},
	}
	worlds := s.faultWorlds([]int{2, 3, 4}, []int{2, 3})
	for _, n := range worlds {
		for _, a := range []algoCase{algoRing, algoRD, algoHD} {
			for _, mc := range cases {
				if s.o.Quick && a.name != "ring" && mc.name != "op" && mc.name != "Broadcast-vs-AllReduce" {
					continue
				}
				t.Run(fmt.Sprintf("world=%d/%s/%s", n, a.name, mc.name), func(t *testing.T) {
					cfg := a.cfg(n)
					cfg.Timeout = timeout
					g := s.f(t, n, cfg)
					outs := make([]outcome, n)
					onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
						call := mc.common
						if r == 1 {
							call = mc.odd
						}
						start := time.Now()
						err := call(ctx, r, c)
						outs[r] = outcome{err, time.Since(start)}
						return nil
					})
					desc := fmt.Sprintf("rank 1 disagrees (%s)", mc.name)
					first := make([]error, n)
					var failed []int
					for r := range n {
						o := outs[r]
						expectFault(t, desc, r, n, o, bound, -1, collective.ErrMismatch)
						if o.err == nil {
							continue
						}
						first[r] = o.err
						failed = append(failed, r)
						msg := strings.ToLower(o.err.Error())
						for _, w := range mc.words {
							if !strings.Contains(msg, strings.ToLower(w)) {
								t.Errorf("rank %d: %s: the error does not name %q; it must describe both ranks' calls: %v", r, desc, w, o.err)
							}
						}
					}
					checkUnusable(t, g, desc, failed, first, promptly)
				})
			}
		}
	}
}

// ---- goroutine leaks ----

// testLeaks forms groups, uses them (healthy, after a kill, after a
// timeout, after a mismatch), closes them, and checks that the number of
// goroutines returns to what it was.
func (s *suite) testLeaks(t *testing.T) {
	const n = 3
	scenarios := []struct {
		name string
		run  func(t *testing.T, g Group)
	}{
		{"healthy", func(t *testing.T, g Group) {
			checkAllReduce(t, g, collective.Float32, collective.Sum, 1009, false, 1)
			checkBroadcast(t, g, collective.Int32, 13, 2, false, 2)
			checkSendRecv(t, g, collective.Float64, 5, 3)
			// Async calls still queued when Close is called must finish
			// first; Close then returns nil.
			in := make([][]float64, n)
			recv := make([][]collective.Buffer, n)
			errs := onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
				in[r] = exactInputs(collective.Sum, 5, r, 4096)
				send := newBuffer(collective.Float32, in[r])
				var reqs []*collective.Request
				for range 3 {
					b := newBuffer(collective.Float32, filled(4096, poison))
					recv[r] = append(recv[r], b)
					reqs = append(reqs, c.AllReduceAsync(ctx, send, b, collective.Sum))
				}
				if err := c.Close(); err != nil {
					return fmt.Errorf("Close with async calls queued: %w", err)
				}
				for i, req := range reqs {
					select {
					case <-req.Done():
					default:
						return fmt.Errorf("async AllReduce %d is not done after Close returned", i)
					}
					if err := req.Wait(ctx); err != nil {
						return fmt.Errorf("async AllReduce %d queued before Close: %w", i, err)
					}
				}
				if err := c.Close(); err != nil {
					return fmt.Errorf("second Close: %w", err)
				}
				if err := c.AllReduce(ctx, f32s(4), f32s(4), collective.Sum); !errors.Is(err, collective.ErrClosed) {
					return fmt.Errorf("AllReduce after Close: got %v, want an error wrapping ErrClosed", err)
				}
				return nil
			})
			for r, err := range errs {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
			want := refReduce(collective.Float32, collective.Sum, in)
			for r := range n {
				for i, b := range recv[r] {
					checkValues(t, r, fmt.Sprintf("AllReduceAsync #%d finished by Close", i), "recv", b, want)
				}
			}
		}},
		{"after-kill", func(t *testing.T, g Group) {
			g.Kill(1)
			onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
				if r != 1 {
					c.AllReduce(ctx, f32s(1024), f32s(1024), collective.Sum)
				}
				return nil
			})
		}},
		{"after-timeout", func(t *testing.T, g Group) {
			onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
				if r != 2 {
					c.AllReduce(ctx, f32s(1024), f32s(1024), collective.Sum)
				}
				return nil
			})
		}},
		{"after-mismatch", func(t *testing.T, g Group) {
			onAll(t, g, func(ctx context.Context, r int, c collective.Comm) error {
				if r == 1 {
					return c.Barrier(ctx)
				}
				return c.AllReduce(ctx, f32s(1024), f32s(1024), collective.Sum)
			})
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			t.Run("use", func(t *testing.T) {
				sc.run(t, s.f(t, n, faultConfig(time.Second)))
			})
			// The group was closed by the cleanup of "use".
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if now := runtime.NumGoroutine(); now > before {
				t.Errorf("%d goroutines before forming the group, %d five seconds after closing it\n%s", before, now, goroutineDump())
			}
		})
	}
}

// ---- helpers for factories ----

// Form builds a group from connected transports, one per rank, calling
// collective.New for every rank at once (forming a group may need every
// rank's participation). It registers a cleanup that closes every Comm
// (and the transport of any rank whose Comm could not be formed), and
// fails t if a rank cannot form its Comm. kill becomes the Group's Kill.
func Form(t testing.TB, cfg collective.Config, trs []transport.Transport, kill func(rank int)) Group {
	t.Helper()
	n := len(trs)
	comms := make([]collective.Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, tr := range trs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			comms[r], errs[r] = collective.New(tr, cfg)
		}()
	}
	waitOrFatal(t, &wg, callTimeout, func() string { return fmt.Sprintf("collective.New did not return within %v", callTimeout) })
	t.Cleanup(func() {
		// A Comm closes its transport; close those of ranks that have none.
		orphans := make([]transport.Transport, n)
		for r, c := range comms {
			if c == nil {
				orphans[r] = trs[r]
			}
		}
		CloseAll(t, comms, orphans)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: collective.New: %v", r, err)
		}
	}
	return Group{Comms: comms, Kill: kill}
}

// CloseAll closes every non-nil Comm, then every non-nil transport, all
// ranks at once, and fails t if any Close does not return within ten
// seconds. It ignores their errors: the group may have failed on purpose.
func CloseAll(t testing.TB, comms []collective.Comm, trs []transport.Transport) {
	t.Helper()
	var wg sync.WaitGroup
	pending := make([]atomic.Bool, len(comms)+len(trs))
	for r, c := range comms {
		if c != nil {
			wg.Add(1)
			pending[r].Store(true)
			go func() { defer wg.Done(); c.Close(); pending[r].Store(false) }()
		}
	}
	const limit = 10 * time.Second
	stuck := func(what string, off, n int) func() string {
		return func() string {
			var rs []int
			for r := range n {
				if pending[off+r].Load() {
					rs = append(rs, r)
				}
			}
			return fmt.Sprintf("%s Close of ranks %v did not return within %v", what, rs, limit)
		}
	}
	waitOrFatal(t, &wg, limit, stuck("Comm", 0, len(comms)))
	for r, tr := range trs {
		if tr != nil {
			wg.Add(1)
			pending[len(comms)+r].Store(true)
			go func() { defer wg.Done(); tr.Close(); pending[len(comms)+r].Store(false) }()
		}
	}
	waitOrFatal(t, &wg, limit, stuck("transport", len(comms), len(trs)))
}
