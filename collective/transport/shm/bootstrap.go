package shm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"golang.org/x/sys/unix"
)

const bootstrapVersion = 1

type registration struct {
	V         int    `json:"v"`
	Rank      int    `json:"rank"`
	Size      int    `json:"size"`
	Host      string `json:"host"`  // hostname, for messages
	Boot      string `json:"boot"`  // the kernel's boot id: same host, same kernel
	NetNS     string `json:"netns"` // network namespace: abstract sockets are per namespace
	PID       int    `json:"pid"`
	Sock      string `json:"sock"` // abstract unix socket name, without the leading NUL
	SlotBytes int    `json:"slot_bytes"`
	Slots     int    `json:"slots"`
}

type table struct {
	V         int      `json:"v"`
	Error     string   `json:"error,omitempty"`
	Nonce     uint64   `json:"nonce"`
	Socks     []string `json:"socks"`
	PIDs      []int    `json:"pids"`
	Host      string   `json:"host"`
	SlotBytes int      `json:"slot_bytes"`
	Slots     int      `json:"slots"`
}

// identity says where this process runs: hostname, boot id and network
// namespace.
type identity struct{ host, boot, netns string }

func hostIdentity(override string) identity {
	id := identity{}
	id.host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		id.boot = strings.TrimSpace(string(b))
	} else {
		id.boot = "host:" + id.host
	}
	id.netns, _ = os.Readlink("/proc/self/ns/net")
	if override != "" {
		id.host, id.boot = override, override
	}
	return id
}

// serveRendezvous runs on rank 0: it collects one registration per rank,
// checks that every rank runs on rank 0's host and network namespace, and
// answers all of them with the table.
func serveRendezvous(ctx context.Context, ln net.Listener, size int, token auth.Token) error {
	type client struct {
		conn net.Conn
		reg  registration
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var mu sync.Mutex
	clients := make([]*client, size)
	var all []net.Conn
	// Only registered ranks (which passed the token handshake) hear the
	// answer.
	reply := func(t table, extra *client) {
		b, _ := json.Marshal(t)
		for _, c := range append(slices.Clone(clients), extra) {
			if c != nil {
				c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.conn.Write(append(b, '\n'))
			}
		}
	}
	var c *client // the registration being looked at
	fail := func(format string, a ...any) error {
		err := fmt.Errorf(format, a...)
		reply(table{V: bootstrapVersion, Error: err.Error()}, c)
		return err
	}
	// The listener is read by one goroutine and each connection by one of
	// its own, so that a stray connection that never speaks cannot hold up
	// the real ranks. All of them are gone when this returns.
	regs := make(chan *client)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		close(done)
		mu.Lock()
		for _, c := range all {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if auth.Accept(conn, token, time.Now().Add(10*time.Second)) != nil {
					conn.Close() // without the token it learns nothing and changes nothing
					return
				}
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(conn).ReadBytes('\n')
				var reg registration
				if err != nil || json.Unmarshal(line, &reg) != nil || reg.V != bootstrapVersion {
					conn.Close() // not one of ours, or gave up
					return
				}
				conn.SetReadDeadline(time.Time{})
				select {
				case regs <- &client{conn, reg}:
				case <-done:
				}
			}()
		}
	}()
	for got := 0; got < size; {
		select {
		case c = <-regs:
		case <-ctx.Done():
			ln.Close()
			return fmt.Errorf("rendezvous: %d of %d ranks registered before %w", got, size, context.Cause(ctx))
		}
		reg := c.reg
		switch {
		case reg.Size != size:
			return fail("rank %d (pid %d on %s) says the group has %d ranks, rank 0 says %d", reg.Rank, reg.PID, reg.Host, reg.Size, size)
		case reg.Rank < 0 || reg.Rank >= size:
			return fail("a process (pid %d on %s) registered as rank %d, outside 0..%d", reg.PID, reg.Host, reg.Rank, size-1)
		case clients[reg.Rank] != nil:
			return fail("rank %d registered twice: pid %d and pid %d", reg.Rank, clients[reg.Rank].reg.PID, reg.PID)
		}
		clients[reg.Rank] = c
		got++
	}
	ln.Close()
	c = nil
	r0 := clients[0].reg
	for r, c := range clients {
		switch {
		case c.reg.Boot != r0.Boot:
			return fail("rank %d runs on host %s and rank 0 on host %s: the shared-memory transport joins processes on one host only; use the tcp transport between hosts", r, c.reg.Host, r0.Host)
		case c.reg.NetNS != r0.NetNS:
			return fail("rank %d runs in network namespace %s and rank 0 in %s on host %s: the shared-memory transport needs every rank in one network namespace (one container) to reach its peers' abstract unix sockets; use the tcp transport", r, c.reg.NetNS, r0.NetNS, r0.Host)
		}
	}
	var nb [8]byte
	rand.Read(nb[:])
	t := table{V: bootstrapVersion, Nonce: binary.LittleEndian.Uint64(nb[:]), Socks: make([]string, size), PIDs: make([]int, size),
		Host: r0.Host, SlotBytes: r0.SlotBytes, Slots: r0.Slots}
	for r, c := range clients {
		t.Socks[r] = c.reg.Sock
		t.PIDs[r] = c.reg.PID
	}
	reply(t, nil)
	return nil
}

