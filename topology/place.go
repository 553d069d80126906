package topology

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"slices"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/optimize/convex/lp"
)

// HostsVersion is the version of the hosts file format.
const HostsVersion = 1

// Errors that Place and Allocate wrap, for callers that branch on them.
var (
	ErrUnknownHost = errors.New("unknown host")
	ErrTooFewSlots = errors.New("not enough slots")
)

// Host is one machine that ranks can run on, as the hosts file lists it.
// IntraBandwidth is what two of its slots get between them (bytes/s,
// from NVML's topology for GPUs: NVLink or PCIe); 0 means unknown and is
// taken to be faster than any link, so a job that fits on such a host
// stays there.
type Host struct {
	Name           string  `json:"name"`
	Addr           string  `json:"addr,omitempty"`
	Slots          int     `json:"slots"`
	IntraBandwidth float64 `json:"intra_bandwidth,omitempty"`
}

// ParseHosts reads a hosts file: a JSON array of hosts, or the same array
// as "hosts" in an object with "version": 1. Unknown fields are errors,
// so that a misspelt "slot" does not silently mean 0 slots.
func ParseHosts(b []byte) ([]Host, error) {
	var hosts []Host
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		var f struct {
			Version int    `json:"version"`
			Hosts   []Host `json:"hosts"`
		}
		if err := decodeStrict(t, &f); err != nil {
			return nil, err
		}
		if f.Version != HostsVersion {
			return nil, fmt.Errorf("hosts file version %d, want %d", f.Version, HostsVersion)
		}
		hosts = f.Hosts
	} else if err := decodeStrict(t, &hosts); err != nil {
		return nil, err
	}
	return hosts, ValidateHosts(hosts)
}

func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("not a hosts file: %v", err)
	}
	if d.More() {
		return errors.New("not a hosts file: more than one JSON value")
	}
	return nil
}

// ReadHosts reads and validates a hosts file; errors name the file.
func ReadHosts(path string) ([]Host, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	hosts, err := ParseHosts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return hosts, nil
}

// ValidateHosts reports an empty list, a host without a name, a name or
// address used twice, fewer than one slot, or a bad intra-host bandwidth.
func ValidateHosts(hosts []Host) error {
	if len(hosts) == 0 {
		return errors.New("no hosts")
	}
	seen := map[string]int{}
	for i, h := range hosts {
		if h.Name == "" {
			return fmt.Errorf("host %d has no name", i)
		}
		for _, key := range []string{h.Name, h.Addr} {
			if j, dup := seen[key]; dup && key != "" {
				return fmt.Errorf("hosts %d and %d are both %q", j, i, key)
			}
			seen[key] = i
		}
		if h.Slots < 1 {
			return fmt.Errorf("host %q has %d slots, want at least 1", h.Name, h.Slots)
		}
		if v := h.IntraBandwidth; v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("host %q: intra_bandwidth %v, want a finite number of at least 0", h.Name, v)
		}
	}
	return nil
}

// matrixRows finds each host's row in a host-by-host matrix, by name or
// address. A matrix without host names is taken row by row when it has
// as many rows as there are hosts.
func matrixRows(hosts []Host, m *Matrix) ([]int, error) {
	if len(m.Hosts) == 0 {
		if m.Size() != len(hosts) {
			return nil, fmt.Errorf("the matrix names no hosts and has %d rows for %d hosts", m.Size(), len(hosts))
		}
		rows := make([]int, len(hosts))
		for i := range rows {
			rows[i] = i
		}
		return rows, nil
	}
	byKey := map[string]int{}
	for i, h := range hosts {
		byKey[h.Name] = i
		if h.Addr != "" {
			byKey[h.Addr] = i
		}
	}
	rows := make([]int, len(hosts))
	for i := range rows {
		rows[i] = -1
	}
	for r, name := range m.Hosts {
		i, ok := byKey[name]
		if !ok {
			return nil, fmt.Errorf("%w: matrix row %d is host %q, which the hosts file does not list", ErrUnknownHost, r, name)
		}
		if rows[i] >= 0 {
			return nil, fmt.Errorf("matrix rows %d and %d are both host %q: want one row per host", rows[i], r, hosts[i].Name)
		}
		rows[i] = r
	}
	for i, r := range rows {
		if r < 0 {
			return nil, fmt.Errorf("%w: host %q is not in the matrix (measure it, or leave it out of the hosts file)", ErrUnknownHost, hosts[i].Name)
		}
	}
	return rows, nil
}

