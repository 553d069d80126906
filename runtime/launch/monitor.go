package launch

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// quitWait is how long a hung Go worker gets to print its goroutine stacks
// after SIGQUIT before it is stopped.
const quitWait = 2 * time.Second

// generation runs one round on this node: start the workers, watch them,
// the store and the other nodes, and stop the workers when the round
// ends. It returns why the round ended; an error only when this node
// cannot go on at all.
func (a *agent) generation(ctx context.Context, r *rendezvous.Round) (rendezvous.End, error) {
	bg := context.WithoutCancel(ctx)
	a.p2p = nil
	var err error
	if a.cfg.Transport == "libp2p" {
		if a.p2p, err = a.prepareIdentities(ctx, r); err != nil {
			end := rendezvous.End{Kind: "failure", Cause: "start", Reason: fmt.Sprintf("node %s: libp2p identities: %v", a.cfg.Host, err), Node: a.me.ID}
			return a.m.PostEnd(bg, a.store, r.Gen, end)
		}
	}
	ws, err := a.startAll(r)
	if err != nil {
		// The program cannot start here, and would not on a restart:
		// end the job for every node.
		end := rendezvous.End{Kind: "fatal", Reason: fmt.Sprintf("node %s: %v", a.cfg.Host, err), Node: a.me.ID, Cause: "start"}
		a.m.PostEnd(bg, a.store, r.Gen, end)
		a.m.Next(bg, a.store, r.Gen, end, 0)
		return end, &ExitError{Code: 1, Msg: err.Error()}
	}
	pids := make([]int, len(ws))
	for i, w := range ws {
		pids[i] = w.pid
	}
	a.event(Event{Kind: "started", Gen: r.Gen, PIDs: pids})
	a.update(r, ws)

	// Remote ends arrive through the store.
	wctx, cancelWatch := context.WithCancel(bg)
	defer cancelWatch()
	remote := make(chan rendezvous.End, 1)
	go func() {
		e, err := a.m.WaitEnd(wctx, a.store, r.Gen)
		if err != nil {
			if wctx.Err() == nil {
				e = rendezvous.End{Kind: "failure", Cause: "store", Reason: fmt.Sprintf("lost the rendezvous store at %s: %v", a.cfg.Endpoint, err)}
			} else {
				return
			}
		}
		remote <- e
	}()
	exits := make(chan int, len(ws))
	for i, w := range ws {
		go func() { <-w.done; exits <- i }()
	}

	tick := time.NewTicker(a.cfg.MonitorInterval)
	defer tick.Stop()
	live := newLiveness(len(r.Nodes), r.NodeRank)
	running := len(ws)
	var end rendezvous.End
	post := func(e rendezvous.End) rendezvous.End {
		e.Node = a.me.ID
		won, err := a.m.PostEnd(bg, a.store, r.Gen, e)
		if err != nil {
			return rendezvous.End{Kind: "failure", Cause: "store", Reason: fmt.Sprintf("the rendezvous store at %s: %v", a.cfg.Endpoint, err)}
		}
		return won
	}
	fail := func(w *worker, how string, at time.Time, primary bool) rendezvous.End {
		f := rendezvous.Failure{Primary: primary, Time: at, Node: a.me.ID, Host: a.cfg.Host, Rank: w.rank, Local: w.local, PID: w.pid,
			Exit: how, Tail: w.stderrTail(), Panic: w.panicText(), LogFile: w.errFile, Attempt: a.attempt, Restarts: r.Restarts}
		a.m.PostFailure(bg, a.store, r.Gen, r.NodeRank, f)
		a.audit.Record("launch.worker_failed", map[string]any{"run_id": a.cfg.RunID, "generation": r.Gen, "rank": w.rank,
			"local_rank": w.local, "host": a.cfg.Host, "pid": w.pid, "exit": how})
		cause := "exit"
		switch {
		case strings.HasPrefix(how, "hung"):
			cause = "hang"
		case w.exit.signal != 0:
			cause = "signal"
		}
		return post(rendezvous.End{Kind: "failure", Cause: cause, Reason: fmt.Sprintf("rank %d (local rank %d, pid %d) on %s: %s", w.rank, w.local, w.pid, a.cfg.Host, how)})
	}
	doneWatch := make(chan int64, 1)
	for end.Kind == "" {
		select {
		case <-ctx.Done():
			sig := syscall.SIGTERM
			if s, ok := context.Cause(ctx).(Signaled); ok {
				sig = s.Sig
			}
			a.stopAll(ws, sig)
			return rendezvous.End{}, &ExitError{Code: 128 + int(sig), Msg: fmt.Sprintf("stopped by %v; workers were sent it too", sig)}
		case e := <-remote:
			end = e
		case i := <-exits:
			w := ws[i]
			if !w.exit.ok() {
				w = firstFailed(ws)
				end = fail(w, w.exit.String(), w.exit.at, primary(w))
				break
			}
			if running--; running == 0 {
				// Every local worker succeeded: wait for the other nodes.
				n, err := a.m.Done(bg, a.store, r.Gen)
				if err != nil {
					end = rendezvous.End{Kind: "failure", Cause: "store", Reason: err.Error()}
					break
				}
				go a.waitDone(wctx, r, n, doneWatch)
			}
		case n := <-doneWatch:
			if int(n) >= len(r.Nodes) {
				end = post(rendezvous.End{Kind: "success", Reason: "every worker exited 0"})
			}
		case <-tick.C:
			a.update(r, ws)
			if e, ok := a.check(bg, r, ws, live, fail); ok {
				end = e
			}
		}
	}
	cancelWatch()
	a.update(r, ws)
	if end.Kind != "success" {
		a.board.note("failure", "%s", end.Reason)
	}
	if end.Kind == "success" {
		a.stopAll(ws, syscall.SIGTERM) // reaps; all have exited already
		a.event(Event{Kind: "done", Gen: r.Gen})
		return end, nil
	}
	a.stopAll(ws, syscall.SIGTERM)
	a.event(Event{Kind: "stopped", Gen: r.Gen})
	return end, nil
}

