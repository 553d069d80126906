package launch

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

// BenchmarkLaunchTeardown8 launches 8 trivial workers (/bin/true) and
// waits for the launcher to see them exit and shut down: store, token
// file, rendezvous, spawn, reap. The target is under a second.
func BenchmarkLaunchTeardown8(b *testing.B) {
	truePath := "/bin/true"
	if _, err := os.Stat(truePath); err != nil {
		b.Skip("skipped: no /bin/true")
	}
	cfg := DefaultConfig()
	cfg.NProc = 8
	cfg.Argv = []string{truePath}
	cfg.Token = auth.NewToken()
	cfg.Env = os.Environ()
	cfg.Stdout, cfg.Stderr = discard{}, discard{}
	for i := 0; i < b.N; i++ {
		cfg.RunID = fmt.Sprint("bench-", i)
		if err := Run(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecovery measures, per iteration, the time from a SIGKILL of
// one of 4 workers to the launcher having started all 4 workers of the
// next generation; the target is under 3 seconds. It reports the
// time to the new workers' spawn (recovery-s) as the benchmark's
// per-operation figure.
func BenchmarkRecovery(b *testing.B) {
	cfg := DefaultConfig()
	cfg.NProc = 4
	cfg.Argv = []string{workerBin, "--steps", "1000000", "--step-time", "10ms"}
	cfg.Token = auth.NewToken()
	cfg.Env = os.Environ()
	cfg.Stdout, cfg.Stderr = discard{}, discard{}
	cfg.MaxRestarts = b.N + 1
	cfg.MonitorInterval = 100 * time.Millisecond
	cfg.RunID = "bench-recovery"
	events := make(chan Event, 16)
	cfg.OnEvent = func(e Event) {
		if e.Kind == "started" {
			events <- e
		}
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	e := <-events
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(200 * time.Millisecond) // let the generation settle
		kill := time.Now()
		syscall.Kill(e.PIDs[i%4], syscall.SIGKILL)
		e = <-events
		total += e.At.Sub(kill)
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "recovery-s")
	cancel(Signaled{Sig: syscall.SIGTERM})
	<-errc
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
