package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxAlertEvents bounds the alert events the server keeps for the status
// page, as the launcher bounds its own.
const maxAlertEvents = 100

// Config configures a Server.
type Config struct {
	// Addr is the address to listen on, ":9400" or "127.0.0.1:0".
	Addr string
	// Logger receives the alerts as warnings; nil: slog.Default().
	Logger *slog.Logger
	// Thresholds say when alerts fire; zero fields take their defaults.
	Thresholds AlertThresholds
}

// Server serves the launcher's snapshots as Prometheus metrics
// (/metrics), a status page (/) and JSON (/status.json), and evaluates
// the alerts on every snapshot.
type Server struct {
	log  *slog.Logger
	th   AlertThresholds
	ln   net.Listener
	http *http.Server
	wg   sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu          sync.Mutex
	have        bool // latest is set
	latest      Snapshot
	tr          *tracker
	al          *alerter
	hist        history
	alertEvents []Event
}

// NewServer listens on cfg.Addr and serves until Close.
func NewServer(cfg Config) (*Server, error) {
	th := cfg.Thresholds.withDefaults()
	if err := th.Validate(); err != nil {
		return nil, fmt.Errorf("observe: alert thresholds: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, th: th, tr: newTracker(th), al: newAlerter()}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{s}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /status.json", s.serveJSON)
	mux.HandleFunc("GET /topology.json", s.serveTopology)
	mux.HandleFunc("GET /{$}", s.servePage)

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("observe: cannot serve metrics on %s (is another launcher or exporter using it? pick another address): %w", cfg.Addr, err)
	}
	s.ln = ln
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	s.wg.Go(func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	})
	return s, nil
}

// Addr returns the address the server listens on, with the port it got
// when Config.Addr asked for port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Update takes the launcher's newest snapshot: it updates the metrics,
// evaluates the alerts (logging the ones that start firing or clear)
// and feeds the status page. Update keeps snap: the caller must not
// change its slices and maps afterwards. A zero snap.Time means now.
// Times are the snapshots' own, so the alerts' durations are measured
// on the launcher's clock as the snapshots say it.
func (s *Server) Update(snap Snapshot) {
	if snap.Time.IsZero() {
		snap.Time = time.Now()
	}
	s.mu.Lock()
	s.tr.take(&snap)
	evs, logs := s.al.evaluate(snap.Time, s.th.conditions(&snap, s.tr))
	if len(evs) > 0 {
		s.alertEvents = append(s.alertEvents, evs...)
		if n := len(s.alertEvents) - maxAlertEvents; n > 0 {
			s.alertEvents = slices.Delete(s.alertEvents, 0, n)
		}
	}
	s.hist.add(snap.Time, s.tr.dSteps, s.tr.dSamples, s.tr.stepping)
	s.latest, s.have = snap, true
	s.mu.Unlock()
	for _, l := range logs {
		s.log.Warn(l.msg, l.attrs...)
	}
}

// Close stops serving and returns once the server's goroutines have
// exited.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.closeErr = s.http.Close()
		}
		s.wg.Wait()
	})
	return s.closeErr
}

// Status is what /status.json returns and the status page shows.
type Status struct {
	// Snapshot is the newest snapshot, its events merged with the
	// alerts' (kind "alert"), oldest first.
	Snapshot      Snapshot     `json:"snapshot"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Ranks         []RankStatus `json:"ranks"` // what the server derived, one per snapshot rank
	Alerts        []Alert      `json:"alerts"`
	History       []Point      `json:"history"`
}

// RankStatus is what the server derived for one rank from successive
// snapshots.
type RankStatus struct {
	Rank int `json:"rank"`
	// StepTimeSeconds is the step time over the step window; 0: unknown.
	StepTimeSeconds float64 `json:"step_time_seconds"`
	// DataStallRatio is over the data-stall window; -1: unknown.
	DataStallRatio float64 `json:"data_stall_ratio"`
	// BusBW is each collective op's bus bandwidth in bytes/s over the
	// last interval with calls.
	BusBW map[string]float64 `json:"busbw,omitempty"`
}

// Status returns what the status page shows.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Snapshot: s.latest, Alerts: s.al.firing(), History: s.hist.points(), Ranks: []RankStatus{}}
	if !s.have {
		return st
	}
	snap := &st.Snapshot
	if !snap.Started.IsZero() {
		st.UptimeSeconds = snap.Time.Sub(snap.Started).Seconds()
	}
	evs := make([]Event, 0, len(snap.Events)+len(s.alertEvents))
	evs = append(append(evs, snap.Events...), s.alertEvents...)
	slices.SortStableFunc(evs, func(a, b Event) int { return a.Time.Compare(b.Time) })
	if n := len(evs) - maxAlertEvents; n > 0 {
		evs = evs[n:]
	}
	snap.Events = evs
	for _, r := range snap.Ranks {
		rs := RankStatus{Rank: r.Rank, DataStallRatio: -1}
		if t := s.tr.ranks[r.Rank]; t != nil {
			rs.StepTimeSeconds, rs.DataStallRatio = t.stepTime, t.stallRatio
			for op, o := range t.ops {
				if o.busbw >= 0 {
					if rs.BusBW == nil {
						rs.BusBW = map[string]float64{}
					}
					rs.BusBW[op] = o.busbw
				}
			}
		}
		st.Ranks = append(st.Ranks, rs)
	}
	return st
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
