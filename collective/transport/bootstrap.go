package transport

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

// BootstrapVersion numbers the rendezvous lines and the hello; every rank
// of a group must speak the same one.
const BootstrapVersion = 2

// maxBootstrapLine bounds a registration or an answer.
const maxBootstrapLine = 1 << 20

// CheckRank reports a group size below one or a rank outside it, for the
// Config of the transport called name.
func CheckRank(name string, rank, size int) error {
	switch {
	case size < 1:
		return fmt.Errorf("%s: group size %d must be at least 1", name, size)
	case rank < 0 || rank >= size:
		return fmt.Errorf("%s: rank %d is outside 0..%d", name, rank, size-1)
	}
	return nil
}

// Host says where a process runs. Two ranks can share memory when they
// run under one kernel (boot id) and in one network namespace (abstract
// unix sockets are per namespace): the same hostname proves neither.
type Host struct {
	Name  string `json:"name"` // hostname, for messages
	Boot  string `json:"boot"`
	NetNS string `json:"netns"`
	PID   int    `json:"pid"`
}

// LocalHost describes this process.
func LocalHost() Host {
	h := Host{PID: os.Getpid()}
	h.Name, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		h.Boot = strings.TrimSpace(string(b))
	} else {
		h.Boot = "host:" + h.Name
	}
	h.NetNS, _ = os.Readlink("/proc/self/ns/net")
	return h
}

// SameHost reports whether h and o can reach each other's shared memory.
func (h Host) SameHost(o Host) bool { return h.Boot == o.Boot && h.NetNS == o.NetNS }

func (h Host) String() string { return fmt.Sprintf("pid %d on %s", h.PID, h.Name) }

// Member is one rank as the table describes it: where it runs and what
// each transport it speaks needs its peers to know (a TCP address, an
// abstract socket name, a peer ID), by transport name.
type Member struct {
	Rank   int                        `json:"rank"`
	Host   Host                       `json:"host"`
	Offers map[string]json.RawMessage `json:"offers"`
}

// NewMember describes this process as rank, offering each transport of
// offers (any JSON-encodable value, by transport name).
func NewMember(rank int, offers map[string]any) Member {
	m := Member{Rank: rank, Host: LocalHost(), Offers: map[string]json.RawMessage{}}
	for name, o := range offers {
		b, err := json.Marshal(o)
		if err != nil {
			panic(fmt.Sprintf("transport: %s offer does not encode: %v", name, err)) // our own types
		}
		m.Offers[name] = b
	}
	return m
}

// Offer decodes what m offers for the transport name into v.
func (m Member) Offer(name string, v any) error {
	raw, ok := m.Offers[name]
	if !ok {
		return fmt.Errorf("rank %d (%s) offers no %s transport (is every rank running the same ringo?)", m.Rank, m.Host, name)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("rank %d (%s) sent an unreadable %s offer: %v", m.Rank, m.Host, name, err)
	}
	return nil
}

// Table is the group as rank 0 answered it: a nonce that every
// connection of this group carries in its hello (so that a stale process
// of another group is never mistaken for a peer), and one member per rank.
type Table struct {
	Nonce   uint64   `json:"nonce,omitempty"`
	Members []Member `json:"members,omitempty"`
}

// The two lines of the rendezvous, each one JSON object and a newline.
type registration struct {
	V    int `json:"v"`
	Size int `json:"size"`
	Member
}

type answer struct {
	V     int    `json:"v"`
	Error string `json:"error,omitempty"`
	Table
}

// Arrival is one registration that reached rank 0: what the rank said of
// itself, and the connection to answer it on.
type Arrival struct {
	Size   int
	Member Member
	// Where says where it came from, for messages.
	Where string
	Reply interface {
		io.Writer
		SetWriteDeadline(time.Time) error
	}
}

// GatherConfig tells GatherTable what to accept.
type GatherConfig struct {
	Size int
	// Self is rank 0's own member when it does not register over the
	// network (libp2p cannot dial itself); nil otherwise.
	Self *Member
	// Admit, if set, vets each arrival: one it refuses is answered alone,
	// with the error, and cannot spoil the group (an impostor racing a
	// pinned rank).
	Admit func(Arrival) error
	// Check, if set, vets the complete table: its error is every rank's.
	Check func(*Table) error
}

