package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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

Without /step-N, the newest complete checkpoint in DIR is used. verify,
restore and export show progress when stderr is a terminal (--progress:
always).
`

func runCkpt(ctx context.Context, args []string) error {
	return runGroup(ctx, "ckpt", ckptUsage, ckptCommands(), args)
}

func ckptCommands() []subcommand {
	return []subcommand{
		{name: "list", run: ckptList},
		{name: "inspect", run: ckptInspect},
		{name: "verify", run: ckptVerify},
		{name: "restore", run: ckptRestore},
		{name: "export", run: ckptExport},
	}
}

// ckptStep parses a ckpt command's flags and its DIR[/step-N], runs check
// (if any) on the flags, and only then resolves the step, so that a
// mistake in the command line is reported as one whatever the directory
// holds.
func ckptStep(fs *flag.FlagSet, args []string, check func() error) (string, int64, error) {
	path, err := parseWithTarget(fs, args)
	if err == nil && path == "" {
		err = usageErr(fs, "missing the checkpoint DIR[/step-N]")
	}
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		return "", 0, err
	}
	return resolveStep(path)
}

func ckptRestore(ctx context.Context, args []string) error {
	fs := newFlagSet("ckpt restore", ckptUsage)
	world := fs.Int("world-size", 0, "the number of ranks to reshard for")
	out := fs.String("out", "", "the directory to write")
	forceProgress := progressFlag(fs)
	dir, step, err := ckptStep(fs, args, func() error {
		if *world < 1 || *out == "" {
			return usageErr(fs, "restore needs --world-size M (at least 1) and --out DIR")
		}
		return nil
	})
	if err != nil {
		return err
	}
	progress := newProgress("resharding", *forceProgress)
	err = checkpoint.Reshard(ctx, dir, step, *world, *out, progress.report)
	progress.end()
	if err != nil {
		return err
	}
	fmt.Printf("resharded step %d of %s for %d ranks into %s\n", step, dir, *world, *out)
	return nil
}

func ckptExport(ctx context.Context, args []string) error {
	fs := newFlagSet("ckpt export", ckptUsage)
	out := fs.String("out", "", "the .safetensors file to write")
	forceProgress := progressFlag(fs)
	dir, step, err := ckptStep(fs, args, func() error {
		if *out == "" {
			return usageErr(fs, "export needs --out FILE")
		}
		return nil
	})
	if err != nil {
		return err
	}
	progress := newProgress("exporting", *forceProgress)
	err = checkpoint.Export(ctx, dir, step, *out, progress.report)
	progress.end()
	if err != nil {
		return err
	}
	fmt.Printf("exported step %d of %s to %s\n", step, dir, *out)
	return nil
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

func ckptList(_ context.Context, args []string) error {
	fs := newFlagSet("ckpt list", ckptUsage)
	dir, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	if dir == "" {
		return usageErr(fs, "missing the checkpoint DIR")
	}
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

func ckptInspect(_ context.Context, args []string) error {
	fs := newFlagSet("ckpt inspect", ckptUsage)
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	dir, step, err := ckptStep(fs, args, nil)
	if err != nil {
		return err
	}
	m, err := checkpoint.ReadManifest(dir, step)
	if err != nil {
		return err
	}
	if *asJSON {
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

func ckptVerify(_ context.Context, args []string) error {
	fs := newFlagSet("ckpt verify", ckptUsage)
	forceProgress := progressFlag(fs)
	dir, step, err := ckptStep(fs, args, nil)
	if err != nil {
		return err
	}
	progress := newProgress("verifying", *forceProgress)
	problems, err := checkpoint.Verify(dir, step, progress.report)
	progress.end()
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

// progressFlag is the --progress flag of the commands that show progress.
func progressFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("progress", false, "show progress on stderr even when it is not a terminal")
}

// progressLine shows bytes done out of a total on one line of stderr that
// rewrites itself. It is on only when stderr is a terminal or --progress
// asks, so that scripts and logs get clean output; off, report does
// nothing. Its callers call report one at a time.
type progressLine struct {
	w    io.Writer // nil when off
	verb string
	open bool // a line was started and not yet ended
}

func newProgress(verb string, force bool) *progressLine {
	p := &progressLine{verb: verb}
	if force || isTerminal(os.Stderr) {
		p.w = os.Stderr
	}
	return p
}

func (p *progressLine) report(done, total int64) {
	if p.w == nil {
		return
	}
	fmt.Fprintf(p.w, "\r%s %s / %s", p.verb, humanBytes(done), humanBytes(total))
	p.open = done < total
	if !p.open {
		fmt.Fprintln(p.w)
	}
}

// end ends a line that a failure left open, so that the error message
// starts a line of its own.
func (p *progressLine) end() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
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
