package dataloader

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// Index format and version.
const (
	IndexFile     = "index.json"
	IndexFormat   = "ringo-dataset"
	IndexVersion  = 1
	maxIndexBytes = 64 << 20
)

// Index is a dataset's index.json.
type Index struct {
	Format   string          `json:"format"`
	Version  int             `json:"version"`
	Records  int64           `json:"records"`
	Shards   []ShardInfo     `json:"shards"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// ShardInfo is one shard as the index lists it.
type ShardInfo struct {
	Name    string `json:"name"`
	Bytes   int64  `json:"bytes"`
	Records int64  `json:"records"`
	XXH64   string `json:"xxh64"`
}

// ParseIndex decodes and checks an index: format, version, shard names
// that stay inside the dataset, counts that add up.
func ParseIndex(b []byte) (*Index, error) {
	if len(b) > maxIndexBytes {
		return nil, fmt.Errorf("index of %d bytes exceeds the %d limit", len(b), maxIndexBytes)
	}
	var ix Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("index is not valid JSON: %v", err)
	}
	if ix.Format != IndexFormat || ix.Version != IndexVersion {
		return nil, fmt.Errorf("index format %q version %d; this ringo reads %q version %d", ix.Format, ix.Version, IndexFormat, IndexVersion)
	}
	var total int64
	seen := map[string]bool{}
	for i, s := range ix.Shards {
		clean := path.Clean(s.Name)
		if s.Name == "" || clean != s.Name || strings.HasPrefix(clean, "../") || clean == ".." || path.IsAbs(clean) || seen[s.Name] {
			return nil, fmt.Errorf("index shard %d: name %q is empty, repeated, or leaves the dataset", i, s.Name)
		}
		seen[s.Name] = true
		if s.Bytes < 0 || s.Records < 0 || len(s.XXH64) != 16 {
			return nil, fmt.Errorf("index shard %s: bytes %d, records %d or xxh64 %q is not valid", s.Name, s.Bytes, s.Records, s.XXH64)
		}
		if total > (1<<62)-s.Records {
			return nil, fmt.Errorf("index shard %s: record counts overflow", s.Name)
		}
		total += s.Records
	}
	if total != ix.Records {
		return nil, fmt.Errorf("index says %d records but its shards hold %d", ix.Records, total)
	}
	return &ix, nil
}

// Counts returns each shard's record count, in index order.
func (ix *Index) Counts() []int64 {
	c := make([]int64, len(ix.Shards))
	for i, s := range ix.Shards {
		c[i] = s.Records
	}
	return c
}