// listenAbstract opens this rank's abstract unix socket: a name in the
// kernel, never a file, gone when the socket closes.
func listenAbstract() (*net.UnixListener, string, error) {
	var b [12]byte
	rand.Read(b[:])
	name := fmt.Sprintf("ringo-shm-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: "@" + name, Net: "unix"})
	if err != nil {
		return nil, "", fmt.Errorf("listening on an abstract unix socket: %w", err)
	}
	return ln, name, nil
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Second)
}

// register dials the rendezvous (retrying until ctx ends, since rank 0 may
// start later) and returns the group's table.
func register(ctx context.Context, cfg Config, id identity, sock string) (table, error) {
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
			return table{}, fmt.Errorf("rank %d: cannot reach the rendezvous at %s: %v (is rank 0 running and the address right?)", cfg.Rank, cfg.Rendezvous, err)
		case <-time.After(delay):
		}
	}
	defer conn.Close()
	if err := auth.Dial(conn, cfg.Token, deadlineOf(ctx)); err != nil {
		return table{}, fmt.Errorf("rank %d: the rendezvous at %s refused this rank (a different job's token, or none?): %w", cfg.Rank, cfg.Rendezvous, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	reg := registration{V: bootstrapVersion, Rank: cfg.Rank, Size: cfg.Size, Host: id.host, Boot: id.boot, NetNS: id.netns,
		PID: os.Getpid(), Sock: sock, SlotBytes: cfg.SlotBytes, Slots: cfg.Slots}
	b, _ := json.Marshal(reg)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return table{}, fmt.Errorf("rank %d: registering at %s: %w", cfg.Rank, cfg.Rendezvous, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		} else if len(cfg.Token) == 0 {
			// Rank 0 drops a rank that fails its challenge without a word.
			return table{}, fmt.Errorf("rank %d: the rendezvous at %s refused this rank, which has no job token (is RINGO_TOKEN_FILE set?): %w", cfg.Rank, cfg.Rendezvous, err)
		}
		return table{}, fmt.Errorf("rank %d: waiting at the rendezvous %s for all %d ranks: %w", cfg.Rank, cfg.Rendezvous, cfg.Size, err)
	}
	var t table
	if err := json.Unmarshal(line, &t); err != nil {
		return table{}, fmt.Errorf("rank %d: bad answer from the rendezvous %s: %v", cfg.Rank, cfg.Rendezvous, err)
	}
	if t.Error != "" {
		return table{}, fmt.Errorf("rank %d: rendezvous refused the group: %s", cfg.Rank, t.Error)
	}
	if len(t.Socks) != cfg.Size || len(t.PIDs) != cfg.Size {
		return table{}, fmt.Errorf("rank %d: rendezvous answered a table of %d ranks, want %d", cfg.Rank, len(t.Socks), cfg.Size)
	}
	probe := cfg
	probe.SlotBytes, probe.Slots = t.SlotBytes, t.Slots
	if err := probe.Validate(); err != nil {
		return table{}, fmt.Errorf("rank %d: rank 0's ring shape: %w", cfg.Rank, err)
	}
	return t, nil
}

// The hello opens every connection between two ranks, after the token
// handshake: "RGSH", version u32, nonce u64, from u32, 4 bytes zero.
const helloSize = 24

var helloMagic = [4]byte{'R', 'G', 'S', 'H'}

func encodeHello(nonce uint64, from int) []byte {
	b := make([]byte, helloSize)
	copy(b, helloMagic[:])
	binary.LittleEndian.PutUint32(b[4:], bootstrapVersion)
	binary.LittleEndian.PutUint64(b[8:], nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(from))
	return b
}

// decodeHello parses a hello; it never panics.
func decodeHello(b []byte, nonce uint64) (from int, err error) {
	if len(b) != helloSize || [4]byte(b[:4]) != helloMagic || binary.LittleEndian.Uint32(b[4:]) != bootstrapVersion || binary.LittleEndian.Uint32(b[20:]) != 0 {
		return 0, errors.New("not a ringo shm hello")
	}
	if binary.LittleEndian.Uint64(b[8:]) != nonce {
		return 0, errors.New("hello from another group (stale process?)")
	}
	return int(int32(binary.LittleEndian.Uint32(b[16:]))), nil
}