// settleGrace is how long a failure waits for the other local workers'
// exits, so that the report blames the first to fail, not the first whose
// output finished draining.
const settleGrace = 100 * time.Millisecond

// firstFailed returns the local worker whose failure is the likeliest
// root cause: a primary failure (see primary) before the others, then the
// earliest exit; it waits for that worker's output to drain.
func firstFailed(ws []*worker) *worker {
	time.Sleep(settleGrace)
	pick := func() *worker {
		var first *worker
		var at time.Time
		var prim bool
		for _, w := range ws {
			st, ok := w.reapedStatus()
			if !ok || st.ok() {
				continue
			}
			<-w.done // its panic text, if any, has been read
			p := primary(w)
			if first == nil || (p && !prim) || (p == prim && st.at.Before(at)) {
				first, at, prim = w, st.at, p
			}
		}
		return first
	}
	first := pick()
	// A worker that failed because its group blamed another local rank
	// that is still on its way out (a Go panic runs deferred calls, then
	// prints, then exits) is not the root cause: give the blamed one a
	// moment to exit, then look again.
	if peer, ok := first.blamed(); ok && !primary(first) {
		for _, w := range ws {
			if w.rank == peer {
				select {
				case <-w.done:
				case <-time.After(blameWait):
				}
				first = pick()
			}
		}
	}
	return first
}

// blameWait bounds how long a report waits for the rank a failed worker
// blamed to exit.
const blameWait = 2 * time.Second

// primary says whether a worker's failure can be a root cause: it was
// killed by a signal, panicked, or failed without its collective group
// blaming another rank. A Go worker that exits because its group blamed a
// peer (runtime.Init tells the launcher whom, before the worker can exit)
// is a reaction, whenever its exit was seen.
func primary(w *worker) bool {
	if w.exit.signal != 0 || len(w.panicText()) > 0 {
		return true
	}
	peer, ok := w.blamed()
	return !ok || peer < 0 || peer == w.rank
}

