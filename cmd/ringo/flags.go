package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// usageError is a mistake in the command line itself: an unknown flag or
// command, a missing argument, a value a flag cannot take. main prints it
// with the usage of the command it belongs to and exits 2; when err is
// flag.ErrHelp the user asked for that usage, and main prints it and exits
// 0. Any other error is the work failing, and exits 1. Commands only say
// which kind an error is; main alone prints usage and picks exit codes,
// so every command behaves alike.
type usageError struct {
	err error
	fs  *flag.FlagSet // whose usage to print
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func (e *usageError) printUsage(w io.Writer) {
	e.fs.SetOutput(w)
	e.fs.Usage()
}

// usageErr is a usageError for fs; format may wrap an error with %w.
func usageErr(fs *flag.FlagSet, format string, a ...any) error {
	return &usageError{fmt.Errorf(format, a...), fs}
}

// newFlagSet makes the flag set of a command (name is its path after
// "ringo", e.g. "ckpt verify"); its usage is the text, then the flags. It
// prints nothing while parsing: main prints the usage once, for help and
// mistakes alike, so it neither appears twice nor lands on the wrong stream.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, usage)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if !hasFlags {
			return
		}
		if !strings.HasSuffix(usage, "Flags:\n") {
			fmt.Fprint(w, "\nFlags:\n")
		}
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses fs from args, stopping at the first argument that is
// not a flag; help and mistakes come back as *usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return &usageError{err, fs}
	}
	return nil
}

// parseArgs parses fs from args with flags and positional arguments in
// any order (ringo ckpt verify DIR --progress), and returns the positional
// ones. After "--" everything is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		if used := len(args) - fs.NArg(); used > 0 && args[used-1] == "--" {
			return append(pos, fs.Args()...), nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parseWithTarget parses fs from args, accepting the one positional
// argument (a path or URL) before, between or after the flags. target is
// "" when none was given; more than one is a usage error.
func parseWithTarget(fs *flag.FlagSet, args []string) (target string, err error) {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return "", err
	}
	switch len(pos) {
	case 0:
		return "", nil
	case 1:
		return pos[0], nil
	}
	return "", usageErr(fs, "unexpected argument %q", pos[1])
}

// noArgs parses fs from args for a command that takes flags only.
func noArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err == nil && len(pos) > 0 {
		err = usageErr(fs, "unexpected argument %q", pos[0])
	}
	return err
}

// runGroup runs the command of a group (ringo ckpt ..., or ringo itself
// with name "") that args start with, from commands: the same table the
// help test walks, so that a command cannot be reachable but untested.
func runGroup(ctx context.Context, name, usage string, commands []subcommand, args []string) error {
	fs := newFlagSet(name, usage)
	switch {
	case len(args) == 0:
		return usageErr(fs, "missing command")
	case args[0] == "help":
		return &usageError{flag.ErrHelp, fs}
	case strings.HasPrefix(args[0], "-"):
		// -h, --help, or a flag: parsing says which, in flag's words.
		if err := parseFlags(fs, args[:1]); err != nil {
			return err
		}
		return usageErr(fs, "missing command")
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:])
		}
	}
	return usageErr(fs, "unknown command %q", args[0])
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// errHelp reports whether err is the user asking for help.
func errHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }
