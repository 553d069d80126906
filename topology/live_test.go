package topology

import (
	"slices"
	"testing"
	"time"
)

// liveSim drives a Live as a ring job would: each window, every link the
// ring uses carries a second's traffic at the link's true rate, and the
// totals grow.
type liveSim struct {
	t     *testing.T
	live  *Live
	rate  [][]float64 // true rate, bytes/s
	total [][]LinkWindow
	// kernel, where not nil, is what each node's kernel counts of every
	// program's connections: the ring's traffic and others' (others:
	// bytes/s, busy: their connections), read once a window at at.
	kernel []KernelLinks
	others [][]float64
	busy   [][]int
	at     time.Time
	conns  int // the job's connections on every link (0: not said)
}

// countKernel makes the sim hand Live the kernel's counters too.
func (s *liveSim) countKernel() {
	n := len(s.rate)
	s.kernel, s.others, s.busy, s.at = make([]KernelLinks, n), make([][]float64, n), make([][]int, n), time.Unix(1e9, 0)
	for i := range n {
		s.kernel[i] = KernelLinks{BytesAcked: make([]uint64, n), Busy: make([]int, n)}
		s.others[i], s.busy[i] = make([]float64, n), make([]int, n)
	}
}

func newLiveSim(t *testing.T, n int, probe, actual float64) *liveSim {
	m := NewMatrix(n)
	s := &liveSim{t: t, rate: make([][]float64, n), total: make([][]LinkWindow, n)}
	for i := range n {
		s.rate[i] = make([]float64, n)
		s.total[i] = make([]LinkWindow, n)
		for j := range n {
			if i != j {
				m.Bandwidth[i][j], s.rate[i][j] = probe, actual
			}
		}
	}
	ring := make([]int, n)
	for i := range ring {
		ring[i] = i
	}
	var err error
	if s.live, err = NewLive(m, ring, DefaultLiveConfig()); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *liveSim) setPair(a, b int, r float64) { s.rate[a][b], s.rate[b][a] = r, r }

// window sends one second around the ring (each rank to the next) and
// returns Live's decision, adopting the ring when it says to move.
func (s *liveSim) window() Decision {
	ring := s.live.Ring()
	for p, a := range ring {
		b := ring[(p+1)%len(ring)]
		s.total[a][b].Bytes += uint64(s.rate[a][b])
		s.total[a][b].Busy += time.Second
		if s.kernel != nil {
			s.kernel[a].BytesAcked[b] += uint64(s.rate[a][b])
		}
	}
	for _, row := range s.total {
		for j := range row {
			row[j].Conns = s.conns
		}
	}
	var kernel []KernelLinks
	if s.kernel != nil {
		s.at = s.at.Add(time.Second)
		for i, k := range s.kernel {
			for j, o := range s.others[i] {
				k.BytesAcked[j] += uint64(o)
				k.Busy[j] = s.busy[i][j]
			}
			s.kernel[i].At = s.at
		}
		kernel = s.kernel
	}
	d := s.live.Observe(s.total, kernel)
	if d.Move {
		s.live.Adopt(d.Ring)
	}
	return d
}

func adjacentIn(ring []int, a, b int) bool {
	for i := range ring {
		x, y := ring[i], ring[(i+1)%len(ring)]
		if x == a && y == b || x == b && y == a {
			return true
		}
	}
	return false
}

// A link of the ring slowed: the ring moves off it after Confirm windows,
// the predicted gain is what the rates say, and once the new ring runs
// nothing moves again, also when the slow link recovers (hysteresis: it
// is not measured any more, and the new ring is as good as any).
func TestLiveMovesOffASlowedLink(t *testing.T) {
	s := newLiveSim(t, 4, 100e6, 100e6)
	for range 3 {
		if d := s.window(); d.Move || d.Measured != 4 {
			t.Fatalf("an even network moved or measured %d links: %+v", d.Measured, d)
		}
	}
	s.setPair(1, 2, 20e6)
	d := s.window()
	if d.Move {
		t.Fatalf("moved after one window, Confirm is 2: %+v", d)
	}
	if d.Current != 20e6 || d.Best != 100e6 || d.Gain < 3.99 || d.Gain > 4.01 {
		t.Fatalf("predicted %+v, want current 20 MB/s, best 100 MB/s, gain 4", d)
	}
	if d = s.window(); !d.Move || !d.RingMeasured {
		t.Fatalf("did not move after two windows, or the ring was not all measured: %+v", d)
	}
	if adjacentIn(d.Ring, 1, 2) {
		t.Fatalf("the new ring %v still uses the slow link 1-2", d.Ring)
	}
	if d := s.live.Observe(s.total, nil); d.RingMeasured {
		t.Fatalf("the new ring counts as measured before it carried anything: %+v", d)
	}
	if d := s.window(); !d.RingMeasured || d.Current != 100e6 {
		t.Fatalf("after a window on the new ring: %+v, want it measured at 100 MB/s", d)
	}
	s.setPair(1, 2, 100e6)
	for i := range 10 {
		if d := s.window(); d.Move {
			t.Fatalf("window %d after the move: moved again to %v", i, d.Ring)
		}
	}
	if m := s.live.Matrix(); m.Link(1, 2) != 20e6 {
		t.Errorf("the link the ring left keeps its last measured rate, got %v", m.Link(1, 2))
	}
}

