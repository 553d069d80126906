package topology

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A group of in-process ranks joined by real loopback TCP connections,
// one per pair: the shape the runtime's TCP transport has. Barrier and
// AllGather go through shared memory (hub), since the probe only needs
// them to be correct, not fast.

type hub struct {
	n   int
	mu  sync.Mutex
	cur *gathering
}

type gathering struct {
	vals  [][]float64
	count int
	done  chan struct{}
}

func (h *hub) allGather(ctx context.Context, rank int, mine []float64) ([][]float64, error) {
	h.mu.Lock()
	if h.cur == nil {
		h.cur = &gathering{vals: make([][]float64, h.n), done: make(chan struct{})}
	}
	g := h.cur
	g.vals[rank] = slices.Clone(mine)
	if g.count++; g.count == h.n {
		close(g.done)
		h.cur = nil
	}
	h.mu.Unlock()
	select {
	case <-g.done:
		out := make([][]float64, h.n)
		for i, v := range g.vals {
			out[i] = slices.Clone(v)
		}
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// span is one Send or Recv: who talked to whom, and when.
type span struct {
	rank, peer int
	start, end time.Time
}

type spanLog struct {
	mu    sync.Mutex
	spans []span
}

func (l *spanLog) add(s span) {
	l.mu.Lock()
	l.spans = append(l.spans, s)
	l.mu.Unlock()
}

type loopPeer struct {
	rank     int
	hub      *hub
	conns    []net.Conn // by peer; nil for self
	hosts    []string
	log      *spanLog
	failSend map[int]error // injected: Send to these peers fails
}

func (p *loopPeer) Rank() int       { return p.rank }
func (p *loopPeer) Size() int       { return p.hub.n }
func (p *loopPeer) Hosts() []string { return p.hosts }

func (p *loopPeer) Barrier(ctx context.Context) error {
	_, err := p.hub.allGather(ctx, p.rank, nil)
	return err
}

func (p *loopPeer) AllGather(ctx context.Context, mine []float64) ([][]float64, error) {
	return p.hub.allGather(ctx, p.rank, mine)
}

// conn returns the connection to peer with ctx's deadline applied, and a
// function that undoes the watch; cancelling ctx unblocks the call.
func (p *loopPeer) conn(ctx context.Context, peer int) (net.Conn, func(), error) {
	if peer < 0 || peer >= len(p.conns) || p.conns[peer] == nil {
		return nil, nil, fmt.Errorf("no connection to rank %d", peer)
	}
	c := p.conns[peer]
	d, _ := ctx.Deadline()
	c.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop() }, nil
}

// Send writes a length header and the message in one writev.
func (p *loopPeer) Send(ctx context.Context, peer int, buf []byte) error {
	defer p.record(peer, time.Now())
	if err := p.failSend[peer]; err != nil {
		return err
	}
	c, done, err := p.conn(ctx, peer)
	if err != nil {
		return err
	}
	defer done()
	hdr := binary.LittleEndian.AppendUint64(nil, uint64(len(buf)))
	bufs := net.Buffers{hdr, buf}
	_, err = bufs.WriteTo(c)
	return err
}

func (p *loopPeer) Recv(ctx context.Context, peer int, buf []byte) error {
	defer p.record(peer, time.Now())
	c, done, err := p.conn(ctx, peer)
	if err != nil {
		return err
	}
	defer done()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	if n := binary.LittleEndian.Uint64(hdr[:]); n != uint64(len(buf)) {
		return fmt.Errorf("rank %d sent %d bytes, rank %d expected %d", peer, n, p.rank, len(buf))
	}
	_, err = io.ReadFull(c, buf)
	return err
}

func (p *loopPeer) record(peer int, start time.Time) {
	if p.log != nil {
		p.log.add(span{p.rank, peer, start, time.Now()})
	}
}

// newLoopGroup connects n ranks pairwise over loopback TCP.
func newLoopGroup(t testing.TB, n int) []*loopPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h, log := &hub{n: n}, &spanLog{}
	peers := make([]*loopPeer, n)
	hosts := make([]string, n)
	for i := range n {
		hosts[i] = fmt.Sprintf("host%d", i)
	}
	for i := range n {
		peers[i] = &loopPeer{rank: i, hub: h, conns: make([]net.Conn, n), hosts: hosts, log: log}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			a, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			b, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			peers[i].conns[j], peers[j].conns[i] = a, b
			t.Cleanup(func() { a.Close(); b.Close() })
		}
	}
	return peers
}

