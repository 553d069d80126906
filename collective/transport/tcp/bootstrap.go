package tcp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

type registration struct {
	V         int    `json:"v"`
	Rank      int    `json:"rank"`
	Size      int    `json:"size"`
	Addr      string `json:"addr"`
	Sockets   int    `json:"sockets"`
	StripeMin int    `json:"stripe_min"`
}

type table struct {
	V         int      `json:"v"`
	Error     string   `json:"error,omitempty"`
	Nonce     uint64   `json:"nonce"`
	Addrs     []string `json:"addrs"`
	Sockets   int      `json:"sockets"`
	StripeMin int      `json:"stripe_min"`
}

const bootstrapVersion = 1

// serveRendezvous runs on rank 0: it collects one registration per rank and
// answers all of them with the table. It returns when every rank has been
// answered, ctx ends, or registrations conflict.
func serveRendezvous(ctx context.Context, ln net.Listener, size int, token auth.Token, onRefuse func(string, error)) error {
	type client struct {
		conn net.Conn
		reg  registration
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	clients := make([]*client, size)
	var all []net.Conn
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()
	reply := func(t table) {
		for _, c := range all {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			b, _ := json.Marshal(t)
			c.Write(append(b, '\n'))
		}
	}
	fail := func(format string, a ...any) error {
		err := fmt.Errorf(format, a...)
		reply(table{V: bootstrapVersion, Error: err.Error()})
		return err
	}
	for got := 0; got < size; {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("rendezvous: %d of %d ranks registered before %w", got, size, context.Cause(ctx))
			}
			return fmt.Errorf("rendezvous: accept: %w", err)
		}
		all = append(all, conn)
		if err := auth.Accept(conn, token, time.Now().Add(10*time.Second)); err != nil {
			refused(onRefuse, conn, err)
			conn.Close()
			all = all[:len(all)-1]
			continue // without the token it learns nothing and changes nothing
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			conn.Close()
			all = all[:len(all)-1]
			continue // not one of ours, or gave up; keep waiting for real ranks
		}
		var reg registration
		if err := json.Unmarshal(line, &reg); err != nil || reg.V != bootstrapVersion {
			conn.Close()
			all = all[:len(all)-1]
			continue
		}
		switch {
		case reg.Size != size:
			return fail("rank %d (%s) says the group has %d ranks, rank 0 says %d", reg.Rank, conn.RemoteAddr(), reg.Size, size)
		case reg.Rank < 0 || reg.Rank >= size:
			return fail("a process at %s registered as rank %d, outside 0..%d", conn.RemoteAddr(), reg.Rank, size-1)
		case clients[reg.Rank] != nil:
			return fail("rank %d registered twice: from %s and from %s", reg.Rank, clients[reg.Rank].conn.RemoteAddr(), conn.RemoteAddr())
		}
		clients[reg.Rank] = &client{conn: conn, reg: reg}
		got++
	}
	var nb [8]byte
	rand.Read(nb[:])
	t := table{V: bootstrapVersion, Nonce: binary.LittleEndian.Uint64(nb[:]), Addrs: make([]string, size),
		Sockets: clients[0].reg.Sockets, StripeMin: clients[0].reg.StripeMin}
	for r, c := range clients {
		t.Addrs[r] = c.reg.Addr
	}
	reply(t)
	return nil
}

// register dials the rendezvous (retrying until ctx ends, since rank 0 may
// start later), opens this rank's data listener on the interface that
// reaches the rendezvous, and returns the group's table.
func register(ctx context.Context, cfg Config) (table, net.Listener, error) {
	var conn net.Conn
	var d net.Dialer
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		var err error
		conn, err = d.DialContext(ctx, "tcp", cfg.Rendezvous)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return table{}, nil, fmt.Errorf("rank %d: cannot reach the rendezvous at %s: %v (is rank 0 running and the address right?)", cfg.Rank, cfg.Rendezvous, err)
		case <-time.After(delay):
		}
	}
	defer conn.Close()
	if err := auth.Dial(conn, cfg.Token, deadlineOf(ctx)); err != nil {
		return table{}, nil, fmt.Errorf("rank %d: the rendezvous at %s refused this rank (a different job's token, or none?): %w", cfg.Rank, cfg.Rendezvous, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	host := cfg.ListenHost
	if host == "" {
		host = conn.LocalAddr().(*net.TCPAddr).IP.String()
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return table{}, nil, fmt.Errorf("rank %d: listening on %s: %w", cfg.Rank, host, err)
	}
	reg := registration{V: bootstrapVersion, Rank: cfg.Rank, Size: cfg.Size, Addr: ln.Addr().String(),
		Sockets: cfg.SocketsPerPeer, StripeMin: cfg.StripeMin}
	b, _ := json.Marshal(reg)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		ln.Close()
		return table{}, nil, fmt.Errorf("rank %d: registering at %s: %w", cfg.Rank, cfg.Rendezvous, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		ln.Close()
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		} else if len(cfg.Token) == 0 {
			// Rank 0 drops a rank that fails its challenge without a word.
			return table{}, nil, fmt.Errorf("rank %d: the rendezvous at %s refused this rank, which has no job token (is RINGO_TOKEN_FILE set?): %w", cfg.Rank, cfg.Rendezvous, err)
		}
		return table{}, nil, fmt.Errorf("rank %d: waiting at the rendezvous %s for all %d ranks: %w", cfg.Rank, cfg.Rendezvous, cfg.Size, err)
	}
	var t table
	if err := json.Unmarshal(line, &t); err != nil {
		ln.Close()
		return table{}, nil, fmt.Errorf("rank %d: bad answer from the rendezvous %s: %v", cfg.Rank, cfg.Rendezvous, err)
	}
	if t.Error != "" {
		ln.Close()
		return table{}, nil, fmt.Errorf("rank %d: rendezvous refused the group: %s", cfg.Rank, t.Error)
	}
	if len(t.Addrs) != cfg.Size || t.Sockets < 1 {
		ln.Close()
		return table{}, nil, fmt.Errorf("rank %d: rendezvous answered a table of %d ranks and %d sockets", cfg.Rank, len(t.Addrs), t.Sockets)
	}
	return t, ln, nil
}

