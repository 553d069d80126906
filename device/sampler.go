package device

import (
	"sync"
	"time"
)

// Source gives GPU telemetry; *Host is one.
type Source interface {
	Sample() ([]Sample, error)
}

// Snapshot is one round of samples.
type Snapshot struct {
	Time time.Time
	GPUs []Sample // nil when the round failed
	Err  error    // why the round failed (ErrClosed once the Host is closed)
}

// Sampler reads a Source every interval on one goroutine and keeps the
// latest round for whoever asks (the launcher's metrics and the placement
// solver). It does not own the Source: close the Sampler first, then the
// Host.
type Sampler struct {
	src      Source
	interval time.Duration

	mu     sync.Mutex
	latest Snapshot

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// NewSampler takes a first round before it returns, so Latest is never
// empty, then one every interval (one second when interval <= 0) until
// Close.
func NewSampler(src Source, interval time.Duration) *Sampler {
	if interval <= 0 {
		interval = time.Second
	}
	s := &Sampler{src: src, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	s.take()
	go s.run()
	return s
}

func (s *Sampler) run() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.take()
		}
	}
}

func (s *Sampler) take() {
	gpus, err := s.src.Sample()
	snap := Snapshot{Time: time.Now(), GPUs: gpus, Err: err}
	if err != nil {
		snap.GPUs = nil
	}
	s.mu.Lock()
	s.latest = snap
	s.mu.Unlock()
}

// Latest returns the newest round. Its GPUs slice is the caller's own.
func (s *Sampler) Latest() Snapshot {
	s.mu.Lock()
	snap := s.latest
	s.mu.Unlock()
	snap.GPUs = append([]Sample(nil), snap.GPUs...)
	return snap
}

// Close stops sampling and returns once the goroutine has exited. Latest
// keeps returning the last round.
func (s *Sampler) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.done
	return nil
}