// Slot is where one rank runs: the host, and the index of the slot on it
// (the GPU or CPU slot the launcher hands out).
type Slot struct {
	Rank int    `json:"rank"`
	Host string `json:"host"`
	Addr string `json:"addr,omitempty"`
	Slot int    `json:"slot"`
}

// Plan is where a job's ranks run and the order of its ring. Ranks are
// numbered along the ring, host by host, so that a ring collective in
// rank order follows it; Ring says so explicitly for those that take an
// order. Bandwidths are in bytes per second; 0 means the ring never
// leaves one host whose intra-host bandwidth is unknown.
type Plan struct {
	Ranks           []Slot   `json:"ranks"`
	Ring            []int    `json:"ring"`
	Hosts           []string `json:"hosts"` // the hosts used, in ring order
	Bottleneck      float64  `json:"bottleneck"`
	NaiveBottleneck float64  `json:"naive_bottleneck"` // hosts in file order, slots filled in turn
	Exact           bool     `json:"exact"`            // proven best: at most MaxExact hosts
}

// Place puts ranks on the hosts' slots and orders their ring, given m
// measured between the hosts (rows named by host name or address). It
// maximises the ring's bottleneck, then uses as few hosts as possible
// (each crossing of the network is a link slower than the ones inside a
// host), then leaves as few slots of the chosen hosts idle.
//
// A candidate set of hosts gets one rank each and the rest go to its
// hosts with the fastest intra-host links first, which maximises the
// slowest intra-host link used; its ring visits each host once
// (HierarchicalRing's reasoning), in the order SolveRing finds for the
// hosts. Up to MaxExact hosts every set is tried, so the plan is the
// best there is under this model. Beyond, the sets are grown greedily
// from each host in turn (adding the host with the fastest link to the
// set until it has enough slots), and the best is kept.
func Place(hosts []Host, m *Matrix, ranks int) (*Plan, error) {
	if err := ValidateHosts(hosts); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("no matrix")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if ranks < 1 {
		return nil, fmt.Errorf("%d ranks: want at least 1", ranks)
	}
	total := 0
	for _, h := range hosts {
		total += h.Slots
	}
	if ranks > total {
		return nil, fmt.Errorf("%w: %d ranks, but the %d hosts have %d slots", ErrTooFewSlots, ranks, len(hosts), total)
	}
	rows, err := matrixRows(hosts, m)
	if err != nil {
		return nil, err
	}
	p := &placer{hosts: hosts, ranks: ranks, link: make([][]float64, len(hosts))}
	for a := range hosts {
		p.link[a] = make([]float64, len(hosts))
		for b := range hosts {
			if a != b {
				p.link[a][b] = m.Link(rows[a], rows[b])
			}
		}
	}
	var best *choice
	if len(hosts) <= MaxExact {
		// Smaller sets first: they win ties, and once one is found the
		// bound prunes most larger ones.
		masks := make([]uint32, 0, 1<<len(hosts)-1)
		for mask := uint32(1); mask < 1<<len(hosts); mask++ {
			masks = append(masks, mask)
		}
		slices.SortStableFunc(masks, func(a, b uint32) int { return bits.OnesCount32(a) - bits.OnesCount32(b) })
		for _, mask := range masks {
			if c := p.try(maskHosts(mask), best); c != nil && c.better(best) {
				best = c
			}
		}
	} else {
		for seed := range hosts {
			if c := p.try(p.grow(seed), best); c != nil && c.better(best) {
				best = c
			}
		}
	}
	plan := p.plan(best)
	plan.Exact = len(hosts) <= MaxExact
	return plan, nil
}

func maskHosts(mask uint32) []int {
	var s []int
	for ; mask != 0; mask &= mask - 1 {
		s = append(s, bits.TrailingZeros32(mask))
	}
	return s
}

type placer struct {
	hosts []Host
	ranks int
	link  [][]float64 // host to host, as Matrix.Link
}

// choice is a set of hosts, how many ranks each gets, and its ring.
type choice struct {
	order      []int // hosts, in ring order
	count      []int // ranks on each host of order
	bottleneck float64
	idle       int // slots of the chosen hosts left idle
}

// better orders choices: larger bottleneck, then fewer hosts, then fewer
// idle slots. Earlier candidates win ties, so the answer is deterministic.
func (c *choice) better(than *choice) bool {
	switch {
	case than == nil:
		return true
	case c.bottleneck != than.bottleneck:
		return c.bottleneck > than.bottleneck
	case len(c.order) != len(than.order):
		return len(c.order) < len(than.order)
	}
	return c.idle < than.idle
}

