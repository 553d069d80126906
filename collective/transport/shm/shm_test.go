package shm_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/proctest"
)

// joinAll forms a group of n ranks, each joining from its own goroutine.
func joinAll(t testing.TB, n int, tune func(r int, c *shm.Config)) ([]*shm.Transport, []error) {
	return joinWithin(t, n, 20*time.Second, tune)
}

func joinWithin(t testing.TB, n int, timeout time.Duration, tune func(r int, c *shm.Config)) ([]*shm.Transport, []error) {
	t.Helper()
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tts := make([]*shm.Transport, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := shm.DefaultConfig()
			c.Yield = shm.YieldFor(n)
			if tune != nil {
				tune(r, &c)
			}
			c.Rendezvous, c.Rank, c.Size = addr, r, n
			tts[r], errs[r] = shm.Join(ctx, c)
		}()
	}
	wg.Wait()
	return tts, errs
}

// group forms a group of n ranks over shared memory and wraps it for the
// conformance suite; Kill drops a rank's sockets and rings without a
// goodbye, as a crashed process would.
func group(t testing.TB, n int, cfg collective.Config, tune func(c *shm.Config)) collectivetest.Group {
	t.Helper()
	tts, errs := joinAll(t, n, func(_ int, c *shm.Config) {
		if tune != nil {
			tune(c)
		}
	})
	for r, err := range errs {
		if err != nil {
			for _, tt := range tts {
				if tt != nil {
					tt.Close()
				}
			}
			t.Fatalf("rank %d: shm.Join(size %d): %v", r, n, err)
		}
	}
	trs := make([]transport.Transport, n)
	for r, tt := range tts {
		trs[r] = tt
	}
	return collectivetest.Form(t, cfg, trs, func(r int) { tts[r].Kill() })
}

// smallRings are the smallest rings allowed (64 slots of 4 KiB): every
// message over 252 KiB streams through the ring while it is being read,
// and slots wrap around many times in every test.
func smallRings(c *shm.Config) { c.SlotBytes, c.Slots = 4<<10, 64 }

func TestConformance(t *testing.T) {
	collectivetest.RunQuick(t, func(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
		return group(t, n, cfg, smallRings)
	})
}

// The default ring shape, with the whole op matrix on 2 and 4 ranks.
func TestConformanceDefaultRings(t *testing.T) {
	if testing.Short() {
		t.Skip("the small-ring suite covers the same paths")
	}
	collectivetest.RunOptions(t, func(t testing.TB, n int, cfg collective.Config) collectivetest.Group {
		return group(t, n, cfg, nil)
	}, collectivetest.Options{Worlds: []int{2, 4}, Quick: true})
}

func TestConfigValidate(t *testing.T) {
	ok := shm.DefaultConfig()
	ok.Rendezvous, ok.Rank, ok.Size = "127.0.0.1:1", 1, 2
	if err := ok.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(c *shm.Config)
		want string
	}{
		{"size", func(c *shm.Config) { c.Size = 0 }, "group size"},
		{"rank", func(c *shm.Config) { c.Rank = 2 }, "outside"},
		{"slot", func(c *shm.Config) { c.SlotBytes = 1000 }, "SlotBytes"},
		{"slots", func(c *shm.Config) { c.Slots = 2 }, "Slots"},
		{"ring too small", func(c *shm.Config) { c.SlotBytes, c.Slots = 4096, 8 }, "must hold"},
		{"rendezvous", func(c *shm.Config) { c.Rendezvous = "" }, "rendezvous"},
		{"spin", func(c *shm.Config) { c.Spin = -1 }, "Spin"},
	} {
		c := ok
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(shm.EnvSpin, "7us")
	t.Setenv(shm.EnvSlotBytes, "8192")
	t.Setenv(shm.EnvSlots, "128")
	t.Setenv(shm.EnvLend, "0")
	c, err := shm.DefaultConfig().FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.Spin != 7*time.Microsecond || c.SlotBytes != 8192 || c.Slots != 128 || !c.NoLend {
		t.Fatalf("FromEnv: %+v", c)
	}
	t.Setenv(shm.EnvSpin, "soon")
	if _, err := shm.DefaultConfig().FromEnv(); err == nil {
		t.Fatal("a bad RINGO_SPIN was accepted")
	}
}

