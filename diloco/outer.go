package diloco

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

// Outer is one rank's part of the outer synchronisation. Every rank of
// every site makes the same calls at the same steps. Not safe for
// concurrent use.
type Outer struct {
	cfg         Config
	site, cross collective.Comm
	params      [][]float32
	n           int // elements in all params
	lo, hi      int // this rank's shard of the flat vector
	shardLen    int // every rank's shard, padded: ceil(n / site size)

	anchor, mom []float32 // the global parameters at the last sync, and the outer momentum: the same on every rank
	resid       []float32 // this rank's shard (padded to shardLen): what compression has not sent yet
	snap        []float32 // the parameters when the pending sync started
	mine        []float32 // this rank's averaged shard, padded, for the site's all-gather
	gathered    []float32 // the site's shards of the averaged delta
	agreed      int64     // the step after which every site holds the same parameters (-1: none yet)

	enc      *encoder
	dec      *decoder       // used by one exchange at a time
	fed      *boardExchange // nil: the sites exchange over cross
	pending  *exchange
	stats    Stats
	absences []Absence
	closed   bool
}

// Stats counts what the outer syncs moved.
type Stats struct {
	// Syncs is the number of outer syncs applied.
	Syncs int64
	// WireBytes is what this rank sent to the other sites, all syncs.
	WireBytes int64
	// DenseBytes is what this rank's messages would have been as plain
	// float32 (its shard of the delta), MessageBytes what they were.
	DenseBytes, MessageBytes int64
	// Waited is how long Step blocked for exchanges that had not
	// finished when their results were due.
	Waited time.Duration
	// Partial counts the syncs that went ahead without some site (a
	// Federation's), Missed those this rank's site was left out of, and
	// DeadlineWaits those that went ahead, once the deadline passed,
	// without a site they waited for (one not presumed down).
	Partial, Missed, DeadlineWaits int64
}

// Ratio is the compression ratio of the messages: plain float32 bytes per
// byte sent.
func (s Stats) Ratio() float64 {
	if s.MessageBytes == 0 {
		return 0
	}
	return float64(s.DenseBytes) / float64(s.MessageBytes)
}

// exchange is one sync on the wire: started by Step, finished by the
// goroutine that runs it.
type exchange struct {
	step    int64 // the step it started after
	applyAt int64
	done    chan struct{}
	avg     []float32 // this rank's shard of the averaged delta
	sent    int64
	err     error
	// Over a board: the sites averaged (nil over cross: all), and, when
	// this site was not among them, the message it posted; mine is this
	// site's message when it was among them.
	members []int
	own     []byte
	mine    []byte
	waited  bool // it went ahead, after the deadline, without a site it waited for
}

// New returns the outer synchronisation of params on this rank.
//
// site is the group of this rank's site; nil when the site is this rank
// alone. cross is the group of the ranks that hold this rank's place in
// every site, one per site, in the same site order everywhere; nil when
// there is one site. Every site has the same number of ranks; each rank
// exchanges its shard of the parameters (a 1/site-size slice) with its
// peers in cross, then the site gathers the shards, so the wide-area
// traffic is spread over every rank of a site. cross carries only outer
// syncs, which run beside the training loop when Delay > 0: it must not
// be the group the loop averages gradients on. site is used inside Step,
// on the caller's goroutine.
//
// params must be the same on every rank (broadcast them first); Step
// reads and writes them in place.
func New(site, cross collective.Comm, cfg Config, params ...[]float32) (*Outer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Deadline > 0 {
		return nil, fmt.Errorf("outer sync deadline %v: only a federation of sites (NewFederated) can sync without a site", cfg.Deadline)
	}
	return newOuter(site, cross, cfg, params)
}

// NewFederated is New for a site that runs as a job of its own: the sites
// meet on fed's board instead of a cross-site group, and a sync waits at
// most cfg.Deadline (0: forever) for the sites missing. site is the
// group of this site's ranks, as in New. Every site must have as many
// ranks; the first to join fixes the number, and the list of sites.
func NewFederated(ctx context.Context, site collective.Comm, fed Federation, cfg Config, params ...[]float32) (*Outer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	places, place := 1, 0
	if site != nil {
		places, place = site.Size(), site.Rank()
	}
	if err := fed.validate(places); err != nil {
		return nil, err
	}
	b := &boardExchange{Federation: fed, place: place, places: places, every: int64(cfg.Every), deadline: cfg.Deadline,
		missedRun: make([]int, len(fed.Sites))}
	if err := b.join(ctx); err != nil {
		return nil, err
	}
	o, err := newOuter(site, nil, cfg, params)
	if err != nil {
		return nil, err
	}
	o.fed = b
	return o, nil
}

