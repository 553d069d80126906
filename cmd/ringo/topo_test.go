package main

import (
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/ringo-ml/ringo/topology"
)

// topoInBinary says whether the built ringo has the topo command (it is
// registered in main.go).
var topoInBinary = sync.OnceValue(func() bool {
	out, _ := exec.Command(ringoBin, "topo", "--help").CombinedOutput()
	return !strings.Contains(string(out), "unknown command")
})

// topo runs `ringo topo args...` and returns what it printed, then the
// error. It runs the built binary, as a user would; until main.go
// registers the command it calls runTopo in this process instead (see
// TestTopoRegistered).
func topo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if topoInBinary() {
		return ringo(t, append([]string{"topo"}, args...)...)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	printed := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		printed <- string(b)
	}()
	err = runTopo(context.Background(), args)
	w.Close()
	os.Stdout = stdout
	out := <-printed
	r.Close()
	if err != nil {
		out += "ringo topo: " + err.Error() + "\n"
	}
	return out, err
}

func TestTopoRegistered(t *testing.T) {
	if !topoInBinary() {
		t.Skip(`ringo has no topo command yet: main.go's subcommands() needs {"topo", "plan rank placement and ring order from measured link matrices", runTopo}`)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// topoFiles writes a hosts file of four hosts of four slots and a matrix
// between them where only h0 and h2 have a fast link (10 GB/s).
func topoFiles(t *testing.T) (hosts, matrix string) {
	dir := t.TempDir()
	hosts = writeFile(t, dir, "hosts.json", `[
		{"name": "h0", "addr": "10.0.0.1", "slots": 4},
		{"name": "h1", "addr": "10.0.0.2", "slots": 4},
		{"name": "h2", "addr": "10.0.0.3", "slots": 4, "intra_bandwidth": 3e11},
		{"name": "h3", "addr": "10.0.0.4", "slots": 4}]`)
	m := topology.NewMatrix(4)
	m.Hosts = []string{"10.0.0.1", "10.0.0.2", "h2", "10.0.0.4"} // by address or name
	for i := range 4 {
		for j := range 4 {
			if i != j {
				m.Bandwidth[i][j], m.LatencyUS[i][j] = 1e9, 50
			}
		}
	}
	m.Bandwidth[0][2], m.Bandwidth[2][0] = 10e9, 10e9
	matrix = filepath.Join(dir, "matrix.json")
	if err := topology.WriteMatrix(matrix, m); err != nil {
		t.Fatal(err)
	}
	return hosts, matrix
}

func TestTopoPlace(t *testing.T) {
	hosts, matrix := topoFiles(t)
	out, err := topo(t, "place", "--hosts", hosts, "--matrix", matrix, "--ranks", "8")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"8 ranks on 2 hosts", "h0, h2", "RANK", "10.0.0.3", "ring: 0 1 2 3 4 5 6 7", "bottleneck: 10000 MB/s", "naive order", "1000 MB/s (10.00x)"} {
		if !strings.Contains(out, want) {
			t.Errorf("place output lacks %q:\n%s", want, out)
		}
	}

	out, err = topo(t, "place", "--hosts", hosts, "--matrix", matrix, "--ranks", "6", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var plan topology.Plan
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	if len(plan.Ranks) != 6 || plan.Bottleneck != 10e9 || plan.NaiveBottleneck != 1e9 || len(plan.Hosts) != 2 {
		t.Errorf("plan %+v: want 6 ranks on h0 and h2 at 10 GB/s", plan)
	}

	// Four ranks fit on one host; an unknown intra-host bandwidth counts
	// as faster than any link, so h0 (listed first) rather than h2.
	out, err = topo(t, "place", "--hosts", hosts, "--matrix", matrix, "--ranks", "4")
	if err != nil || !strings.Contains(out, "4 ranks on 1 host (best under the model): h0") || !strings.Contains(out, "bottleneck: unknown") {
		t.Errorf("4 ranks: %v\n%s", err, out)
	}
	// Without --ranks, every slot.
	if out, err := topo(t, "place", "--hosts", hosts, "--matrix", matrix); err != nil || !strings.Contains(out, "16 ranks on 4 hosts") {
		t.Errorf("every slot: %v\n%s", err, out)
	}
}

func TestTopoShow(t *testing.T) {
	_, matrix := topoFiles(t)
	pngPath := filepath.Join(t.TempDir(), "heat.png")
	out, err := topo(t, "show", matrix, "--png", pngPath)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"4 ranks", "bandwidth MB/s", "latency µs", "0 10.0.0.1", "10000", "50.0", "best ring (exact)", "bottleneck 1000 MB/s", "heat map: " + pngPath} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", pngPath, err)
	}
	if b := img.Bounds(); b.Dx() != heatMapWidth || b.Dy() != heatMapHeight {
		t.Errorf("heat map is %v, want %d×%d", b, heatMapWidth, heatMapHeight)
	}
	// Flags before the file work too.
	if out, err := topo(t, "show", "--png", pngPath, matrix); err != nil {
		t.Errorf("flags first: %v\n%s", err, out)
	}
}