// connectMesh dials every lower rank and accepts every higher one, one
// connection per pair; conns[p] is the connection to rank p. Each
// accepted connection is greeted on its own goroutine, so that a stray
// one that never speaks cannot hold up the real ranks.
func connectMesh(ctx context.Context, cfg Config, t table, ln *net.UnixListener) ([]*net.UnixConn, error) {
	n := cfg.Size
	conns := make([]*net.UnixConn, n)
	var mu sync.Mutex
	var pending []*net.UnixConn // accepted, not (yet) a peer's
	finished := false
	put := func(p int, c *net.UnixConn) bool {
		mu.Lock()
		defer mu.Unlock()
		if finished || p < 0 || p >= n || p == cfg.Rank || conns[p] != nil {
			return false
		}
		conns[p] = c
		return true
	}
	var wg sync.WaitGroup
	arrived := make(chan struct{}, n)
	wg.Add(1)
	go func() { // accept from higher ranks until the listener closes
		defer wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			mu.Lock()
			pending = append(pending, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if auth.Accept(c, cfg.Token, time.Now().Add(10*time.Second)) != nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, helloSize)
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
				from, err := decodeHello(b, t.Nonce)
				if err != nil || from <= cfg.Rank {
					return
				}
				c.SetReadDeadline(time.Time{})
				if put(from, c) {
					arrived <- struct{}{}
				}
			}()
		}
	}()
	dialed := make(chan error, 1)
	wg.Add(1)
	go func() { // dial lower ranks
		defer wg.Done()
		var d net.Dialer
		for p := 0; p < cfg.Rank; p++ {
			c, err := d.DialContext(ctx, "unix", "@"+t.Socks[p])
			if err != nil {
				dialed <- fmt.Errorf("rank %d: connecting to rank %d (pid %d) at @%s: %v (every rank must run on one host, in one network namespace)", cfg.Rank, p, t.PIDs[p], t.Socks[p], err)
				return
			}
			uc := c.(*net.UnixConn)
			if err := auth.Dial(uc, cfg.Token, deadlineOf(ctx)); err != nil {
				uc.Close()
				dialed <- fmt.Errorf("rank %d: rank %d (pid %d) refused this rank's token: %v", cfg.Rank, p, t.PIDs[p], err)
				return
			}
			if _, err := uc.Write(encodeHello(t.Nonce, cfg.Rank)); err != nil {
				uc.Close()
				dialed <- fmt.Errorf("rank %d: greeting rank %d (pid %d): %v", cfg.Rank, p, t.PIDs[p], err)
				return
			}
			put(p, uc)
		}
		dialed <- nil
	}()
	var err error
	want, got, dialDone := n-1-cfg.Rank, 0, false
	for err == nil && (got < want || !dialDone) {
		select {
		case <-arrived:
			got++
		case err = <-dialed:
			dialDone = true
		case <-ctx.Done():
			err = fmt.Errorf("rank %d: %d of %d higher ranks connected before %w", cfg.Rank, got, want, context.Cause(ctx))
		}
	}
	ln.Close()
	mu.Lock()
	finished = true
	for _, c := range pending {
		if !slices.Contains(conns, c) || err != nil {
			c.Close() // a stray connection, or a failed mesh
		}
	}
	mu.Unlock()
	wg.Wait()
	if err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return conns, nil
}

// The offer hands a peer the ring it will produce into and the two
// eventfds that wake the offering rank: a 32-byte message, "RGSO",
// version u32, nonce u64, from u32, slot bytes u32, slots u32, 4 bytes
// zero, with three descriptors attached (SCM_RIGHTS): the segment, the
// "data for me" eventfd and the "room for me" eventfd.
const offerSize = 32

var offerMagic = [4]byte{'R', 'G', 'S', 'O'}

type offer struct {
	nonce            uint64
	from             int
	slotBytes, slots int
}

func (o offer) encode() []byte {
	b := make([]byte, offerSize)
	copy(b, offerMagic[:])
	binary.LittleEndian.PutUint32(b[4:], bootstrapVersion)
	binary.LittleEndian.PutUint64(b[8:], o.nonce)
	binary.LittleEndian.PutUint32(b[16:], uint32(o.from))
	binary.LittleEndian.PutUint32(b[20:], uint32(o.slotBytes))
	binary.LittleEndian.PutUint32(b[24:], uint32(o.slots))
	return b
}

