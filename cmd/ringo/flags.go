package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// parseWithTarget parses fs from args, accepting the one positional
// argument (a path or URL) before or after the flags. helped is true when
// the user asked for --help, which is then not an error.
func parseWithTarget(fs *flag.FlagSet, args []string) (target string, helped bool, err error) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", true, nil
		}
		return "", false, err
	}
	if target == "" && fs.NArg() > 0 {
		target = fs.Arg(0)
	}
	return target, false, nil
}

// usageIfAsked prints usage when a command group is run without a
// command or with help; done says the caller should return err.
func usageIfAsked(args []string, usage string) (done bool, err error) {
	if len(args) > 0 && args[0] != "-h" && args[0] != "--help" && args[0] != "help" {
		return false, nil
	}
	fmt.Fprint(os.Stderr, usage)
	if len(args) == 0 {
		return true, errors.New("missing command")
	}
	return true, nil
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}
