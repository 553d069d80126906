package checkpoint

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/ringo-ml/ringo/checkpoint/safetensors"
)

// FormatName and FormatVersion identify manifest.json files.
const (
	FormatName    = "ringo-checkpoint"
	FormatVersion = 1
	ManifestFile  = "manifest.json"
)

// Manifest is the content of manifest.json.
type Manifest struct {
	Format    string `json:"format"`
	Version   int    `json:"version"`
	Step      int64  `json:"step"`
	WorldSize int    `json:"world_size"`
	Checksum  string `json:"checksum"` // "xxh64"
	// Encoding is empty for plain safetensors shards, else a
	// comma-separated list of "zstd+shuffle" and "aes-256-gcm": each tensor
	// is then stored as a U8 blob of its encoded bytes, and checksums cover
	// the stored bytes.
	Encoding string                    `json:"encoding,omitempty"`
	Tensors  map[string]ManifestTensor `json:"tensors"`
	Shards   []ManifestShard           `json:"shards"`
	Metadata json.RawMessage           `json:"metadata,omitempty"`
}

// ManifestTensor is one tensor: its global dtype and shape, and the pieces
// (row ranges of dim 0) that together hold it, in row order.
type ManifestTensor struct {
	DType safetensors.DType `json:"dtype"`
	Shape []int64           `json:"shape"`
	// Split is true for a tensor whose rows were split across ranks, false
	// for one replicated on every rank; resharding keeps the distinction.
	Split  bool    `json:"split"`
	Pieces []Piece `json:"pieces"`
}

// Piece is rows [Rows[0], Rows[1]) of a tensor, stored under the tensor's
// name in shard Shard. A tensor of rank 0 is one piece with rows [0, 1).
// Hash is the XXH64 of the piece's bytes, in hex.
type Piece struct {
	Shard int      `json:"shard"`
	Rows  [2]int64 `json:"rows"`
	Hash  string   `json:"hash"`
}

// ManifestShard is one shard file.
type ManifestShard struct {
	File  string `json:"file"`
	Bytes int64  `json:"bytes"`
	Hash  string `json:"hash"` // XXH64 of the whole file, hex
}

// rows is the length of dim 0, or 1 for a scalar.
func rows(shape []int64) int64 {
	if len(shape) == 0 {
		return 1
	}
	return shape[0]
}

// ParseManifest decodes and checks a manifest: format and version, shard
// names, and that every tensor's pieces tile its rows exactly once.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON: %v", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate reports the first inconsistency, naming the tensor or shard.
func (m *Manifest) Validate() error {
	if m.Format != FormatName {
		return fmt.Errorf("manifest format %q, want %q", m.Format, FormatName)
	}
	if m.Version != FormatVersion {
		return fmt.Errorf("manifest version %d; this ringo reads version %d", m.Version, FormatVersion)
	}
	if m.Checksum != checksumName {
		return fmt.Errorf("manifest checksum %q; this ringo knows %s", m.Checksum, checksumName)
	}
	if _, _, err := parseEncoding(m.Encoding); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.WorldSize < 1 || len(m.Shards) != m.WorldSize {
		return fmt.Errorf("manifest says world size %d but lists %d shards", m.WorldSize, len(m.Shards))
	}
	if m.Step < 0 {
		return fmt.Errorf("manifest step %d is negative", m.Step)
	}
	for i, s := range m.Shards {
		if s.File != shardName(i, m.WorldSize) {
			return fmt.Errorf("shard %d is named %q, want %q", i, s.File, shardName(i, m.WorldSize))
		}
		if s.Bytes < 8 || len(s.Hash) != 16 {
			return fmt.Errorf("shard %s: size %d or checksum %q is not plausible", s.File, s.Bytes, s.Hash)
		}
	}
	for name, t := range m.Tensors {
		if t.DType.Size() == 0 {
			return fmt.Errorf("tensor %q: unknown dtype %q", name, t.DType)
		}
		if _, err := safetensors.Numel(t.Shape); err != nil {
			return fmt.Errorf("tensor %q: %v", name, err)
		}
		next := int64(0)
		for _, p := range t.Pieces {
			if p.Shard < 0 || p.Shard >= m.WorldSize {
				return fmt.Errorf("tensor %q: piece in shard %d of %d", name, p.Shard, m.WorldSize)
			}
			if p.Rows[0] != next || p.Rows[1] < p.Rows[0] {
				return fmt.Errorf("tensor %q: pieces do not tile its rows (piece %v after row %d)", name, p.Rows, next)
			}
			if len(p.Hash) != 16 {
				return fmt.Errorf("tensor %q: piece %v has checksum %q", name, p.Rows, p.Hash)
			}
			next = p.Rows[1]
		}
		if next != rows(t.Shape) {
			return fmt.Errorf("tensor %q: pieces cover rows [0, %d) of %d", name, next, rows(t.Shape))
		}
	}
	return nil
}

// checksumName is the manifest's name for XXH64: fast enough (many GB/s)
// that checking every byte on load costs little next to the disk.
const checksumName = "xxh64"

func hashOf(b []byte) string { return fmt.Sprintf("%016x", xxhash.Sum64(b)) }

func shardName(rank, world int) string {
	return fmt.Sprintf("shard-%05d-of-%05d.safetensors", rank, world)
}

// stepDir is the final directory name of a step.
func stepDir(step int64) string { return fmt.Sprintf("step-%08d", step) }

// ParseStepDir returns the step of a final step directory's name
// ("step-00000042"); temporary directories do not parse.
func ParseStepDir(name string) (int64, bool) { return parseStepDir(name) }

func parseStepDir(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, "step-")
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return 0, false
	}
	var step int64
	for _, c := range rest {
		if c < '0' || c > '9' || step > (1<<62)/10 {
			return 0, false
		}
		step = step*10 + int64(c-'0')
	}
	return step, true
}