func (p *placer) intra(h int) float64 {
	if v := p.hosts[h].IntraBandwidth; v > 0 {
		return v
	}
	return math.Inf(1)
}

// try evaluates the set of hosts s, or returns nil if it cannot hold the
// ranks with at least one on each host, or cannot beat best.
func (p *placer) try(s []int, best *choice) *choice {
	capacity := 0
	for _, h := range s {
		capacity += p.hosts[h].Slots
	}
	if capacity < p.ranks || len(s) > p.ranks {
		return nil
	}
	if best != nil {
		if b := p.bound(s); b < best.bottleneck || (b == best.bottleneck && len(s) > len(best.order)) {
			return nil
		}
	}
	order := s
	if len(s) > 2 {
		sub := NewMatrix(len(s))
		for i, a := range s {
			for j, b := range s {
				sub.Bandwidth[i][j] = p.link[a][b]
			}
		}
		ring, _ := SolveRing(sub)
		order = make([]int, len(s))
		for i, r := range ring {
			order[i] = s[r]
		}
	}
	// One rank on each host, then the rest to the fastest hosts inside.
	byIntra := slices.Clone(order)
	slices.SortStableFunc(byIntra, func(a, b int) int { return cmpFloatDesc(p.intra(a), p.intra(b)) })
	extra := map[int]int{}
	left := p.ranks - len(s)
	for _, h := range byIntra {
		extra[h] = min(left, p.hosts[h].Slots-1)
		left -= extra[h]
	}
	c := &choice{order: order, idle: capacity - p.ranks}
	var seq []int // the host of each rank, in ring order
	for _, h := range order {
		c.count = append(c.count, 1+extra[h])
		for range 1 + extra[h] {
			seq = append(seq, h)
		}
	}
	c.bottleneck = p.seqBottleneck(seq)
	return c
}

// bound is an upper bound on the bottleneck of a ring through the hosts
// s, cheaper than solving it: each host needs two links on the ring, so
// none is faster than the second-fastest link of any host.
func (p *placer) bound(s []int) float64 {
	switch len(s) {
	case 1:
		return math.Inf(1)
	case 2:
		return p.link[s[0]][s[1]]
	}
	b := math.Inf(1)
	for _, h := range s {
		first, second := -1.0, -1.0
		for _, t := range s {
			if l := p.link[h][t]; t != h && l > first {
				first, second = l, first
			} else if t != h && l > second {
				second = l
			}
		}
		b = math.Min(b, second)
	}
	return b
}

// seqBottleneck is the slowest link of a ring of ranks on the hosts seq:
// intra-host between neighbours on one host, the network between hosts.
func (p *placer) seqBottleneck(seq []int) float64 {
	b := math.Inf(1)
	if len(seq) < 2 {
		return b
	}
	for i, h := range seq {
		if next := seq[(i+1)%len(seq)]; next == h {
			b = math.Min(b, p.intra(h))
		} else {
			b = math.Min(b, p.link[h][next])
		}
	}
	return b
}

// grow is a set of hosts with enough slots for the ranks, grown from seed
// by adding the host with the fastest link into the set (then the one
// with more slots, then the first listed).
func (p *placer) grow(seed int) []int {
	in := map[int]bool{seed: true}
	s, capacity := []int{seed}, p.hosts[seed].Slots
	for capacity < p.ranks {
		best, bestLink := -1, -1.0
		for h := range p.hosts {
			if in[h] {
				continue
			}
			l := 0.0
			for _, t := range s {
				l = math.Max(l, p.link[h][t])
			}
			if l > bestLink || (l == bestLink && p.hosts[h].Slots > p.hosts[best].Slots) {
				best, bestLink = h, l
			}
		}
		in[best] = true
		s = append(s, best)
		capacity += p.hosts[best].Slots
	}
	slices.Sort(s)
	return s
}

// plan numbers the ranks along the chosen ring and compares the naive
// placement.
func (p *placer) plan(c *choice) *Plan {
	plan := &Plan{Bottleneck: finiteOrZero(c.bottleneck)}
	for i, h := range c.order {
		plan.Hosts = append(plan.Hosts, p.hosts[h].Name)
		for slot := range c.count[i] {
			r := len(plan.Ranks)
			plan.Ranks = append(plan.Ranks, Slot{Rank: r, Host: p.hosts[h].Name, Addr: p.hosts[h].Addr, Slot: slot})
			plan.Ring = append(plan.Ring, r)
		}
	}
	var naive []int
	for h := 0; len(naive) < p.ranks; h++ {
		for range min(p.hosts[h].Slots, p.ranks-len(naive)) {
			naive = append(naive, h)
		}
	}
	plan.NaiveBottleneck = finiteOrZero(p.seqBottleneck(naive))
	return plan
}

