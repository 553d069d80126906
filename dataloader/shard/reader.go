package shard

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Reader reads a shard through an io.ReaderAt. After Open it holds only the
// footer; each ReadBlock is one range read. It is safe for concurrent use
// if the io.ReaderAt is.
type Reader struct {
	r       io.ReaderAt
	size    int64
	name    string
	records int64
	meta    []byte
	blocks  []BlockInfo
	sums    []uint64
	version uint32
	sum     func([]byte) uint64 // the version's checksum
}

// Version returns the shard's format version.
func (r *Reader) Version() int { return int(r.version) }

// decoder is shared by all readers: DecodeAll is safe for concurrent use,
// and with the cap limit it never writes past the capacity it is given.
var decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxBlockRaw),
		zstd.WithDecodeAllCapLimit(true))
})

func (r *Reader) corrupt(block int, format string, args ...any) error {
	return &CorruptError{Name: r.name, Block: block, Reason: fmt.Sprintf(format, args...)}
}

// readAt reads exactly len(p) bytes at off; a short file is corruption.
func (r *Reader) readAt(p []byte, off int64, block int, what string) error {
	n, err := r.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return r.corrupt(block, "truncated: %s at offset %d wants %d bytes, got %d", what, off, len(p), n)
	}
	if block < 0 {
		return fmt.Errorf("shard %s: reading %s: %w", r.name, what, err)
	}
	return fmt.Errorf("shard %s: block %d: reading %s: %w", r.name, block, what, err)
}

// tailRead is how much of a shard's end Open reads in one go, hoping to
// get the footer with the trailer.
const tailRead = 64 << 10

// Open reads and checks the header, trailer and footer of the shard of the
// given size read through r. name (a file path or URL) appears in errors.
func Open(r io.ReaderAt, size int64, name string) (*Reader, error) {
	sr := &Reader{r: r, size: size, name: name}
	if size < headerSize+footerFixedSize+trailerSize {
		return nil, sr.corrupt(-1, "truncated: %d bytes is smaller than an empty shard", size)
	}
	// The header and the end of the shard (trailer, and in one read the
	// footer too, unless it is over tailRead) are read at once: against
	// remote storage each read is a round trip.
	var hdr [headerSize]byte
	hdrErr := make(chan error, 1)
	go func() { hdrErr <- sr.readAt(hdr[:], 0, -1, "header") }()
	tail := make([]byte, min(size-headerSize, tailRead))
	tailOff := size - int64(len(tail))
	tailErr := sr.readAt(tail, tailOff, -1, "trailer")
	if err := <-hdrErr; err != nil {
		return nil, err
	}
	if string(hdr[:8]) != Magic {
		return nil, sr.corrupt(-1, "header: not a ringo shard (magic %q)", hdr[:8])
	}
	sr.version = binary.LittleEndian.Uint32(hdr[8:])
	if sr.version != Version1 && sr.version != Version {
		return nil, fmt.Errorf("shard %s: format version %d, this reader knows %d and %d: %w", name, sr.version, Version1, Version, ErrUnsupportedVersion)
	}
	sr.sum = checksum(sr.version)
	if f := binary.LittleEndian.Uint32(hdr[12:]); f != 0 {
		return nil, sr.corrupt(-1, "header: unknown flags %#x", f)
	}
	if tailErr != nil {
		return nil, tailErr
	}
	tr := tail[len(tail)-trailerSize:]
	if string(tr[24:]) != Magic {
		return nil, sr.corrupt(-1, "trailer: magic missing at the end (truncated or not a shard)")
	}
	footerOff := binary.LittleEndian.Uint64(tr[0:])
	footerLen := binary.LittleEndian.Uint64(tr[8:])
	footerSum := binary.LittleEndian.Uint64(tr[16:])
	footerEnd := uint64(size - trailerSize)
	if footerLen < footerFixedSize || footerLen > MaxFooterSize || footerLen > footerEnd-headerSize ||
		footerOff != footerEnd-footerLen {
		return nil, sr.corrupt(-1, "trailer: footer at offset %d length %d does not end at the trailer (offset %d)", footerOff, footerLen, footerEnd)
	}
	var footer []byte
	if int64(footerOff) >= tailOff {
		footer = tail[int64(footerOff)-tailOff : len(tail)-trailerSize]
	} else {
		footer = make([]byte, footerLen)
		if err := sr.readAt(footer, int64(footerOff), -1, "footer"); err != nil {
			return nil, err
		}
	}
	if got := sr.sum(footer); got != footerSum {
		return nil, sr.corrupt(-1, "footer: checksum %016x, trailer says %016x", got, footerSum)
	}
	if err := sr.parseFooter(footer, int64(footerOff)); err != nil {
		return nil, err
	}
	return sr, nil
}