type probeResult struct {
	m   *Matrix
	err error
}

// probeAll runs Probe on every rank at once and returns what each got.
func probeAll(ctx context.Context, peers []Peer, cfg ProbeConfig) []probeResult {
	res := make([]probeResult, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			m, err := Probe(ctx, p, cfg)
			res[i] = probeResult{m, err}
		})
	}
	wg.Wait()
	return res
}

func asPeers(ps []*loopPeer) []Peer {
	out := make([]Peer, len(ps))
	for i, p := range ps {
		out[i] = p
	}
	return out
}

// testProbeConfig is small enough for -race and still exercises warm-up.
func testProbeConfig() ProbeConfig {
	return ProbeConfig{MessageBytes: 256 << 10, Iterations: 4, Warmup: 1, LatencyBytes: 8, PingPongs: 10, PairTimeout: 20 * time.Second}
}

// checkContentionFree verifies, from what the peers did, that no rank was
// ever talking to two peers at once: any two calls that overlap in time
// are between the same two ranks or between four different ones. A sweep
// over start times keeps this linear in the number of calls.
func checkContentionFree(t *testing.T, log *spanLog) {
	t.Helper()
	spans := slices.Clone(log.spans)
	slices.SortFunc(spans, func(a, b span) int { return a.start.Compare(b.start) })
	var active []span
	for _, s := range spans {
		active = slices.DeleteFunc(active, func(a span) bool { return a.end.Before(s.start) })
		for _, a := range active {
			same := (a.rank == s.rank && a.peer == s.peer) || (a.rank == s.peer && a.peer == s.rank)
			disjoint := a.rank != s.rank && a.rank != s.peer && a.peer != s.rank && a.peer != s.peer
			if !same && !disjoint {
				t.Fatalf("rank %d<->%d overlaps rank %d<->%d in time: not contention-free", a.rank, a.peer, s.rank, s.peer)
			}
		}
		active = append(active, s)
	}
}

func TestProbe(t *testing.T) {
	for n := 1; n <= 6; n++ {
		t.Run(fmt.Sprint(n, "ranks"), func(t *testing.T) {
			peers := newLoopGroup(t, n)
			res := probeAll(t.Context(), asPeers(peers), testProbeConfig())
			for r, got := range res {
				if got.err != nil {
					t.Fatalf("rank %d: %v", r, got.err)
				}
				if !reflect.DeepEqual(got.m.Bandwidth, res[0].m.Bandwidth) || !reflect.DeepEqual(got.m.LatencyUS, res[0].m.LatencyUS) {
					t.Fatalf("rank %d assembled a different matrix from rank 0", r)
				}
			}
			m := res[0].m
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			if m.Hosts[n-1] != fmt.Sprintf("host%d", n-1) || len(m.Errors) != 0 || time.Since(m.Time) > time.Minute {
				t.Fatalf("hosts %q, errors %q, time %v", m.Hosts, m.Errors, m.Time)
			}
			met := map[[2]int]bool{}
			for _, s := range peers[0].log.spans {
				met[[2]int{min(s.rank, s.peer), max(s.rank, s.peer)}] = true
			}
			for i := range n {
				for j := range n {
					bw, lat := m.Bandwidth[i][j], m.LatencyUS[i][j]
					if i == j && (bw != 0 || lat != 0) {
						t.Errorf("diagonal [%d][%d] = %v, %v; want 0", i, j, bw, lat)
					}
					if i != j && (bw <= 0 || lat <= 0 || !met[[2]int{min(i, j), max(i, j)}]) {
						t.Errorf("pair %d->%d not measured: %v B/s, %v µs", i, j, bw, lat)
					}
				}
			}
			checkContentionFree(t, peers[0].log)

			// The result survives its file format.
			path := filepath.Join(t.TempDir(), "matrix.json")
			if err := WriteMatrix(path, m); err != nil {
				t.Fatal(err)
			}
			back, err := ReadMatrix(path)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Bandwidth, m.Bandwidth) || !back.Time.Equal(m.Time) {
				t.Fatal("matrix changed on its way through JSON")
			}
		})
	}
}