// finiteOrZero reports an unknown (infinite) bandwidth as 0, which JSON can
// carry.
func finiteOrZero(v float64) float64 {
	if math.IsInf(v, 1) {
		return 0
	}
	return v
}

// Job is one job that wants slots on a shared cluster: Ranks slots (all
// of them or none: a data-parallel job does not run on part of its
// world), worth Weight per slot (0 means 1).
type Job struct {
	Name   string  `json:"name"`
	Ranks  int     `json:"ranks"`
	Weight float64 `json:"weight,omitempty"`
}

func (j Job) value() float64 {
	if j.Weight == 0 {
		return float64(j.Ranks)
	}
	return j.Weight * float64(j.Ranks)
}

// Allocate shares the hosts' slots among jobs to maximise utilisation:
// the total weight of the slots of the jobs that run. It returns, for
// each job that runs, its slots on each host (indexed like hosts); jobs
// left out are absent.
//
// It solves the linear relaxation with gonum's simplex: x[j][h] slots of
// job j on host h, y[j] in [0,1] the part of job j that runs,
// Σh x[j][h] = Ranks[j]·y[j], Σj x[j][h] ≤ Slots[h]; maximise
// Σ value[j]·y[j] less a small cost per slot that is larger on small
// hosts, so that jobs pack onto few hosts. It then rounds: jobs in order
// of y (then value) run if their ranks still fit; a local search swaps
// one running job for waiting ones that fit in its place while that
// raises the utilisation (the relaxation alone can leave a 10-slot
// cluster at 6 with jobs of 6, 5 and 5). The running jobs then take
// their slots, largest first: the one host that fits a job most tightly
// if any can hold it whole, else the relaxation's slots per host rounded
// down, then the rest on the hosts it already uses, then on the hosts
// with the most free slots. If the
// simplex fails numerically, the jobs go in order of value instead.
func Allocate(hosts []Host, jobs []Job) (map[string][]int, error) {
	alloc, _, err := allocate(hosts, jobs)
	return alloc, err
}

// allocate is Allocate, also returning the relaxation's utilisation, an
// upper bound on any allocation's (NaN if the simplex failed).
func allocate(hosts []Host, jobs []Job) (map[string][]int, float64, error) {
	if err := ValidateHosts(hosts); err != nil {
		return nil, 0, err
	}
	seen := map[string]bool{}
	for i, j := range jobs {
		switch {
		case j.Name == "":
			return nil, 0, fmt.Errorf("job %d has no name", i)
		case seen[j.Name]:
			return nil, 0, fmt.Errorf("job %q is listed twice", j.Name)
		case j.Ranks < 1:
			return nil, 0, fmt.Errorf("job %q has %d ranks, want at least 1", j.Name, j.Ranks)
		case j.Weight < 0 || math.IsNaN(j.Weight) || math.IsInf(j.Weight, 0):
			return nil, 0, fmt.Errorf("job %q: weight %v, want a finite number of at least 0", j.Name, j.Weight)
		}
		seen[j.Name] = true
	}
	if len(jobs) == 0 {
		return map[string][]int{}, 0, nil
	}
	x, y, bound := relax(hosts, jobs)
	// Round: the jobs in order of y, then value, then as listed.
	order := make([]int, len(jobs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ya, yb := math.Round(y[a]*1e6), math.Round(y[b]*1e6)
		if ya != yb {
			return cmpFloatDesc(ya, yb)
		}
		return cmpFloatDesc(jobs[a].value(), jobs[b].value())
	})
	total := 0
	for _, h := range hosts {
		total += h.Slots
	}
	run := make([]bool, len(jobs))
	used := 0
	for _, j := range order {
		if used+jobs[j].Ranks <= total {
			run[j], used = true, used+jobs[j].Ranks
		}
	}
	improveSelection(jobs, order, run, total)
	// Give each running job its slots, largest first: small ones fill
	// the gaps.
	free := make([]int, len(hosts))
	for h := range hosts {
		free[h] = hosts[h].Slots
	}
	alloc := map[string][]int{}
	slices.SortStableFunc(order, func(a, b int) int { return jobs[b].Ranks - jobs[a].Ranks })
	for _, j := range order {
		if run[j] {
			alloc[jobs[j].Name] = spread(jobs[j].Ranks, x[j], y[j], free)
		}
	}
	return alloc, bound, nil
}

