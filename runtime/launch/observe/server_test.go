package observe

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestStatusJSON(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	var st Status
	if err := json.Unmarshal(get(t, srv, "/status.json"), &st); err != nil {
		t.Fatalf("/status.json before any snapshot: %v", err)
	}
	s := newSim(2)
	s.gpus[0].TemperatureC = 90
	s.run(srv, 30*time.Second)
	if err := json.Unmarshal(get(t, srv, "/status.json"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Snapshot.RunID != "sim" || len(st.Snapshot.Ranks) != 2 || len(st.Ranks) != 2 {
		t.Fatalf("status: run %q, %d ranks, %d derived", st.Snapshot.RunID, len(st.Snapshot.Ranks), len(st.Ranks))
	}
	if st.UptimeSeconds != 30 {
		t.Errorf("uptime %v, want 30", st.UptimeSeconds)
	}
	// One point every 2 s of snapshot time, after the first snapshot.
	if n := len(st.History); n < 13 || n > 15 {
		t.Errorf("history holds %d points after 30 s, want about 14", n)
	}
	for _, p := range st.History[1:] {
		// 2 ranks at 5 steps/s each, 32 samples a step.
		if p.StepsPerSecond < 4 || p.StepsPerSecond > 6 || p.SamplesPerSecond < 2*32*4 || p.SamplesPerSecond > 2*32*6 {
			t.Errorf("history point %+v, want about 5 steps/s and 320 samples/s", p)
		}
	}
	if st.Ranks[0].StepTimeSeconds < 0.19 || st.Ranks[0].StepTimeSeconds > 0.21 || st.Ranks[0].BusBW["allreduce"] <= 0 {
		t.Errorf("rank 0 derived %+v", st.Ranks[0])
	}
	if len(st.Alerts) != 1 || st.Alerts[0].Name != AlertGPUTemp || *st.Alerts[0].GPU != 0 {
		t.Errorf("alerts %+v, want GPU 0 over temperature", st.Alerts)
	}
	kinds := ""
	for _, e := range st.Snapshot.Events {
		kinds += e.Kind + " "
	}
	if kinds != "start alert " {
		t.Errorf("events %q, want the launcher's start and the alert", kinds)
	}
}

func TestHistoryRing(t *testing.T) {
	var h history
	t0 := time.Unix(1000, 0)
	for i := range 2 * historyLen {
		h.add(t0.Add(time.Duration(i)*historyEvery), 10, 40, 2)
	}
	p := h.points()
	if len(p) != historyLen {
		t.Fatalf("%d points, want %d", len(p), historyLen)
	}
	if !p[len(p)-1].Time.Equal(t0.Add(time.Duration(2*historyLen-1)*historyEvery)) || p[0].Time.After(p[1].Time) {
		t.Errorf("ring order: first %v, last %v", p[0].Time, p[len(p)-1].Time)
	}
	if p[0].StepsPerSecond != 5.0/historyEvery.Seconds() || p[0].SamplesPerSecond != 40/historyEvery.Seconds() {
		t.Errorf("point %+v", p[0])
	}
}

// The status page, rendered by a real browser, shows a running two-worker
// job's ranks.
func TestStatusPageInChromium(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Skip("no /usr/bin/chromium: skipping the browser test (apt-get install chromium)")
	}
	srv, _ := startServer(t, testThresholds)
	s := newSim(2)
	s.ranks[1].stepTime = 0.25
	s.ranks[0].ckpt.Saves = 1
	s.ranks[0].stallFrac = 0.05
	s.run(srv, 100*time.Second)
	s.restart("exit", 400) // generation 1, from a checkpoint
	s.gpus[1].TemperatureC = 88
	s.run(srv, 80*time.Second)
	snap := s.tick(500 * time.Millisecond)
	snap.LastCheckpoint = &Checkpoint{Step: 800, Dir: "/ckpt/sim/step-800", Time: s.now.Add(-40 * time.Second)}
	srv.Update(snap)

	url := "http://" + srv.Addr() + "/"
	browse := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
			"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=3000"}, args...)
		cmd := exec.CommandContext(ctx, chromium, append(all, url)...)
		cmd.WaitDelay = 5 * time.Second
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
		}
		return string(out)
	}
	dom := browse("--dump-dom")
	for _, want := range []string{`data-rank="0"`, `data-rank="1"`, "run sim", "node-a", "GPU-aaaa", "step 800", "/ckpt/sim/step-800",
		"launcher started", "samples/s", "gpu over temperature", "GPU 1 (GPU-bbbb) at 88 °C"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	// Each rank's row: its state and step time, filled in by the script.
	for _, r := range []struct{ rank, stepTime string }{{"0", "200 ms"}, {"1", "250 ms"}} {
		row := regexp.MustCompile(`<tr[^>]* data-rank="` + r.rank + `">(.*?)</tr>`).FindStringSubmatch(dom)
		if row == nil {
			t.Fatalf("no row for rank %s in\n%s", r.rank, dom)
		}
		for _, want := range []string{">running<", ">" + r.stepTime + "<", ">node-a<"} {
			if !strings.Contains(row[1], want) {
				t.Errorf("rank %s's row lacks %q: %s", r.rank, want, row[1])
			}
		}
	}
	// The script polled /status.json and rendered what it got.
	if !regexp.MustCompile(`<body data-polls="[1-9]`).MatchString(dom) {
		t.Errorf("the page did not poll /status.json within the virtual time budget")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	if dir := os.Getenv("OBSERVE_SCREENSHOT_DIR"); dir != "" {
		shot = filepath.Join(dir, "status.png")
	}
	browse("--screenshot="+shot, "--window-size=1200,900", "--hide-scrollbars")
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10000 {
		t.Errorf("screenshot %s: %v (size %v)", shot, err, fi)
	}
}

// Close stops every goroutine the server started, including those of
// the connections a client left open.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	client.CloseIdleConnections()
	before := runtime.NumGoroutine()
	srv, err := NewServer(Config{Addr: "127.0.0.1:0", Thresholds: testThresholds})
	if err != nil {
		t.Fatal(err)
	}
	s := newSim(2)
	s.run(srv, 5*time.Second)
	for _, p := range []string{"/", "/metrics", "/status.json"} {
		get(t, srv, p) // leaves a keep-alive connection open
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	client.CloseIdleConnections() // the client's side of the connection
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestAlertRulesWithPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH: skipping the check of examples/prometheus/alerts.yml (apt-get install prometheus)")
	}
	dir := filepath.Join("..", "..", "..", "examples", "prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}, {"check", "config", "prometheus.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Update runs while requests are served (go test -race checks it).
func TestUpdateWhileServing(t *testing.T) {
	srv, _ := startServer(t, testThresholds)
	s := newSim(4)
	s.run(srv, time.Second)
	done := make(chan struct{})
	errs := make(chan error, 3)
	for _, p := range []string{"/", "/metrics", "/status.json"} {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				resp, err := client.Get("http://" + srv.Addr() + p)
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
			}
		}()
	}
	for i := range 200 {
		if i%50 == 0 {
			s.restart("exit", 0)
		}
		srv.Update(s.tick(500 * time.Millisecond))
	}
	close(done)
	for range 3 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