func closeAll(tts []*shm.Transport) {
	var wg sync.WaitGroup
	for _, tt := range tts {
		if tt != nil {
			wg.Add(1)
			go func() { defer wg.Done(); tt.Close() }()
		}
	}
	wg.Wait()
}

// Messages of every size around the slot and ring boundaries arrive
// intact and in order, with senders running ahead of the receiver.
func TestMessagesAcrossBoundaries(t *testing.T) {
	tts, errs := joinAll(t, 2, func(_ int, c *shm.Config) { smallRings(c) })
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	const slot, ring = 4 << 10, 256 << 10
	var sizes []int
	for _, base := range []int{0, slot - 64, slot, 2 * slot, ring - 64, ring, 3*ring + 17} {
		for d := -2; d <= 2; d++ {
			if base+d >= 0 {
				sizes = append(sizes, base+d)
			}
		}
	}
	sizes = append(sizes, 1, 7, 4096, 100_003, 5<<20)
	payload := func(i, n int) []byte {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*31 + j*7 + j>>9)
		}
		return b
	}
	deadline := time.Now().Add(20 * time.Second)
	errc := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			h := transport.Header{Kind: transport.KindData, Seq: uint64(i), Step: uint32(n)}
			if err := tts[0].Send(1, &h, payload(i, n), deadline); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, n := range sizes {
		var h transport.Header
		if err := tts[1].RecvHeader(0, &h, deadline); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if h.Seq != uint64(i) || h.Length != uint64(n) || h.From != 0 {
			t.Fatalf("message %d: header %+v, want seq %d length %d from 0", i, h, i, n)
		}
		got := make([]byte, n)
		if i%3 == 2 {
			// The zero-copy path sees the same bytes.
			if err := tts[1].RecvPayloadFunc(0, n, func(off int, part []byte) { copy(got[off:], part) }, deadline); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		} else if err := tts[1].RecvPayload(0, got, deadline); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, payload(i, n)) {
			t.Fatalf("message %d of %d bytes arrived corrupted", i, n)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// PeekHeader shows a message that has arrived without consuming it.
func TestPeek(t *testing.T) {
	tts, errs := joinAll(t, 2, nil)
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	var h transport.Header
	if tts[1].PeekHeader(0, &h) {
		t.Fatal("peeked a message nobody sent")
	}
	dl := time.Now().Add(5 * time.Second)
	for i := range 2 {
		if err := tts[0].Send(1, &transport.Header{Kind: transport.KindData, Seq: uint64(10 + i)}, []byte("abc"), dl); err != nil {
			t.Fatal(err)
		}
	}
	if !tts[1].PeekHeader(0, &h) || h.Seq != 10 {
		t.Fatalf("peek: %+v", h)
	}
	if err := tts[1].RecvHeader(0, &h, dl); err != nil || h.Seq != 10 {
		t.Fatalf("recv after peek: %v %+v", err, h)
	}
	// With the first header taken, peeking shows the second.
	if !tts[1].PeekHeader(0, &h) || h.Seq != 11 {
		t.Fatalf("peek past a pending message: %+v", h)
	}
}

// A receive from a rank that never sends times out with ErrTimeout naming
// it, and a send into a ring nobody drains does too.
func TestTimeouts(t *testing.T) {
	tts, errs := joinAll(t, 2, func(_ int, c *shm.Config) { smallRings(c) })
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	var h transport.Header
	start := time.Now()
	err := tts[1].RecvHeader(0, &h, time.Now().Add(200*time.Millisecond))
	var f *transport.Fault
	if !errors.As(err, &f) || !errors.Is(err, transport.ErrTimeout) || f.Peer != 0 {
		t.Fatalf("receive from a silent rank: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("the receive took %v to time out after 200ms", el)
	}
	err = tts[0].Send(1, &transport.Header{Kind: transport.KindData}, make([]byte, 1<<20), time.Now().Add(200*time.Millisecond))
	if !errors.As(err, &f) || !errors.Is(err, transport.ErrTimeout) || f.Peer != 1 || !strings.Contains(err.Error(), "stopped reading") {
		t.Fatalf("send into a full ring: %v", err)
	}
}

// A rank that closes while its peer waits for it fails that peer at once
// with ErrPeerLost naming it, not after the timeout.
func TestPeerClosesDuringCall(t *testing.T) {
	tts, errs := joinAll(t, 2, nil)
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		tts[0].Close()
	}()
	start := time.Now()
	var h transport.Header
	err := tts[1].RecvHeader(0, &h, time.Now().Add(10*time.Second))
	var f *transport.Fault
	if !errors.As(err, &f) || !errors.Is(err, transport.ErrPeerLost) || f.Peer != 0 {
		t.Fatalf("receive from a rank that closed: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %v to notice", el)
	}
}

func TestTokenRequired(t *testing.T) {
	tok := auth.NewToken()
	tts, errs := joinAll(t, 3, func(_ int, c *shm.Config) { c.Token = tok })
	closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d with the job's token: %v", r, err)
		}
	}
	tts, errs = joinWithin(t, 2, 2*time.Second, func(r int, c *shm.Config) {
		c.Token = tok
		if r == 1 {
			c.Token = auth.NewToken()
		}
	})
	closeAll(tts)
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "token") {
		t.Fatalf("rank 1 with another job's token: %v", errs[1])
	}
	if errs[0] == nil {
		t.Fatal("rank 0 formed a group with a rank that has another token")
	}
}

