package runtime

import (
	"context"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/collective"
)

// Run alone, a program gets a group of one and its collectives work.
func TestInitAloneIsAGroupOfOne(t *testing.T) {
	for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK", EnvCollectiveAddr, EnvHeartbeatFD} {
		t.Setenv(k, "")
	}
	g, err := Init(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Rank() != 0 || g.Size() != 1 || g.Launched || g.LocalSize != 1 {
		t.Fatalf("alone: rank %d size %d launched %v local size %d", g.Rank(), g.Size(), g.Launched, g.LocalSize)
	}
	buf := []float32{1, 2, 3}
	if err := g.AllReduce(context.Background(), collective.Float32s(buf), collective.Float32s(buf), collective.Sum); err != nil || buf[2] != 3 {
		t.Fatalf("all-reduce alone: %v %v", err, buf)
	}
	g.Heartbeat(1) // a no-op outside the launcher
}

func TestInitBadEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"RANK": "3", "WORLD_SIZE": "2"}, "RANK=3 and WORLD_SIZE=2"},
		{map[string]string{"RANK": "one", "WORLD_SIZE": "2"}, `RANK="one" is not a number`},
		{map[string]string{"RANK": "1", "WORLD_SIZE": "2", EnvCollectiveAddr: ""}, "ringo launch"},
		{map[string]string{"RANK": "0", "WORLD_SIZE": "2", EnvCollectiveAddr: "127.0.0.1:1", EnvTokenFile: "/no/such/token"}, "token file"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			t.Setenv(EnvCollectiveAddr, "")
			t.Setenv(EnvTokenFile, "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := Init(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