// decodeOffer parses an offer; it never panics.
func decodeOffer(b []byte) (offer, error) {
	if len(b) != offerSize || [4]byte(b[:4]) != offerMagic || binary.LittleEndian.Uint32(b[28:]) != 0 {
		return offer{}, errors.New("not a ringo shm offer")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != bootstrapVersion {
		return offer{}, fmt.Errorf("offer version %d, this build speaks %d: run the same ringo on every rank", v, bootstrapVersion)
	}
	return offer{
		nonce:     binary.LittleEndian.Uint64(b[8:]),
		from:      int(int32(binary.LittleEndian.Uint32(b[16:]))),
		slotBytes: int(binary.LittleEndian.Uint32(b[20:])),
		slots:     int(binary.LittleEndian.Uint32(b[24:])),
	}, nil
}

// link is what two ranks set up between them: the ring each consumes, the
// ring each produces into, and the eventfds.
type link struct {
	in, out   *ring
	myData    *evfd // I sleep on it waiting for data in `in`
	mySpace   *evfd // I sleep on it waiting for room in `out`
	peerData  *evfd // I write it after publishing into `out`
	peerSpace *evfd // I write it after releasing slots of `in`
}

func (l *link) close() {
	l.in.unmap()
	l.out.unmap()
	l.myData.close()
	l.mySpace.close()
	l.peerData.close()
	l.peerSpace.close()
}

// exchange sets up the link with peer p over c: each side makes the ring
// it will consume and its two eventfds, and passes them over; both write
// first and read after, so neither waits on the other.
func exchange(c *net.UnixConn, me, p int, t table, deadline time.Time) (l *link, err error) {
	l = &link{}
	fds := []int{-1, -1, -1}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		if err != nil {
			l.close()
			l = nil
		}
	}()
	l.in, fds[0], err = newSegment(t.SlotBytes, t.Slots, p, me)
	if err != nil {
		return nil, err
	}
	for i := 1; i <= 2; i++ {
		if fds[i], err = newEventfd(); err != nil {
			return nil, err
		}
	}
	// The files keep their own descriptors; fds[1:] are duplicates for
	// passing.
	d1, err := unix.FcntlInt(uintptr(fds[1]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup eventfd: %w", err)
	}
	l.myData = fileEventfd(d1, fmt.Sprintf("shm-data-from-%d", p))
	d2, err := unix.FcntlInt(uintptr(fds[2]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup eventfd: %w", err)
	}
	l.mySpace = fileEventfd(d2, fmt.Sprintf("shm-room-to-%d", p))

	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	o := offer{nonce: t.Nonce, from: me, slotBytes: t.SlotBytes, slots: t.Slots}
	if _, _, err := c.WriteMsgUnix(o.encode(), unix.UnixRights(fds...), nil); err != nil {
		return nil, fmt.Errorf("passing rank %d its ring: %w", p, err)
	}
	got, rights, err := readOffer(c)
	if err != nil {
		return nil, fmt.Errorf("receiving rank %d's ring: %w", p, err)
	}
	// From here on the received descriptors are ours to close.
	closeRights := func() {
		for _, fd := range rights {
			unix.Close(fd)
		}
	}
	switch {
	case len(rights) != 3:
		closeRights()
		return nil, fmt.Errorf("rank %d passed %d descriptors, want 3", p, len(rights))
	case got.nonce != t.Nonce || got.from != p:
		closeRights()
		return nil, fmt.Errorf("offer from rank %d of another group (nonce or rank wrong)", got.from)
	case got.slotBytes != t.SlotBytes || got.slots != t.Slots:
		closeRights()
		return nil, fmt.Errorf("rank %d offers rings of %d slots of %d bytes, the group agreed on %d of %d", p, got.slots, got.slotBytes, t.Slots, t.SlotBytes)
	}
	l.out, err = mapSegment(rights[0], t.SlotBytes, t.Slots)
	unix.Close(rights[0])
	if err != nil {
		unix.Close(rights[1])
		unix.Close(rights[2])
		return nil, fmt.Errorf("rank %d's ring: %w", p, err)
	}
	l.peerData = fileEventfd(rights[1], fmt.Sprintf("shm-data-to-%d", p))
	l.peerSpace = fileEventfd(rights[2], fmt.Sprintf("shm-room-from-%d", p))
	if err := l.out.check(me, p); err != nil {
		return nil, fmt.Errorf("rank %d's ring: %w", p, err)
	}
	return l, nil
}

// readOffer reads one offer and the descriptors that came with it.
func readOffer(c *net.UnixConn) (offer, []int, error) {
	b := make([]byte, offerSize)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var rights []int
	for n := 0; n < offerSize; {
		k, oobn, flags, _, err := c.ReadMsgUnix(b[n:], oob)
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			if perr == nil {
				for _, m := range msgs {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						rights = append(rights, fds...)
					}
				}
			}
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = errors.New("too many descriptors attached")
		}
		if err == nil && k == 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			for _, fd := range rights {
				unix.Close(fd)
			}
			return offer{}, nil, err
		}
		n += k
	}
	o, err := decodeOffer(b)
	if err != nil {
		for _, fd := range rights {
			unix.Close(fd)
		}
		return offer{}, nil, err
	}
	return o, rights, nil
}
