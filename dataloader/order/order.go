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

// Order versions. A version fixes how the order of an epoch is computed;
// a State records the version it belongs to (see Resolve).
const (
	// V1 streams the shard-permuted dataset through one global shuffle
	// buffer and deals each global batch to the ranks sample by sample.
	V1 = 1
	// V2 permutes spans (runs of consecutive samples of one shard), deals
	// them to streams, shuffles each stream in its own buffer and
	// interleaves the streams batch by batch, so that rank r of a world of
	// Streams ranks reads only the blocks of stream r.
	V2 = 2

	// DefaultSpan is the target span length of V2 in samples.
	DefaultSpan = 256
	// maxStreams bounds the streams of a V2 state, so that a damaged
	// checkpoint cannot make a cursor allocate without limit.
	maxStreams = 1 << 20
)

// Config says how the order of an epoch is made and cut into batches.
type Config struct {
	// Version is the order version: 0 or V1 for the first one (the zero
	// value keeps the meaning configurations had before versions
	// existed), V2 for spans dealt to streams. A state that records its
	// version is resumed in that version whatever this says (Resolve).
	Version int `json:"version,omitempty"`
	// Seed selects the order; with Epoch it is the only input besides the
	// shard counts, Shuffle and Window.
	Seed uint64 `json:"seed"`
	// Shuffle permutes the shards and, with Window > 1, the samples. With
	// Shuffle false the order is the natural one (shard 0 index 0, 1, ...,
	// then shard 1, ...), whatever Window says.
	Shuffle bool `json:"shuffle"`
	// Window is the size of the shuffle buffer in samples (V2: of each
	// stream's buffer). 0 or 1 means no sample shuffle (shards, or V2's
	// spans, are still permuted when Shuffle is true).
	Window int `json:"window"`
	// BatchSize is the per-rank batch size B; a global batch is world*B.
	BatchSize int `json:"batch_size"`
	// DropLast drops the epoch's last global batch when it is incomplete;
	// otherwise that batch is padded with samples from the start of the
	// epoch's order.
	DropLast bool `json:"drop_last"`
	// Span (V2) is the target length of a span in samples (0:
	// DefaultSpan). With a block layout (NewBlocks) a span is the
	// shortest run of whole blocks holding at least Span samples, so
	// that spans, and the streams made of them, share no block.
	Span int `json:"span,omitempty"`
	// Streams (V2) is the number of streams an epoch is dealt into; 0
	// means the world size of the first cursor of the epoch. Ranks read
	// disjoint blocks when the world size divides Streams.
	Streams int `json:"streams,omitempty"`
}

// DefaultConfig returns a shuffled V2 order with a 16384-sample window
// (256 KiB of buffer), batch size 1 and padding of the last batch.
func DefaultConfig() Config {
	return Config{Version: V2, Shuffle: true, Window: 16384, BatchSize: 1}
}

