package collective

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const sampleTuning = `{"version": 1, "measured": "test",
 "rules": [
   {"world": 4, "algo": "ring"},
   {"world": 4, "below_bytes": 4194304, "algo": "hd"},
   {"world": 4, "below_bytes": 262144, "algo": "rd"},
   {"world": 2, "below_bytes": 1024, "algo": "ring"},
   {"world": 8, "below_bytes": 65536, "algo": "rd"}]}`

func TestTuningPicksTheBand(t *testing.T) {
	tu, err := ParseTuning([]byte(sampleTuning))
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Tuning = tu
	for _, tc := range []struct {
		bytes, n int
		want     Algo
	}{
		{4096, 4, AlgoRecursiveDoubling},
		{262144, 4, AlgoHalvingDoubling}, // below_bytes is exclusive
		{4 << 20, 4, AlgoRing},
		{4096, 6, AlgoRecursiveDoubling}, // world 4's rules steer 5..7
		{1 << 20, 7, AlgoHalvingDoubling},
		{100, 2, AlgoRing},
		{4096, 2, AlgoRecursiveDoubling},      // past world 2's rules: built-in
		{4096, 1, AlgoRecursiveDoubling},      // no rules for a world of 1: built-in
		{1 << 20, 9, AlgoRing},                // past world 8's rules; built-in: 9 is not a power of two
		{64 << 10, 16, AlgoRecursiveDoubling}, // built-in, below HalvingBytes
	} {
		if got := c.AlgoFor(tc.bytes, tc.n); got != tc.want {
			t.Errorf("AlgoFor(%d bytes, world %d) = %v, want %v", tc.bytes, tc.n, got, tc.want)
		}
	}
	c.Algo = AlgoRing
	if got := c.AlgoFor(4096, 4); got != AlgoRing {
		t.Errorf("a forced algorithm lost to the table: %v", got)
	}
}

func TestBuiltInThresholds(t *testing.T) {
	c := DefaultConfig()
	for _, tc := range []struct {
		bytes, n int
		want     Algo
	}{
		{4096, 4, AlgoRecursiveDoubling},
		{64 << 10, 4, AlgoRecursiveDoubling},
		{128 << 10, 4, AlgoHalvingDoubling}, // from HalvingBytes on powers of two
		{128 << 10, 2, AlgoRecursiveDoubling},
		{128 << 10, 6, AlgoRecursiveDoubling}, // below SmallBytes elsewhere
		{1 << 20, 4, AlgoHalvingDoubling},
		{1 << 20, 8, AlgoHalvingDoubling},
		{1 << 20, 2, AlgoRing}, // on 2 ranks halving-doubling is the ring
		{1 << 20, 6, AlgoRing}, // not a power of two
		{64 << 20, 4, AlgoRing},
	} {
		if got := c.AlgoFor(tc.bytes, tc.n); got != tc.want {
			t.Errorf("AlgoFor(%d bytes, world %d) = %v, want %v", tc.bytes, tc.n, got, tc.want)
		}
	}
	// A lower SmallBytes wins over HalvingBytes; HalvingBytes 0 leaves
	// SmallBytes alone.
	c.SmallBytes = 32 << 10
	if got := c.AlgoFor(64<<10, 4); got != AlgoHalvingDoubling {
		t.Errorf("SmallBytes 32 KiB: AlgoFor(64 KiB, world 4) = %v, want hd", got)
	}
	c.SmallBytes, c.HalvingBytes = 512<<10, 0
	if got := c.AlgoFor(256<<10, 4); got != AlgoRecursiveDoubling {
		t.Errorf("HalvingBytes 0: AlgoFor(256 KiB, world 4) = %v, want rd", got)
	}
}