// GatherTable runs on rank 0: it takes registrations from arrivals until
// every rank has one, then answers every registered rank with the table.
// A registration that conflicts (another group size, a rank out of range
// or taken twice) or a table that Check refuses fails the whole group:
// every rank that registered hears why.
func GatherTable(ctx context.Context, cfg GatherConfig, arrivals <-chan Arrival) (*Table, error) {
	n := cfg.Size
	members := make([]*Arrival, n)
	if cfg.Self != nil {
		members[0] = &Arrival{Size: n, Member: *cfg.Self, Where: "this process"}
	}
	var heard []*Arrival
	send := func(to []*Arrival, a answer) {
		b, _ := json.Marshal(a)
		b = append(b, '\n')
		for _, c := range to {
			if c.Reply != nil {
				c.Reply.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.Reply.Write(b)
			}
		}
	}
	fail := func(format string, a ...any) (*Table, error) {
		err := fmt.Errorf(format, a...)
		send(heard, answer{V: BootstrapVersion, Error: err.Error()})
		return nil, err
	}
	got := 0
	if cfg.Self != nil {
		got = 1
	}
	for got < n {
		var a Arrival
		select {
		case a = <-arrivals:
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous: %d of %d ranks registered before %w", got, n, context.Cause(ctx))
		}
		if cfg.Admit != nil {
			if err := cfg.Admit(a); err != nil {
				send([]*Arrival{&a}, answer{V: BootstrapVersion, Error: err.Error()})
				continue
			}
		}
		heard = append(heard, &a)
		r := a.Member.Rank
		switch {
		case a.Size != n:
			return fail("rank %d (%s, from %s) says the group has %d ranks, rank 0 says %d", r, a.Member.Host, a.Where, a.Size, n)
		case r < 0 || r >= n:
			return fail("a process (%s, from %s) registered as rank %d, outside 0..%d", a.Member.Host, a.Where, r, n-1)
		case members[r] != nil:
			return fail("rank %d registered twice: %s (from %s) and %s (from %s)", r, members[r].Member.Host, members[r].Where, a.Member.Host, a.Where)
		}
		members[r] = &a
		got++
	}
	var nb [8]byte
	rand.Read(nb[:])
	t := &Table{Nonce: binary.LittleEndian.Uint64(nb[:]), Members: make([]Member, n)}
	for r, a := range members {
		t.Members[r] = a.Member
	}
	if cfg.Check != nil {
		if err := cfg.Check(t); err != nil {
			return fail("%v", err)
		}
	}
	send(heard, answer{V: BootstrapVersion, Table: *t})
	return t, nil
}

// ReadRegistration reads one registration line; ok is false for anything
// that is not one of ours (the caller drops the connection).
func ReadRegistration(r io.Reader) (size int, m Member, ok bool) {
	line, err := bufio.NewReader(io.LimitReader(r, maxBootstrapLine)).ReadBytes('\n')
	var reg registration
	if err != nil || json.Unmarshal(line, &reg) != nil || reg.V != BootstrapVersion {
		return 0, Member{}, false
	}
	return reg.Size, reg.Member, true
}

// Register sends self's registration over c, a connection to rank 0's
// rendezvous, and waits for the table; where names the rendezvous in
// messages.
func Register(ctx context.Context, c io.ReadWriter, size int, self Member, where string) (*Table, error) {
	b, _ := json.Marshal(registration{V: BootstrapVersion, Size: size, Member: self})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("rank %d: registering at %s: %w", self.Rank, where, err)
	}
	line, err := bufio.NewReader(io.LimitReader(c, maxBootstrapLine)).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("rank %d: waiting at the rendezvous %s for all %d ranks: %w", self.Rank, where, size, err)
	}
	var a answer
	if err := json.Unmarshal(line, &a); err != nil {
		return nil, fmt.Errorf("rank %d: bad answer from the rendezvous %s: %v", self.Rank, where, err)
	}
	switch {
	case a.Error != "":
		return nil, fmt.Errorf("rank %d: rendezvous refused the group: %s", self.Rank, a.Error)
	case a.V != BootstrapVersion:
		return nil, fmt.Errorf("rank %d: the rendezvous %s speaks bootstrap version %d, this rank %d: run the same ringo on every rank", self.Rank, where, a.V, BootstrapVersion)
	case len(a.Members) != size:
		return nil, fmt.Errorf("rank %d: the rendezvous %s answered a table of %d ranks for a group of %d", self.Rank, where, len(a.Members), size)
	}
	for r, m := range a.Members {
		if m.Rank != r {
			return nil, fmt.Errorf("rank %d: the rendezvous %s listed rank %d in place %d", self.Rank, where, m.Rank, r)
		}
	}
	return &a.Table, nil
}

// RendezvousConfig says how to meet the group over TCP, as the tcp and
// shm transports (and their mixture) do.
type RendezvousConfig struct {
	// Addr is rank 0's rendezvous address, host:port: rank 0 listens there.
	Addr       string
	Rank, Size int
	// Token, when set, opens every connection with the job's HMAC
	// challenge (internal/auth): without it a process learns nothing and
	// changes nothing.
	Token auth.Token
	// OnRefuse, if set, hears of each connection rank 0 turned away.
	OnRefuse func(remote string, why error)
	// Check, if set, vets the complete table on rank 0 (GatherConfig).
	Check func(*Table) error
}

