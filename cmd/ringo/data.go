package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

const dataUsage = `Usage: ringo data <command> ...

Commands:
  pack --from mnist IMAGES LABELS --out DIR [--shard-size 64MB] [--level N] [--block-size 1MB] [--format-version 2]
  pack --from jsonl|csv|dir SRC --out DIR [...]
  pack --from tar SHARD.tar... --out DIR [...]   (WebDataset: files grouped by basename)
                            build a dataset (shards + index.json)
  inspect DIR|URL           counts, sizes, compression ratio, a few records
  verify DIR|URL            every shard hash and block checksum; exit 1 naming bad shards and blocks

URLs: http(s)://host/prefix, s3://bucket/prefix (RINGO_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
`

func runData(ctx context.Context, args []string) error {
	return runGroup(ctx, "data", dataUsage, dataCommands(), args)
}

func dataCommands() []subcommand {
	return []subcommand{
		{name: "pack", run: dataPack},
		{name: "inspect", run: dataInspect},
		{name: "verify", run: dataVerify},
	}
}

func dataPack(_ context.Context, args []string) error {
	fs := newFlagSet("data pack", dataUsage)
	from := fs.String("from", "", "input format: mnist, jsonl, csv, dir or tar")
	out := fs.String("out", "", "dataset directory to create")
	opts := dataloader.DefaultPackOptions()
	fs.Var(byteFlag{&opts.ShardBytes}, "shard-size", "raw bytes per shard (accepts K, M, G)")
	block := int64(opts.Shard.BlockSize)
	fs.Var(byteFlag{&block}, "block-size", "raw bytes per block")
	fs.IntVar(&opts.Shard.Level, "level", opts.Shard.Level, "zstd level per block, 0 for none")
	fs.IntVar(&opts.Shard.Version, "format-version", shard.Version, "shard format version: 2 (XXH3 checksums), or 1 for readers that know only version 1")
	inputs, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := (shard.Options{Version: opts.Shard.Version}).Validate(); err != nil {
		return usageErr(fs, "--format-version: %v", err)
	}
	opts.Shard.BlockSize = int(block)
	if *out == "" {
		return usageErr(fs, "pack needs --out DIR")
	}
	if isTerminal(os.Stderr) {
		opts.Progress = func(n int64) { fmt.Fprintf(os.Stderr, "\rpacked %d records", n) }
		defer fmt.Fprintln(os.Stderr)
	}
	var ix *dataloader.Index
	switch {
	case *from == "mnist" && len(inputs) == 2:
		ix, err = dataloader.PackMNIST(inputs[0], inputs[1], *out, opts)
	case *from == "jsonl" && len(inputs) == 1:
		ix, err = dataloader.PackJSONL(inputs[0], *out, opts)
	case *from == "csv" && len(inputs) == 1:
		ix, err = dataloader.PackCSV(inputs[0], *out, opts)
	case *from == "dir" && len(inputs) == 1:
		ix, err = dataloader.PackDir(inputs[0], *out, opts)
	case *from == "tar" && len(inputs) > 0:
		ix, err = dataloader.PackTar(inputs, *out, opts)
	default:
		return usageErr(fs, "pack --from %q with %d inputs: want mnist IMAGES LABELS, jsonl|csv|dir SRC, or tar SHARDS...", *from, len(inputs))
	}
	if err != nil {
		return err
	}
	fmt.Printf("packed %d records into %d shards in %s\n", ix.Records, len(ix.Shards), *out)
	return nil
}

func openDataset(ctx context.Context, loc string) (*dataloader.Dataset, error) {
	src, err := source.Parse(loc)
	if err != nil {
		return nil, err
	}
	return dataloader.Open(ctx, src)
}

func dataInspect(ctx context.Context, args []string) error {
	fs := newFlagSet("data inspect", dataUsage)
	loc, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	if loc == "" {
		return usageErr(fs, "inspect needs one DIR or URL")
	}
	ds, err := openDataset(ctx, loc)
	if err != nil {
		return err
	}
	var bytes, raw int64
	var blocks int
	versions := map[int]int{} // shards per format version
	var sample [][]byte
	for i, s := range ds.Index.Shards {
		bytes += s.Bytes
		r, obj, err := ds.OpenShard(ctx, i)
		if err != nil {
			return err
		}
		blocks += r.Blocks()
		versions[r.Version()]++
		for b := 0; b < r.Blocks(); b++ {
			raw += r.Block(b).Raw
		}
		if len(sample) < 3 && r.Blocks() > 0 {
			recs, err := r.ReadBlock(0)
			if err != nil {
				obj.Close()
				return err
			}
			sample = append(sample, recs[:min(3-len(sample), len(recs))]...)
		}
		obj.Close()
	}
	fmt.Printf("dataset %s: %d records in %d shards, %d blocks\n", loc, ds.Index.Records, len(ds.Index.Shards), blocks)
	fmt.Printf("stored %s, raw %s, compression ratio %.2f\n", humanBytes(bytes), humanBytes(raw), float64(raw)/float64(max(bytes, 1)))
	var vs []string
	for _, v := range slices.Sorted(maps.Keys(versions)) {
		vs = append(vs, fmt.Sprintf("version %d (%d shards)", v, versions[v]))
	}
	fmt.Printf("shard format: %s\n", strings.Join(vs, ", "))
	if len(ds.Index.Metadata) > 0 {
		fmt.Printf("metadata: %s\n", compactJSON(ds.Index.Metadata))
	}
	for i, rec := range sample {
		fmt.Printf("record %d: %s\n", i, describeRecord(rec))
	}
	return nil
}

// describeRecord shows a record as its fields when it has them, else as
// text or a byte count.
func describeRecord(rec []byte) string {
	if json.Valid(rec) {
		return truncate(string(rec), 120)
	}
	if f, err := shard.DecodeFields(rec); err == nil && len(f) > 0 {
		var parts []string
		for _, k := range sortedKeys(f) {
			v := f[k]
			if len(v) <= 16 && isPrintable(v) {
				parts = append(parts, fmt.Sprintf("%s=%q", k, v))
			} else {
				parts = append(parts, fmt.Sprintf("%s=<%d bytes>", k, len(v)))
			}
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprintf("<%d bytes>", len(rec))
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func isPrintable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func dataVerify(ctx context.Context, args []string) error {
	fs := newFlagSet("data verify", dataUsage)
	loc, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	if loc == "" {
		return usageErr(fs, "verify needs one DIR or URL")
	}
	ds, err := openDataset(ctx, loc)
	if err != nil {
		return err
	}
	var progress func(done, total int)
	if isTerminal(os.Stderr) {
		progress = func(done, total int) {
			fmt.Fprintf(os.Stderr, "\rverified %d/%d shards", done, total)
			if done == total {
				fmt.Fprintln(os.Stderr)
			}
		}
	}
	problems, err := ds.Verify(ctx, progress)
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Println("BAD", p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %d problems", loc, len(problems))
	}
	fmt.Printf("%s: %d shards, every hash and block checksum matches\n", loc, len(ds.Index.Shards))
	return nil
}