// Validate reports whether c can be used.
func (c Config) Validate() error {
	if c.BatchSize < 1 {
		return fmt.Errorf("%w: batch size %d, want at least 1", ErrInvalid, c.BatchSize)
	}
	if c.Window < 0 {
		return fmt.Errorf("%w: shuffle window %d, want 0 or more", ErrInvalid, c.Window)
	}
	if c.Version < 0 || c.Version > V2 {
		return fmt.Errorf("%w: order version %d, this ringo knows %d and %d", ErrInvalid, c.Version, V1, V2)
	}
	if c.Span < 0 {
		return fmt.Errorf("%w: span %d, want 0 or more", ErrInvalid, c.Span)
	}
	if c.Streams < 0 || c.Streams > maxStreams {
		return fmt.Errorf("%w: %d streams, want 0 to %d", ErrInvalid, c.Streams, maxStreams)
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
//
// Version, Streams and Chunk say which global order Consumed counts in.
// V1 states leave them 0, so their JSON is what it was before versions
// existed; V2 states record version 2, the number of streams and the
// chunk (the per-rank batch size the epoch started with). A state with
// Version 0 is filled in by Resolve.
type State struct {
	Seed     uint64 `json:"seed"`
	Epoch    int    `json:"epoch"`
	Consumed int64  `json:"consumed"`
	Version  int    `json:"version,omitempty"`
	Streams  int    `json:"streams,omitempty"`
	Chunk    int    `json:"chunk,omitempty"`
}

// Order makes the per-epoch global order of a sharded dataset and cuts it
// into per-rank batches. It is safe for concurrent use.
type Order struct {
	shards []int64
	prefix []int64 // prefix[i] = records in shards 0..i-1
	total  int64
	cfg    Config
	spans  []span // V2's spans in natural order, fixed by the layout

	mu       sync.Mutex
	cacheKey State    // Seed, Epoch, Version, Streams, Chunk; Consumed 0
	cache    []Sample // read-only once published
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
	o.spans = cutSpans(o.shards, nil, o.cfg.Span)
	return o, nil
}

// NewBlocks is New for a dataset whose block layout is known: blocks[i]
// holds the record counts of shard i's blocks, in file order. V2 then cuts
// spans at block boundaries only; V1 ignores the layout. Every rank, and
// every resume, must pass the same layout (it is the dataset's).
func NewBlocks(blocks [][]int64, cfg Config) (*Order, error) {
	counts := make([]int64, len(blocks))
	for i, bs := range blocks {
		for j, n := range bs {
			if n <= 0 {
				return nil, fmt.Errorf("%w: shard %d block %d has %d records, want at least 1", ErrInvalid, i, j, n)
			}
			if counts[i] > math.MaxInt64-n {
				return nil, fmt.Errorf("%w: record counts overflow int64 at shard %d", ErrInvalid, i)
			}
			counts[i] += n
		}
	}
	o, err := New(counts, cfg)
	if err != nil {
		return nil, err
	}
	o.spans = cutSpans(o.shards, blocks, o.cfg.Span)
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

// Epoch returns the whole global order of epoch in the configured
// version: every sample exactly once, len Total(). In V1 it depends only
// on the shard counts, Seed, Shuffle, Window and epoch, never on world or
// batch size. In V2 it is the order of Config.Streams streams (1 if 0)
// in chunks of BatchSize; Sequence gives the order of any V2 state. The
// caller owns the slice.
func (o *Order) Epoch(epoch int) []Sample {
	st := State{Seed: o.cfg.Seed, Epoch: epoch}
	if o.cfg.Version == V2 {
		st.Version, st.Streams, st.Chunk = V2, max(o.cfg.Streams, 1), o.cfg.BatchSize
	}
	return o.sequence(st)
}

// Sequence returns the global order that a state's Consumed counts in
// (the state as Resolve fills it in for world; world matters only to a
// V2 state that does not yet record its streams). The caller owns the
// slice.
func (o *Order) Sequence(st State, world int) ([]Sample, error) {
	st, err := o.Resolve(st, world)
	if err != nil {
		return nil, err
	}
	return o.sequence(st), nil
}

// sequence computes the order of a resolved state.
func (o *Order) sequence(st State) []Sample {
	out := make([]Sample, o.total)
	if st.Version == V2 {
		o.fillV2(st.Epoch, st.Streams, st.Chunk, out)
	} else {
		o.fill(st.Epoch, out)
	}
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

// cached returns the order of a resolved state, shared and read-only.
func (o *Order) cached(st State) []Sample {
	st.Consumed = 0
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cache == nil || o.cacheKey != st {
		o.cache = o.sequence(st)
		o.cacheKey = st
	}
	return o.cache
}

// Resolve returns st with its version, and for V2 its streams and chunk,
// filled in, which fixes the global order its Consumed counts in:
//
//   - Version 0 with Consumed > 0 is a V1 state: it was written before
//     states recorded their version, or by V1, which leaves the fields 0.
//   - Version 0 with Consumed 0 (the start of an epoch) takes the
//     configured version; for V2, Streams becomes Config.Streams or, if
//     that is 0, world, and Chunk becomes Config.BatchSize.
//   - A recorded version is kept whatever the configuration says, so a
//     checkpoint resumes the order it was taken in; the next epoch
//     (Start) takes the configured one.
//
// A V2 state past the start of its epoch must record Streams and Chunk.
// V1 states come back with Version 0.
func (o *Order) Resolve(st State, world int) (State, error) {
	if err := o.checkState(st); err != nil {
		return st, err
	}
	if world < 1 {
		return st, fmt.Errorf("%w: world size %d, want at least 1", ErrInvalid, world)
	}
	if st.Version == 0 && st.Consumed == 0 && o.cfg.Version == V2 {
		st.Version = V2
	}
	switch st.Version {
	case 0, V1:
		if st.Streams != 0 || st.Chunk != 0 {
			return st, fmt.Errorf("%w: a version %d state with streams %d and chunk %d (V1 has neither)", ErrInvalid, st.Version, st.Streams, st.Chunk)
		}
		st.Version = 0
	case V2:
		if st.Consumed == 0 {
			if st.Streams == 0 {
				st.Streams = o.cfg.Streams
				if st.Streams == 0 {
					st.Streams = world
				}
			}
			if st.Chunk == 0 {
				st.Chunk = o.cfg.BatchSize
			}
		}
		if st.Streams < 1 || st.Streams > maxStreams || st.Chunk < 1 {
			return st, fmt.Errorf("%w: version 2 state with %d streams and chunk %d (want 1 to %d streams and a chunk of at least 1)", ErrInvalid, st.Streams, st.Chunk, maxStreams)
		}
	default:
		return st, fmt.Errorf("%w: state of order version %d; this ringo knows %d and %d", ErrInvalid, st.Version, V1, V2)
	}
	return st, nil
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
	st, err := o.Resolve(st, world)
	if err != nil {
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
		c.order = c.o.cached(c.st)
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

// State returns the job-wide state after the batches this rank has taken
// (resolved: for V2 it records the version, streams and chunk):
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
