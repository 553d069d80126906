// Package diloco trains across sites joined by slow wide-area links: each
// site runs ordinary data-parallel steps, averaging gradients every step
// inside the site, and the sites synchronise only every H steps (DiLoCo,
// Douillard et al. 2023).
//
// # The outer step
//
// At a sync each site's delta, the global parameters of the last sync
// minus its parameters now (a pseudo-gradient), is averaged across sites
// and fed to an outer optimizer, SGD with Nesterov momentum by default:
//
//	m      = μ·m + Δ
//	global = global − lr·(Δ + μ·m)      (heavy ball: global − lr·m)
//	params = global
//
// With H = 1, lr 1 and μ 0 this is averaging the parameters after every
// step, which for SGD equals averaging the gradients over every rank.
//
// # Who sends what
//
// Each rank of a site owns a 1/site-size shard of the flattened
// parameters and exchanges only that shard, with the ranks that hold the
// same place in the other sites (its cross-site group); the site then
// all-gathers the averaged shards. Every message, a site's own included,
// is decoded and summed in site order, so every rank of every site
// applies the same average and replicas stay bit-identical.
//
// # Compression
//
// A delta travels as float32, bfloat16 or float16 values, optionally only
// the fraction TopK of largest magnitude (ties to the lowest index), then
// zstd where that makes it smaller. What rounding and top-k leave out is
// kept per rank (error feedback) and added to the next delta, so nothing
// is lost, only late. Stats reports the bytes sent and the ratio.
//
// # Overlap
//
// With Delay d > 0 the exchange runs beside the next d inner steps: a sync
// started after step k is applied after step k+d, as the new global
// parameters plus what the site learned during those d steps.
//
// # The message, version 1
//
// A 32-byte header (magic "RDLT", version, value type, flags for sparse
// and zstd, the dense length, the number of values, a CRC-32C of the body
// and the body's length), then the body: for a sparse message the indices
// as varint gaps, then the values. codec.go has the table; FuzzDecode
// fuzzes the decoder from the corpus in testdata.
//
// # Sites that fail on their own
//
// New joins sites that are ranks of one job, so they fail and restart
// together, and every site takes part in every sync. NewFederated joins
// sites that run as jobs of their own through a store (a Board): a sync
// waits at most Config.Deadline for the sites missing, then goes ahead
// with those present; a site left out applies the sync all the same and
// keeps its delta for the next one; and a site restarted from its
// checkpoint replays from the board the syncs it missed (CatchUp).
// federation.go describes the keys.
package diloco