func TestParseTuningNamesTheFault(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{`, "tuning table"},
		{`{"version": 2, "rules": [{"world": 4, "algo": "ring"}]}`, "version 2"},
		{`{"version": 1, "rules": []}`, "no rules"},
		{`{"version": 1, "rules": [{"world": 4, "algo": "ring"}, {"world": 4, "algo": "bogus"}]}`, `rule 1 (world 4): algorithm "bogus"`},
		{`{"version": 1, "rules": [{"world": 4, "algo": "auto"}]}`, `algorithm "auto"`},
		{`{"version": 1, "rules": [{"world": 0, "algo": "rd"}]}`, "world 0"},
		{`{"version": 1, "rules": [{"world": 2, "below_bytes": -1, "algo": "rd"}]}`, "below_bytes -1"},
	} {
		_, err := ParseTuning([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTuning(%s) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestTuningFromEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tuning.json")
	if err := os.WriteFile(path, []byte(sampleTuning), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvTuning, path)
	c, err := DefaultConfig().FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.AlgoFor(100, 2); got != AlgoRing {
		t.Errorf("the table from %s was not used: %v", EnvTuning, got)
	}
	t.Setenv(EnvTuning, filepath.Join(t.TempDir(), "missing.json"))
	if _, err := DefaultConfig().FromEnv(); err == nil || !strings.Contains(err.Error(), EnvTuning) {
		t.Errorf("a missing table: %v, want an error naming %s", err, EnvTuning)
	}
	// What Marshal writes, ParseTuning reads back to the same choices.
	tu, _ := ParseTuning([]byte(sampleTuning))
	b, err := tu.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseTuning(b)
	if err != nil {
		t.Fatalf("reading back %s: %v", b, err)
	}
	for _, n := range []int{2, 4, 8} {
		for _, bytes := range []int{100, 4096, 1 << 20, 64 << 20} {
			a, _ := tu.lookup(bytes, n)
			b, _ := back.lookup(bytes, n)
			if a != b {
				t.Errorf("world %d, %d bytes: %v before the round trip, %v after", n, bytes, a, b)
			}
		}
	}
}

func FuzzParseTuning(f *testing.F) {
	f.Add([]byte(sampleTuning))
	f.Add([]byte(`{"version": 1, "rules": [{"world": 1, "algo": "rd"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tu, err := ParseTuning(b)
		if err != nil {
			return
		}
		for _, n := range []int{1, 2, 3, 4, 8, 1000} {
			for _, bytes := range []int{0, 1, 4096, 1 << 30} {
				if a, ok := tu.lookup(bytes, n); ok && (a == AlgoAuto || a > AlgoHalvingDoubling) {
					t.Fatalf("lookup gave %v", a)
				}
			}
		}
	})
}

func TestThresholdsFromEnv(t *testing.T) {
	t.Setenv(EnvAlgoHalving, "64K")
	t.Setenv(EnvPoll, "0")
	t.Setenv(EnvLend, "8M")
	c, err := DefaultConfig().FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.HalvingBytes != 64<<10 || c.PollBytes != 0 || c.LendBytes != 8<<20 {
		t.Errorf("HalvingBytes %d, PollBytes %d, LendBytes %d from %s=64K, %s=0 and %s=8M", c.HalvingBytes, c.PollBytes, c.LendBytes, EnvAlgoHalving, EnvPoll, EnvLend)
	}
	c.LendBytes = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "LendBytes") {
		t.Errorf("LendBytes -1: %v, want an error naming it", err)
	}
	if c.polls(1) {
		t.Error("PollBytes 0: a call of 1 byte still polls on both lanes")
	}
	t.Setenv(EnvPoll, "lots")
	if _, err := DefaultConfig().FromEnv(); err == nil || !strings.Contains(err.Error(), EnvPoll) {
		t.Errorf("%s=lots: %v, want an error naming the variable", EnvPoll, err)
	}
}

// Mid-size calls poll up to 2 MiB while a host's workers are at most two
// per core, and up to 1 MiB beyond, where a polling 2 MiB call takes the
// core a peer needs.
func TestPollBytesForRanksPerCore(t *testing.T) {
	cores := runtime.NumCPU()
	for _, tc := range []struct{ ranks, want int }{{1, 2 << 20}, {2 * cores, 2 << 20}, {2*cores + 1, 1 << 20}, {8 * cores, 1 << 20}} {
		if got := PollBytesFor(tc.ranks); got != tc.want {
			t.Errorf("PollBytesFor(%d) on %d cores = %d, want %d", tc.ranks, cores, got, tc.want)
		}
	}
}
