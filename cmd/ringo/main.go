// Command ringo is the command-line face of ringo: it parses flags, calls
// the packages that do the work, and prints. One file per subcommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ringo-ml/ringo/runtime/launch"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

func subcommands() []subcommand {
	return []subcommand{
		{"launch", "start and supervise data-parallel workers (torchrun-compatible)", runLaunch},
		{"audit", "verify a job's audit log", runAudit},
		{"topo", "plan rank placement and ring order from measured link matrices", runTopo},
		{"devices", "list GPUs and CPUs with telemetry and topology", runDevices},
		{"bench", "measure collectives across local worker processes (nccl-tests style)", runBench},
		{"ckpt", "list, inspect, verify, reshard and export checkpoints", runCkpt},
		{"data", "pack, inspect and verify sharded datasets", runData},
		{"version", "print ringo's version", func(context.Context, []string) error {
			fmt.Println("ringo", version)
			return nil
		}},
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "ringo: distributed training runtime and collective communication\n\nUsage: ringo <command> [flags]\n\nCommands:\n")
	for _, s := range subcommands() {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'ringo <command> --help' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, s := range subcommands() {
		if s.name == os.Args[1] {
			if err := s.run(ctx, os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "ringo %s: %v\n", s.name, err)
				var ee *launch.ExitError
				if errors.As(err, &ee) {
					os.Exit(ee.Code)
				}
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "ringo: unknown command %q\n\n", os.Args[1])
	usage()
	os.Exit(2)
}