// waitDone reports the count of finished nodes each time it changes,
// until all have finished or ctx ends.
func (a *agent) waitDone(ctx context.Context, r *rendezvous.Round, n int64, out chan<- int64) {
	key := a.m.Prefix + fmt.Sprint(r.Gen) + "/done"
	cur := []byte(fmt.Sprint(n))
	for int(n) < len(r.Nodes) {
		v, err := a.store.WaitChange(ctx, key, cur)
		if err != nil {
			return
		}
		cur = v
		fmt.Sscan(string(v), &n)
	}
	select {
	case out <- n:
	case <-ctx.Done():
	}
}

// check runs the periodic checks: this node's liveness, the other nodes',
// hung workers and nodes waiting to join.
func (a *agent) check(ctx context.Context, r *rendezvous.Round, ws []*worker, live *liveness,
	fail func(*worker, string, time.Time, bool) rendezvous.End) (rendezvous.End, bool) {
	now := time.Now()
	if len(r.Nodes) > 1 {
		a.m.Alive(ctx, a.store, r.Gen, r.NodeRank)
		if counts, err := a.m.Liveness(ctx, a.store, r.Gen, len(r.Nodes)); err == nil {
			if lost := live.update(counts, now, a.cfg.NodeTimeout); lost >= 0 {
				n := r.Nodes[lost]
				e, _ := a.m.PostEnd(ctx, a.store, r.Gen, rendezvous.End{Kind: "failure", Node: a.me.ID, Cause: "lost_node",
					Reason: fmt.Sprintf("node %d (%s) lost: its launcher has not checked in for %v", lost, n.Host, a.cfg.NodeTimeout)})
				return e, true
			}
		}
	}
	if a.cfg.HangTimeout > 0 {
		if e, ok := a.checkHang(now, ws, fail); ok {
			return e, true
		}
	}
	if len(r.Nodes) < a.cfg.Nodes.Max && !a.m.Static {
		if n, err := a.m.Waiting(ctx, a.store, r.Gen); err == nil && n > 0 {
			e, _ := a.m.PostEnd(ctx, a.store, r.Gen, rendezvous.End{Kind: "membership", Node: a.me.ID, Cause: "membership",
				Reason: fmt.Sprintf("%d node(s) waiting to join a job of %d (max %d)", n, len(r.Nodes), a.cfg.Nodes.Max)})
			return e, true
		}
	}
	return rendezvous.End{}, false
}

// checkHang looks for workers that heartbeat but have made no progress for
// the hang timeout. Workers waiting in a collective for a hung peer stop
// progressing too, so it reports every stalled worker, blames the one
// with the lowest step (earliest beat on a tie), and sends SIGQUIT to the
// Go ones so that all their goroutine stacks land in their logs.
func (a *agent) checkHang(now time.Time, ws []*worker, fail func(*worker, string, time.Time, bool) rendezvous.End) (rendezvous.End, bool) {
	type stall struct {
		w    *worker
		last time.Time
		step int64
		isGo bool
	}
	var beating []stall
	var over bool
	var top int64 // the highest step of a worker past the timeout
	for _, w := range ws {
		last, step, beat, isGo := w.progress()
		select {
		case <-w.done:
			continue // exited; the exit path reports it
		default:
		}
		if !beat {
			continue
		}
		beating = append(beating, stall{w, last, step, isGo})
		if now.Sub(last) >= a.cfg.HangTimeout {
			top, over = max(top, step), true
		}
	}
	if !over {
		return rendezvous.End{}, false
	}
	// A worker that has not passed the timed-out ones' step and has been
	// still for most of the timeout is stuck with them: its last beat may
	// have come a step time later, and it may be the one that hung.
	var stalled []stall
	for _, s := range beating {
		if s.step <= top && now.Sub(s.last) >= a.cfg.HangTimeout/2 {
			stalled = append(stalled, s)
		}
	}
	slices.SortFunc(stalled, func(x, y stall) int {
		if x.step != y.step {
			return cmp.Compare(x.step, y.step)
		}
		return x.last.Compare(y.last)
	})
	var names []string
	quit := false
	for _, s := range stalled {
		names = append(names, fmt.Sprintf("rank %d (pid %d) at step %d", s.w.rank, s.w.pid, s.step))
		if s.isGo {
			s.w.signal(syscall.SIGQUIT) // Go prints every goroutine's stack and exits
			quit = true
		}
	}
	first := stalled[0]
	how := fmt.Sprintf("hung: no progress for %v after step %d", now.Sub(first.last).Round(time.Millisecond), first.step)
	a.logf("rank %d (pid %d) %s; stalled: %s", first.w.rank, first.w.pid, how, strings.Join(names, ", "))
	if quit {
		deadline := time.After(quitWait)
		for _, s := range stalled {
			select {
			case <-s.w.done:
			case <-deadline:
			}
		}
	}
	return fail(first.w, how, first.last.Add(a.cfg.HangTimeout), true), true
}

