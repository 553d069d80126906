package topology

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseHosts(t *testing.T) {
	want := []Host{{Name: "h0", Addr: "10.0.0.1", Slots: 4}, {Name: "h1", Slots: 2, IntraBandwidth: 3e11}}
	for _, in := range []string{
		`[{"name": "h0", "addr": "10.0.0.1", "slots": 4}, {"name": "h1", "slots": 2, "intra_bandwidth": 3e11}]`,
		`{"version": 1, "hosts": [{"name": "h0", "addr": "10.0.0.1", "slots": 4}, {"name": "h1", "slots": 2, "intra_bandwidth": 3e11}]}`,
	} {
		got, err := ParseHosts([]byte(in))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseHosts(%s) = %+v, %v", in, got, err)
		}
	}
	for in, msg := range map[string]string{
		``:                             "not a hosts file",
		`[]`:                           "no hosts",
		`[{"name": "h0", "slot": 4}]`:  `unknown field "slot"`,
		`[{"name": "h0", "slots": 0}]`: `host "h0" has 0 slots`,
		`[{"slots": 2}]`:               "host 0 has no name",
		`[{"name": "a", "slots": 1}, {"name": "a", "slots": 1}]`:                           `hosts 0 and 1 are both "a"`,
		`[{"name": "a", "addr": "x", "slots": 1}, {"name": "b", "addr": "x", "slots": 1}]`: `hosts 0 and 1 are both "x"`,
		`[{"name": "a", "slots": 1, "intra_bandwidth": -1}]`:                               `intra_bandwidth -1`,
		`{"version": 2, "hosts": [{"name": "a", "slots": 1}]}`:                             "version 2",
		`[{"name": "a", "slots": 1}] []`:                                                   "more than one",
	} {
		if _, err := ParseHosts([]byte(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseHosts(%s): %v, want an error saying %q", in, err, msg)
		}
	}
}

