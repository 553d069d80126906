package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// ringoExit runs the built binary (see TestMain) and returns what it wrote
// to stdout and to stderr, and its exit status.
func ringoExit(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(ringoBin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("ringo %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// commandPaths lists every command path under prefix, groups and their
// commands alike, from the tables ringo dispatches from: a command added
// there is walked here without anyone remembering to.
func commandPaths(prefix []string, cmds []subcommand) [][]string {
	var out [][]string
	for _, c := range cmds {
		p := slices.Concat(prefix, []string{c.name})
		out = append(out, p)
		out = append(out, commandPaths(p, c.commands)...)
	}
	return out
}

func TestEveryCommandAnswersHelp(t *testing.T) {
	paths := append([][]string{{}}, commandPaths(nil, subcommands())...)
	for _, want := range [][]string{{"ckpt", "restore"}, {"data", "pack"}, {"topo", "probe"}, {"bench", "ckpt"}, {"audit", "verify"}} {
		if !slices.ContainsFunc(paths, func(p []string) bool { return slices.Equal(p, want) }) {
			t.Fatalf("the command tables lack %v; they list %v", want, paths)
		}
	}
	for _, p := range paths {
		name := strings.Join(slices.Concat([]string{"ringo"}, p), " ")
		for _, h := range []string{"-h", "--help"} {
			out, errOut, code := ringoExit(t, slices.Concat(p, []string{h})...)
			if code != 0 || !strings.Contains(out, "Usage") {
				t.Errorf("%s %s: exit %d, want 0 and the usage on stdout\nstdout:\n%s\nstderr:\n%s", name, h, code, out, errOut)
			}
		}
		out, errOut, code := ringoExit(t, slices.Concat(p, []string{"--no-such-flag"})...)
		first, rest, _ := strings.Cut(errOut, "\n")
		if code != 2 || !strings.Contains(first, "no-such-flag") || !strings.Contains(rest, "Usage") || out != "" {
			t.Errorf("%s --no-such-flag: exit %d, want 2 and a line naming the flag, then the usage, on stderr\nstdout:\n%s\nstderr:\n%s", name, code, out, errOut)
		}
	}
}

// The mistake that started this: --help was taken for the log's name.
func TestAuditVerifyHelp(t *testing.T) {
	out, errOut, code := ringoExit(t, "audit", "verify", "--help")
	if code != 0 || !strings.Contains(out, "Usage: ringo audit verify FILE") {
		t.Errorf("ringo audit verify --help: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// Mistakes in the command line exit 2 and say what is wrong before the
// usage; failures of the work itself exit 1 without the usage.
func TestExitCodes(t *testing.T) {
	empty := t.TempDir()
	missing := filepath.Join(empty, "no-such-file")
	for _, tc := range []struct {
		args []string
		code int
		want string // in the first line of stderr
	}{
		{nil, 2, "missing command"},
		{[]string{"help"}, 0, ""},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"ckpt"}, 2, "ringo ckpt: missing command"},
		{[]string{"ckpt", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"ckpt", "verify"}, 2, "ringo ckpt verify: missing the checkpoint"},
		{[]string{"ckpt", "verify", empty, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"ckpt", "restore", empty, "--world-size", "many", "--out", empty}, 2, `invalid value "many"`},
		{[]string{"ckpt", "restore", empty}, 2, "--world-size"},
		{[]string{"ckpt", "export", empty}, 2, "--out FILE"},
		{[]string{"audit", "verify"}, 2, "missing the audit log"},
		{[]string{"bench", "allshuffle"}, 2, `unknown command "allshuffle"`},
		{[]string{"bench", "allreduce", "--dtype", "float8"}, 2, "ringo bench:"},
		{[]string{"data", "inspect"}, 2, "needs one DIR or URL"},
		{[]string{"topo", "place", "--hosts", missing}, 2, "--matrix"},
		{[]string{"devices", "--watch", "-1s"}, 2, "--watch"},
		{[]string{"launch", "--"}, 2, "no program to launch"},
		{[]string{"launch", "--nnodes", "3:2", "--", "true"}, 2, "MIN 3 is larger than MAX 2"},
		{[]string{"version", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"audit", "verify", missing}, 1, "no-such-file"},
		{[]string{"ckpt", "verify", empty}, 1, ""},
		{[]string{"ckpt", "list", missing}, 1, ""},
		{[]string{"topo", "show", missing}, 1, "no-such-file"},
		{[]string{"launch", "--token-file", missing, "--", "true"}, 1, "no-such-file"},
	} {
		_, errOut, code := ringoExit(t, tc.args...)
		first, rest, _ := strings.Cut(errOut, "\n")
		if code != tc.code || !strings.Contains(first, tc.want) {
			t.Errorf("ringo %v: exit %d, want %d and %q in the first line of\n%s", tc.args, code, tc.code, tc.want, errOut)
			continue
		}
		if usage := strings.Contains(rest, "Usage"); usage != (code == 2) {
			t.Errorf("ringo %v: exit %d, usage printed: %v\n%s", tc.args, code, usage, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, code := ringoExit(t, "version")
	if code != 0 || !strings.HasPrefix(out, "ringo ") {
		t.Errorf("ringo version: exit %d: %q", code, out)
	}
}
