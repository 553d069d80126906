package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the fuzz seed corpus under testdata/fuzz")

// build writes recs into a shard with opts and returns the file bytes.
func build(t testing.TB, opts Options, recs [][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := w.Records(); got != int64(len(recs)) {
		t.Fatalf("Writer.Records = %d, want %d", got, len(recs))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func open(t testing.TB, data []byte) *Reader {
	t.Helper()
	r, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// variedRecords returns n records of sizes 0, 1, small, and larger than
// blockSize, with text-like content.
func variedRecords(n, blockSize int, seed int64) [][]byte {
	rng := rand.New(rand.NewSource(seed))
	recs := make([][]byte, n)
	for i := range recs {
		var size int
		switch i % 7 {
		case 0:
			size = 0
		case 1:
			size = 1
		case 2:
			size = rng.Intn(blockSize / 3)
		case 3:
			if i%21 == 3 {
				size = blockSize + rng.Intn(blockSize) // larger than a block
			} else {
				size = rng.Intn(200)
			}
		default:
			size = rng.Intn(64)
		}
		rec := make([]byte, size)
		for j := range rec {
			rec[j] = byte('a' + rng.Intn(26))
		}
		if size > 8 {
			binary.LittleEndian.PutUint64(rec, uint64(i)) // make records distinct
		}
		recs[i] = rec
	}
	return recs
}

func TestRoundTrip(t *testing.T) {
	const blockSize = 4096
	recs := variedRecords(600, blockSize, 1)
	for _, level := range []int{0, 1, 3, 7, 12} {
		t.Run(fmt.Sprintf("level%d", level), func(t *testing.T) {
			data := build(t, Options{BlockSize: blockSize, Level: level}, recs)
			r := open(t, data)
			if r.Records() != int64(len(recs)) {
				t.Fatalf("Records = %d, want %d", r.Records(), len(recs))
			}
			if r.Blocks() < 2 {
				t.Fatalf("only %d blocks", r.Blocks())
			}
			var got [][]byte
			compressed := 0
			for i := 0; i < r.Blocks(); i++ {
				b := r.Block(i)
				if b.First != int64(len(got)) {
					t.Fatalf("block %d First = %d, want %d", i, b.First, len(got))
				}
				if b.Raw > blockSize && b.Records != 1 {
					t.Fatalf("block %d: %d raw bytes in %d records; only a single oversize record may exceed BlockSize", i, b.Raw, b.Records)
				}
				if b.Compressed {
					compressed++
				}
				blk, err := r.ReadBlock(i)
				if err != nil {
					t.Fatal(err)
				}
				if len(blk) != b.Records {
					t.Fatalf("block %d: %d records, info says %d", i, len(blk), b.Records)
				}
				got = append(got, blk...)
			}
			if (level > 0) != (compressed > 0) {
				t.Fatalf("level %d but %d compressed blocks", level, compressed)
			}
			if len(got) != len(recs) {
				t.Fatalf("read %d records, want %d", len(got), len(recs))
			}
			for i := range recs {
				if !bytes.Equal(got[i], recs[i]) {
					t.Fatalf("record %d differs: %d bytes, want %d", i, len(got[i]), len(recs[i]))
				}
			}
			// Returned records are independent: appending to one must not
			// clobber the next.
			blk, _ := r.ReadBlock(0)
			if len(blk) > 1 {
				next := append([]byte(nil), blk[1]...)
				_ = append(blk[0], 0xff, 0xff, 0xff)
				if !bytes.Equal(blk[1], next) {
					t.Fatal("appending to a record clobbered the next one")
				}
			}
		})
	}
}

func TestRecordRandomAccess(t *testing.T) {
	recs := variedRecords(500, 2048, 2)
	for _, level := range []int{0, 3} {
		r := open(t, build(t, Options{BlockSize: 2048, Level: level}, recs))
		rng := rand.New(rand.NewSource(3))
		idxs := []int64{0, int64(len(recs) - 1)}
		for range 200 {
			idxs = append(idxs, rng.Int63n(int64(len(recs))))
		}
		for _, idx := range idxs {
			got, err := r.Record(idx)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, recs[idx]) {
				t.Fatalf("level %d: Record(%d) differs", level, idx)
			}
		}
		for _, idx := range []int64{-1, int64(len(recs))} {
			if _, err := r.Record(idx); !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("Record(%d) = %v, want ErrOutOfRange", idx, err)
			}
		}
		if _, err := r.ReadBlock(r.Blocks()); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("ReadBlock(past end) = %v, want ErrOutOfRange", err)
		}
	}
}

func TestEmptyShardAndMetadata(t *testing.T) {
	meta := []byte(`{"name":"mnist-train","fields":["image","label"],"shard":3}`)
	data := build(t, Options{Level: 3, Metadata: meta}, nil)
	r := open(t, data)
	if r.Records() != 0 || r.Blocks() != 0 {
		t.Fatalf("empty shard: %d records, %d blocks", r.Records(), r.Blocks())
	}
	if !bytes.Equal(r.Metadata(), meta) {
		t.Fatalf("Metadata = %q, want %q", r.Metadata(), meta)
	}
	r = open(t, build(t, DefaultOptions(), [][]byte{[]byte("x")}))
	if r.Metadata() != nil {
		t.Fatalf("Metadata = %q, want nil", r.Metadata())
	}
	if _, err := NewWriter(&bytes.Buffer{}, Options{Metadata: []byte("{not json")}); err == nil {
		t.Fatal("NewWriter accepted metadata that is not JSON")
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{{BlockSize: -1}, {BlockSize: MaxBlockSize + 1}, {Level: -1}, {Level: 23}} {
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", o)
		}
		if _, err := NewWriter(&bytes.Buffer{}, o); err == nil {
			t.Errorf("NewWriter(%+v) succeeded", o)
		}
	}
}

func TestWriterAfterClose(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Append([]byte("x")); err == nil {
		t.Fatal("Append after Close succeeded")
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriterErrorIsSticky(t *testing.T) {
	w, err := NewWriter(&failWriter{after: 1}, Options{BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	var sawErr bool
	for range 10 {
		if err := w.Append(bytes.Repeat([]byte("z"), 20)); err != nil {
			sawErr = true
		}
	}
	if !sawErr {
		t.Fatal("no error from a failing writer")
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Close = %v, want the write error", err)
	}
}

// wantCorrupt checks that err is a *CorruptError for block (or any block if
// block is -2) and that its message names the shard.
func wantCorrupt(t *testing.T, err error, block int) *CorruptError {
	t.Helper()
	var ce *CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T), want *CorruptError", err, err)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("errors.Is(%v, ErrCorrupt) is false", err)
	}
	if block != -2 && ce.Block != block {
		t.Fatalf("CorruptError.Block = %d, want %d (%v)", ce.Block, block, err)
	}
	if !strings.Contains(err.Error(), "test.shard") {
		t.Fatalf("error %q does not name the shard", err)
	}
	if ce.Block >= 0 && !strings.Contains(err.Error(), fmt.Sprintf("block %d", ce.Block)) {
		t.Fatalf("error %q does not name block %d", err, ce.Block)
	}
	return ce
}

func TestCorruption(t *testing.T) {
	recs := variedRecords(300, 1024, 4)
	for _, c := range []struct{ level, version int }{{0, Version}, {3, Version}, {0, Version1}, {3, Version1}} {
		level := c.level
		t.Run(fmt.Sprintf("level%d/v%d", level, c.version), func(t *testing.T) {
			good := build(t, Options{BlockSize: 1024, Level: level, Version: c.version}, recs)
			r0 := open(t, good)
			if r0.Version() != c.version {
				t.Fatalf("written as version %d, read as %d", c.version, r0.Version())
			}
			const victim = 2
			bi := r0.Block(victim)

			t.Run("flipped byte in a block", func(t *testing.T) {
				data := bytes.Clone(good)
				data[bi.Offset+bi.Stored/2] ^= 0x40
				r := open(t, data) // the footer is intact
				_, err := r.ReadBlock(victim)
				ce := wantCorrupt(t, err, victim)
				if !strings.Contains(ce.Reason, "checksum") {
					t.Fatalf("reason %q does not mention the checksum", ce.Reason)
				}
				if _, err := r.ReadBlock(victim + 1); err != nil {
					t.Fatalf("neighbouring block: %v", err)
				}
				_, err = r.Record(bi.First)
				wantCorrupt(t, err, victim)
			})

			t.Run("truncated file", func(t *testing.T) {
				for _, n := range []int64{0, 10, headerSize + 5, bi.Offset + 3, int64(len(good)) - trailerSize - 1, int64(len(good)) - 1} {
					data := good[:n]
					_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
					wantCorrupt(t, err, -1)
				}
			})

			t.Run("file shorter than the size given", func(t *testing.T) {
				_, err := Open(bytes.NewReader(good[:len(good)-40]), int64(len(good)), "test.shard")
				ce := wantCorrupt(t, err, -1)
				if !strings.Contains(ce.Reason, "truncated") {
					t.Fatalf("reason %q does not say truncated", ce.Reason)
				}
			})

			t.Run("file truncated after Open", func(t *testing.T) {
				data := bytes.Clone(good)
				ra := &shrinkingReader{data: data}
				r, err := Open(ra, int64(len(data)), "test.shard")
				if err != nil {
					t.Fatal(err)
				}
				ra.data = data[:bi.Offset+1]
				_, err = r.ReadBlock(victim)
				ce := wantCorrupt(t, err, victim)
				if !strings.Contains(ce.Reason, "truncated") {
					t.Fatalf("reason %q does not say truncated", ce.Reason)
				}
			})

			t.Run("garbage trailer", func(t *testing.T) {
				rng := rand.New(rand.NewSource(5))
				for range 20 {
					data := bytes.Clone(good)
					rng.Read(data[len(data)-trailerSize:])
					_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
					wantCorrupt(t, err, -1)
				}
				// Only the checksum wrong.
				data := bytes.Clone(good)
				data[len(data)-trailerSize+16] ^= 1
				_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
				wantCorrupt(t, err, -1)
			})

			t.Run("footer claims a block past EOF", func(t *testing.T) {
				data := rewriteEntry(t, good, victim, func(e []byte) {
					binary.LittleEndian.PutUint64(e[8:], uint64(len(good))*2) // stored
					binary.LittleEndian.PutUint64(e[16:], uint64(len(good))*2)
				})
				_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
				wantCorrupt(t, err, victim)
			})

			t.Run("footer with absurd sizes", func(t *testing.T) {
				cases := map[string]func(e []byte){
					"offset":        func(e []byte) { binary.LittleEndian.PutUint64(e[0:], 1<<62) },
					"raw":           func(e []byte) { binary.LittleEndian.PutUint64(e[16:], 1<<40) },
					"records":       func(e []byte) { binary.LittleEndian.PutUint32(e[32:], 1<<31) },
					"first":         func(e []byte) { binary.LittleEndian.PutUint64(e[24:], 7) },
					"flags":         func(e []byte) { binary.LittleEndian.PutUint32(e[36:], 6) },
					"zero records":  func(e []byte) { binary.LittleEndian.PutUint32(e[32:], 0) },
					"stored length": func(e []byte) { binary.LittleEndian.PutUint64(e[8:], 1) },
				}
				for name, f := range cases {
					data := rewriteEntry(t, good, victim, f)
					_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
					if err == nil {
						t.Fatalf("%s: Open accepted it", name)
					}
					wantCorrupt(t, err, -2)
				}
				// Absurd counts in the fixed part of the footer.
				for _, at := range []int{8, 16, 32} {
					data := rewriteFooter(t, good, func(f []byte) { binary.LittleEndian.PutUint64(f[at:], 1<<60) })
					_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
					wantCorrupt(t, err, -1)
				}
			})

			t.Run("record count disagrees", func(t *testing.T) {
				// Move one record from block victim to victim+1 in the
				// footer: the footer stays consistent, the blocks do not.
				data := rewriteFooter(t, good, func(f []byte) {
					e := footerEntries(f)
					a, b := e[victim*entrySize:], e[(victim+1)*entrySize:]
					binary.LittleEndian.PutUint32(a[32:], binary.LittleEndian.Uint32(a[32:])-1)
					binary.LittleEndian.PutUint32(b[32:], binary.LittleEndian.Uint32(b[32:])+1)
					binary.LittleEndian.PutUint64(b[24:], binary.LittleEndian.Uint64(b[24:])-1)
				})
				r := open(t, data)
				_, err := r.ReadBlock(victim)
				wantCorrupt(t, err, victim)
				_, err = r.ReadBlock(victim + 1)
				wantCorrupt(t, err, victim+1)
			})

			t.Run("bad varint", func(t *testing.T) {
				if level != 0 {
					t.Skip("needs a raw block")
				}
				// Overwrite the block with 0xff bytes (an unterminated
				// varint) and fix the checksum so only the varint is wrong.
				data := bytes.Clone(good)
				blk := data[bi.Offset : bi.Offset+bi.Stored]
				for j := range blk {
					blk[j] = 0xff
				}
				sum := fileSum(data)(blk)
				data = rewriteFooter(t, data, func(f []byte) {
					binary.LittleEndian.PutUint64(footerEntries(f)[victim*entrySize+40:], sum)
				})
				_, err := open(t, data).ReadBlock(victim)
				ce := wantCorrupt(t, err, victim)
				if !strings.Contains(ce.Reason, "varint") && !strings.Contains(ce.Reason, "past the end") {
					t.Fatalf("reason %q", ce.Reason)
				}
			})

			t.Run("not a shard", func(t *testing.T) {
				data := bytes.Clone(good)
				copy(data, "NOTSHARD")
				_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
				wantCorrupt(t, err, -1)
			})

			t.Run("other version", func(t *testing.T) {
				data := bytes.Clone(good)
				binary.LittleEndian.PutUint32(data[8:], Version+1)
				_, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
				if !errors.Is(err, ErrUnsupportedVersion) {
					t.Fatalf("Open = %v, want ErrUnsupportedVersion", err)
				}
			})
		})
	}
}

type shrinkingReader struct{ data []byte }

func (s *shrinkingReader) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(s.data).ReadAt(p, off)
}

// fileSum is the checksum of the version data's header names.
func fileSum(data []byte) func([]byte) uint64 {
	return checksum(binary.LittleEndian.Uint32(data[8:]))
}

// footerEntries returns the block index part of a footer.
func footerEntries(f []byte) []byte {
	meta := binary.LittleEndian.Uint64(f[32:])
	return f[footerFixedSize+int(meta):]
}

// rewriteFooter applies edit to a copy of the footer of data and fixes the
// footer checksum in the trailer, so that only the edit is wrong.
func rewriteFooter(t *testing.T, data []byte, edit func(footer []byte)) []byte {
	t.Helper()
	data = bytes.Clone(data)
	tr := data[len(data)-trailerSize:]
	off := binary.LittleEndian.Uint64(tr[0:])
	n := binary.LittleEndian.Uint64(tr[8:])
	f := data[off : off+n]
	edit(f)
	binary.LittleEndian.PutUint64(tr[16:], fileSum(data)(f))
	return data
}

func rewriteEntry(t *testing.T, data []byte, block int, edit func(entry []byte)) []byte {
	return rewriteFooter(t, data, func(f []byte) { edit(footerEntries(f)[block*entrySize:]) })
}

func TestCompressionRatio(t *testing.T) {
	// Text-like records: words from a small vocabulary.
	words := strings.Fields("the quick brown fox jumps over a lazy dog while training data streams from sharded storage in deterministic order")
	rng := rand.New(rand.NewSource(6))
	var recs [][]byte
	total := 0
	for total < 1<<20 {
		var sb strings.Builder
		for range 5 + rng.Intn(40) {
			sb.WriteString(words[rng.Intn(len(words))])
			sb.WriteByte(' ')
		}
		recs = append(recs, []byte(sb.String()))
		total += sb.Len()
	}
	raw := build(t, Options{BlockSize: 64 << 10, Level: 0}, recs)
	zst := build(t, Options{BlockSize: 64 << 10, Level: 3}, recs)
	t.Logf("raw %d bytes, zstd %d bytes, ratio %.2f", len(raw), len(zst), float64(len(raw))/float64(len(zst)))
	if len(zst)*2 > len(raw) {
		t.Fatalf("zstd shard is %d bytes, raw %d: text should compress at least 2x", len(zst), len(raw))
	}
	r := open(t, zst)
	for i := 0; i < r.Blocks(); i++ {
		if !r.Block(i).Compressed {
			t.Fatalf("block %d of text was stored raw", i)
		}
	}

	// Incompressible data is stored raw, block by block.
	noise := make([]byte, 100<<10)
	rng.Read(noise)
	r = open(t, build(t, Options{BlockSize: 32 << 10, Level: 3}, [][]byte{noise}))
	if r.Block(0).Compressed {
		t.Fatal("random bytes were stored compressed")
	}
}

func TestFieldsRoundTrip(t *testing.T) {
	cases := []map[string][]byte{
		{},
		{"": nil},
		{"label": {7}},
		{"image": bytes.Repeat([]byte{1, 2, 3}, 300), "label": {3}, "id": []byte("sample-0001"), "empty": {}},
	}
	for _, fields := range cases {
		enc := EncodeFields(fields)
		if !bytes.Equal(enc, EncodeFields(fields)) {
			t.Fatal("EncodeFields is not deterministic")
		}
		dec, err := DecodeFields(enc)
		if err != nil {
			t.Fatal(err)
		}
		if len(dec) != len(fields) {
			t.Fatalf("decoded %d fields, want %d", len(dec), len(fields))
		}
		for k, v := range fields {
			if !bytes.Equal(dec[k], v) {
				t.Fatalf("field %q differs", k)
			}
		}
	}
	// Names are written in sorted order whatever the map order.
	enc := EncodeFields(map[string][]byte{"b": {2}, "a": {1}, "c": {3}})
	want := []byte{3, 1, 'a', 1, 1, 1, 'b', 1, 2, 1, 'c', 1, 3}
	if !bytes.Equal(enc, want) {
		t.Fatalf("EncodeFields = %v, want %v", enc, want)
	}
	for _, bad := range [][]byte{
		nil,
		{1},
		{2, 1, 'b', 0, 1, 'a', 0},      // unsorted
		{2, 1, 'a', 0, 1, 'a', 0},      // duplicate
		{1, 1, 'a', 5, 1},              // value past the end
		{1, 1, 'a', 0, 9},              // trailing byte
		{0x80, 0x00},                   // overlong varint
		{0xff, 0xff, 0xff, 0xff, 0x0f}, // absurd count
	} {
		if _, err := DecodeFields(bad); !errors.Is(err, ErrBadFields) {
			t.Errorf("DecodeFields(%v) = %v, want ErrBadFields", bad, err)
		}
	}
}

// checkShard opens data, reads every block of an accepted shard and checks
// that what it returns agrees with the footer. Rejections must be typed
// errors.
func checkShard(t *testing.T, data []byte) {
	r, err := Open(bytes.NewReader(data), int64(len(data)), "test.shard")
	if err != nil {
		var ce *CorruptError
		if !errors.As(err, &ce) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("Open: unexpected error type %T: %v", err, err)
		}
		return
	}
	var sum int64
	for i := 0; i < r.Blocks(); i++ {
		b := r.Block(i)
		if b.First != sum || b.Offset < headerSize || b.Offset+b.Stored > int64(len(data)) || b.Raw > MaxBlockRaw {
			t.Fatalf("accepted inconsistent block %d: %+v", i, b)
		}
		sum += int64(b.Records)
		recs, err := r.ReadBlock(i)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Block != i {
				t.Fatalf("ReadBlock(%d): %v", i, err)
			}
			continue
		}
		if len(recs) != b.Records {
			t.Fatalf("block %d: %d records, footer says %d", i, len(recs), b.Records)
		}
		var raw int64
		for _, rec := range recs {
			raw += int64(uvarintLen(uint64(len(rec))) + len(rec))
		}
		if raw > b.Raw {
			t.Fatalf("block %d: records take %d bytes, raw length is %d", i, raw, b.Raw)
		}
		if b.Records > 0 {
			rec, err := r.Record(b.First + int64(b.Records) - 1)
			if err != nil || !bytes.Equal(rec, recs[len(recs)-1]) {
				t.Fatalf("Record disagrees with ReadBlock in block %d: %v", i, err)
			}
		}
	}
	if sum != r.Records() {
		t.Fatalf("blocks hold %d records, Records() = %d", sum, r.Records())
	}
}

