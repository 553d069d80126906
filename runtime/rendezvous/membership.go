package rendezvous

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Node is one launcher's entry in a round: who it is, where others reach
// it, and what it brings.
type Node struct {
	// ID is unique per launcher process (host, pid and a random suffix).
	ID string `json:"id"`
	// Host is the address other nodes and workers reach this node at.
	Host string `json:"host"`
	// NProc is the number of workers this node runs (--nproc-per-node).
	NProc int `json:"nproc"`
	// Rank is the node rank the user asked for (--node-rank), or -1.
	Rank int `json:"rank"`
	// Ports this node reserved for the round, used if it becomes node 0:
	// MasterPort for PyTorch's store (MASTER_PORT), CollectivePort for
	// ringo's collective bootstrap, ProbePort for the topology probe.
	MasterPort     int `json:"master_port"`
	CollectivePort int `json:"collective_port"`
	// ProbePort is where node 0 gathers the launchers to measure the
	// links between nodes (ringo launch --topology probe).
	ProbePort int `json:"probe_port,omitempty"`
	// Join is the order of arrival, set by the store's counter.
	Join int64 `json:"join"`
}

// state is the round document kept under <prefix>/state and changed only
// by compare-and-swap, so every launcher sees the same history.
type state struct {
	V      int    `json:"v"`
	Gen    int    `json:"gen"`
	Closed bool   `json:"closed"`
	Nodes  []Node `json:"nodes"`
	// LastCall is the wall-clock time (unix ms) after which a round with
	// at least Min nodes closes without waiting for Max.
	LastCall int64 `json:"last_call,omitempty"`
	// Restarts counts failure restarts of the job so far; Failed is set
	// when the job has used up its restarts and must end.
	Restarts int    `json:"restarts"`
	Failed   string `json:"failed,omitempty"`
}

const stateVersion = 1

// Membership says how nodes join a job.
type Membership struct {
	// Prefix namespaces the job's keys, normally "ringo/<run-id>/".
	Prefix string
	// Min and Max bound the number of nodes (--nnodes MIN:MAX).
	Min, Max int
	// LastCall is how long a round with at least Min nodes waits for more
	// before it closes.
	LastCall time.Duration
	// Static rounds take node ranks from Node.Rank, which every node must
	// set, and never change membership.
	Static bool
}

// Validate reports the first field out of range.
func (m Membership) Validate() error {
	switch {
	case m.Min < 1:
		return fmt.Errorf("--nnodes: the minimum %d must be at least 1", m.Min)
	case m.Max < m.Min:
		return fmt.Errorf("--nnodes %d:%d: the minimum is larger than the maximum", m.Min, m.Max)
	case m.Static && m.Min != m.Max:
		return fmt.Errorf("--nnodes %d:%d: the static rendezvous needs a fixed number of nodes", m.Min, m.Max)
	case m.LastCall < 0:
		return fmt.Errorf("last-call timeout %v is negative", m.LastCall)
	}
	return nil
}

// Round is a closed generation of the job: the nodes in it, in rank order.
type Round struct {
	Gen      int
	Restarts int
	Nodes    []Node
	// NodeRank is this node's index in Nodes.
	NodeRank int
}

// World is the number of workers in the round.
func (r *Round) World() int {
	n := 0
	for _, nd := range r.Nodes {
		n += nd.NProc
	}
	return n
}

// FirstRank is the global rank of this node's local rank 0.
func (r *Round) FirstRank() int {
	n := 0
	for _, nd := range r.Nodes[:r.NodeRank] {
		n += nd.NProc
	}
	return n
}

// ErrJobFailed is returned by Join when the job has ended in failure.
var ErrJobFailed = errors.New("the job has failed")

func (m Membership) key(parts ...string) string {
	k := m.Prefix + parts[0]
	for _, p := range parts[1:] {
		k += "/" + p
	}
	return k
}

