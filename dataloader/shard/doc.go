// Package shard implements ringo's dataset shard format, versions 1 and
// 2. They differ only in their checksums: version 1 uses XXH64, version 2
// (written by default) XXH3-64, both with seed 0 ("the checksum" below).
// XXH3 verifies a block about four times faster, which a loader that
// checks every block it reads pays on every epoch.
//
// A shard file holds records (arbitrary byte strings, 0 bytes to
// MaxRecordSize) grouped in blocks. A reader needs three kinds of range read:
// the fixed-size trailer at the very end, then the footer it points at, then
// any one block. Blocks can therefore be fetched independently from a local
// file, over HTTP range requests or from object storage.
//
// # Layout
//
// All integers are little-endian unsigned unless noted.
//
//	offset            size   field
//	0                 8      magic "RGSHARD1"
//	8                 4      format version (u32) = 1 or 2
//	12                4      header flags (u32), must be 0
//	16                ...    blocks, back to back, no gaps
//	F                 L      footer (see below)
//	size-32           8      footer offset F (u64)
//	size-24           8      footer length L (u64)
//	size-16           8      the checksum of the L footer bytes (u64)
//	size-8            8      magic "RGSHARD1"
//
// The footer, L bytes:
//
//	0                 4      format version (u32), the header's
//	4                 4      footer flags (u32), must be 0
//	8                 8      total records (u64)
//	16                8      block count N (u64)
//	24                8      target block size the writer used (u64, informative)
//	32                8      metadata length M (u64)
//	40                M      metadata: empty, or a JSON document (Options.Metadata)
//	40+M              48*N   block index, one 48-byte entry per block:
//	                          0  8  offset of the block in the file (u64)
//	                          8  8  stored length in bytes (u64)
//	                         16  8  raw (uncompressed) length in bytes (u64)
//	                         24  8  index of the block's first record in the shard (u64)
//	                         32  4  record count (u32)
//	                         36  4  block flags (u32): bit 0 = zstd-compressed; other bits must be 0
//	                         40  8  the checksum of the stored bytes (u64)
//
// A block's raw content is its records back to back, each as a uvarint
// length (encoding/binary) followed by that many bytes. A block is stored
// either as is (stored length = raw length) or as one zstd frame whose
// decompressed size is the raw length. The writer compresses when
// Options.Level > 0 and keeps a block raw when compression does not make it
// smaller, so the flag is per block.
//
// # What a reader checks
//
// Open reads the header and trailer and rejects the file unless: both magics
// match; the version is 1 or 2 (another version gives ErrUnsupportedVersion);
// the footer lies between the header and the trailer and ends exactly where
// the trailer begins; the footer is at most MaxFooterSize; its checksum
// matches; its version is the header's;
// its length is exactly 40 + M + 48*N; the metadata is empty or valid JSON;
// the blocks tile the space between header and footer exactly, in order;
// every block has at least one record, no more records than raw bytes, a raw
// length of at most MaxBlockRaw (if compressed: larger than the stored length
// and no more than a zstd frame of that stored size can expand to, 32768
// times; if not compressed: equal to the stored length); each block's first record index equals the sum of the record
// counts before it; and the counts sum to the total.
//
// ReadBlock reads exactly the stored length with one range read, verifies
// the checksum, decompresses into a buffer of exactly the declared raw length
// (never more), and checks that the record lengths are valid uvarints that
// stay inside the block, that they fill it exactly, and that their number is
// the declared count. No read allocates more than the sizes the validated
// footer declares.
//
// Every failure of these checks, and any read that finds the file shorter
// than expected, is a *CorruptError naming the shard and the block (Block is
// -1 for the header, footer or trailer); errors.Is(err, ErrCorrupt) holds for
// all of them. Other I/O errors are returned wrapped, naming the shard.
//
// # Named fields
//
// EncodeFields and DecodeFields give records a simple "named fields" layout
// (for example "image" and "label"):
//
//	uvarint field count, then per field in strictly increasing byte order of name:
//	uvarint name length, name, uvarint value length, value
//
// The encoding is canonical: DecodeFields rejects unsorted or duplicate
// names and trailing bytes, so EncodeFields(DecodeFields(b)) == b for every
// b that DecodeFields accepts.
//
// # Compatibility
//
// A change to any of the above is a new format version. Readers reject
// versions they do not know rather than guess (readers of version 1
// alone refuse version 2 files: write those with Options.Version =
// Version1).
package shard
