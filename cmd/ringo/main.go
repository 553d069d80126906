// Command ringo is the command-line face of ringo: it parses flags, calls
// the packages that do the work, and prints. One file per subcommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ringo-ml/ringo/runtime/launch"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
	// commands are a group's own commands (ringo ckpt verify ...), which
	// its run dispatches to; the help test walks them too.
	commands []subcommand
}

func subcommands() []subcommand {
	return []subcommand{
		{name: "launch", summary: "start and supervise data-parallel workers (torchrun-compatible)", run: runLaunch},
		{name: "audit", summary: "verify a job's audit log", run: runAudit, commands: auditCommands()},
		{name: "topo", summary: "plan rank placement and ring order from measured link matrices", run: runTopo, commands: topoCommands()},
		{name: "devices", summary: "list GPUs and CPUs with telemetry and topology", run: runDevices},
		{name: "bench", summary: "measure collectives across local worker processes (nccl-tests style)", run: runBench, commands: benchCommands()},
		{name: "ckpt", summary: "list, inspect, verify, reshard and export checkpoints", run: runCkpt, commands: ckptCommands()},
		{name: "data", summary: "pack, inspect and verify sharded datasets", run: runData, commands: dataCommands()},
		{name: "store", summary: "serve a rendezvous store (for a federation of sites)", run: runStore},
		{name: "version", summary: "print ringo's version", run: runVersion},
	}
}

func usage() string {
	var b strings.Builder
	b.WriteString("ringo: distributed training runtime and collective communication\n\nUsage: ringo <command> [flags]\n\nCommands:\n")
	for _, s := range subcommands() {
		fmt.Fprintf(&b, "  %-10s %s\n", s.name, s.summary)
	}
	b.WriteString("\nRun 'ringo <command> --help' for a command's flags.\n")
	return b.String()
}

func runVersion(_ context.Context, args []string) error {
	if err := noArgs(newFlagSet("version", "Usage: ringo version\n\nPrints ringo's version.\n"), args); err != nil {
		return err
	}
	fmt.Println("ringo", version)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command in args and returns ringo's exit status: 0; 2 for a
// mistake in the command line, after its message and the usage; a launched
// job's own status; 1 for any other failure.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := runGroup(ctx, "", usage(), subcommands(), args)
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if errHelp(ue.err) {
			ue.printUsage(stdout) // asked for: it is the output
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n\n", strings.TrimSpace("ringo "+ue.fs.Name()), ue.err)
		ue.printUsage(stderr)
		return 2
	}
	// Only a command that ran returns any other error: args[0] names it.
	fmt.Fprintf(stderr, "ringo %s: %v\n", args[0], err)
	var ee *launch.ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return 1
}