// A rank whose sends to rank 2 fail: the pair is reported by name on
// every rank, the rest of the matrix is measured, nobody hangs.
func TestProbeUnreachablePeer(t *testing.T) {
	const n = 4
	peers := newLoopGroup(t, n)
	down := errors.New("injected: link to rank 2 is down")
	peers[0].failSend = map[int]error{2: down}
	cfg := testProbeConfig()
	cfg.PairTimeout = 500 * time.Millisecond // rank 2 waits this long for rank 0
	res := probeAll(t.Context(), asPeers(peers), cfg)

	for r, got := range res {
		var pe *ProbeError
		if !errors.As(got.err, &pe) || got.m == nil {
			t.Fatalf("rank %d: got %v and matrix %v; want a *ProbeError and the matrix", r, got.err, got.m != nil)
		}
		if !reflect.DeepEqual(pe.Pairs, [][2]int{{0, 2}}) || len(got.m.Errors) != 1 {
			t.Fatalf("rank %d: unmeasured pairs %v, errors %q; want only 0-2", r, pe.Pairs, got.m.Errors)
		}
		if line := got.m.Errors[0]; !strings.Contains(line, "ranks 0 (host0) and 2 (host2)") || !strings.Contains(line, "timed out") {
			t.Errorf("rank %d: error line %q should name both ranks and say rank 2 timed out", r, line)
		}
		if !strings.Contains(got.err.Error(), "rank 2") || !strings.Contains(got.err.Error(), "rank 0") {
			t.Errorf("rank %d: error %q does not name rank 2", r, got.err)
		}
		m := got.m
		for i := range n {
			for j := range n {
				cut := (i == 0 && j == 2) || (i == 2 && j == 0)
				if bw := m.Bandwidth[i][j]; i != j && (bw == 0) != cut {
					t.Errorf("rank %d: bandwidth[%d][%d] = %v", r, i, j, bw)
				}
			}
		}
	}
	t.Logf("rank 0 gets: %v", res[0].err)
	t.Logf("rank 1 gets: %v", res[1].err)
	if !errors.Is(res[0].err, down) {
		t.Errorf("rank 0's error %q does not wrap the cause", res[0].err)
	}
	var pe *PairError
	if !errors.As(res[2].err, &pe) || pe.Peer != 0 || !errors.Is(pe, context.DeadlineExceeded) {
		t.Errorf("rank 2's error %v: want a PairError naming rank 0 that timed out", res[2].err)
	}
	checkContentionFree(t, peers[0].log)
}

// A real cut: the sockets between ranks 1 and 3 are closed.
func TestProbeClosedConnection(t *testing.T) {
	peers := newLoopGroup(t, 5)
	peers[1].conns[3].Close()
	peers[3].conns[1].Close()
	res := probeAll(t.Context(), asPeers(peers), testProbeConfig())
	for r, got := range res {
		var pe *ProbeError
		if !errors.As(got.err, &pe) || !reflect.DeepEqual(pe.Pairs, [][2]int{{1, 3}}) {
			t.Fatalf("rank %d: %v; want pair 1-3 reported", r, got.err)
		}
		if got.m.Bandwidth[1][3] != 0 || got.m.Bandwidth[0][4] <= 0 {
			t.Fatalf("rank %d: bandwidth %v", r, got.m.Bandwidth)
		}
	}
	if !errors.Is(res[1].err, net.ErrClosed) {
		t.Errorf("rank 1: %v; want it to wrap net.ErrClosed", res[1].err)
	}
}

