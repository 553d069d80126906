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

func runAudit(_ context.Context, args []string) error {
	if done, err := usageIfAsked(args, auditUsage); done {
		return err
	}
	if args[0] != "verify" || len(args) != 2 {
		return fmt.Errorf("unknown command %q\n\n%s", args, auditUsage)
	}
	n, err := audit.Verify(args[1])
	if err != nil {
		return fmt.Errorf("%s: %w", args[1], err)
	}
	fmt.Printf("%s: %d lines, chain intact\n", args[1], n)
	return nil
}