func (r *Reader) parseFooter(f []byte, footerOff int64) error {
	le := binary.LittleEndian
	if v := le.Uint32(f[0:]); v != r.version {
		return r.corrupt(-1, "footer: version %d disagrees with the header's %d", v, r.version)
	}
	if fl := le.Uint32(f[4:]); fl != 0 {
		return r.corrupt(-1, "footer: unknown flags %#x", fl)
	}
	total := le.Uint64(f[8:])
	nblocks := le.Uint64(f[16:])
	metaLen := le.Uint64(f[32:])
	rest := uint64(len(f) - footerFixedSize)
	if metaLen > rest || nblocks > (rest-metaLen)/entrySize || metaLen+nblocks*entrySize != rest {
		return r.corrupt(-1, "footer: %d bytes cannot hold %d bytes of metadata and %d blocks", len(f), metaLen, nblocks)
	}
	if metaLen > MaxMetadataSize {
		return r.corrupt(-1, "footer: metadata of %d bytes exceeds %d", metaLen, MaxMetadataSize)
	}
	meta := f[footerFixedSize : footerFixedSize+metaLen]
	if len(meta) > 0 && !json.Valid(meta) {
		return r.corrupt(-1, "footer: metadata is not valid JSON")
	}
	r.meta = append([]byte(nil), meta...)
	r.blocks = make([]BlockInfo, nblocks)
	r.sums = make([]uint64, nblocks)
	e := f[footerFixedSize+metaLen:]
	next := uint64(headerSize)
	var first uint64
	for i := range r.blocks {
		off := le.Uint64(e[0:])
		stored := le.Uint64(e[8:])
		raw := le.Uint64(e[16:])
		bfirst := le.Uint64(e[24:])
		count := uint64(le.Uint32(e[32:]))
		flags := le.Uint32(e[36:])
		r.sums[i] = le.Uint64(e[40:])
		e = e[entrySize:]
		switch {
		case off != next:
			return r.corrupt(i, "footer: block at offset %d, expected %d (blocks must be back to back)", off, next)
		case stored > uint64(footerOff)-off:
			return r.corrupt(i, "footer: block of %d bytes at offset %d runs past the footer (offset %d) or end of file", stored, off, footerOff)
		case flags&^flagCompressed != 0:
			return r.corrupt(i, "footer: unknown block flags %#x", flags)
		case raw > MaxBlockRaw:
			return r.corrupt(i, "footer: raw length %d exceeds %d", raw, MaxBlockRaw)
		case flags&flagCompressed == 0 && raw != stored:
			return r.corrupt(i, "footer: uncompressed block with stored length %d and raw length %d", stored, raw)
		case flags&flagCompressed != 0 && stored >= raw:
			return r.corrupt(i, "footer: compressed block of %d bytes is not smaller than its raw length %d", stored, raw)
		case flags&flagCompressed != 0 && stored < raw/maxZstdRatio:
			return r.corrupt(i, "footer: %d compressed bytes cannot expand to %d", stored, raw)
		case count == 0:
			return r.corrupt(i, "footer: block with no records")
		case count > raw:
			return r.corrupt(i, "footer: %d records cannot fit in %d raw bytes", count, raw)
		case bfirst != first:
			return r.corrupt(i, "footer: first record %d, expected %d", bfirst, first)
		}
		r.blocks[i] = BlockInfo{
			Offset:     int64(off),
			Stored:     int64(stored),
			Raw:        int64(raw),
			Records:    int(count),
			First:      int64(bfirst),
			Compressed: flags&flagCompressed != 0,
		}
		next = off + stored
		first += count
	}
	if next != uint64(footerOff) {
		return r.corrupt(-1, "footer: blocks end at offset %d but the footer starts at %d", next, footerOff)
	}
	if first != total {
		return r.corrupt(-1, "footer: blocks hold %d records, footer says %d", first, total)
	}
	r.records = int64(total)
	return nil
}

// Records returns the number of records in the shard.
func (r *Reader) Records() int64 { return r.records }

// Blocks returns the number of blocks.
func (r *Reader) Blocks() int { return len(r.blocks) }

// Block returns what the footer declares about block i. It panics if i is
// out of range, like a slice index.
func (r *Reader) Block(i int) BlockInfo { return r.blocks[i] }

// Metadata returns the metadata JSON stored in the footer (nil if none).
// The caller must not modify it.
func (r *Reader) Metadata() []byte {
	if len(r.meta) == 0 {
		return nil
	}
	return r.meta
}

// ReadBlock reads block i with one range read, verifies it and returns its
// records. The records are fresh (sub-slices of one buffer allocated for
// this call, each capped to its own length): safe to keep and to modify.
func (r *Reader) ReadBlock(i int) ([][]byte, error) {
	raw, err := r.readRaw(i)
	if err != nil {
		return nil, err
	}
	return r.SplitBlock(i, raw, make([][]byte, 0, r.blocks[i].Records))
}

