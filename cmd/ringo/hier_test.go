package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var opsOK = regexp.MustCompile(`rank (\d+): ops ok; transport (\S+), links (\S+), sent shm (\d+) tcp (\d+), layout (.*)`)

// launchHosts starts one launcher per host with perHost workers each and
// waits for all; it returns every host's output, concatenated.
func (h *hosts) launchHosts(t *testing.T, tok, id string, port, perHost int, worker ...string) (string, []error) {
	t.Helper()
	var ls []*launcher
	for i := range h.Names {
		args := append([]string{"--nnodes", strconv.Itoa(len(h.Names)), "--nproc-per-node", strconv.Itoa(perHost),
			"--rdzv-endpoint", fmt.Sprintf("%s:%d", h.Addrs[0], port), "--rdzv-id", id, "--node-rank", strconv.Itoa(i),
			"--token-file", tok, "--rdzv-timeout", "60s", "--max-restarts", "0", "--", workerBin}, worker...)
		ls = append(ls, h.Launch(i, args...))
	}
	all, errs := "", make([]error, len(ls))
	for i, l := range ls {
		errs[i] = l.Wait(t, 180*time.Second)
		all += l.Out.String()
	}
	return all, errs
}

// Hosts of several workers each, with no --transport: the job runs over
// mix, ranks of one host talk shared memory (and send bytes over it) and
// ranks of different hosts TCP, and every collective at odd sizes is
// right through the hierarchical algorithms.
func TestHierHosts(t *testing.T) {
	for _, tc := range []struct{ hosts, perHost int }{{2, 2}, {2, 3}, {3, 2}} {
		t.Run(fmt.Sprintf("%dx%d", tc.hosts, tc.perHost), func(t *testing.T) {
			h := newHosts(t, tc.hosts)
			tok := tokenFile(t)
			out, errs := h.launchHosts(t, tok, "hier", 29420, tc.perHost, "--steps", "3", "--step-time", "1ms", "--check-ops", "--algo", "hier")
			for i, err := range errs {
				if err != nil {
					t.Fatalf("host %d: %v\n%s", i, err, out)
				}
			}
			n := tc.hosts * tc.perHost
			// Node ranks follow the host index, and ranks fill node 0
			// first, so rank r is on host r/perHost.
			var want []string
			for j := range tc.hosts {
				var m []string
				for k := range tc.perHost {
					m = append(m, strconv.Itoa(j*tc.perHost+k))
				}
				want = append(want, strings.Join(m, " "))
			}
			wantLayout := "[[" + strings.Join(want, "] [") + "]]"
			seen := 0
			for _, m := range opsOK.FindAllStringSubmatch(out, -1) {
				seen++
				r, _ := strconv.Atoi(m[1])
				if m[2] != "mix" {
					t.Errorf("rank %d: transport %s, want mix (the default across hosts)", r, m[2])
				}
				for p, k := range strings.Split(m[3], ",") {
					wk := "tcp"
					switch {
					case p == r:
						wk = "-"
					case p/tc.perHost == r/tc.perHost:
						wk = "shm"
					}
					if k != wk {
						t.Errorf("rank %d: link to rank %d is %s, want %s", r, p, k, wk)
					}
				}
				shmB, _ := strconv.ParseInt(m[4], 10, 64)
				tcpB, _ := strconv.ParseInt(m[5], 10, 64)
				if shmB == 0 || tcpB == 0 {
					t.Errorf("rank %d sent %d bytes over shm and %d over tcp; want both used", r, shmB, tcpB)
				}
				if m[6] != wantLayout {
					t.Errorf("rank %d: hierarchical layout %s, want %s", r, m[6], wantLayout)
				}
			}
			if seen != n {
				t.Errorf("%d ranks checked their ops, want %d:\n%s", seen, n, out)
			}
			if d := ranksDone(out); len(d) != n {
				t.Errorf("ranks done: %v, want %d", d, n)
			}
		})
	}
}

var stepErr = regexp.MustCompile(`rank (\d+) step \d+: collective: AllReduce #\d+: rank (\d+): `)

// A worker dies on either side of the hierarchy (a rank that shares its
// host with others, reached over shm, or one across hosts over TCP): every
// other rank's all-reduce fails with an error naming the dead rank.
func TestHierDeadPeer(t *testing.T) {
	for _, dead := range []int{1, 2} {
		t.Run(fmt.Sprintf("rank=%d", dead), func(t *testing.T) {
			h := newHosts(t, 2)
			tok := tokenFile(t)
			out, _ := h.launchHosts(t, tok, "dead", 29430, 2, "--steps", "50", "--step-time", "10ms", "--algo", "hier",
				"--die-rank", strconv.Itoa(dead), "--at", "5")
			named := map[string]string{}
			for _, m := range stepErr.FindAllStringSubmatch(out, -1) {
				named[m[1]] = m[2]
			}
			for r := range 4 {
				if r == dead {
					continue
				}
				if got, ok := named[strconv.Itoa(r)]; !ok || got != strconv.Itoa(dead) {
					t.Errorf("rank %d: blamed rank %q (found %v), want %d:\n%s", r, got, ok, dead, out)
				}
			}
		})
	}
}
