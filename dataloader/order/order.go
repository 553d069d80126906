package order

import (
	"errors"
	"fmt"
	"math"
	"sync"
)

// ErrInvalid is wrapped by every error this package returns for a bad
// argument (configuration, shard counts, state, rank or world size).
var ErrInvalid = errors.New("order: invalid argument")

// Config says how the order of an epoch is made and cut into batches.
type Config struct {
	// Seed selects the order; with Epoch it is the only input besides the
	// shard counts, Shuffle and Window.
	Seed uint64 `json:"seed"`
	// Shuffle permutes the shards and, with Window > 1, the samples. With
	// Shuffle false the order is the natural one (shard 0 index 0, 1, ...,
	// then shard 1, ...), whatever Window says.
	Shuffle bool `json:"shuffle"`
	// Window is the size of the shuffle buffer in samples. 0 or 1 means
	// no sample shuffle (shards are still permuted when Shuffle is true).
	Window int `json:"window"`
	// BatchSize is the per-rank batch size B; a global batch is world*B.
	BatchSize int `json:"batch_size"`
	// DropLast drops the epoch's last global batch when it is incomplete;
	// otherwise that batch is padded with samples from the start of the
	// epoch's order.
	DropLast bool `json:"drop_last"`
}

// DefaultConfig returns a shuffled order with a 16384-sample window
// (256 KiB of buffer), batch size 1 and padding of the last batch.
func DefaultConfig() Config {
	return Config{Shuffle: true, Window: 16384, BatchSize: 1}
}

// Validate reports whether c can be used.
func (c Config) Validate() error {
	if c.BatchSize < 1 {
		return fmt.Errorf("%w: batch size %d, want at least 1", ErrInvalid, c.BatchSize)
	}
	if c.Window < 0 {
		return fmt.Errorf("%w: shuffle window %d, want 0 or more", ErrInvalid, c.Window)
	}
	return nil
}

// Sample names one record: the Index-th record of shard Shard.
type Sample struct {
	Shard int   `json:"shard"`
	Index int64 `json:"index"`
}

// State is where a job stands in the order: the job-wide number of
// samples of epoch Epoch's global order already consumed. It is small and
// meant for checkpoint metadata.
type State struct {
	Seed     uint64 `json:"seed"`
	Epoch    int    `json:"epoch"`
	Consumed int64  `json:"consumed"`
}

// Order makes the per-epoch global order of a sharded dataset and cuts it
// into per-rank batches. It is safe for concurrent use.
type Order struct {
	shards []int64
	prefix []int64 // prefix[i] = records in shards 0..i-1
	total  int64
	cfg    Config

	mu         sync.Mutex
	cacheEpoch int
	cache      []Sample // read-only once published
}

// New returns the order of a dataset whose shard i holds shards[i] records.
// It fails on an empty dataset (no shards, or no records at all), a
// negative count, or an invalid cfg.
func New(shards []int64, cfg Config) (*Order, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(shards) == 0 {
		return nil, fmt.Errorf("%w: no shards", ErrInvalid)
	}
	o := &Order{shards: append([]int64(nil), shards...), prefix: make([]int64, len(shards)+1), cfg: cfg}
	for i, n := range shards {
		if n < 0 {
			return nil, fmt.Errorf("%w: shard %d has a negative record count %d", ErrInvalid, i, n)
		}
		if o.total > math.MaxInt64-n {
			return nil, fmt.Errorf("%w: record counts overflow int64 at shard %d", ErrInvalid, i)
		}
		o.total += n
		o.prefix[i+1] = o.total
	}
	if o.total == 0 {
		return nil, fmt.Errorf("%w: dataset of %d shards holds no records", ErrInvalid, len(shards))
	}
	if uint64(o.total) > uint64(math.MaxInt) {
		return nil, fmt.Errorf("%w: %d records do not fit in memory on this platform", ErrInvalid, o.total)
	}
	return o, nil
}

// Total returns the number of records in the dataset.
func (o *Order) Total() int64 { return o.total }

// Config returns the configuration o was made with.
func (o *Order) Config() Config { return o.cfg }

// Flat returns the global flat id of s: the records of the shards before
// it plus its index. Flat ids run from 0 to Total()-1 in natural order.
func (o *Order) Flat(s Sample) int64 { return o.prefix[s.Shard] + s.Index }

// Start returns the state at the start of epoch.
func (o *Order) Start(epoch int) State { return State{Seed: o.cfg.Seed, Epoch: epoch} }

// Epoch returns the whole global order of epoch: every sample exactly once,
// len Total(). It depends only on the shard counts, Seed, Shuffle, Window
// and epoch, never on world or batch size. The caller owns the slice.
func (o *Order) Epoch(epoch int) []Sample {
	out := make([]Sample, o.total)
	o.fill(epoch, out)
	return out
}

// shardOrder returns the order in which shards are streamed.
func (o *Order) shardOrder(rng *pcg) []int {
	perm := make([]int, len(o.shards))
	for i := range perm {
		perm[i] = i
	}
	if o.cfg.Shuffle {
		for i := len(perm) - 1; i > 0; i-- {
			j := rng.Intn(i + 1)
			perm[i], perm[j] = perm[j], perm[i]
		}
	}
	return perm
}