func TestGroupOfOne(t *testing.T) {
	c := shm.DefaultConfig()
	c.Size = 1
	tt, err := shm.Join(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	comm, err := collective.New(tt, collective.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	buf := []float32{1, 2, 3}
	if err := comm.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil || buf[2] != 3 {
		t.Fatalf("all-reduce on one rank: %v %v", err, buf)
	}
	if err := comm.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSteadyStateAllocatesNothing: once a shape has been seen, an
// all-reduce over shared memory allocates nothing in the process, small
// (inline) or large (two lanes, messages streaming through the rings).
func TestSteadyStateAllocatesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts are noisy under -short runs")
	}
	for _, bytes := range []int{4 << 10, 4 << 20} {
		cfg := collective.DefaultConfig()
		cfg.Timeout = 30 * time.Second
		comms := group(t, 2, cfg, nil).Comms
		b0, b1 := make([]float32, bytes/4), make([]float32, bytes/4)
		kick, errs := make(chan struct{}), make(chan error)
		go func() {
			for range kick {
				errs <- comms[1].AllReduce(context.Background(), collective.Float32s(b1), collective.Float32s(b1), collective.Sum)
			}
		}()
		run := func() {
			kick <- struct{}{}
			err := comms[0].AllReduce(context.Background(), collective.Float32s(b0), collective.Float32s(b0), collective.Sum)
			if err1 := <-errs; err == nil {
				err = err1
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			run()
		}
		allocs := testing.AllocsPerRun(20, run)
		close(kick)
		if allocs > 0 {
			t.Errorf("%d-byte all-reduce: %.1f allocations per call in steady state, want 0", bytes, allocs)
		}
	}
}

// An intruder without the token that connects to the rendezvous while the
// group forms learns nothing (not the nonce, not the ranks' sockets), and
// the group forms anyway.
func TestIntruderLearnsNothing(t *testing.T) {
	tok := auth.NewToken()
	addr := proctest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tts := make([]*shm.Transport, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r == 1 {
				time.Sleep(300 * time.Millisecond) // the intruder gets in first
			}
			c := shm.DefaultConfig()
			c.Rendezvous, c.Rank, c.Size, c.Token = addr, r, 2, tok
			tts[r], errs[r] = shm.Join(ctx, c)
		}()
	}
	var conn net.Conn
	for {
		var err error
		if conn, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn.Write(make([]byte, 32)) // a challenge, and then no proof
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got bytes.Buffer
	got.ReadFrom(conn)
	conn.Close()
	wg.Wait()
	defer closeAll(tts)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if bytes.Contains(got.Bytes(), []byte("nonce")) || bytes.Contains(got.Bytes(), []byte("ringo-shm")) {
		t.Fatalf("the intruder was sent the table: %q", got.Bytes())
	}
}
