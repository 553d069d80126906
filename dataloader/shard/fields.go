package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrBadFields is returned (wrapped) by DecodeFields for a record that is
// not a canonical field encoding.
var ErrBadFields = errors.New("shard: bad fields record")

// EncodeFields encodes named fields as one record. The output is
// deterministic: names are written in sorted order. See the package doc for
// the layout.
func EncodeFields(fields map[string][]byte) []byte {
	names := make([]string, 0, len(fields))
	size := binary.MaxVarintLen64
	for name, v := range fields {
		names = append(names, name)
		size += 2*binary.MaxVarintLen64 + len(name) + len(v)
	}
	sort.Strings(names)
	out := make([]byte, 0, size)
	out = binary.AppendUvarint(out, uint64(len(names)))
	for _, name := range names {
		v := fields[name]
		out = binary.AppendUvarint(out, uint64(len(name)))
		out = append(out, name...)
		out = binary.AppendUvarint(out, uint64(len(v)))
		out = append(out, v...)
	}
	return out
}

// DecodeFields decodes a record written by EncodeFields. The values alias
// record (each capped to its own length); copy them to keep them past a
// change to record.
func DecodeFields(record []byte) (map[string][]byte, error) {
	p := record
	count, err := fieldUvarint(&p, "field count")
	if err != nil {
		return nil, err
	}
	// Each field takes at least two bytes (two zero lengths).
	if count > uint64(len(p)/2) {
		return nil, fmt.Errorf("%w: %d fields declared in %d bytes", ErrBadFields, count, len(p))
	}
	fields := make(map[string][]byte, count)
	var prev []byte
	for i := uint64(0); i < count; i++ {
		name, err := fieldBytes(&p, "name")
		if err != nil {
			return nil, err
		}
		if i > 0 && bytes.Compare(prev, name) >= 0 {
			return nil, fmt.Errorf("%w: field %q is not after %q (names must be sorted and unique)", ErrBadFields, name, prev)
		}
		prev = name
		v, err := fieldBytes(&p, "value")
		if err != nil {
			return nil, err
		}
		fields[string(name)] = v
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadFields, len(p))
	}
	return fields, nil
}

func fieldUvarint(p *[]byte, what string) (uint64, error) {
	v, n := binary.Uvarint(*p)
	if n <= 0 {
		return 0, fmt.Errorf("%w: bad varint for %s", ErrBadFields, what)
	}
	if n != uvarintLen(v) {
		return 0, fmt.Errorf("%w: overlong varint for %s", ErrBadFields, what)
	}
	*p = (*p)[n:]
	return v, nil
}

func fieldBytes(p *[]byte, what string) ([]byte, error) {
	n, err := fieldUvarint(p, what+" length")
	if err != nil {
		return nil, err
	}
	if n > uint64(len(*p)) {
		return nil, fmt.Errorf("%w: %s of %d bytes runs past the end", ErrBadFields, what, n)
	}
	b := (*p)[:n:n]
	*p = (*p)[n:]
	return b, nil
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
