package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/netnstest"
)

// BenchmarkFederatedSites runs three sites, each its own job of one
// worker on a namespace host, federated through `ringo store` on the
// first host, every host on the emulated wide-area link of the issue (25
// ms each way, 1% loss, 100 Mbit/s): once with every site up, once with
// site c down from the start. It reports the wall time, the syncs and
// what a sync cost beyond the computation (the steps sleep a fixed 20 ms,
// the stand-in for a model's compute).
func BenchmarkFederatedSites(b *testing.B) {
	h := netnstest.New(b, 3, ringoBin)
	wan := h.WAN(netnstest.Link{Delay: 25 * time.Millisecond, Loss: 0.01, Rate: 100e6})
	tok := netnstest.TokenFile(b)
	store := fmt.Sprintf("%s:29430", wan.Addrs[0])
	srv := exec.Command("ip", "netns", "exec", h.Names[0], ringoBin, "store", "--listen", store, "--token-file", tok)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	time.Sleep(500 * time.Millisecond)
	const steps, every, stepTime = 128, 10, 20 * time.Millisecond
	summary := regexp.MustCompile(`outer: 3 sites over store, (\d+) syncs, .*; (\d+) syncs without some site, (\d+) deadlines waited out`)
	for i := range b.N {
		for _, tc := range []struct {
			name  string
			sites []string // the sites started
		}{
			{"all-up", []string{"a", "b", "c"}},
			{"c-down", []string{"a", "b"}},
		} {
			id := fmt.Sprintf("%s-%d", tc.name, i)
			start := time.Now()
			var ls []*netnstest.Launcher
			for j, site := range tc.sites {
				ls = append(ls, h.Launch(j, "--nproc-per-node", "1", "--max-restarts", "0", "--token-file", tok,
					"--local-addr", wan.Addrs[j], "--site", site, "--federation", store, "--federation-sites", "a,b,c",
					"--federation-id", id, "--", loopBin, "--data", dataDir, "--batch", "48", "--epochs", "2",
					"--step-time", stepTime.String(), "--outer-every", fmt.Sprint(every), "--outer-deadline", "2s"))
			}
			for _, l := range ls {
				if err := l.Wait(b, 5*time.Minute); err != nil {
					b.Fatalf("%s: %v\n%s", tc.name, err, l.Out.String())
				}
			}
			took := time.Since(start)
			m := summary.FindStringSubmatch(ls[0].Out.String())
			if m == nil || !strings.Contains(ls[0].Out.String(), "all replicas identical") {
				b.Fatalf("%s: no outer summary:\n%s", tc.name, ls[0].Out.String())
			}
			compute := time.Duration(steps) * stepTime
			b.Logf("%s: %v for %d steps (%v of them sleeping as compute), %s syncs, %s without some site, %s deadlines (2 s) waited out",
				tc.name, took.Round(10*time.Millisecond), steps, compute, m[1], m[2], m[3])
		}
	}
}