// Another program sends over a link the ring leaves idle, the one the
// only ring off a slowed link needs (both ways). Heavy traffic there (80 of 100 MB/s,
// one connection) leaves the job's one connection TCP's half of it, 50
// MB/s: no better
// than the slowed link, so the ring stays; light traffic (30 MB/s) leaves
// 70, and the ring moves. Without the kernel's counters it would move
// onto the busy link either way. The ring's own links, which the job
// measures, are not lowered by the traffic the kernel counts on them.
func TestLiveCountsOthersTraffic(t *testing.T) {
	for _, tc := range []struct {
		name     string
		kernel   bool
		others   float64
		conns    int // the job's per link
		move     bool
		estimate float64 // of link 2->0 after the windows
	}{
		{"no kernel counters", false, 80e6, 1, true, 100e6},
		{"heavy traffic", true, 80e6, 1, false, 50e6},
		{"light traffic", true, 30e6, 1, true, 70e6},
		// 3 of every 4 shares: 75 MB/s.
		{"heavy traffic, 3 connections of the job's", true, 80e6, 3, true, 75e6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newLiveSim(t, 4, 100e6, 100e6)
			s.conns = tc.conns
			if tc.kernel {
				s.countKernel()
				s.others[2][0], s.busy[2][0] = tc.others, 1
				s.others[0][2], s.busy[0][2] = tc.others, 1
				// The kernel also counts what ringo's own sockets
				// send over the ring: no traffic of others there.
			}
			for range 2 {
				if d := s.window(); d.Move {
					t.Fatalf("an even network moved: %+v", d)
				}
			}
			if m := s.live.Matrix(); m.Link(0, 1) != 100e6 {
				t.Fatalf("a ring link the job measured at 100 MB/s is estimated at %v", m.Link(0, 1))
			}
			s.setPair(1, 2, 50e6)
			var moved Decision
			for range 3 {
				if d := s.window(); d.Move {
					moved = d
					break
				}
			}
			if moved.Move != tc.move {
				t.Fatalf("moved: %v, want %v (%+v)", moved.Move, tc.move, moved)
			}
			if moved.Move && !slices.Equal(moved.Ring, []int{0, 2, 3, 1}) && !slices.Equal(moved.Ring, []int{0, 1, 3, 2}) {
				t.Errorf("moved to %v; the only ring off link 1-2 is 0-1-3-2", moved.Ring)
			}
			if got := s.live.Matrix().Link(2, 0); got < tc.estimate*0.999 || got > tc.estimate*1.001 {
				t.Errorf("link 2->0 is estimated at %v, want %v", got, tc.estimate)
			}
			if tc.kernel {
				if got := s.live.Others()[2][0]; got < tc.others*0.999 || got > tc.others*1.001 {
					t.Errorf("others on 2->0: %v, want %v", got, tc.others)
				}
			}
		})
	}
}

// Counters that restart or reads too close together change nothing;
// traffic that stops lifts the estimate back.
func TestLiveKernelWindows(t *testing.T) {
	s := newLiveSim(t, 3, 100e6, 100e6)
	s.countKernel()
	s.others[0][2], s.busy[0][2] = 60e6, 2 // 0->2: the ring is 0 1 2, which sends 2->0
	s.window()
	s.window()
	if got := s.live.Matrix().Link(0, 2); got != 40e6 {
		t.Fatalf("0->2 with 60 MB/s of others' traffic: %v, want 40e6", got)
	}
	// A node's read that came too soon after the last changes nothing.
	k := s.kernel[0]
	k.At = k.At.Add(50 * time.Millisecond)
	k.BytesAcked = slices.Clone(k.BytesAcked)
	k.BytesAcked[2] += 1e9
	s.live.Observe(s.total, []KernelLinks{k, {}, {}})
	if got := s.live.Others()[0][2]; got != 60e6 {
		t.Fatalf("a read 50 ms after the last changed the rate to %v", got)
	}
	// Counters that went backwards (a restarted launcher) start again.
	k.At = k.At.Add(time.Second)
	k.BytesAcked[2] = 0
	s.live.Observe(s.total, []KernelLinks{k, {}, {}})
	if got := s.live.Others()[0][2]; got != 60e6 {
		t.Fatalf("counters that went backwards gave %v", got)
	}
	s.kernel[0], s.at = k, k.At
	s.others[0][2] = 0
	s.window()
	if got := s.live.Matrix().Link(0, 2); got != 100e6 {
		t.Errorf("0->2 after others stopped: %v, want 100e6", got)
	}
}