// refused tells onRefuse, if set, about a connection that was turned away.
func refused(onRefuse func(string, error), c net.Conn, why error) {
	if onRefuse != nil {
		onRefuse(c.RemoteAddr().String(), why)
	}
}

// deadlineOf bounds a handshake by ctx's deadline, or 10 s without one.
func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Second)
}

const helloSize = 24

var helloMagic = [4]byte{'R', 'G', 'H', 'I'}

func writeHello(c net.Conn, nonce uint64, from, index int) error {
	var b [helloSize]byte
	copy(b[:], helloMagic[:])
	binary.LittleEndian.PutUint32(b[4:], bootstrapVersion)
	binary.LittleEndian.PutUint64(b[8:], nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(from))
	binary.LittleEndian.PutUint32(b[20:], uint32(index))
	_, err := c.Write(b[:])
	return err
}

func readHello(c net.Conn, nonce uint64) (from, index int, err error) {
	var b [helloSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, 0, err
	}
	if [4]byte(b[:4]) != helloMagic || binary.LittleEndian.Uint32(b[4:]) != bootstrapVersion {
		return 0, 0, errors.New("not a ringo hello")
	}
	if binary.LittleEndian.Uint64(b[8:]) != nonce {
		return 0, 0, errors.New("hello from another group (stale process?)")
	}
	return int(binary.LittleEndian.Uint32(b[16:])), int(binary.LittleEndian.Uint32(b[20:])), nil
}

// connectMesh dials every lower rank and accepts every higher one, K+1
// connections per pair; conns[p][i] is connection i to rank p.
func connectMesh(ctx context.Context, cfg Config, t table, ln net.Listener) ([][]*net.TCPConn, error) {
	n, k := cfg.Size, t.Sockets
	conns := make([][]*net.TCPConn, n)
	for p := range conns {
		if p != cfg.Rank {
			conns[p] = make([]*net.TCPConn, k+1)
		}
	}
	var mu sync.Mutex
	put := func(p, i int, c *net.TCPConn) error {
		mu.Lock()
		defer mu.Unlock()
		if p < 0 || p >= n || p == cfg.Rank || i < 0 || i > k || conns[p][i] != nil {
			return fmt.Errorf("unexpected connection %d from rank %d", i, p)
		}
		conns[p][i] = c
		return nil
	}
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cs := range conns {
			for _, c := range cs {
				if c != nil {
					c.Close()
				}
			}
		}
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	errc := make(chan error, 2)
	go func() { // accept from higher ranks
		want := (n - 1 - cfg.Rank) * (k + 1)
		for got := 0; got < want; {
			c, err := ln.Accept()
			if err != nil {
				errc <- fmt.Errorf("rank %d: waiting for %d connections from higher ranks (%d arrived): %v", cfg.Rank, want, got, err)
				return
			}
			tc := c.(*net.TCPConn)
			if err := auth.Accept(tc, cfg.Token, time.Now().Add(10*time.Second)); err != nil {
				refused(cfg.OnRefuse, tc, err)
				tc.Close()
				continue
			}
			tc.SetReadDeadline(time.Now().Add(10 * time.Second))
			from, idx, err := readHello(tc, t.Nonce)
			if err != nil || from <= cfg.Rank {
				tc.Close()
				continue
			}
			tc.SetReadDeadline(time.Time{})
			if err := put(from, idx, tc); err != nil {
				tc.Close()
				errc <- fmt.Errorf("rank %d: %v", cfg.Rank, err)
				return
			}
			got++
		}
		errc <- nil
	}()
	go func() { // dial lower ranks
		var d net.Dialer
		for p := 0; p < cfg.Rank; p++ {
			for i := 0; i <= k; i++ {
				c, err := d.DialContext(ctx, "tcp", t.Addrs[p])
				if err != nil {
					errc <- fmt.Errorf("rank %d: connecting to rank %d at %s: %v", cfg.Rank, p, t.Addrs[p], err)
					return
				}
				tc := c.(*net.TCPConn)
				if err := auth.Dial(tc, cfg.Token, deadlineOf(ctx)); err != nil {
					tc.Close()
					errc <- fmt.Errorf("rank %d: rank %d at %s refused this rank's token: %v", cfg.Rank, p, t.Addrs[p], err)
					return
				}
				if err := writeHello(tc, t.Nonce, cfg.Rank, i); err != nil {
					tc.Close()
					errc <- fmt.Errorf("rank %d: greeting rank %d at %s: %v", cfg.Rank, p, t.Addrs[p], err)
					return
				}
				put(p, i, tc)
			}
		}
		errc <- nil
	}()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
			ln.Close() // unblock the accepter
		}
	}
	ln.Close()
	if first != nil {
		closeAll()
		if ctx.Err() != nil {
			first = fmt.Errorf("%w (%v)", first, context.Cause(ctx))
		}
		return nil, first
	}
	return conns, nil
}