func TestTopoBadInput(t *testing.T) {
	hosts, matrix := topoFiles(t)
	dir := t.TempDir()
	wrongShape := writeFile(t, dir, "shape.json", `{"version": 1, "bandwidth": [[0, 1, 2], [1, 0], [2, 1, 0]]}`)
	negative := writeFile(t, dir, "negative.json", `{"version": 1, "bandwidth": [[0, 1], [-3, 0]], "latency_us": [[0, 1], [1, 0]]}`)
	notJSON := writeFile(t, dir, "garbage.json", `bandwidth: lots`)
	strange := writeFile(t, dir, "strange.json", `{"version": 1, "hosts": ["h0", "h1", "h9", "h3"],
		"bandwidth": [[0,1,1,1],[1,0,1,1],[1,1,0,1],[1,1,1,0]]}`)
	partial := writeFile(t, dir, "partial.json", `{"version": 1, "hosts": ["h0", "h1", "h2"],
		"bandwidth": [[0,1,1],[1,0,1],[1,1,0]]}`)
	twoHosts := writeFile(t, dir, "two.json", `[{"name": "a", "slots": 2}, {"name": "b", "slots": 2}]`)
	twoMatrix := writeFile(t, dir, "twom.json", `{"version": 1, "hosts": ["a", "b"], "bandwidth": [[0, 5], [5, 0]]}`)
	typo := writeFile(t, dir, "typo.json", `[{"name": "a", "slot": 2}]`)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"matrix of the wrong shape", []string{"show", wrongShape}, []string{wrongShape, "bandwidth row 1 has 2 columns, want 3"}},
		{"negative bandwidth", []string{"show", negative}, []string{negative, "bandwidth[1][0] = -3"}},
		{"not a matrix", []string{"show", notJSON}, []string{notJSON, "not a matrix file"}},
		{"no such matrix", []string{"show", filepath.Join(dir, "nope.json")}, []string{"nope.json", "no such file"}},
		{"placing on a bad matrix", []string{"place", "--hosts", hosts, "--matrix", negative}, []string{negative, "bandwidth[1][0] = -3"}},
		{"more ranks than slots", []string{"place", "--hosts", twoHosts, "--matrix", twoMatrix, "--ranks", "5"}, []string{"not enough slots: 5 ranks, but the 2 hosts have 4 slots", twoHosts}},
		{"unknown host in the matrix", []string{"place", "--hosts", hosts, "--matrix", strange}, []string{"unknown host", `matrix row 2 is host "h9"`, strange}},
		{"host missing from the matrix", []string{"place", "--hosts", hosts, "--matrix", partial}, []string{"unknown host", `host "h3" is not in the matrix`, partial}},
		{"misspelt hosts field", []string{"place", "--hosts", typo, "--matrix", matrix}, []string{typo, `unknown field "slot"`}},
		{"missing flags", []string{"place", "--hosts", hosts}, []string{"place needs --hosts FILE and --matrix FILE"}},
		{"negative ranks", []string{"place", "--hosts", hosts, "--matrix", matrix, "--ranks", "-2"}, []string{"--ranks -2"}},
		{"no matrix to show", []string{"show"}, []string{"show needs a MATRIX.json file"}},
		{"unknown command", []string{"solve"}, []string{`unknown command "solve"`}},
	} {
		out, err := topo(t, c.args...)
		if err == nil {
			t.Errorf("%s: no error\n%s", c.name, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out)
			}
		}
	}
}