func (m Membership) read(ctx context.Context, s Store) (state, []byte, error) {
	raw, err := s.Get(ctx, m.key("state"))
	if errors.Is(err, ErrNotFound) {
		fresh, _ := json.Marshal(state{V: stateVersion, Gen: 1})
		cur, _, err := s.CompareAndSwap(ctx, m.key("state"), nil, fresh)
		if err != nil {
			return state{}, nil, err
		}
		raw = cur
	} else if err != nil {
		return state{}, nil, err
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil || st.V != stateVersion {
		return state{}, nil, fmt.Errorf("the rendezvous state at %q is not ringo's (version %d, %v); another job uses this --rdzv-id?", m.key("state"), st.V, err)
	}
	return st, raw, nil
}

// Join adds me to the job's open round and blocks until the round closes:
// when Max nodes have joined, or LastCall after Min have. A node that
// arrives while a round runs waits (and says so under
// <prefix>/<gen>/waiting, which the running nodes watch) for the next one.
// The error names what is wrong when nodes disagree.
func (m Membership) Join(ctx context.Context, s Store, me Node) (*Round, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if m.Static && me.Rank < 0 {
		return nil, errors.New("the static rendezvous needs --node-rank")
	}
	waitingFor := 0 // the generation we told we are waiting for
	for {
		st, raw, err := m.read(ctx, s)
		if err != nil {
			return nil, err
		}
		if st.Failed != "" {
			return nil, fmt.Errorf("%w: %s", ErrJobFailed, st.Failed)
		}
		i := slices.IndexFunc(st.Nodes, func(n Node) bool { return n.ID == me.ID })
		switch {
		case st.Closed && i >= 0:
			return m.round(st, me.ID), nil
		case st.Closed:
			if waitingFor != st.Gen {
				if _, err := s.Add(ctx, m.key(strconv.Itoa(st.Gen), "waiting"), 1); err != nil {
					return nil, err
				}
				waitingFor = st.Gen
			}
			if _, err := s.WaitChange(ctx, m.key("state"), raw); err != nil {
				return nil, m.waitErr(err, st)
			}
			continue
		case i < 0:
			if err := m.compatible(st, me); err != nil {
				return nil, err
			}
			n, err := s.Add(ctx, m.key("joins"), 1)
			if err != nil {
				return nil, err
			}
			me.Join = n
			st.Nodes = append(st.Nodes, me)
		}
		// The round is open and I am in it: close it if it is full, or
		// past its last call.
		now := time.Now().UnixMilli()
		changed := i < 0
		if len(st.Nodes) >= m.Min && st.LastCall == 0 {
			st.LastCall = now + m.LastCall.Milliseconds()
			changed = true
		}
		if len(st.Nodes) >= m.Max || (st.LastCall != 0 && now >= st.LastCall && len(st.Nodes) >= m.Min) {
			if err := m.order(st.Nodes); err != nil {
				return nil, err
			}
			st.Closed, changed = true, true
		}
		if changed {
			next, _ := json.Marshal(st)
			if _, ok, err := s.CompareAndSwap(ctx, m.key("state"), raw, next); err != nil {
				return nil, err
			} else if !ok {
				continue // someone else changed it first; look again
			}
			raw = next
		}
		if st.Closed {
			continue
		}
		// Wait for a change, or for the last call to pass.
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if st.LastCall != 0 {
			wctx, cancel = context.WithDeadline(ctx, time.UnixMilli(st.LastCall).Add(5*time.Millisecond))
		}
		_, err = s.WaitChange(wctx, m.key("state"), raw)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, m.waitErr(err, st)
		}
	}
}

func (m Membership) waitErr(err error, st state) error {
	return fmt.Errorf("waiting for nodes to join (%d of at least %d so far): %w", len(st.Nodes), m.Min, err)
}

// compatible refuses a node whose worker count differs from the job's.
func (m Membership) compatible(st state, me Node) error {
	for _, n := range st.Nodes {
		if n.NProc != me.NProc {
			return fmt.Errorf("this node (%s) has --nproc-per-node %d but node %s joined the job with %d; every node must run the same number of workers", me.Host, me.NProc, n.Host, n.NProc)
		}
		if m.Static && n.Rank == me.Rank {
			return fmt.Errorf("node rank %d is taken by %s; this node (%s) must use another --node-rank", me.Rank, n.Host, me.Host)
		}
	}
	return nil
}

// order sorts nodes into rank order: nodes that asked for a rank first,
// by that rank, then the others in order of arrival.
func (m Membership) order(nodes []Node) error {
	slices.SortStableFunc(nodes, func(a, b Node) int {
		ka, kb := int64(a.Rank), int64(b.Rank)
		if ka < 0 {
			ka = 1<<40 + a.Join
		}
		if kb < 0 {
			kb = 1<<40 + b.Join
		}
		return int(ka - kb)
	})
	if m.Static {
		for i, n := range nodes {
			if n.Rank != i {
				return fmt.Errorf("static rendezvous: node ranks must be 0..%d, got %d from %s", len(nodes)-1, n.Rank, n.Host)
			}
		}
	}
	return nil
}

func (m Membership) round(st state, id string) *Round {
	r := &Round{Gen: st.Gen, Restarts: st.Restarts, Nodes: st.Nodes}
	r.NodeRank = slices.IndexFunc(st.Nodes, func(n Node) bool { return n.ID == id })
	return r
}

// Waiting returns how many nodes wait to join after generation gen.
func (m Membership) Waiting(ctx context.Context, s Store, gen int) (int64, error) {
	v, err := s.Get(ctx, m.key(strconv.Itoa(gen), "waiting"))
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(v), 10, 64)
}

// End is why a generation stopped; the first one posted wins.
type End struct {
	// Kind is "failure" (a worker failed, hung or a node was lost),
	// "fatal" (no restart can help: the program cannot start),
	// "membership" (a node is waiting to join) or "success".
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	Node   string `json:"node"`
	// Cause classifies a failure for metrics: "exit", "signal", "hang",
	// "lost_node", "store", "start"; "membership" for a re-formation.
	Cause string `json:"cause,omitempty"`
}

