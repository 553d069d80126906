package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Writer writes one shard to an io.Writer, sequentially. It is not safe for
// concurrent use.
type Writer struct {
	w         io.Writer
	opts      Options
	enc       *zstd.Encoder
	off       int64  // bytes written so far
	buf       []byte // raw content of the open block
	inBlock   int    // records in the open block
	records   int64
	index     []BlockInfo
	sums      []uint64
	version   uint32
	sum       func([]byte) uint64 // the version's checksum
	scratch   []byte              // compressed output
	err       error               // sticky
	closed    bool
	closedErr error
}

// NewWriter validates opts, writes the header to w and returns a Writer.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	opts.Metadata = append([]byte(nil), opts.Metadata...)
	if opts.Version == 0 {
		opts.Version = Version
	}
	sw := &Writer{w: w, opts: opts, version: uint32(opts.Version), sum: checksum(uint32(opts.Version))}
	if opts.Level > 0 {
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(opts.Level)),
			zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("shard: zstd encoder: %w", err)
		}
		sw.enc = enc
	}
	var hdr [headerSize]byte
	copy(hdr[:], Magic)
	binary.LittleEndian.PutUint32(hdr[8:], sw.version)
	if err := sw.write(hdr[:]); err != nil {
		sw.release()
		return nil, err
	}
	return sw, nil
}

func (w *Writer) write(p []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("shard: write: %w", err)
	}
	return w.err
}

// Append adds one record. The record is copied; the caller may reuse it.
func (w *Writer) Append(record []byte) error {
	if w.closed {
		return errors.New("shard: Append after Close")
	}
	if w.err != nil {
		return w.err
	}
	if len(record) > MaxRecordSize {
		return fmt.Errorf("shard: record of %d bytes is larger than MaxRecordSize (%d)", len(record), MaxRecordSize)
	}
	need := uvarintLen(uint64(len(record))) + len(record)
	if len(w.buf) > 0 && len(w.buf)+need > w.opts.BlockSize {
		if err := w.flush(); err != nil {
			return err
		}
	}
	w.buf = binary.AppendUvarint(w.buf, uint64(len(record)))
	w.buf = append(w.buf, record...)
	w.inBlock++
	w.records++
	if len(w.buf) >= w.opts.BlockSize {
		return w.flush()
	}
	return nil
}

// flush writes the open block, if any.
func (w *Writer) flush() error {
	if w.inBlock == 0 {
		return nil
	}
	stored, compressed := w.buf, false
	if w.enc != nil {
		w.scratch = w.enc.EncodeAll(w.buf, w.scratch[:0])
		if len(w.scratch) < len(w.buf) {
			stored, compressed = w.scratch, true
		}
	}
	bi := BlockInfo{
		Offset:     w.off,
		Stored:     int64(len(stored)),
		Raw:        int64(len(w.buf)),
		Records:    w.inBlock,
		First:      w.records - int64(w.inBlock),
		Compressed: compressed,
	}
	if err := w.write(stored); err != nil {
		return err
	}
	w.index = append(w.index, bi)
	w.sums = append(w.sums, w.sum(stored))
	w.buf = w.buf[:0]
	w.inBlock = 0
	return nil
}

// Records returns the number of records appended so far.
func (w *Writer) Records() int64 { return w.records }

// Close flushes the last block and writes the footer and trailer. It does
// not close the underlying writer. Calling it again returns the first
// result.
func (w *Writer) Close() error {
	if w.closed {
		return w.closedErr
	}
	w.closed = true
	defer w.release()
	if err := w.flush(); err != nil {
		w.closedErr = err
		return err
	}
	footerOff := w.off
	footer := make([]byte, 0, footerFixedSize+len(w.opts.Metadata)+entrySize*len(w.index))
	footer = binary.LittleEndian.AppendUint32(footer, w.version)
	footer = binary.LittleEndian.AppendUint32(footer, 0)
	footer = binary.LittleEndian.AppendUint64(footer, uint64(w.records))
	footer = binary.LittleEndian.AppendUint64(footer, uint64(len(w.index)))
	footer = binary.LittleEndian.AppendUint64(footer, uint64(w.opts.BlockSize))
	footer = binary.LittleEndian.AppendUint64(footer, uint64(len(w.opts.Metadata)))
	footer = append(footer, w.opts.Metadata...)
	for i, b := range w.index {
		var flags uint32
		if b.Compressed {
			flags |= flagCompressed
		}
		footer = binary.LittleEndian.AppendUint64(footer, uint64(b.Offset))
		footer = binary.LittleEndian.AppendUint64(footer, uint64(b.Stored))
		footer = binary.LittleEndian.AppendUint64(footer, uint64(b.Raw))
		footer = binary.LittleEndian.AppendUint64(footer, uint64(b.First))
		footer = binary.LittleEndian.AppendUint32(footer, uint32(b.Records))
		footer = binary.LittleEndian.AppendUint32(footer, flags)
		footer = binary.LittleEndian.AppendUint64(footer, w.sums[i])
	}
	if len(footer) > MaxFooterSize {
		w.closedErr = fmt.Errorf("shard: footer of %d bytes exceeds MaxFooterSize (%d); use a larger BlockSize or split the shard", len(footer), MaxFooterSize)
		return w.closedErr
	}
	var tr [trailerSize]byte
	binary.LittleEndian.PutUint64(tr[0:], uint64(footerOff))
	binary.LittleEndian.PutUint64(tr[8:], uint64(len(footer)))
	binary.LittleEndian.PutUint64(tr[16:], w.sum(footer))
	copy(tr[24:], Magic)
	if err := w.write(footer); err != nil {
		w.closedErr = err
		return err
	}
	w.closedErr = w.write(tr[:])
	return w.closedErr
}

func (w *Writer) release() {
	if w.enc != nil {
		w.enc.Close()
		w.enc = nil
	}
	w.buf, w.scratch = nil, nil
}