func newOuter(site, cross collective.Comm, cfg Config, params [][]float32) (*Outer, error) {
	o := &Outer{cfg: cfg, site: site, cross: cross, params: params, agreed: -1}
	for _, p := range params {
		o.n += len(p)
	}
	size, rank := 1, 0
	if site != nil {
		size, rank = site.Size(), site.Rank()
	}
	o.shardLen = (o.n + size - 1) / size
	o.lo = min(o.n, rank*o.shardLen)
	o.hi = min(o.n, o.lo+o.shardLen)
	o.anchor = make([]float32, o.n)
	o.mom = make([]float32, o.n)
	o.snap = make([]float32, o.n)
	o.resid = make([]float32, o.shardLen)
	o.mine = make([]float32, o.shardLen)
	o.gathered = make([]float32, o.shardLen*size)
	o.flatten(o.anchor)
	var err error
	if o.enc, err = newEncoder(cfg); err != nil {
		return nil, err
	}
	if o.dec, err = newDecoder(); err != nil {
		o.enc.close()
		return nil, err
	}
	return o, nil
}

// Anchor is the global parameters as of the last sync, Momentum the outer
// optimizer's momentum: both the same on every rank, and what a
// checkpoint must hold (with Residual) to resume the outer optimizer.
// The slices are live: restore a checkpoint into them before the first
// Step.
func (o *Outer) Anchor() []float32   { return o.anchor }
func (o *Outer) Momentum() []float32 { return o.mom }

// Residual is this rank's error feedback: the part of its shard of the
// deltas that compression has not sent yet. It differs between ranks, and
// has the same length on every rank (the shards' padded length), so that
// a checkpoint can hold one row per rank.
func (o *Outer) Residual() []float32 { return o.resid }

// Stats returns the counters so far.
func (o *Outer) Stats() Stats { return o.stats }

func (o *Outer) flatten(dst []float32) {
	off := 0
	for _, p := range o.params {
		off += copy(dst[off:], p)
	}
}

// Step is called after inner step `step` (counted from 1) has updated the
// parameters. It applies the pending sync when its delay is up, and
// starts a sync every Every steps; with Delay 0 the sync is applied
// before Step returns.
func (o *Outer) Step(ctx context.Context, step int64) error {
	if o.closed {
		return errors.New("diloco: Step after Close")
	}
	if o.pending != nil && step >= o.pending.applyAt {
		if err := o.apply(ctx); err != nil {
			return err
		}
	}
	if step%int64(o.cfg.Every) != 0 {
		return nil
	}
	if o.pending != nil {
		return fmt.Errorf("diloco: step %d: the sync of step %d is still pending (Step must be called after every step)", step, o.pending.step)
	}
	o.start(ctx, step)
	if o.cfg.Delay == 0 {
		return o.apply(ctx)
	}
	return nil
}

// Sync applies any pending sync, then syncs now and waits for it: at the
// end of training, so that every site ends with the same parameters. When
// a sync without delay was just applied after step, they already do, and
// Sync does nothing.
func (o *Outer) Sync(ctx context.Context, step int64) error {
	if o.pending == nil && o.agreed == step {
		return nil
	}
	if o.pending != nil {
		if err := o.apply(ctx); err != nil {
			return err
		}
	}
	o.start(ctx, step)
	return o.apply(ctx)
}

// start computes this rank's shard of the delta since the last sync,
// encodes it and sends it on its way.
func (o *Outer) start(ctx context.Context, step int64) {
	o.flatten(o.snap)
	resid := o.resid[:o.hi-o.lo]
	for i := range resid {
		resid[i] += o.anchor[o.lo+i] - o.snap[o.lo+i]
	}
	msg := o.enc.encode(nil, resid)
	o.stats.DenseBytes += int64(len(resid) * 4)
	o.stats.MessageBytes += int64(len(msg))
	x := &exchange{step: step, applyAt: step + int64(o.cfg.Delay), done: make(chan struct{}), avg: make([]float32, o.hi-o.lo)}
	o.pending = x
	if o.cfg.Delay == 0 {
		x.run(ctx, o.cross, o.fed, o.dec, msg)
		return
	}
	go x.run(ctx, o.cross, o.fed, o.dec, msg)
}

