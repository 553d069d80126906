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
// # The global order of an epoch
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
// State{Seed, Epoch, Consumed} is all a checkpoint needs (JSON tags
// included): Consumed counts the samples of the epoch's global order that
// the whole job has consumed. Cursor.State advances it by N*B per batch
// taken, caps it at Total (after a padded last batch) and sets it to Total
// once Next has reported the end of the epoch (a dropped remainder counts as
// consumed). The next epoch starts at State{Seed, Epoch + 1, 0}
// (Order.Start).
//
// Guarantee: the global order does not depend on N or B, and a cursor
// made from State starts at global position Consumed. So resuming with the
// same N and B continues with exactly the next global batch, and resuming
// with any other N' and B' continues from the same position under the new
// partition: over the whole epoch no sample is repeated and none is lost,
// apart from the remainder policy at the epoch's end, which applies to
// whatever is left after the last resume (its size depends on N'*B').
// Every rank must resume from the same State with the same world size.
// Consumed need not be a multiple of N'*B'. Changing the dataset, Seed,
// Shuffle or Window between checkpoint and resume changes the order and
// voids the guarantee; a Seed mismatch and a Consumed beyond Total are
// rejected.
package order