func TestProbeCancel(t *testing.T) {
	peers := newLoopGroup(t, 3)
	cfg := testProbeConfig()
	cfg.Iterations = 1 << 20 // would take minutes
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	for r, got := range probeAll(ctx, asPeers(peers), cfg) {
		if got.m != nil || !errors.Is(got.err, context.DeadlineExceeded) {
			t.Errorf("rank %d: %v; want the context's error and no matrix", r, got.err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Probe took %v to notice its context was done", d)
	}
}

func TestProbeConfigValidate(t *testing.T) {
	if err := DefaultProbeConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (ProbeConfig{PingPongs: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "PingPongs") {
		t.Fatalf("got %v, want an error naming PingPongs", err)
	}
	if _, err := Probe(t.Context(), &loopPeer{rank: 0, hub: &hub{n: 1}}, ProbeConfig{Iterations: -3}); err == nil {
		t.Fatal("Probe accepted a negative Iterations")
	}
}

// BenchmarkProbeLoopback puts what Probe reports for two ranks on
// loopback next to a plain socket doing the same work in the same run
// (the machines are shared and noisy, so only the ratio means much).
func BenchmarkProbeLoopback(b *testing.B) {
	cfg := DefaultProbeConfig()
	peers := newLoopGroup(b, 2)
	for _, p := range peers {
		p.log = nil // recording spans would cost more than the calls
	}
	raw := newLoopGroup(b, 2) // the plain sockets: no framing, no Peer
	var probeBW, probeLat, sockBW, sockLat float64
	for b.Loop() {
		res := probeAll(b.Context(), asPeers(peers), cfg)
		if res[0].err != nil {
			b.Fatal(res[0].err)
		}
		m := res[0].m
		probeBW += (m.Bandwidth[0][1] + m.Bandwidth[1][0]) / 2
		probeLat += (m.LatencyUS[0][1] + m.LatencyUS[1][0]) / 2
		bw, lat := plainSocket(b, raw[0].conns[1], raw[1].conns[0], cfg)
		sockBW += bw
		sockLat += lat
	}
	n := float64(b.N)
	b.ReportMetric(probeBW/n/1e9, "probe-GB/s")
	b.ReportMetric(sockBW/n/1e9, "socket-GB/s")
	b.ReportMetric(probeBW/sockBW, "bw-ratio")
	b.ReportMetric(probeLat/n, "probe-lat-µs")
	b.ReportMetric(sockLat/n, "socket-lat-µs")
	b.ReportMetric(probeLat/sockLat, "lat-ratio")
}

// plainSocket times what the probe times, on bare connections: a stream
// of Iterations messages after Warmup, ended by a one-byte ack; and half
// the median round trip of LatencyBytes.
func plainSocket(b *testing.B, tx, rx net.Conn, cfg ProbeConfig) (bw, latUS float64) {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, cfg.MessageBytes)
		for _, count := range []int{cfg.Warmup, cfg.Iterations} {
			for range count {
				if _, err := io.ReadFull(rx, buf); err != nil {
					done <- err
					return
				}
			}
			if _, err := rx.Write(buf[:1]); err != nil {
				done <- err
				return
			}
		}
		small := buf[:cfg.LatencyBytes]
		for range cfg.Warmup + cfg.PingPongs {
			if _, err := io.ReadFull(rx, small); err != nil {
				done <- err
				return
			}
			if _, err := rx.Write(small); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	buf := make([]byte, cfg.MessageBytes)
	send := func(count int) {
		for range count {
			if _, err := tx.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := io.ReadFull(tx, buf[:1]); err != nil {
			b.Fatal(err)
		}
	}
	send(cfg.Warmup)
	t0 := time.Now()
	send(cfg.Iterations)
	bw = float64(cfg.Iterations*cfg.MessageBytes) / time.Since(t0).Seconds()
	var rtts []time.Duration
	small := buf[:cfg.LatencyBytes]
	for i := range cfg.Warmup + cfg.PingPongs {
		t0 := time.Now()
		if _, err := tx.Write(small); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(tx, small); err != nil {
			b.Fatal(err)
		}
		if i >= cfg.Warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	slices.Sort(rtts)
	return bw, float64(rtts[len(rtts)/2]) / 2 / float64(time.Microsecond)
}
