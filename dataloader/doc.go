// Package dataloader streams sharded datasets from disk, HTTP or S3 to the
// ranks of a data-parallel job.
//
// A dataset is a directory (or URL prefix) holding shard files in ringo's
// shard format (package shard) and an index.json:
//
//	{"format": "ringo-dataset", "version": 1,
//	 "records": 10000,
//	 "shards": [{"name": "shard-00000.rgs", "bytes": 1234, "records": 5000, "xxh64": "…"}, …],
//	 "metadata": {"fields": {"image": "uint8[28,28]", "label": "uint8"}, …}}
//
// Pack* functions build datasets from MNIST IDX files, JSON lines, CSV and
// directories of files; Open reads one from any source (package source),
// checking each shard's size against the index; Verify checks every
// shard's hash and every block's checksum. The order in which a job reads
// it is package order's; the loader that streams it is this package's.
//
// # Disjoint reads, and why they cost the order nothing
//
// A loader plans its rank's whole rest of the epoch from the order's
// cursor before it reads anything, and reads each block it needs once
// (neighbouring blocks in one range read of up to 4 MiB), checking the
// block's checksum on a worker and decoding the records its batches want
// straight out of the read buffer. Which blocks a rank needs follows from
// the order alone: with order V2 and world N equal to the epoch's streams
// S (or dividing it) and the batch size equal to its chunk, rank r's
// positions in the global order are exactly stream r's samples, and no
// two streams share a block except at the at most S-1 splits, so N ranks
// read the dataset about once between them, not N times. Nothing about
// the order changes to get this: the global order is still a function of
// the seed, epoch, layout and the S and C recorded in the State, the
// ranks still take positions [r*B, (r+1)*B) of every global batch, and
// every Batch carries the State after it. So resume is exact as the order
// package states it: a loader made from a saved State, with any world
// size, plans from global position Consumed on and delivers the same
// samples the job would have seen; with a world that does not divide S,
// or another batch size, the ranks read shared blocks more than once for
// the rest of that epoch (correct, only slower), and the next epoch deals
// streams for the new world.
//
// # Reads in flight
//
// A loader starts with LoaderConfig.Workers reads in flight and, while
// the rate its workers read at grows by a tenth each time they double,
// starts more, up to MaxReads (by default as many buffers of the plan's
// largest read as half of MaxInFlight holds, at most 256), and stops as
// soon as a window of reads kept the process's CPUs 85% busy. On local
// files the reads are CPU work, so the
// climb stops at once; a source with a round trip per request (HTTP, S3)
// climbs until the link, the server or the CPUs are the limit, by more
// than doubling where the reads in flight left the CPUs idle (Little's
// law: the shards' opens give the first such step). The climb
// changes only when blocks arrive, never which samples a batch holds.
//
// A Dataset remembers for its next loader (the next epoch, or another
// rank in the same process) where the last climb ended, and keeps the
// shards its loaders opened (opening a remote shard is two round trips:
// its header and its end, read at once): only the first epoch pays for
// either. Dataset.Close releases the shards.
package dataloader