func (o *Order) fill(epoch int, out []Sample) {
	rng := newPCG(o.cfg.Seed, epoch)
	perm := o.shardOrder(rng)
	k := 0
	w := o.cfg.Window
	if !o.cfg.Shuffle || w <= 1 {
		for _, sh := range perm {
			for i := range o.shards[sh] {
				out[k] = Sample{Shard: sh, Index: i}
				k++
			}
		}
		return
	}
	if int64(w) > o.total {
		w = int(o.total)
	}
	buf := make([]Sample, 0, w)
	for _, sh := range perm {
		for i := range o.shards[sh] {
			s := Sample{Shard: sh, Index: i}
			if len(buf) < w {
				buf = append(buf, s)
				continue
			}
			j := rng.Intn(w)
			out[k] = buf[j]
			k++
			buf[j] = s
		}
	}
	for n := len(buf); n > 0; n-- {
		j := rng.Intn(n)
		out[k] = buf[j]
		k++
		buf[j] = buf[n-1]
	}
}

// cached returns the order of epoch, shared and read-only.
func (o *Order) cached(epoch int) []Sample {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cache == nil || o.cacheEpoch != epoch {
		o.cache = o.Epoch(epoch)
		o.cacheEpoch = epoch
	}
	return o.cache
}

func (o *Order) checkState(st State) error {
	if st.Seed != o.cfg.Seed {
		return fmt.Errorf("%w: state seed %d differs from the configured seed %d (resume with the checkpoint's seed)", ErrInvalid, st.Seed, o.cfg.Seed)
	}
	if st.Epoch < 0 {
		return fmt.Errorf("%w: negative epoch %d", ErrInvalid, st.Epoch)
	}
	if st.Consumed < 0 || st.Consumed > o.total {
		return fmt.Errorf("%w: state consumed %d is outside [0, %d] (was the dataset changed?)", ErrInvalid, st.Consumed, o.total)
	}
	return nil
}

// Steps returns how many global batches (steps) a job of world ranks
// still takes in st's epoch, the same number on every rank.
func (o *Order) Steps(st State, world int) int64 {
	if world < 1 {
		return 0
	}
	nb := int64(world) * int64(o.cfg.BatchSize)
	left := max(o.total-st.Consumed, 0)
	if o.cfg.DropLast {
		return left / nb
	}
	return (left + nb - 1) / nb
}

// Padding returns how many padded samples (samples repeated from the start
// of the epoch's order) a job of world ranks gets in the rest of st's
// epoch, summed over all ranks: 0 with DropLast.
func (o *Order) Padding(st State, world int) int64 {
	if world < 1 || o.cfg.DropLast {
		return 0
	}
	nb := int64(world) * int64(o.cfg.BatchSize)
	left := max(o.total-st.Consumed, 0)
	if r := left % nb; r != 0 {
		return nb - r
	}
	return 0
}

// Dropped returns how many samples of the rest of st's epoch a job of
// world ranks drops (the incomplete last global batch): 0 without DropLast.
func (o *Order) Dropped(st State, world int) int64 {
	if world < 1 || !o.cfg.DropLast {
		return 0
	}
	nb := int64(world) * int64(o.cfg.BatchSize)
	return max(o.total-st.Consumed, 0) % nb
}

// Cursor walks one rank's share of one epoch.
type Cursor struct {
	o       *Order
	order   []Sample
	st      State // at creation
	rank    int
	world   int
	b       int
	taken   int64 // batches taken by this rank
	padding int
	done    bool
}

// Cursor returns the iterator of rank among world ranks, continuing from
// st. Every rank of the job must use the same st and world. world may
// differ from the world size that produced st (elastic resume).
func (o *Order) Cursor(st State, rank, world int) (*Cursor, error) {
	if world < 1 {
		return nil, fmt.Errorf("%w: world size %d, want at least 1", ErrInvalid, world)
	}
	if rank < 0 || rank >= world {
		return nil, fmt.Errorf("%w: rank %d outside [0, %d)", ErrInvalid, rank, world)
	}
	if err := o.checkState(st); err != nil {
		return nil, err
	}
	if int64(world) > math.MaxInt64/int64(o.cfg.BatchSize) {
		return nil, fmt.Errorf("%w: world %d times batch size %d overflows", ErrInvalid, world, o.cfg.BatchSize)
	}
	return &Cursor{o: o, st: st, rank: rank, world: world, b: o.cfg.BatchSize}, nil
}

// Next returns this rank's next batch of B samples, or false at the end of
// the epoch. With DropLast an incomplete last global batch ends the epoch;
// without it, that batch is padded (see Padding). The caller owns the slice.
func (c *Cursor) Next() ([]Sample, bool) {
	if c.done {
		return nil, false
	}
	total := c.o.total
	nb := int64(c.world) * int64(c.b)
	pos := c.st.Consumed + c.taken*nb
	if pos >= total || (c.o.cfg.DropLast && total-pos < nb) {
		c.done = true
		return nil, false
	}
	if c.order == nil {
		c.order = c.o.cached(c.st.Epoch)
	}
	base := pos + int64(c.rank)*int64(c.b)
	batch := make([]Sample, c.b)
	for i := range batch {
		p := base + int64(i)
		if p >= total {
			p %= total
			c.padding++
		}
		batch[i] = c.order[p]
	}
	c.taken++
	return batch, true
}

// State returns the job-wide state after the batches this rank has taken:
// Consumed advances by world*B per batch, is capped at Total (a padded last
// batch ends the epoch) and is Total once Next has reported the end of the
// epoch (a dropped remainder counts as consumed).
func (c *Cursor) State() State {
	st := c.st
	if c.done {
		st.Consumed = c.o.total
		return st
	}
	nb := int64(c.world) * int64(c.b)
	st.Consumed = min(st.Consumed+c.taken*nb, c.o.total)
	return st
}

// Padding returns how many of the samples in this rank's batches so far
// were padding: repeats of samples from the start of the epoch's order.
func (c *Cursor) Padding() int { return c.padding }