// The job's own traffic sees half what the probe saw on every link: the
// links it does not use are scaled down with them, so nothing moves.
func TestLiveScalesUnmeasuredLinks(t *testing.T) {
	s := newLiveSim(t, 5, 100e6, 50e6)
	for range 5 {
		if d := s.window(); d.Move || d.Gain != 0 {
			t.Fatalf("moved on a uniform network measured below its probe: %+v", d)
		}
	}
	if m := s.live.Matrix(); m.Link(0, 2) != 50e6 {
		t.Errorf("an unmeasured link is %v, want the probe scaled to 50e6", m.Link(0, 2))
	}
}

// One slow window between good ones moves nothing; a gain under the
// margin moves nothing however long it lasts.
func TestLiveNeedsAConfirmedMargin(t *testing.T) {
	s := newLiveSim(t, 4, 100e6, 100e6)
	s.setPair(0, 1, 10e6)
	if d := s.window(); d.Move {
		t.Fatal("moved on the first slow window")
	}
	s.setPair(0, 1, 100e6)
	if d := s.window(); d.Move || d.Gain != 0 {
		t.Fatalf("moved after the link recovered: %+v", d)
	}
	s.setPair(2, 3, 90e6) // 11% slower: under the 20% margin
	for range 5 {
		if d := s.window(); d.Move {
			t.Fatalf("moved for an 11%% gain: %+v", d)
		}
	}
}

// A link's traffic counts only once a window carried MinBytes and
// MinBusy; smaller windows add up instead of being lost, and counters
// that go backwards (a new connection) start a new window.
func TestLiveWindowsAddUp(t *testing.T) {
	m := NewMatrix(2)
	m.Bandwidth[0][1], m.Bandwidth[1][0] = 1e9, 1e9
	l, err := NewLive(m, []int{0, 1}, DefaultLiveConfig())
	if err != nil {
		t.Fatal(err)
	}
	total := [][]LinkWindow{{{}, {}}, {{}, {}}}
	for i := range 3 {
		total[0][1].Bytes += 400 << 10
		total[0][1].Busy += 10 * time.Millisecond
		d := l.Observe(total, nil)
		if want := 0; i < 2 && d.Measured != want {
			t.Fatalf("window %d counted with %d bytes", i, total[0][1].Bytes)
		}
		if i == 2 && d.Measured != 1 {
			t.Fatalf("1.2 MiB in 30 ms did not count")
		}
	}
	if got, want := l.Matrix().Bandwidth[0][1], float64(1200<<10)/0.03; got < want*0.999 || got > want*1.001 {
		t.Errorf("rate %v, want %v", got, want)
	}
	total[0][1] = LinkWindow{Bytes: 100 << 10, Busy: 5 * time.Millisecond} // smaller than before
	if d := l.Observe(total, nil); d.Measured != 0 {
		t.Errorf("a counter that went backwards counted as a window")
	}
	total[0][1].Bytes += 4 << 20
	total[0][1].Busy += 100 * time.Millisecond
	if d := l.Observe(total, nil); d.Measured != 1 || l.Matrix().Bandwidth[0][1] != float64(4<<20)/0.1 {
		t.Errorf("the window after a restart: %+v, rate %v", d, l.Matrix().Bandwidth[0][1])
	}
	if !slices.Equal(l.Ring(), []int{0, 1}) {
		t.Errorf("ring changed: %v", l.Ring())
	}
}

func TestLiveRefusesAMismatchedRing(t *testing.T) {
	m := NewMatrix(3)
	for i := range 3 {
		for j := range 3 {
			if i != j {
				m.Bandwidth[i][j] = 1
			}
		}
	}
	if _, err := NewLive(m, []int{0, 1}, DefaultLiveConfig()); err == nil {
		t.Fatal("NewLive accepted a ring of 2 hosts for a matrix of 3")
	}
}