// PostEnd records why generation gen ended, unless something already has;
// it returns the end that stands.
func (m Membership) PostEnd(ctx context.Context, s Store, gen int, e End) (End, error) {
	b, _ := json.Marshal(e)
	cur, _, err := s.CompareAndSwap(ctx, m.key(strconv.Itoa(gen), "end"), nil, b)
	if err != nil {
		return End{}, err
	}
	var won End
	if err := json.Unmarshal(cur, &won); err != nil {
		return End{}, fmt.Errorf("bad end record for generation %d: %v", gen, err)
	}
	return won, nil
}

// WaitEnd blocks until generation gen has an end record.
func (m Membership) WaitEnd(ctx context.Context, s Store, gen int) (End, error) {
	v, err := s.Wait(ctx, m.key(strconv.Itoa(gen), "end"))
	if err != nil {
		return End{}, err
	}
	var e End
	if err := json.Unmarshal(v[0], &e); err != nil {
		return End{}, fmt.Errorf("bad end record for generation %d: %v", gen, err)
	}
	return e, nil
}

// Next opens generation gen+1 after gen has ended. A failure counts
// against maxRestarts; when none are left the job is marked failed and
// every node's next Join returns ErrJobFailed. Only the first caller per
// generation changes anything.
func (m Membership) Next(ctx context.Context, s Store, gen int, e End, maxRestarts int) error {
	for {
		st, raw, err := m.read(ctx, s)
		if err != nil {
			return err
		}
		if st.Gen != gen || st.Failed != "" {
			return nil // someone moved on already
		}
		next := state{V: stateVersion, Gen: gen + 1, Restarts: st.Restarts}
		if e.Kind == "fatal" {
			next.Failed = e.Reason
		} else if e.Kind == "failure" {
			if st.Restarts >= maxRestarts {
				next.Failed = fmt.Sprintf("%s (restarts used: %d of %d)", e.Reason, st.Restarts, maxRestarts)
			}
			next.Restarts++
		}
		b, _ := json.Marshal(next)
		if _, ok, err := s.CompareAndSwap(ctx, m.key("state"), raw, b); err != nil || ok {
			return err
		}
	}
}

// Failure is a worker's failure as its node saw it, posted so that every
// node can print the same root cause.
type Failure struct {
	Time  time.Time `json:"time"`
	Node  string    `json:"node"`
	Host  string    `json:"host"`
	Rank  int       `json:"rank"`
	Local int       `json:"local_rank"`
	PID   int       `json:"pid"`
	Exit  string    `json:"exit"` // "exit code 3", "signal killed", "hung at step 41"
	Tail  []string  `json:"tail,omitempty"`
	Panic []string  `json:"panic,omitempty"` // a Go panic's message and first frames
	// Primary marks a failure that cannot be a reaction to another's: a
	// signal, a panic, a hang. Ranks that exit because a peer died come
	// after it in the report even when their exit was seen first.
	Primary  bool   `json:"primary,omitempty"`
	LogFile  string `json:"log_file,omitempty"`
	Attempt  int    `json:"attempt"`
	Restarts int    `json:"restarts"`
}

// PostFailure records a node's first failure in generation gen.
func (m Membership) PostFailure(ctx context.Context, s Store, gen int, nodeRank int, f Failure) error {
	b, _ := json.Marshal(f)
	return s.Set(ctx, m.key(strconv.Itoa(gen), "failure", strconv.Itoa(nodeRank)), b)
}

// Failures returns the failures posted for generation gen by nodes
// 0..nodes-1: primary failures first, then by time.
func (m Membership) Failures(ctx context.Context, s Store, gen, nodes int) ([]Failure, error) {
	var out []Failure
	for i := range nodes {
		v, err := s.Get(ctx, m.key(strconv.Itoa(gen), "failure", strconv.Itoa(i)))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var f Failure
		if json.Unmarshal(v, &f) == nil {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b Failure) int {
		if a.Primary != b.Primary {
			if a.Primary {
				return -1
			}
			return 1
		}
		return a.Time.Compare(b.Time)
	})
	return out, nil
}

// Alive bumps this node's liveness counter for generation gen.
func (m Membership) Alive(ctx context.Context, s Store, gen, nodeRank int) error {
	_, err := s.Add(ctx, m.key(strconv.Itoa(gen), "alive", strconv.Itoa(nodeRank)), 1)
	return err
}

// Liveness returns every node's liveness counter for generation gen.
func (m Membership) Liveness(ctx context.Context, s Store, gen, nodes int) ([]int64, error) {
	out := make([]int64, nodes)
	for i := range nodes {
		v, err := s.Get(ctx, m.key(strconv.Itoa(gen), "alive", strconv.Itoa(i)))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[i], _ = strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	}
	return out, nil
}

// Done marks this node's workers as finished in generation gen, and
// returns how many nodes have finished.
func (m Membership) Done(ctx context.Context, s Store, gen int) (int64, error) {
	return s.Add(ctx, m.key(strconv.Itoa(gen), "done"), 1)
}
