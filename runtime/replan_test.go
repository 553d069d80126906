package runtime

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/topology"
)

// The launcher's matrix turns re-planning on; a bad one is an error that
// names the variable, the file and what is wrong, and one node, no
// matrix or a fixed ring order leave it off.
func TestReplannerFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	write := func(n int) string {
		m := topology.NewMatrix(n)
		for i := range n {
			for j := range n {
				if i != j {
					m.Bandwidth[i][j] = 1e9
				}
			}
		}
		p := filepath.Join(dir, "m"+string(rune('0'+n))+".json")
		if err := topology.WriteMatrix(p, m); err != nil {
			t.Fatal(err)
		}
		return p
	}
	two, three := write(2), write(3)
	e := workerEnv{rank: 1, size: 4, nodes: 2}
	ccfg := collective.DefaultConfig()
	for _, c := range []struct {
		file string
		want string // "" for on, "off" for nil without error
	}{
		{"", "off"},
		{two, ""},
		{three, "has 3 hosts, the job 2 nodes"},
		{filepath.Join(dir, "none.json"), "RINGO_TOPOLOGY_FILE"},
	} {
		t.Setenv(EnvTopologyFile, c.file)
		p, err := newReplanner(e, ccfg)
		switch {
		case c.want == "off" && (p != nil || err != nil):
			t.Errorf("%q: got %v, %v; want off", c.file, p, err)
		case c.want == "" && (p == nil || err != nil):
			t.Errorf("%q: got %v, %v; want on", c.file, p, err)
		case c.want != "" && c.want != "off" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "rank 1")):
			t.Errorf("%q: got %v, want an error naming rank 1 and %q", c.file, err, c.want)
		}
	}
	t.Setenv(EnvTopologyFile, two)
	if p, err := newReplanner(workerEnv{nodes: 1}, ccfg); p != nil || err != nil {
		t.Errorf("one node: %v, %v; want off", p, err)
	}
	fixed := ccfg
	fixed.RingOrder = []int{1, 0, 2, 3}
	if p, err := newReplanner(e, fixed); p != nil || err != nil {
		t.Errorf("with RingOrder: %v, %v; want off", p, err)
	}
}

func TestReplanEvery(t *testing.T) {
	for _, c := range []struct {
		cfg  int64
		env  string
		want int64
		err  string
	}{
		{0, "", DefaultReplanEvery, ""},
		{0, "5", 5, ""},
		{0, "-1", -1, ""},
		{7, "5", 7, ""},
		{0, "often", 0, `RINGO_REPLAN_EVERY="often"`},
	} {
		t.Setenv(EnvReplanEvery, c.env)
		got, err := replanEvery(c.cfg)
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("cfg %d env %q: %d, %v; want %d, %q", c.cfg, c.env, got, err, c.want, c.err)
		}
	}
}
