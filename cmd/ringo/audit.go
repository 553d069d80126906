package main

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/internal/audit"
)

const auditUsage = `Usage: ringo audit verify FILE

Checks a job's audit log (ringo launch --audit-log FILE): every line's hash
and its link to the line before. Exits 1 naming the first line that was
removed, edited or is not an audit record.
`

func runAudit(ctx context.Context, args []string) error {
	return runGroup(ctx, "audit", auditUsage, auditCommands(), args)
}

func auditCommands() []subcommand {
	return []subcommand{{name: "verify", run: auditVerify}}
}

func auditVerify(_ context.Context, args []string) error {
	fs := newFlagSet("audit verify", auditUsage)
	file, err := parseWithTarget(fs, args)
	if err != nil {
		return err
	}
	if file == "" {
		return usageErr(fs, "missing the audit log FILE")
	}
	n, err := audit.Verify(file)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	fmt.Printf("%s: %d lines, chain intact\n", file, n)
	return nil
}