// Rendezvous registers this rank at rank 0 (rank 0 also serves the
// rendezvous meanwhile) and returns the group's table. self makes this
// rank's member once the connection to rank 0 is up: its local address
// is the interface that reaches rank 0, which a TCP rank listens on.
func Rendezvous(ctx context.Context, cfg RendezvousConfig, self func(local net.Addr) (Member, error)) (*Table, error) {
	var served chan error
	if cfg.Rank == 0 {
		ln, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("rank 0: cannot listen on the rendezvous address %s: %w", cfg.Addr, err)
		}
		served = make(chan error, 1)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { served <- serve(sctx, ln, cfg) }()
	}
	t, err := dialRendezvous(ctx, cfg, self)
	if served != nil {
		if serr := <-served; serr != nil && err == nil {
			err = serr
		}
	}
	return t, err
}

// serve is rank 0's rendezvous on ln. The listener is read by one
// goroutine and each connection by one of its own, so that a stray
// connection that never speaks cannot hold up the real ranks; all of them
// are gone when it returns.
func serve(ctx context.Context, ln net.Listener, cfg RendezvousConfig) error {
	arrivals := make(chan Arrival)
	done := make(chan struct{})
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		close(done)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				if err := auth.Accept(c, cfg.Token, time.Now().Add(10*time.Second)); err != nil {
					if cfg.OnRefuse != nil {
						cfg.OnRefuse(c.RemoteAddr().String(), err)
					}
					c.Close()
					return
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				size, m, ok := ReadRegistration(c)
				if !ok {
					c.Close() // not one of ours, or gave up
					return
				}
				c.SetReadDeadline(time.Time{})
				select {
				case arrivals <- Arrival{Size: size, Member: m, Where: c.RemoteAddr().String(), Reply: c}:
				case <-done:
				}
			})
		}
	})
	_, err := GatherTable(ctx, GatherConfig{Size: cfg.Size, Check: cfg.Check}, arrivals)
	return err
}

// dialRendezvous reaches rank 0 (retrying until ctx ends, since rank 0
// may start later), passes the token challenge and registers.
func dialRendezvous(ctx context.Context, cfg RendezvousConfig, self func(net.Addr) (Member, error)) (*Table, error) {
	var conn net.Conn
	var d net.Dialer
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		var err error
		if conn, err = d.DialContext(ctx, "tcp", cfg.Addr); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rank %d: cannot reach the rendezvous at %s: %v (is rank 0 running and the address right?)", cfg.Rank, cfg.Addr, err)
		case <-time.After(delay):
		}
	}
	defer conn.Close()
	if err := auth.Dial(conn, cfg.Token, DeadlineOf(ctx)); err != nil {
		return nil, fmt.Errorf("rank %d: the rendezvous at %s refused this rank (a different job's token, or none?): %w", cfg.Rank, cfg.Addr, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	m, err := self(conn.LocalAddr())
	if err != nil {
		return nil, err
	}
	t, err := Register(ctx, conn, cfg.Size, m, cfg.Addr)
	if err != nil && len(cfg.Token) == 0 && ctx.Err() == nil && !strings.Contains(err.Error(), "refused the group") {
		// Rank 0 drops a rank that fails its challenge without a word.
		return nil, fmt.Errorf("rank %d: the rendezvous at %s refused this rank, which has no job token (is RINGO_TOKEN_FILE set?): %w", cfg.Rank, cfg.Addr, err)
	}
	return t, err
}

// DeadlineOf bounds a handshake by ctx's deadline, or 10 s without one.
func DeadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Second)
}

// Peers lists the ranks of t, other than rank, that keep returns true for.
func (t *Table) Peers(rank int, keep func(Member) bool) []int {
	var ps []int
	for r, m := range t.Members {
		if r != rank && (keep == nil || keep(m)) {
			ps = append(ps, r)
		}
	}
	return ps
}

// SameHostAsRankZero is a Check for transports that reach only ranks on
// one host.
func SameHostAsRankZero(what string) func(*Table) error {
	return func(t *Table) error {
		r0 := t.Members[0].Host
		for r, m := range t.Members {
			switch {
			case m.Host.Boot != r0.Boot:
				return fmt.Errorf("rank %d runs on host %s and rank 0 on host %s: the %s transport joins processes on one host only; use the tcp transport between hosts", r, m.Host.Name, r0.Name, what)
			case m.Host.NetNS != r0.NetNS:
				return fmt.Errorf("rank %d runs in network namespace %s and rank 0 in %s on host %s: the %s transport needs every rank in one network namespace (one container) to reach its peers' abstract unix sockets; use the tcp transport", r, m.Host.NetNS, r0.NetNS, r0.Name, what)
			}
		}
		return nil
	}
}