func FuzzParseHosts(f *testing.F) {
	f.Add([]byte(`[{"name": "h0", "addr": "10.0.0.1", "slots": 4}]`))
	f.Add([]byte(`{"version": 1, "hosts": [{"name": "h0", "slots": 8, "intra_bandwidth": 4.5e11}]}`))
	f.Add([]byte(`[{"name": "a", "slots": 1}, {"name": "a", "slots": 1}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		hosts, err := ParseHosts(b)
		if err != nil {
			return
		}
		if err := ValidateHosts(hosts); err != nil {
			t.Fatalf("parsed hosts do not validate: %v", err)
		}
		again, err := json.Marshal(hosts)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseHosts(again)
		if err != nil || !reflect.DeepEqual(back, hosts) {
			t.Fatalf("round trip: %+v, %v; was %+v", back, err, hosts)
		}
	})
}

// hostLinks is a matrix between named hosts with the given symmetric
// links (others slow, 1e9).
func hostLinks(names []string, fast map[[2]int]float64) *Matrix {
	m := NewMatrix(len(names))
	copy(m.Hosts, names)
	for i := range names {
		for j := range names {
			if i != j {
				m.Bandwidth[i][j] = 1e9
			}
		}
	}
	for p, v := range fast {
		m.Bandwidth[p[0]][p[1]], m.Bandwidth[p[1]][p[0]] = v, v
	}
	return m
}

func hostsOf(slots ...int) []Host {
	var hs []Host
	for i, s := range slots {
		hs = append(hs, Host{Name: "h" + string(rune('0'+i)), Addr: "10.0.0." + string(rune('1'+i)), Slots: s})
	}
	return hs
}

func checkPlan(t *testing.T, hosts []Host, p *Plan, ranks int) {
	t.Helper()
	if len(p.Ranks) != ranks || len(p.Ring) != ranks {
		t.Fatalf("plan for %d ranks has %d ranks and a ring of %d", ranks, len(p.Ranks), len(p.Ring))
	}
	used := map[string]map[int]bool{}
	slots := map[string]int{}
	for _, h := range hosts {
		slots[h.Name] = h.Slots
	}
	for i, s := range p.Ranks {
		if s.Rank != i || p.Ring[i] != i {
			t.Errorf("rank %d: %+v, ring %v", i, s, p.Ring)
		}
		if used[s.Host] == nil {
			used[s.Host] = map[int]bool{}
		}
		if used[s.Host][s.Slot] || s.Slot < 0 || s.Slot >= slots[s.Host] {
			t.Errorf("rank %d on slot %d of %s (%d slots), used twice or out of range", i, s.Slot, s.Host, slots[s.Host])
		}
		used[s.Host][s.Slot] = true
	}
}

func TestPlacePicksTheFastPair(t *testing.T) {
	hosts := hostsOf(4, 4, 4, 4)
	m := hostLinks([]string{"h0", "h1", "h2", "h3"}, map[[2]int]float64{{0, 2}: 10e9})
	p, err := Place(hosts, m, 8)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, hosts, p, 8)
	if !slices.Equal(p.Hosts, []string{"h0", "h2"}) || p.Bottleneck != 10e9 || p.NaiveBottleneck != 1e9 || !p.Exact {
		t.Errorf("plan %+v: want h0 and h2 at 10 GB/s against the naive 1 GB/s", p)
	}
}

func TestPlaceOneHostWhenItFits(t *testing.T) {
	hosts := hostsOf(8, 4, 4)
	m := hostLinks([]string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, nil) // matched by address
	p, err := Place(hosts, m, 4)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, hosts, p, 4)
	// One host beats any network link; h1 leaves no slot idle.
	if !slices.Equal(p.Hosts, []string{"h1"}) || p.Bottleneck != 0 {
		t.Errorf("plan %+v: want h1 alone, bottleneck unknown (0)", p)
	}
}

func TestPlaceSlowIntraHost(t *testing.T) {
	hosts := []Host{{Name: "a", Slots: 4, IntraBandwidth: 1e9}, {Name: "b", Slots: 2, IntraBandwidth: 50e9}, {Name: "c", Slots: 2, IntraBandwidth: 50e9}}
	m := hostLinks([]string{"a", "b", "c"}, map[[2]int]float64{{1, 2}: 10e9})
	p, err := Place(hosts, m, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Hosts, []string{"b", "c"}) || p.Bottleneck != 10e9 || p.NaiveBottleneck != 1e9 {
		t.Errorf("plan %+v: want b and c (10 GB/s) over a's slow 1 GB/s inside", p)
	}
}

// TestPlaceAgainstBruteForce tries every set of hosts, every number of
// ranks on each and every order of them on small random clusters.
func TestPlaceAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 21))
	for trial := range 60 {
		nh := 2 + rng.IntN(4)
		hosts := make([]Host, nh)
		names := make([]string, nh)
		total := 0
		for i := range hosts {
			names[i] = "h" + string(rune('a'+i))
			hosts[i] = Host{Name: names[i], Slots: 1 + rng.IntN(3)}
			if rng.IntN(2) == 0 {
				hosts[i].IntraBandwidth = 1e9 * (1 + 20*rng.Float64())
			}
			total += hosts[i].Slots
		}
		m := NewMatrix(nh)
		copy(m.Hosts, names)
		for i := range nh {
			for j := range nh {
				if i != j {
					m.Bandwidth[i][j] = 1e9 * (1 + 10*rng.Float64())
				}
			}
		}
		ranks := 1 + rng.IntN(total)
		p, err := Place(hosts, m, ranks)
		if err != nil {
			t.Fatal(err)
		}
		checkPlan(t, hosts, p, ranks)
		want := bruteForcePlace(hosts, m, ranks)
		if p.Bottleneck != want {
			t.Errorf("trial %d: %d ranks on %+v: bottleneck %.4g, brute force %.4g", trial, ranks, hosts, p.Bottleneck, want)
		}
		if p.Bottleneck < p.NaiveBottleneck && p.Bottleneck != 0 {
			t.Errorf("trial %d: plan %.4g is worse than naive %.4g", trial, p.Bottleneck, p.NaiveBottleneck)
		}
	}
}

func bruteForcePlace(hosts []Host, m *Matrix, ranks int) float64 {
	pl := &placer{hosts: hosts, ranks: ranks, link: linkMatrix(m)}
	best := -1.0
	nh := len(hosts)
	counts := make([]int, nh)
	var rec func(h, left int)
	rec = func(h, left int) {
		if h == nh {
			if left != 0 {
				return
			}
			var used []int
			for i, c := range counts {
				if c > 0 {
					used = append(used, i)
				}
			}
			permutations(used, func(order []int) {
				var seq []int
				for _, x := range order {
					for range counts[x] {
						seq = append(seq, x)
					}
				}
				best = max(best, pl.seqBottleneck(seq))
			})
			return
		}
		for c := 0; c <= min(hosts[h].Slots, left); c++ {
			counts[h] = c
			rec(h+1, left-c)
		}
		counts[h] = 0
	}
	rec(0, ranks)
	return finiteOrZero(best)
}

func permutations(s []int, f func([]int)) {
	var rec func(k int)
	rec = func(k int) {
		if k == len(s) {
			f(s)
			return
		}
		for i := k; i < len(s); i++ {
			s[k], s[i] = s[i], s[k]
			rec(k + 1)
			s[k], s[i] = s[i], s[k]
		}
	}
	rec(0)
}

func TestPlaceManyHosts(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 22))
	nh := 40
	hosts := make([]Host, nh)
	m := NewMatrix(nh)
	for i := range hosts {
		hosts[i] = Host{Name: "node" + strings.Repeat("x", i%3) + string(rune('A'+i)), Slots: 8}
		m.Hosts[i] = hosts[i].Name
	}
	for i := range nh {
		for j := range nh {
			if i != j {
				m.Bandwidth[i][j] = 1e9 * (1 + rng.Float64())
				if i/10 == j/10 { // four racks of ten: fast inside a rack
					m.Bandwidth[i][j] *= 10
				}
			}
		}
	}
	p, err := Place(hosts, m, 64)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, hosts, p, 64)
	if len(p.Hosts) != 8 || p.Bottleneck < 10e9 || p.Exact {
		t.Errorf("64 ranks on 40 hosts of 8 in racks of 10: %d hosts, bottleneck %.3g, exact %v; want 8 hosts of one rack", len(p.Hosts), p.Bottleneck, p.Exact)
	}
}

func TestPlaceErrors(t *testing.T) {
	hosts := hostsOf(2, 2)
	good := hostLinks([]string{"h0", "h1"}, nil)
	unnamed := hostLinks([]string{"", "", ""}, nil)
	unnamed.Hosts = nil
	bad := hostLinks([]string{"h0", "h1"}, nil)
	bad.Bandwidth[0][1] = -5
	for _, c := range []struct {
		name  string
		hosts []Host
		m     *Matrix
		ranks int
		msg   string
		is    error
	}{
		{"too many ranks", hosts, good, 5, "5 ranks, but the 2 hosts have 4 slots", ErrTooFewSlots},
		{"no ranks", hosts, good, 0, "0 ranks", nil},
		{"unknown matrix host", hosts, hostLinks([]string{"h0", "h9"}, nil), 2, `matrix row 1 is host "h9"`, ErrUnknownHost},
		{"host not measured", hostsOf(2, 2, 2), good, 2, `host "h2" is not in the matrix`, ErrUnknownHost},
		{"host twice in matrix", hosts, hostLinks([]string{"h0", "10.0.0.1"}, nil), 2, `rows 0 and 1 are both host "h0"`, nil},
		{"unnamed matrix of the wrong size", hosts, unnamed, 2, "names no hosts and has 3 rows for 2 hosts", nil},
		{"negative bandwidth", hosts, bad, 2, "bandwidth[0][1] = -5", nil},
		{"no matrix", hosts, nil, 2, "no matrix", nil},
		{"bad hosts", []Host{{Name: "x"}}, good, 1, `host "x" has 0 slots`, nil},
	} {
		_, err := Place(c.hosts, c.m, c.ranks)
		if err == nil || !strings.Contains(err.Error(), c.msg) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.msg)
		}
	}
}

func TestAllocateErrors(t *testing.T) {
	hosts := hostsOf(4)
	for _, c := range []struct {
		jobs []Job
		msg  string
	}{
		{[]Job{{Name: "a", Ranks: 0}}, `job "a" has 0 ranks`},
		{[]Job{{Name: "a", Ranks: 1}, {Name: "a", Ranks: 1}}, `job "a" is listed twice`},
		{[]Job{{Ranks: 1}}, "job 0 has no name"},
		{[]Job{{Name: "a", Ranks: 1, Weight: -1}}, "weight -1"},
	} {
		if _, err := Allocate(hosts, c.jobs); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: %v, want %q", c.jobs, err, c.msg)
		}
	}
	if a, err := Allocate(hosts, nil); err != nil || len(a) != 0 {
		t.Errorf("no jobs: %v, %v", a, err)
	}
}

func TestAllocateRepairsRounding(t *testing.T) {
	// The relaxation runs 6 whole and 5 at 4/5; rounding alone would stop
	// at 6 of 10 slots.
	alloc, err := Allocate(hostsOf(5, 5), []Job{{Name: "a", Ranks: 6}, {Name: "b", Ranks: 5}, {Name: "c", Ranks: 5}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := alloc["a"]; ok || len(alloc) != 2 || slices.Max(alloc["b"]) != 5 || slices.Max(alloc["c"]) != 5 {
		t.Errorf("allocation %v: want b and c on one host each", alloc)
	}
}

// TestAllocateAgainstExhaustive compares the relaxation and rounding with
// every possible allocation on small clusters: the utilisation, and how
// many (job, host) pairs it spreads over.
func TestAllocateAgainstExhaustive(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 23))
	trials, optimal, sumRatio, extraPairs := 200, 0, 0.0, 0
	for trial := range trials {
		nh := 1 + rng.IntN(3)
		slots := make([]int, nh)
		for i := range slots {
			slots[i] = 1 + rng.IntN(4)
		}
		hosts := hostsOf(slots...)
		jobs := make([]Job, 1+rng.IntN(4))
		for i := range jobs {
			jobs[i] = Job{Name: "j" + string(rune('0'+i)), Ranks: 1 + rng.IntN(6)}
			if rng.IntN(2) == 0 {
				jobs[i].Weight = 0.5 + 2*rng.Float64()
			}
		}
		alloc, bound, err := allocate(hosts, jobs)
		if err != nil {
			t.Fatal(err)
		}
		value, pairs := 0.0, 0
		used := make([]int, nh)
		for _, j := range jobs {
			a, ok := alloc[j.Name]
			if !ok {
				continue
			}
			sum := 0
			for h, n := range a {
				sum += n
				used[h] += n
				if n > 0 {
					pairs++
				}
			}
			if sum != j.Ranks {
				t.Fatalf("trial %d: job %s got %v for %d ranks", trial, j.Name, a, j.Ranks)
			}
			value += j.value()
		}
		for h := range used {
			if used[h] > slots[h] {
				t.Fatalf("trial %d: host %d has %d ranks on %d slots: %v", trial, h, used[h], slots[h], alloc)
			}
		}
		bestValue, bestPairs := exhaustiveAllocate(slots, jobs)
		if bound < bestValue-1e-6*bestValue-1e-2 {
			t.Errorf("trial %d: the relaxation %v is below the best allocation %v", trial, bound, bestValue)
		}
		maxJob := 0.0
		for _, j := range jobs {
			maxJob = max(maxJob, j.value())
		}
		if value < bestValue-maxJob-1e-9 {
			t.Errorf("trial %d: %v, worth %v; the best is worth %v", trial, alloc, value, bestValue)
		}
		if math.Abs(value-bestValue) < 1e-9 {
			optimal++
			extraPairs += pairs - bestPairs
		}
		if bestValue > 0 {
			sumRatio += value / bestValue
		} else {
			sumRatio++
		}
	}
	t.Logf("allocation: optimal utilisation on %d/%d small clusters, mean ratio %.4f; %d more (job, host) pairs than the fewest, over the optimal ones",
		optimal, trials, sumRatio/float64(trials), extraPairs)
	if optimal < trials*9/10 {
		t.Errorf("optimal on only %d of %d", optimal, trials)
	}
}

// exhaustiveAllocate tries every way to give each job all its ranks or
// none: the best utilisation, and the fewest (job, host) pairs with it.
func exhaustiveAllocate(slots []int, jobs []Job) (float64, int) {
	free := slices.Clone(slots)
	bestValue, bestPairs := -1.0, 0
	var rec func(j int, value float64, pairs int)
	rec = func(j int, value float64, pairs int) {
		if j == len(jobs) {
			if value > bestValue+1e-9 || (math.Abs(value-bestValue) < 1e-9 && pairs < bestPairs) {
				bestValue, bestPairs = value, pairs
			}
			return
		}
		rec(j+1, value, pairs) // job j waits
		var put func(h, left, pairs int)
		put = func(h, left, pairs int) {
			if h == len(free) {
				if left == 0 {
					rec(j+1, value+jobs[j].value(), pairs)
				}
				return
			}
			for n := 0; n <= min(free[h], left); n++ {
				free[h] -= n
				p := pairs
				if n > 0 {
					p++
				}
				put(h+1, left-n, p)
				free[h] += n
			}
		}
		put(0, jobs[j].Ranks, pairs)
	}
	rec(0, 0, 0)
	return bestValue, bestPairs
}