// run exchanges msg with the other sites, over cross or fed's board, and
// averages what they sent. The result is the same on every site: every
// message, this site's too, is decoded and summed in site order.
func (x *exchange) run(ctx context.Context, cross collective.Comm, fed *boardExchange, d *decoder, msg []byte) {
	defer close(x.done)
	if fed != nil {
		x.err = fed.exchange(ctx, x, d, msg)
		return
	}
	if cross == nil || cross.Size() == 1 {
		x.err = d.addTo(x.avg, msg)
		return
	}
	sites := cross.Size()
	lens := make([]int64, sites)
	if err := cross.AllGather(ctx, collective.Int64s([]int64{int64(len(msg))}), collective.Int64s(lens)); err != nil {
		x.err = fmt.Errorf("exchanging message sizes between sites: %w", err)
		return
	}
	width := int((slices.Max(lens) + 3) &^ 3) // AllGather moves whole int32s
	send := make([]byte, width)
	copy(send, msg)
	recv := make([]byte, width*sites)
	if err := cross.AllGather(ctx, collective.BufferOf(collective.Int32, send), collective.BufferOf(collective.Int32, recv)); err != nil {
		x.err = fmt.Errorf("exchanging deltas between sites: %w", err)
		return
	}
	x.sent = int64((sites - 1) * (8 + width)) // what a ring all-gather sends
	msgs := make([][]byte, sites)
	for s := range sites {
		msgs[s] = recv[s*width : s*width+int(lens[s])]
	}
	x.err = x.mean(d, msgs, func(s int) string { return fmt.Sprintf("site %d (rank %d of the cross-site group)", s, s) })
}

// mean sets x.avg to the average of msgs, decoded and summed in their
// order, so that every site that averages the same messages gets the same
// bits. who names message i's sender for an error.
func (x *exchange) mean(d *decoder, msgs [][]byte, who func(i int) string) error {
	clear(x.avg)
	for i, m := range msgs {
		if err := d.addTo(x.avg, m); err != nil {
			return fmt.Errorf("the delta of %s: %w", who(i), err)
		}
	}
	inv := float32(len(msgs))
	for i := range x.avg {
		x.avg[i] /= inv
	}
	return nil
}

// apply waits for the pending exchange, gathers the site's shards of the
// averaged delta and takes the outer optimizer's step.
func (o *Outer) apply(ctx context.Context) error {
	x := o.pending
	o.pending = nil
	t0 := time.Now()
	<-x.done // with Delay 0 it has; else its calls end with ctx
	if o.cfg.Delay > 0 {
		o.stats.Waited += time.Since(t0)
	}
	if x.err != nil {
		return fmt.Errorf("diloco: outer sync of step %d: %w", x.step, x.err)
	}
	o.stats.Syncs++
	o.stats.WireBytes += x.sent
	if x.waited {
		o.stats.DeadlineWaits++
	}
	if x.members != nil {
		if err := o.noteMembers(x); err != nil {
			return fmt.Errorf("diloco: outer sync of step %d: %w", x.step, err)
		}
	}
	avg := o.gathered[:o.n]
	if o.site != nil && o.site.Size() > 1 {
		copy(o.mine, x.avg) // the tail past this shard stays zero
		if err := o.site.AllGather(ctx, collective.Float32s(o.mine), collective.Float32s(o.gathered)); err != nil {
			return fmt.Errorf("diloco: outer sync of step %d: gathering the averaged delta within the site: %w", x.step, err)
		}
	} else {
		copy(avg, x.avg)
	}
	lr, mu := float32(o.cfg.LR), float32(o.cfg.Momentum)
	for i, g := range avg {
		m := mu*o.mom[i] + g
		o.mom[i] = m
		if o.cfg.Nesterov {
			g += mu * m
		} else {
			g = m
		}
		o.anchor[i] -= lr * g
	}
	// The parameters become the new global ones plus what this site
	// learned since the sync started (nothing, with no delay).
	off := 0
	for _, p := range o.params {
		for i := range p {
			if o.cfg.Delay == 0 {
				p[i] = o.anchor[off+i]
			} else {
				p[i] = o.anchor[off+i] + (p[i] - o.snap[off+i])
			}
		}
		off += len(p)
	}
	if o.cfg.Delay == 0 {
		o.agreed = x.step
	}
	return nil
}

