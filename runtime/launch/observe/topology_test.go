package observe

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/topology"
)

// A job that re-plans: its live matrix, ring and moves are exported as
// metrics and served whole at /topology.json; a job without them answers
// 404 with what it lacks.
func TestTopologyMetricsAndEndpoint(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	s := newSim(1)
	snap := s.tick(0)
	srv.Update(snap)
	resp, err := client.Get("http://" + srv.Addr() + "/topology.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/topology.json without a live topology: %s, want 404", resp.Status)
	}

	m := topology.NewMatrix(3)
	m.Hosts = []string{"h0", "h1", "h2"}
	for i := range 3 {
		for j := range 3 {
			if i != j {
				m.Bandwidth[i][j] = 100e6
			}
		}
	}
	m.Bandwidth[0][1] = 20e6
	snap = s.tick(500 * time.Millisecond)
	snap.Topology = &topology.LiveView{Ring: []int{0, 2, 1}, Matrix: m, Windows: 7,
		RTTUS:       [][]float64{{0, 800, 90}, {80, 0, 70}, {60, 75, 0}},
		Retransmits: [][]uint64{{0, 12, 0}, {1, 0, 0}, {0, 0, 0}},
		Replans: []topology.Replan{{Step: 40, Time: s.now, From: []int{0, 1, 2}, To: []int{0, 2, 1},
			Before: 20e6, Predicted: 100e6, PredictedGain: 4, Measured: 90e6, MeasuredGain: 3.5}}}
	srv.Update(snap)

	mfs, _ := scrape(t, srv)
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{"ringo_topology_replans_total", "", 1},
		{"ringo_topology_ring_bottleneck_bytes_per_second", "", 20e6}, // 0->2->1->0 crosses 1-0
		{"ringo_topology_link_bandwidth_bytes_per_second", "src=h0,dst=h1", 20e6},
		{"ringo_topology_link_bandwidth_bytes_per_second", "src=h2,dst=h1", 100e6},
		{"ringo_topology_link_rtt_seconds", "src=h0,dst=h1", 800e-6},
		{"ringo_topology_link_retransmits_total", "src=h0,dst=h1", 12},
		{"ringo_topology_last_replan_gain_ratio", "kind=predicted", 4},
		{"ringo_topology_last_replan_gain_ratio", "kind=measured", 3.5},
	} {
		if got := value(t, mfs, c.name, c.labels); !near(got, c.want) {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	var v topology.LiveView
	if err := json.Unmarshal(get(t, srv, "/topology.json"), &v); err != nil {
		t.Fatal(err)
	}
	if v.Windows != 7 || len(v.Replans) != 1 || v.Matrix.Bandwidth[0][1] != 20e6 || strings.Join(v.Matrix.Hosts, ",") != "h0,h1,h2" {
		t.Errorf("/topology.json: %+v", v)
	}
}