// stopAll stops every worker of this node at once, each with its grace.
func (a *agent) stopAll(ws []*worker, sig syscall.Signal) {
	done := make(chan struct{}, len(ws))
	for _, w := range ws {
		go func() { w.stop(sig, a.cfg.StopGrace); done <- struct{}{} }()
	}
	for range ws {
		<-done
	}
}

// liveness tracks when each other node's counter last moved.
type liveness struct {
	self    int
	counts  []int64
	changed []time.Time
}

func newLiveness(n, self int) *liveness {
	l := &liveness{self: self, counts: make([]int64, n), changed: make([]time.Time, n)}
	now := time.Now()
	for i := range l.changed {
		l.changed[i] = now
	}
	return l
}

// update records counts and returns a node whose counter has not moved
// for timeout, or -1.
func (l *liveness) update(counts []int64, now time.Time, timeout time.Duration) int {
	for i, c := range counts {
		if c != l.counts[i] {
			l.counts[i], l.changed[i] = c, now
		}
		if i != l.self && now.Sub(l.changed[i]) > timeout {
			return i
		}
	}
	return -1
}

// rootCause formats the first failure, then the others by time.
func rootCause(fs []rendezvous.Failure) string {
	f := fs[0]
	var b strings.Builder
	fmt.Fprintf(&b, "ringo launch: root cause (first failure, at %s):\n", f.Time.Format("2006-01-02 15:04:05.000 MST"))
	fmt.Fprintf(&b, "  host:       %s\n", f.Host)
	fmt.Fprintf(&b, "  rank:       %d (local rank %d)\n", f.Rank, f.Local)
	fmt.Fprintf(&b, "  pid:        %d\n", f.PID)
	fmt.Fprintf(&b, "  exit:       %s\n", f.Exit)
	fmt.Fprintf(&b, "  restarts:   %d\n", f.Restarts)
	if f.LogFile != "" {
		fmt.Fprintf(&b, "  log:        %s\n", f.LogFile)
	}
	if len(f.Panic) > 0 {
		fmt.Fprintf(&b, "  it panicked:\n")
		for _, l := range f.Panic {
			fmt.Fprintf(&b, "    | %s\n", l)
		}
	}
	if len(f.Tail) > 0 {
		fmt.Fprintf(&b, "  last %d lines of its stderr:\n", len(f.Tail))
		for _, l := range f.Tail {
			fmt.Fprintf(&b, "    | %s\n", l)
		}
	} else {
		fmt.Fprintf(&b, "  (it wrote nothing to stderr)\n")
	}
	for _, o := range fs[1:] {
		fmt.Fprintf(&b, "  then: rank %d on %s: %s (+%v)\n", o.Rank, o.Host, o.Exit, o.Time.Sub(f.Time).Round(time.Millisecond))
	}
	return strings.TrimRight(b.String(), "\n")
}
