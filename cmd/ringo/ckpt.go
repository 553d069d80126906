package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
)

const ckptUsage = `Usage: ringo ckpt <command> [flags] DIR[/step-N]

Commands:
  list DIR                           steps, complete or not, sizes, ages
  inspect DIR[/step-N] [--json]      tensors, metadata, world size, format
  verify DIR[/step-N]                re-read every shard; exit 1 naming every bad file and tensor
  restore DIR[/step-N] --world-size M --out DIR2
                                     reshard for a job of M ranks
  export DIR[/step-N] --out FILE     one consolidated .safetensors file

Without /step-N, the newest complete checkpoint in DIR is used.
`

func runCkpt(ctx context.Context, args []string) error {
	if done, err := usageIfAsked(args, ckptUsage); done {
		return err
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("ckpt "+cmd, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "inspect: print the manifest as JSON")
	world := fs.Int("world-size", 0, "restore: the number of ranks to reshard for")
	out := fs.String("out", "", "restore: the directory to write; export: the file to write")
	path, helped, err := parseWithTarget(fs, args)
	if helped || err != nil {
		return err
	}
	if path == "" {
		return fmt.Errorf("%s needs a checkpoint directory\n\n%s", cmd, ckptUsage)
	}
	if cmd == "list" {
		return ckptList(path)
	}
	dir, step, err := resolveStep(path)
	if err != nil {
		return err
	}
	switch cmd {
	case "inspect":
		return ckptInspect(dir, step, *asJSON)
	case "verify":
		return ckptVerify(dir, step)
	case "restore":
		if *world < 1 || *out == "" {
			return errors.New("restore needs --world-size M (at least 1) and --out DIR")
		}
		if err := checkpoint.Reshard(ctx, dir, step, *world, *out); err != nil {
			return err
		}
		fmt.Printf("resharded step %d of %s for %d ranks into %s\n", step, dir, *world, *out)
		return nil
	case "export":
		if *out == "" {
			return errors.New("export needs --out FILE")
		}
		if err := checkpoint.Export(ctx, dir, step, *out); err != nil {
			return err
		}
		fmt.Printf("exported step %d of %s to %s\n", step, dir, *out)
		return nil
	}
	return fmt.Errorf("unknown command %q\n\n%s", cmd, ckptUsage)
}

// resolveStep splits DIR/step-N, or finds the newest complete step in DIR
// (warning about any newer incomplete ones).
func resolveStep(path string) (string, int64, error) {
	clean := filepath.Clean(path)
	if step, ok := checkpoint.ParseStepDir(filepath.Base(clean)); ok {
		return filepath.Dir(clean), step, nil
	}
	step, skipped, err := checkpoint.Latest(clean)
	for _, s := range skipped {
		fmt.Fprintf(os.Stderr, "warning: skipping %s\n", s)
	}
	return clean, step, err
}

func ckptList(dir string) error {
	entries, err := checkpoint.List(dir)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("%s holds no checkpoints", dir)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "STEP\tSTATE\tWORLD\tSIZE\tAGE\tDIR")
	for _, e := range entries {
		state, world := "complete", "-"
		if !e.Complete {
			state = "incomplete: " + e.Problem
		} else {
			world = fmt.Sprint(e.Manifest.WorldSize)
		}
		age := "-"
		if !e.Modified.IsZero() {
			age = time.Since(e.Modified).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Step, state, world, humanBytes(e.Bytes), age, e.Dir)
	}
	return w.Flush()
}

func ckptInspect(dir string, step int64, asJSON bool) error {
	m, err := checkpoint.ReadManifest(dir, step)
	if err != nil {
		return err
	}
	if asJSON {
		b, _ := json.MarshalIndent(m, "", "  ")
		fmt.Println(string(b))
		return nil
	}
	fmt.Printf("checkpoint %s, step %d: format %s v%d, saved by %d ranks, checksums %s\n",
		filepath.Join(dir, fmt.Sprintf("step-%08d", step)), m.Step, m.Format, m.Version, m.WorldSize, m.Checksum)
	if m.Encoding == "" {
		fmt.Println("shards are plain safetensors files (no compression, no encryption)")
	} else {
		fmt.Printf("shards are encoded (%s): each tensor is stored as a U8 blob, not readable by plain safetensors tools; `ringo ckpt export` writes a plain file\n", m.Encoding)
	}
	names := make([]string, 0, len(m.Tensors))
	for n := range m.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TENSOR\tDTYPE\tSHAPE\tBYTES\tLAYOUT\tSHARDS")
	var total int64
	for _, n := range names {
		t := m.Tensors[n]
		elems := int64(1)
		for _, d := range t.Shape {
			elems *= d
		}
		bytes := elems * int64(t.DType.Size())
		total += bytes
		layout := "replicated"
		if t.Split {
			layout = fmt.Sprintf("split in %d row ranges", len(t.Pieces))
		}
		var shards []string
		for _, p := range t.Pieces {
			shards = append(shards, fmt.Sprintf("%d[%d:%d]", p.Shard, p.Rows[0], p.Rows[1]))
		}
		fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\t%s\n", n, t.DType, t.Shape, humanBytes(bytes), layout, strings.Join(shards, " "))
	}
	w.Flush()
	fmt.Printf("%d tensors, %s\n", len(names), humanBytes(total))
	if len(m.Metadata) > 0 {
		fmt.Printf("metadata: %s\n", compactJSON(m.Metadata))
	}
	return nil
}

func ckptVerify(dir string, step int64) error {
	progress := func(done, total int64) {}
	if isTerminal(os.Stderr) {
		progress = func(done, total int64) {
			fmt.Fprintf(os.Stderr, "\rverifying %s / %s", humanBytes(done), humanBytes(total))
			if done == total {
				fmt.Fprintln(os.Stderr)
			}
		}
	}
	problems, err := checkpoint.Verify(dir, step, progress)
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println("BAD", p)
		}
		return fmt.Errorf("step %d in %s: %d problems", step, dir, len(problems))
	}
	fmt.Printf("step %d in %s: every shard and tensor matches its checksum\n", step, dir)
	return nil
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func compactJSON(b []byte) string {
	var m any
	if json.Unmarshal(b, &m) != nil {
		return string(b)
	}
	c, _ := json.Marshal(m)
	return string(c)
}