func FuzzOpen(f *testing.F) {
	for _, s := range corpusShards(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkShard(t, data)
		// A fuzzer cannot forge XXH64, so also try the input with its
		// checksums made right: that reaches the footer parser, the zstd
		// decoder and the record parser with arbitrary bytes.
		if fixed := fixSums(data); fixed != nil {
			checkShard(t, fixed)
		}
	})
}

func FuzzDecodeFields(f *testing.F) {
	for _, s := range corpusFields() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, err := DecodeFields(data)
		if err != nil {
			if !errors.Is(err, ErrBadFields) {
				t.Fatalf("error %v is not ErrBadFields", err)
			}
			return
		}
		if enc := EncodeFields(fields); !bytes.Equal(enc, data) {
			t.Fatalf("EncodeFields(DecodeFields(b)) = %v, want %v", enc, data)
		}
	})
}

// corpusShards returns small valid shards and corrupt variants of them.
func corpusShards(t testing.TB) [][]byte {
	recs := [][]byte{{}, {'x'}, []byte("hello, shard"), bytes.Repeat([]byte("ab"), 40), EncodeFields(map[string][]byte{"label": {1}})}
	valid := [][]byte{
		build(t, Options{BlockSize: 32}, recs),
		build(t, Options{BlockSize: 64, Level: 3}, recs),
		build(t, Options{Level: 1, Metadata: []byte(`{"k":1}`)}, recs[:3]),
		build(t, Options{}, nil),
	}
	out := append([][]byte(nil), valid...)
	v := valid[0]
	flip := bytes.Clone(v)
	flip[headerSize+2] ^= 1
	out = append(out, flip, v[:len(v)-5], v[:headerSize+3])
	garb := bytes.Clone(valid[1])
	copy(garb[len(garb)-trailerSize:], bytes.Repeat([]byte{0xa5}, 16))
	out = append(out, garb)
	return out
}

