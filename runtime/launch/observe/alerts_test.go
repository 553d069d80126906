package observe

import (
	"fmt"
	"testing"
	"time"
)

// Each alert fires when its trouble starts and clears when it ends; the
// changes are logged once each, as JSON, and exported as ringo_alert.
func TestAlertsFireAndClear(t *testing.T) {
	th := testThresholds.withDefaults()
	for _, c := range []struct {
		alert, labels string
		trouble, fix  func(s *sim)
		// storm restarts the job every second while the trouble lasts.
		storm bool
		// minFire is how long the trouble must last before it fires;
		// maxFire and maxClear bound how long firing and clearing take.
		minFire, maxFire, maxClear time.Duration
	}{
		{alert: AlertStraggler, labels: "rank=2,gpu=",
			trouble: func(s *sim) { s.ranks[2].stepTime = 0.8 }, fix: func(s *sim) { s.ranks[2].stepTime = 0.2 },
			minFire: th.StragglerFor, maxFire: th.StragglerFor + th.StepWindow, maxClear: th.StepWindow + time.Second},
		{alert: AlertHang, labels: "rank=1,gpu=",
			trouble: func(s *sim) { s.ranks[1].stepTime = 0 }, fix: func(s *sim) { s.ranks[1].stepTime = 0.2 },
			minFire: th.HangAfter - time.Second, maxFire: th.HangAfter + time.Second, maxClear: time.Second},
		{alert: AlertRestartStorm, labels: "rank=,gpu=", storm: true,
			minFire: time.Duration(th.RestartStormCount) * time.Second, maxFire: time.Duration(th.RestartStormCount+1) * time.Second,
			maxClear: th.RestartStormWindow + time.Second},
		{alert: AlertGPUTemp, labels: "rank=,gpu=1",
			trouble: func(s *sim) { s.gpus[1].TemperatureC = 91 }, fix: func(s *sim) { s.gpus[1].TemperatureC = 70 },
			maxFire: time.Second, maxClear: time.Second},
		{alert: AlertDataStall, labels: "rank=0,gpu=",
			trouble: func(s *sim) { s.ranks[0].stallFrac = 0.5 }, fix: func(s *sim) { s.ranks[0].stallFrac = 0.02 },
			// Over a 4 s window, half the time stalled passes 20% after 1.6 s.
			minFire: time.Second, maxFire: th.DataStallWindow / 2, maxClear: th.DataStallWindow + time.Second},
	} {
		t.Run(c.alert, func(t *testing.T) {
			srv, logs := startServer(t, testThresholds)
			s := newSim(4)
			s.gpus[0].TemperatureC = -1 // device.Unknown never fires
			// Healthy for a while, with uneven stepping: nothing fires.
			s.ranks[3].stepTime = 0.3
			s.run(srv, 15*time.Second)
			if a := srv.Status().Alerts; len(a) > 0 {
				t.Fatalf("alerts fire on a healthy job: %+v", a)
			}

			begin := s.now
			if c.trouble != nil {
				c.trouble(s)
			}
			firedAt := time.Duration(-1)
			for s.now.Sub(begin) <= c.maxFire+5*time.Second && firedAt < 0 {
				if c.storm && s.now.Sub(begin)%time.Second == 0 {
					s.restart("exit", 0)
				}
				srv.Update(s.tick(500 * time.Millisecond))
				if firing(srv, c.alert) {
					firedAt = s.now.Sub(begin)
				}
			}
			if firedAt < 0 || firedAt < c.minFire || firedAt > c.maxFire {
				t.Fatalf("%s fired %v after the trouble began; want between %v and %v", c.alert, firedAt, c.minFire, c.maxFire)
			}
			mfs, _ := scrape(t, srv)
			if v := value(t, mfs, "ringo_alert", "alert="+c.alert+","+c.labels); v != 1 {
				t.Errorf("ringo_alert{alert=%s,%s} = %v while firing", c.alert, c.labels, v)
			}
			if v := value(t, mfs, "ringo_alerts_firing", "alert="+c.alert); v != 1 {
				t.Errorf("ringo_alerts_firing{alert=%s} = %v while firing", c.alert, v)
			}
			s.run(srv, 2*time.Second) // it keeps firing, logged once

			if c.fix != nil {
				c.fix(s)
			}
			fixed := s.now
			for firing(srv, c.alert) && s.now.Sub(fixed) <= c.maxClear+5*time.Second {
				srv.Update(s.tick(500 * time.Millisecond))
			}
			if took := s.now.Sub(fixed); firing(srv, c.alert) || took > c.maxClear {
				t.Fatalf("%s still firing %v after the fix (want cleared within %v)", c.alert, took, c.maxClear)
			}
			mfs, _ = scrape(t, srv)
			if m := metric(mfs, "ringo_alert", "alert="+c.alert); m != nil {
				t.Errorf("ringo_alert{alert=%s} still exported after clearing: %v", c.alert, m)
			}

			// The log: one firing and one resolved line, JSON, warnings.
			var states []string
			for _, l := range logLines(t, logs) {
				if l["alert"] != c.alert {
					continue
				}
				if l["level"] != "WARN" || l["msg"] == "" || l["detail"] == "" || l["subject"] == "" {
					t.Errorf("alert log line lacks level WARN, msg, detail or subject: %v", l)
				}
				states = append(states, fmt.Sprint(l["state"]))
			}
			if fmt.Sprint(states) != "[firing resolved]" {
				t.Errorf("%s logged states %v, want [firing resolved]\n%s", c.alert, states, logs)
			}
			// And the status page's events.
			n := 0
			for _, e := range srv.Status().Snapshot.Events {
				if e.Kind == "alert" {
					n++
				}
			}
			if n < 2 {
				t.Errorf("the status events hold %d alert events, want at least 2", n)
			}
		})
	}
}

func firing(srv *Server, name string) bool {
	for _, a := range srv.Status().Alerts {
		if a.Name == name {
			return true
		}
	}
	return false
}
