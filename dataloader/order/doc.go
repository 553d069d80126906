// Package order decides the order in which a data-parallel job reads a
// sharded dataset: deterministic, partitioned among ranks, resumable from a
// few numbers in a checkpoint, and elastic (the world size may change
// between a checkpoint and the resume). It does no I/O.
//
// # Model
//
// A dataset is a list of shards with record counts ([]int64, zero allowed).
// A sample is (Shard, Index); its flat id is the number of records in the
// shards before it plus Index (see Order.Flat).
//
// # Versions
//
// Config.Version picks how the global order of an epoch is made: V1 (the
// zero value, the order of every configuration written before versions
// existed) or V2. Everything from "Partition among ranks" on holds for
// both: an epoch has one global order, and ranks take their batches from
// it by position. V1's order never depends on world or batch size, but
// every rank holds samples of every block, so N ranks read the dataset N
// times. V2 fixes a number of streams and a chunk when an epoch starts
// (recorded in the State) and lays the order out so that rank r of that
// many ranks reads only the blocks of stream r.
//
// # The global order of an epoch, V1
//
// The order of epoch e depends only on the shard counts, Config.Seed,
// Config.Shuffle, Config.Window and e; never on world size or batch size.
//
//  1. A generator is seeded from (Seed, e). Its 128-bit state is
//     hi = mix64(Seed ^ 0x6F72646572000001) and
//     lo = mix64(mix64(Seed ^ 0x6F72646572000002) + 0x9E3779B97F4A7C15*(e+1)),
//     where mix64 is the splitmix64 finaliser (a bijection), so distinct
//     (Seed, e) pairs give distinct states. The generator is PCG with a
//     128-bit LCG state and DXSM output, the algorithm of math/rand/v2's
//     PCG, and bounded draws use Lemire's multiply-and-reject method. Both
//     are implemented in this package rather than taken from math/rand/v2,
//     so that a checkpoint's order cannot change with the Go version; a
//     test pins the generator's output.
//  2. With Shuffle, the shards (all of them, empty ones included) are
//     permuted by a Fisher-Yates shuffle with that generator.
//  3. The samples stream shard by shard, each shard in index order, through
//     a shuffle buffer of Window samples: the first Window samples fill it;
//     then for every further sample a uniformly chosen buffer slot is
//     emitted and replaced by the incoming sample; at the end the buffer is
//     drained in uniformly random order. Window 0 or 1 emits the stream as
//     it is. A Window of at least Total() makes a uniform random
//     permutation of the whole epoch. Without Shuffle the order is the
//     natural one (shard 0, 1, ... each in index order) and Window is
//     ignored.
//
// # The global order of an epoch, V2
//
// The order of epoch e with S streams and chunk C depends only on the
// block layout (NewBlocks; New treats each shard as having no inner
// boundaries), Seed, Shuffle, Window, Span, S, C and e.
//
//  1. Spans: each shard, in index order, is cut into spans of
//     consecutive samples: the shortest runs of whole blocks holding at
//     least Span samples (DefaultSpan if 0), the last one of a shard
//     taking what is left. Without a layout, runs of exactly Span
//     samples. No two spans share a block.
//  2. With Shuffle, the spans are permuted by a Fisher-Yates shuffle with
//     the generator of step 1 of V1 whose high word is xor-ed with
//     mix64(0x6F72646572000200).
//  3. Dealing: the spans, in that order, go one by one to the stream with
//     the fewest samples so far (the lower index on a tie). Stream s is
//     capped at floor(T/S) samples, plus one for s < T mod S (T = Total);
//     a span that would exceed its stream's cap is split, the stream
//     takes the front, and the rest is dealt on as the next span. So
//     streams differ by at most one sample, and at most S-1 splits put one
//     block in two streams.
//  4. Each stream is the concatenation of its spans, in dealing order,
//     and, with Shuffle and Window > 1, passes through a shuffle buffer of
//     Window samples of its own (the algorithm of V1's step 3), with the
//     generator above xor-ed with mix64(0x6F72646572000200 + s + 1)
//     instead.
//  5. The streams are interleaved round-robin in chunks: C samples of
//     stream 0, C of stream 1, ..., C of stream S-1, again from stream 0;
//     a stream with fewer than C left gives what it has, an empty one is
//     passed over.
//
// Without Shuffle, V2 with one stream is the natural order.
//
// Why this shape: with world N = S and per-rank batch size B = C, global
// batch i is chunk i of every stream and rank r's part of it is stream r's
// chunk (partition below), so rank r reads only stream r's blocks: the
// ranks together read the dataset once, plus at most S-1 blocks shared at
// splits, plus the last global batch or two, where streams one sample
// apart stop lining up with the chunks, and any padding. With N dividing S
// rank r reads streams r, r+N, ...; other worlds are still correct (the
// partition is by position) but ranks then share blocks. S is
// Config.Streams, or the world size of the epoch's first cursor when that
// is 0; C is Config.BatchSize at that point. Samples mix at two levels:
// the span permutation spreads every shard over the epoch and over the
// streams, the per-stream buffer mixes neighbouring spans (and the samples
// within a span) as V1's buffer does.
//
// # Shuffle quality, window size and memory
//
// The buffer is the classic streaming shuffle (as in tf.data's shuffle or
// WebDataset): it reads shards sequentially, which is what makes it cheap
// for a streaming reader, and it only mixes samples that are close in the
// stream. A sample is never emitted more than Window-1 positions earlier
// than its stream position; it stays in the buffer a geometric time of
// mean Window emissions, so it usually lands about Window positions later,
// with a thin tail beyond that. Samples of one shard therefore stay
// clustered unless Window is comparable to the shard size; the shard
// permutation decorrelates the epochs at the coarse level. The buffer
// costs 16 bytes per slot (64 MiB for a window of 4M samples) when the
// reader holds only sample ids; a real loader that buffers decoded records
// pays the record size per slot, which is what bounds Window in practice.
//
// Epoch materialises the whole order: 16 bytes per sample (16 MiB per
// million samples), computed in one pass with one generator draw per
// sample. A Cursor keeps the order of its epoch (shared, read-only, one
// epoch cached per Order), so a rank holds 16 bytes per sample of the
// dataset while it iterates.
//
// # Partition among ranks
//
// With world N and per-rank batch size B (Config.BatchSize), the global
// order, from the state's Consumed position on, is cut into global batches
// of N*B consecutive samples; in each, rank r takes positions
// [r*B, (r+1)*B). Ranks thus take disjoint parts of every global batch and
// all ranks take the same number of batches (Order.Steps).
//
// # The remainder at the end of an epoch
//
// When fewer than N*B samples are left:
//
//   - DropLast: they are dropped (as torch's DistributedSampler with
//     drop_last=True); Order.Dropped says how many. No sample is seen twice.
//   - otherwise the last global batch is completed with samples repeated
//     cyclically from the start of the epoch's order (as DistributedSampler
//     pads): the padded samples are seen twice in that epoch (more than
//     twice only if N*B exceeds the dataset). Cursor.Padding counts them per
//     rank, Order.Padding for the whole job. Every sample is seen at least
//     once.
//
// # State, resume and elasticity
//
// State{Seed, Epoch, Consumed} is all a checkpoint needs for V1, and V2
// adds {Version, Streams, Chunk} (JSON tags included; V1 leaves them out):
// Consumed counts the samples of the epoch's global order that the whole
// job has consumed, and the V2 fields say which global order that is.
// Resolve fills them in at the start of an epoch; a state without a
// version and with Consumed > 0 is a V1 state (states did not record their
// version before V2). A recorded version is kept on resume whatever the
// configuration says, so a checkpoint always continues the order it was
// taken in; the next epoch starts in the configured version. Cursor.State advances it by N*B per batch
// taken, caps it at Total (after a padded last batch) and sets it to Total
// once Next has reported the end of the epoch (a dropped remainder counts as
// consumed). The next epoch starts at State{Seed, Epoch + 1, 0}
// (Order.Start).
//
// Guarantee: the global order does not depend on N or B (in V2: once
// the state records S and C, which it does from the first batch on), and
// a cursor made from State starts at global position Consumed. So resuming with the
// same N and B continues with exactly the next global batch, and resuming
// with any other N' and B' continues from the same position under the new
// partition: over the whole epoch no sample is repeated and none is lost,
// apart from the remainder policy at the epoch's end, which applies to
// whatever is left after the last resume (its size depends on N'*B').
// Every rank must resume from the same State with the same world size.
// Consumed need not be a multiple of N'*B'. In V2 an elastic resume keeps
// the epoch's S and C, so it is exact in the same way; only the disjoint
// reads are lost for the rest of that epoch when N' does not divide S or
// B' differs from C, and the next epoch deals S = N' streams afresh (with
// Config.Streams 0). Changing the dataset (its block layout included, for
// V2), Seed, Shuffle, Window or Span between checkpoint and resume
// changes the order and voids the guarantee; a Seed mismatch and a Consumed beyond Total are
// rejected.
package order
