package checkpoint

import (
	"context"
	"fmt"
	"github.com/ringo-ml/ringo/internal/iox"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Replicate copies committed checkpoint step from dir to another
// directory (another disk, a network mount) for disaster recovery, with
// the same commit protocol: the copy lands in a temporary directory, every
// shard is verified against the manifest's checksums, and only then is it
// renamed into place. A copy that does not verify never appears.
func Replicate(ctx context.Context, dir string, step int64, dst string) error {
	m, err := ReadManifest(dir, step)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return fmt.Errorf("checkpoint: replicating step %d to %s: %w", step, dst, err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fail(err)
	}
	final := filepath.Join(dst, stepDir(step))
	if exists(final) {
		return fail(fmt.Errorf("%s already exists", final))
	}
	tmp, err := os.MkdirTemp(dst, stepDir(step)+".tmp-")
	if err != nil {
		return fail(err)
	}
	src := filepath.Join(dir, stepDir(step))
	files := []string{ManifestFile}
	for _, s := range m.Shards {
		files = append(files, s.File)
	}
	for _, name := range files {
		if err := ctx.Err(); err != nil {
			os.RemoveAll(tmp)
			return fail(err)
		}
		if err := copyFileSync(filepath.Join(src, name), filepath.Join(tmp, name)); err != nil {
			os.RemoveAll(tmp)
			return fail(err)
		}
	}
	var problems []string
	for i, s := range m.Shards {
		problems = append(problems, verifyShard(filepath.Join(tmp, s.File), i, s, m)...)
	}
	if len(problems) > 0 {
		os.RemoveAll(tmp)
		return fail(fmt.Errorf("the copy does not verify: %s", strings.Join(problems, "; ")))
	}
	if err := syncDir(tmp); err != nil {
		os.RemoveAll(tmp)
		return fail(err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return fail(err)
	}
	return syncDir(dst)
}

func copyFileSync(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	err = iox.SyncClose(out, err)
	return err
}
