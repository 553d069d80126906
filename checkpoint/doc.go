// Package checkpoint saves and restores training state: named tensors,
// replicated on every rank or split by rows across ranks, plus JSON
// metadata. A checkpoint saved by N ranks loads onto any number of ranks.
//
// # Layout on disk, format version 1
//
//	DIR/step-00000042/
//	    manifest.json
//	    shard-00000-of-00004.safetensors
//	    ...
//	    shard-00003-of-00004.safetensors
//
// Each shard is a plain safetensors file (package safetensors) written by
// one rank. Split tensors are stored by rows: rank r's slice of tensor W
// is the tensor W in shard r. Replicated tensors are written once, spread
// over the ranks so that each writes about 1/N of the bytes.
//
// manifest.json records the format and version, the step, the world size
// that saved it, every tensor's dtype and global shape and the pieces it is
// made of (shard, rows [start, end), XXH64 of the piece's bytes), every
// shard's file name, size and XXH64, and the user's metadata.
//
// # Commit
//
// Ranks write into DIR/step-00000042.tmp-<id>/ and fsync their shards;
// rank 0 then writes and fsyncs the manifest, renames the directory to its
// final name and fsyncs DIR. A directory without a manifest, or with
// ".tmp-" in its name, is never loaded, and the next Save removes it. A
// checkpoint is therefore either complete or invisible, whenever a process
// dies.
//
// # Options
//
// SaveWith can store tensors zstd-compressed after shuffling their byte
// planes, and sealed with AES-256-GCM under a key from RINGO_CKPT_KEY or
// RINGO_CKPT_KEY_FILE; the manifest records both, and such shards hold U8
// blobs that only ringo reads (`ringo ckpt export` writes a plain file). A
// Saver saves in the background (SaveAsync copies the state, then returns),
// keeps the newest K checkpoints plus every M-th, and can replicate each
// committed checkpoint to a second directory, verified before it appears.
//
// Save needs only a Coordinator (rank, size, barrier, all-gather of
// bytes); FromComm adapts a collective.Comm. Load needs none: each rank
// reads the rows it asks for, from whichever shards hold them, and checks
// every piece it reads against its checksum.
package checkpoint