// noteMembers records a sync some site missed and, when it was this one,
// puts the delta it posted back into its error feedback.
func (o *Outer) noteMembers(x *exchange) error {
	sites := o.fed.Sites
	if len(x.members) == len(sites) {
		return nil
	}
	a := Absence{Step: x.step}
	for i, s := range sites {
		if slices.Contains(x.members, i) {
			a.Members = append(a.Members, s)
		} else {
			a.Missing = append(a.Missing, s)
		}
	}
	o.stats.Partial++
	if len(o.absences) == maxAbsences {
		o.absences = slices.Delete(o.absences, 0, 1)
	}
	o.absences = append(o.absences, a)
	if x.own == nil {
		return nil
	}
	o.stats.Missed++
	if err := o.dec.addTo(o.resid[:o.hi-o.lo], x.own); err != nil {
		return fmt.Errorf("putting this site's unused delta back into its error feedback: %w", err)
	}
	return nil
}

// Absences lists the recent syncs (up to 64) that went ahead without some
// site, oldest first; only a Federation has them.
func (o *Outer) Absences() []Absence { return slices.Clone(o.absences) }

// CatchUp brings a site restarted from a checkpoint taken right after the
// sync of step up to date: it replays the syncs the federation decided
// since, from the board, and returns the step of the last one, the step
// the site resumes after (its parameters are then that sync's global
// ones). Every rank of the site calls it after restoring the checkpoint;
// they agree on how far to replay. Without a Federation it returns step.
func (o *Outer) CatchUp(ctx context.Context, step int64) (int64, error) {
	switch {
	case o.pending != nil:
		return step, fmt.Errorf("diloco: CatchUp with the sync of step %d pending: call it right after restoring a checkpoint", o.pending.step)
	case o.fed == nil || o.closed:
		return step, nil
	}
	every := int64(o.cfg.Every)
	var decided [][]int // the members of the syncs after step, in order
	for s := step + every; ; s += every {
		m, ok, err := o.fed.members(ctx, s)
		if err == nil && !ok {
			// Not decided yet, or pruned: the mark, raised before any
			// sync's members go, tells the two apart.
			var at int64
			if at, err = o.fed.pruned(ctx); err == nil && s <= at {
				err = o.fed.tooFarBehind(s, at)
			}
		}
		if err != nil {
			return step, fmt.Errorf("diloco: catching up from step %d: %w", step, err)
		}
		if !ok {
			break
		}
		decided = append(decided, m)
	}
	// How far every rank of the site replays: decisions are final, so the
	// fewest any rank saw are decided for all.
	if o.site != nil && o.site.Size() > 1 {
		v := []int64{int64(len(decided))}
		if err := o.site.AllReduce(ctx, collective.Int64s(v), collective.Int64s(v), collective.Min); err != nil {
			return step, fmt.Errorf("diloco: catching up from step %d: agreeing within the site how far: %w", step, err)
		}
		decided = decided[:v[0]]
	}
	last := step + int64(len(decided))*every
	for i, members := range decided {
		s := step + int64(i+1)*every
		x := &exchange{step: s, applyAt: s, done: make(chan struct{}), avg: make([]float32, o.hi-o.lo)}
		close(x.done)
		if err := o.fed.average(ctx, x, o.dec, members, false); err != nil {
			return step, fmt.Errorf("diloco: catching up, the sync of step %d: %w", s, err)
		}
		if x.mine != nil {
			// This site posted to this sync before it went down, from
			// error feedback the checkpoint still holds: what that
			// message carried went out, so it must not go out again.
			// (The rest of the delta it came from died with the site.)
			if err := o.dec.clearCarried(o.resid[:o.hi-o.lo], x.mine); err != nil {
				return step, fmt.Errorf("diloco: catching up, this site's own delta of the sync of step %d: %w", s, err)
			}
		}
		// Replayed, the sync moves the parameters to its global ones (no
		// local progress to keep, as after a sync without delay).
		o.flatten(o.snap)
		o.pending = x
		if err := o.apply(ctx); err != nil {
			return step, err
		}
	}
	o.agreed = last
	if last > step {
		// Down while the others synced: have them wait for it again.
		if err := o.fed.back(ctx, last); err != nil {
			return last, fmt.Errorf("diloco: catching up: saying this site is back: %w", err)
		}
	}
	return last, nil
}

// Close waits for an exchange in flight and releases the compressor. It
// does not close the groups, which the caller owns.
func (o *Outer) Close() error {
	if o.closed {
		return nil
	}
	o.closed = true
	if o.pending != nil {
		<-o.pending.done
	}
	if o.fed != nil {
		o.fed.pruning.Wait()
	}
	o.enc.close()
	o.dec.close()
	return nil
}