// ringo topo probe, as the program of a 3-rank job on this host, writes
// a full matrix.
func TestTopoProbeJob(t *testing.T) {
	out := filepath.Join(t.TempDir(), "m.json")
	b, err := exec.Command(ringoBin, "launch", "--nproc-per-node", "3", "--", ringoBin, "topo", "probe", "--out", out, "--bytes", "256K", "--iters", "4").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	m, err := topology.ReadMatrix(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.Size() != 3 {
		t.Fatalf("matrix of %d ranks", m.Size())
	}
	for i := range 3 {
		for j := range 3 {
			if i != j && (m.Bandwidth[i][j] <= 0 || m.LatencyUS[i][j] <= 0) {
				t.Errorf("link %d->%d: %v B/s, %v µs", i, j, m.Bandwidth[i][j], m.LatencyUS[i][j])
			}
		}
	}
	if !strings.Contains(string(b), "matrix of 3 ranks written") {
		t.Errorf("output:\n%s", b)
	}
}

// topo show --metrics-addr prints a running job's live view from its
// launcher's metrics server (a real HTTP server on loopback here), and
// names the address and what is wrong when there is none or it is bad.
func TestTopoShowLive(t *testing.T) {
	m := topology.NewMatrix(3)
	m.Hosts = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	for i := range 3 {
		for j := range 3 {
			if i != j {
				m.Bandwidth[i][j] = 50e6
			}
		}
	}
	m.Bandwidth[1][0] = 12e6
	view := topology.LiveView{Ring: []int{0, 2, 1}, Matrix: m, Windows: 9,
		Replans: []topology.Replan{{Step: 30, From: []int{0, 1, 2}, To: []int{0, 2, 1}, Before: 12e6, Predicted: 50e6, PredictedGain: 3.2, Measured: 48e6, MeasuredGain: 3}}}
	body, _ := json.Marshal(view)
	mux := http.NewServeMux()
	mux.HandleFunc("/topology.json", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("/bad/topology.json", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"ring":[0,0,1],"matrix":` + string(mustJSON(t, m)) + `}`))
	})
	// The launcher's kernel counters of its node's links (eBPF), served
	// with a live view, and by a launcher whose job has none.
	status := `{"host":"10.0.0.1","node_rank":0,"tcp":{"retransmits":9,"segments":900,"peers":[` +
		`{"node_rank":1,"host":"10.0.0.2","connections":2,"retransmits":7,"segments":600,"mean_rtt_seconds":0.0031},` +
		`{"node_rank":2,"host":"10.0.0.3","connections":0,"retransmits":0,"segments":0,"mean_rtt_seconds":0}]}}`
	mux.HandleFunc("/status.json", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(status)) })
	mux.HandleFunc("/nolive/topology.json", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "this job has no live topology", http.StatusNotFound)
	})
	mux.HandleFunc("/nolive/status.json", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(status)) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	out, err := topo(t, "show", "--metrics-addr", addr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	peerRow := regexp.MustCompile(`10\.0\.0\.2 +1 +2 +3\.1ms +600 +7`)
	for _, want := range []string{"9 windows observed", "ring in use: 10.0.0.1 -> 10.0.0.3 -> 10.0.0.2", "re-planned at step 30", "ring 10.0.0.1 -> 10.0.0.3 -> 10.0.0.2 (was 10.0.0.1 -> 10.0.0.2 -> 10.0.0.3)", "48 MB/s measured (+300%)", "as its kernel counted"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !peerRow.MatchString(out) {
		t.Errorf("output lacks the row of peer 10.0.0.2 (2 connections, 3.1ms, 600 segments, 7 retransmits):\n%s", out)
	}
	out, err = topo(t, "show", "--metrics-addr", addr+"/nolive")
	if err != nil || !strings.Contains(out, "no live matrix: ") || !peerRow.MatchString(out) {
		t.Errorf("a job without a live view but with the kernel's counts: %v\n%s", err, out)
	}
	for _, c := range []struct{ addr, want string }{
		{"127.0.0.1:1", "is the job running with --metrics-addr 127.0.0.1:1"},
		{addr + "/bad", "is not an order of the matrix's 3 hosts"},
	} {
		out, err := topo(t, "show", "--metrics-addr", c.addr)
		if err == nil || !strings.Contains(out+err.Error(), c.want) {
			t.Errorf("--metrics-addr %s: %v, want an error saying %q\n%s", c.addr, err, c.want, out)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
