package ceiling

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets Measure re-execute the test binary as its ranks.
func TestMain(m *testing.M) {
	if isChild, err := RunChild(); isChild {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestMeasureThreeRanks(t *testing.T) {
	c := Config{NP: 3, Sockets: 2, Warmup: 50 * time.Millisecond, Window: 200 * time.Millisecond, Buf: 1 << 20, IO: 64 << 10}
	res, err := Measure(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ranks) != 3 {
		t.Fatalf("%d rank results, want 3", len(res.Ranks))
	}
	for i, r := range res.Ranks {
		if r.Rank != i || r.Bytes <= 0 || r.Seconds <= 0 || r.GBps <= 0 {
			t.Errorf("rank %d measured %+v: every rank must have received bytes", i, r)
		}
	}
	if res.GBps < res.Min() || res.GBps > res.Max() {
		t.Errorf("median %.3f outside [%.3f, %.3f]", res.GBps, res.Min(), res.Max())
	}
}

func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{NP: 1, Sockets: 1, Window: time.Second, Buf: 1, IO: 1}, "at least 2 processes"},
		{Config{NP: 2, Sockets: 0, Window: time.Second, Buf: 1, IO: 1}, "sockets"},
		{Config{NP: 2, Sockets: 1, Window: 0, Buf: 1, IO: 1}, "window"},
		{Config{NP: 2, Sockets: 1, Window: time.Second, Buf: 0, IO: 1}, "socket buffer"},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %q", tc.c, err, tc.want)
		}
	}
	if _, err := Measure(context.Background(), Config{NP: 1}); err == nil {
		t.Error("Measure ran a ring of one")
	}
}

func TestMeasureStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Measure(ctx, Config{NP: 2, Sockets: 1, Warmup: time.Minute, Window: time.Minute, Buf: 1 << 20, IO: 64 << 10})
	if err == nil {
		t.Fatal("a cancelled measurement reported a result")
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("Measure took %v to return after its context ended", d)
	}
}