// improveSelection swaps one running job for waiting ones (taken in
// order while they fit) whenever that raises the total value, until no
// swap does. Each swap raises the value, so it ends.
func improveSelection(jobs []Job, order []int, run []bool, total int) {
	used := func() int {
		u := 0
		for j, r := range run {
			if r {
				u += jobs[j].Ranks
			}
		}
		return u
	}
	for improved := true; improved; {
		improved = false
		for _, out := range order {
			if !run[out] {
				continue
			}
			room := total - used() + jobs[out].Ranks
			gain := -jobs[out].value()
			var in []int
			for _, j := range order {
				if !run[j] && jobs[j].Ranks <= room {
					in = append(in, j)
					room -= jobs[j].Ranks
					gain += jobs[j].value()
				}
			}
			if gain > 1e-9 {
				run[out] = false
				for _, j := range in {
					run[j] = true
				}
				improved = true
				break
			}
		}
	}
}

// spread places ranks on the hosts with free slots: all on the host
// that fits them most tightly if one can hold them all, else the
// relaxation's share rounded down, then on the hosts already used, then
// on the freest.
func spread(ranks int, x []float64, y float64, free []int) []int {
	got := make([]int, len(free))
	fit := -1
	for h, f := range free {
		if f >= ranks && (fit < 0 || f < free[fit]) {
			fit = h
		}
	}
	if fit >= 0 {
		got[fit] = ranks
		free[fit] -= ranks
		return got
	}
	left := ranks
	if y > 1e-9 {
		for h := range free {
			got[h] = min(int(math.Floor(x[h]/y+1e-6)), free[h], left)
			left -= got[h]
		}
	}
	hosts := make([]int, len(free))
	for h := range hosts {
		hosts[h] = h
	}
	slices.SortStableFunc(hosts, func(a, b int) int {
		if ua, ub := got[a] > 0, got[b] > 0; ua != ub {
			if ua {
				return -1
			}
			return 1
		}
		return (free[b] - got[b]) - (free[a] - got[a])
	})
	for _, h := range hosts {
		more := min(left, free[h]-got[h])
		got[h] += more
		left -= more
	}
	for h := range free {
		free[h] -= got[h]
	}
	return got
}

// relax solves the linear relaxation. It returns x[j][h], y[j] and the
// relaxation's utilisation (an upper bound on any allocation's, to within
// the packing cost); if the simplex fails, all zeros and NaN.
func relax(hosts []Host, jobs []Job) (x [][]float64, y []float64, bound float64) {
	nh, nj := len(hosts), len(jobs)
	nv := nj*nh + nj // x[j][h] at j*nh+h, then y[j]
	c := make([]float64, nv)
	minValue := math.Inf(1)
	for _, j := range jobs {
		minValue = math.Min(minValue, j.value()/float64(j.Ranks))
	}
	// The packing cost per slot stays far below any job's value per slot,
	// so it never trades utilisation for packing.
	eps := 1e-3 * minValue
	if eps == 0 {
		eps = 1e-9
	}
	for j, job := range jobs {
		c[nj*nh+j] = -job.value()
		for h, host := range hosts {
			c[j*nh+h] = eps / float64(min(host.Slots, job.Ranks))
		}
	}
	// Equalities: Σh x[j][h] - Ranks[j]·y[j] = 0.
	a := mat.NewDense(nj, nv, nil)
	b := make([]float64, nj)
	for j, job := range jobs {
		for h := range hosts {
			a.Set(j, j*nh+h, 1)
		}
		a.Set(j, nj*nh+j, -float64(job.Ranks))
	}
	// Inequalities: Σj x[j][h] ≤ Slots[h]; y[j] ≤ 1.
	g := mat.NewDense(nh+nj, nv, nil)
	hv := make([]float64, nh+nj)
	for h, host := range hosts {
		for j := range jobs {
			g.Set(h, j*nh+h, 1)
		}
		hv[h] = float64(host.Slots)
	}
	for j := range jobs {
		g.Set(nh+j, nj*nh+j, 1)
		hv[nh+j] = 1
	}
	cs, as, bs := lp.Convert(c, g, hv, a, b)
	_, sol, err := lp.Simplex(cs, as, bs, 1e-10, nil)
	x = make([][]float64, nj)
	y = make([]float64, nj)
	if err != nil {
		for j := range jobs {
			x[j] = make([]float64, nh)
		}
		return x, y, math.NaN()
	}
	for j, job := range jobs {
		x[j] = sol[j*nh : (j+1)*nh]
		y[j] = min(1, max(0, sol[nj*nh+j]))
		bound += job.value() * y[j]
	}
	return x, y, bound
}