// SplitBlock splits raw, the raw content of block i, into its records and
// checks them as ReadBlock does. The records are appended to dst[:0] and
// are sub-slices of raw, each capped to its own length: they are valid as
// long as raw is. A reader that reuses its buffers passes the same dst
// every time, so splitting allocates nothing.
func (r *Reader) SplitBlock(i int, raw []byte, dst [][]byte) ([][]byte, error) {
	if i < 0 || i >= len(r.blocks) {
		return nil, fmt.Errorf("shard %s: block %d of %d: %w", r.name, i, len(r.blocks), ErrOutOfRange)
	}
	b := r.blocks[i]
	if int64(len(raw)) != b.Raw {
		return nil, r.corrupt(i, "%d raw bytes, footer declares %d", len(raw), b.Raw)
	}
	out := dst[:0]
	p := raw
	for len(p) > 0 {
		n, k := binary.Uvarint(p)
		if k <= 0 {
			return nil, r.corrupt(i, "bad record length varint at byte %d", len(raw)-len(p))
		}
		p = p[k:]
		if n > uint64(len(p)) {
			return nil, r.corrupt(i, "record %d of %d bytes runs past the end of the block", len(out), n)
		}
		if len(out) == b.Records {
			return nil, r.corrupt(i, "more records than the %d the footer declares", b.Records)
		}
		out = append(out, p[:n:n])
		p = p[n:]
	}
	if len(out) != b.Records {
		return nil, r.corrupt(i, "%d records, footer declares %d", len(out), b.Records)
	}
	return out, nil
}

// readRaw reads, verifies and decompresses block i.
func (r *Reader) readRaw(i int) ([]byte, error) {
	if i < 0 || i >= len(r.blocks) {
		return nil, fmt.Errorf("shard %s: block %d of %d: %w", r.name, i, len(r.blocks), ErrOutOfRange)
	}
	b := r.blocks[i]
	stored := make([]byte, b.Stored)
	if err := r.readAt(stored, b.Offset, i, "block"); err != nil {
		return nil, err
	}
	return r.CheckBlock(i, stored, nil)
}

// CheckBlock verifies stored, the stored bytes of block i (Block(i).Stored
// bytes from Block(i).Offset, however the caller read them, for example
// with neighbouring blocks in one range read), against the footer's
// length and XXH64, and returns the block's raw content: stored itself
// for an uncompressed block, else the block decompressed into scratch,
// which is reused when its capacity holds the raw length (a new buffer
// otherwise). The result aliases stored or scratch.
func (r *Reader) CheckBlock(i int, stored, scratch []byte) ([]byte, error) {
	if i < 0 || i >= len(r.blocks) {
		return nil, fmt.Errorf("shard %s: block %d of %d: %w", r.name, i, len(r.blocks), ErrOutOfRange)
	}
	b := r.blocks[i]
	if int64(len(stored)) != b.Stored {
		return nil, r.corrupt(i, "%d stored bytes, footer declares %d", len(stored), b.Stored)
	}
	if got := r.sum(stored); got != r.sums[i] {
		return nil, r.corrupt(i, "checksum %016x, footer says %016x", got, r.sums[i])
	}
	if !b.Compressed {
		return stored, nil
	}
	dec, err := decoder()
	if err != nil {
		return nil, fmt.Errorf("shard %s: zstd decoder: %w", r.name, err)
	}
	if int64(cap(scratch)) < b.Raw {
		scratch = make([]byte, 0, b.Raw)
	}
	// The decoder's cap limit keeps it inside scratch's capacity, so a
	// frame that lies about its size cannot make it allocate.
	raw, err := dec.DecodeAll(stored, scratch[:0:b.Raw])
	if err != nil {
		return nil, r.corrupt(i, "zstd: %v", err)
	}
	if int64(len(raw)) != b.Raw {
		return nil, r.corrupt(i, "decompressed to %d bytes, footer declares %d", len(raw), b.Raw)
	}
	return raw, nil
}

// ReadAt reads exactly len(p) bytes of the shard at off, for callers that
// read several blocks with one range read; a short read is corruption of
// the given block (the first one asked for).
func (r *Reader) ReadAt(p []byte, off int64, block int) error {
	return r.readAt(p, off, block, "blocks")
}

// Record returns record idx (0-based in the shard), reading its block. The
// result is a copy that does not keep the block alive.
func (r *Reader) Record(idx int64) ([]byte, error) {
	if idx < 0 || idx >= r.records {
		return nil, fmt.Errorf("shard %s: record %d of %d: %w", r.name, idx, r.records, ErrOutOfRange)
	}
	i := sort.Search(len(r.blocks), func(j int) bool { return r.blocks[j].First > idx }) - 1
	recs, err := r.ReadBlock(i)
	if err != nil {
		return nil, err
	}
	return append([]byte{}, recs[idx-r.blocks[i].First]...), nil
}