func corpusFields() [][]byte {
	return [][]byte{
		EncodeFields(nil),
		EncodeFields(map[string][]byte{"image": {1, 2, 3}, "label": {9}}),
		EncodeFields(map[string][]byte{"": {}, "a": nil}),
		{2, 1, 'b', 0, 1, 'a', 0},
		{0x80, 0x00},
		{1, 1, 'a', 5, 1},
	}
}

// TestSeedCorpus checks the committed seed corpus is present, and rewrites
// it with -update-corpus.
func TestSeedCorpus(t *testing.T) {
	sets := map[string][][]byte{"FuzzOpen": corpusShards(t), "FuzzDecodeFields": corpusFields()}
	for name, seeds := range sets {
		dir := filepath.Join("testdata", "fuzz", name)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i, s := range seeds {
				body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		ents, err := os.ReadDir(dir)
		if err != nil || len(ents) == 0 {
			t.Fatalf("seed corpus %s missing (go test -run TestSeedCorpus -update-corpus): %v", dir, err)
		}
	}
}

func benchShard(b *testing.B, level int) {
	// Text-like 1 MiB blocks of 1 KiB records.
	rng := rand.New(rand.NewSource(7))
	words := strings.Fields("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu")
	var recs [][]byte
	for range 4 << 10 {
		var sb strings.Builder
		for sb.Len() < 1000 {
			sb.WriteString(words[rng.Intn(len(words))])
			sb.WriteByte(' ')
		}
		recs = append(recs, []byte(sb.String()))
	}
	data := build(b, Options{BlockSize: 1 << 20, Level: level}, recs)
	r := open(b, data)
	b.SetBytes(r.Block(0).Raw)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.ReadBlock(i % r.Blocks()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadBlock(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchShard(b, 0) })
	b.Run("zstd", func(b *testing.B) { benchShard(b, 3) })
}

// fixSums returns a copy of data with the footer checksum in the trailer and
// the checksums of the block entries recomputed, or nil if the trailer does
// not point at a footer inside data.
func fixSums(data []byte) []byte {
	if len(data) < headerSize+footerFixedSize+trailerSize {
		return nil
	}
	data = bytes.Clone(data)
	tr := data[len(data)-trailerSize:]
	off := binary.LittleEndian.Uint64(tr[0:])
	n := binary.LittleEndian.Uint64(tr[8:])
	end := uint64(len(data) - trailerSize)
	if n < footerFixedSize || n > end || off != end-n {
		return nil
	}
	f := data[off:end]
	meta := binary.LittleEndian.Uint64(f[32:])
	if meta <= uint64(len(f)-footerFixedSize) {
		for e := f[footerFixedSize+meta:]; len(e) >= entrySize; e = e[entrySize:] {
			bo := binary.LittleEndian.Uint64(e[0:])
			bn := binary.LittleEndian.Uint64(e[8:])
			if bo <= uint64(len(data)) && bn <= uint64(len(data))-bo {
				binary.LittleEndian.PutUint64(e[40:], fileSum(data)(data[bo:bo+bn]))
			}
		}
	}
	binary.LittleEndian.PutUint64(tr[16:], fileSum(data)(f))
	return data
}

// Blocks of empty records compress about as far as zstd can go; the
// reader's expansion bound must still accept them.
func TestHighlyCompressible(t *testing.T) {
	recs := make([][]byte, 4<<20)
	r := open(t, build(t, Options{BlockSize: 4 << 20, Level: 3}, recs))
	b := r.Block(0)
	t.Logf("%d raw bytes stored in %d (ratio %d)", b.Raw, b.Stored, b.Raw/b.Stored)
	got, err := r.ReadBlock(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records, want %d", len(got), len(recs))
	}
}

func TestConcurrentReads(t *testing.T) {
	recs := variedRecords(400, 1024, 8)
	r := open(t, build(t, Options{BlockSize: 1024, Level: 3}, recs))
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := g; i < len(recs); i += 4 {
				got, err := r.Record(int64(i))
				if err == nil && !bytes.Equal(got, recs[i]) {
					err = fmt.Errorf("record %d differs", i)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// countingReader counts ReadAt calls: each is a round trip to remote
// storage.
type countingReader struct {
	r     *bytes.Reader
	calls int
	mu    sync.Mutex
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

// Open reads the header and the shard's end in two reads when the footer
// fits in the tail it reads, and fetches a longer footer with a third;
// both shards read back whole.
func TestOpenReads(t *testing.T) {
	for _, tc := range []struct {
		name      string
		records   int
		wantReads int
	}{
		{"small footer", 50, 2},
		{"footer over the tail read", 2000, 3}, // 2000 blocks × 48 bytes > 64 KiB
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := make([][]byte, tc.records)
			for i := range recs {
				recs[i] = bytes.Repeat([]byte{byte(i)}, 40)
			}
			data := build(t, Options{BlockSize: 48}, recs)
			cr := &countingReader{r: bytes.NewReader(data)}
			r, err := Open(cr, int64(len(data)), "test.shard")
			if err != nil {
				t.Fatal(err)
			}
			if cr.calls != tc.wantReads {
				t.Errorf("Open made %d reads, want %d", cr.calls, tc.wantReads)
			}
			if r.Blocks() < tc.records/2 || r.Records() != int64(tc.records) {
				t.Fatalf("%d blocks, %d records", r.Blocks(), r.Records())
			}
			for i := range tc.records {
				got, err := r.Record(int64(i))
				if err != nil || !bytes.Equal(got, recs[i]) {
					t.Fatalf("record %d: %v", i, err)
				}
			}
		})
	}
}

// Both format versions are written and read, and differ only in their
// checksums (XXH64 against XXH3-64, the reference implementations'
// values for the empty input pinned here); a footer of the other
// version and a version no reader knows are refused.
func TestVersions(t *testing.T) {
	if a, b := checksum(Version1)(nil), checksum(Version)(nil); a != 0xef46db3751d8e999 || b != 0x2d06800538d394c2 {
		t.Fatalf("checksums of nothing: %016x (XXH64), %016x (XXH3-64)", a, b)
	}
	recs := variedRecords(200, 700, 9)
	v1 := build(t, Options{BlockSize: 2048, Version: Version1}, recs)
	v2 := build(t, Options{BlockSize: 2048}, recs)
	if len(v1) != len(v2) || bytes.Equal(v1, v2) {
		t.Fatalf("v1 is %d bytes, v2 %d (equal: %v); want the same layout with other checksums", len(v1), len(v2), bytes.Equal(v1, v2))
	}
	for _, data := range [][]byte{v1, v2} {
		r := open(t, data)
		for i, want := range recs {
			got, err := r.Record(int64(i))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("version %d record %d: %q, %v", r.Version(), i, got, err)
			}
		}
	}
	// A version 1 header over a version 2 footer (checksums fixed).
	mixed := bytes.Clone(v2)
	binary.LittleEndian.PutUint32(mixed[8:], Version1)
	_, err := Open(bytes.NewReader(mixed), int64(len(mixed)), "test.shard")
	wantCorrupt(t, err, -1)
	mixed = fixSums(mixed)
	_, err = Open(bytes.NewReader(mixed), int64(len(mixed)), "test.shard")
	if ce := wantCorrupt(t, err, -1); !strings.Contains(ce.Reason, "disagrees") {
		t.Fatalf("reason %q", ce.Reason)
	}
	if _, err := NewWriter(io.Discard, Options{Version: 3}); err == nil || !strings.Contains(err.Error(), "Version 3") {
		t.Fatalf("Options.Version 3: %v", err)
	}
}
