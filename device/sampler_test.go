package device

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type countingSource struct {
	n    atomic.Int64
	fail atomic.Bool
}

func (c *countingSource) Sample() ([]Sample, error) {
	n := c.n.Add(1)
	if c.fail.Load() {
		return nil, errors.New("boom")
	}
	return []Sample{{Index: 0, Utilization: int(n)}}, nil
}

func TestSampler(t *testing.T) {
	src := &countingSource{}
	s := NewSampler(src, time.Millisecond)
	first := s.Latest()
	if first.Err != nil || len(first.GPUs) != 1 || first.Time.IsZero() {
		t.Fatalf("first snapshot before NewSampler returned: %+v", first)
	}
	first.GPUs[0].Index = 99 // the caller's own copy
	for s.Latest().GPUs[0].Utilization < 5 {
		time.Sleep(time.Millisecond)
	}
	if s.Latest().GPUs[0].Index != 0 {
		t.Error("Latest shares its slice with callers")
	}
	src.fail.Store(true)
	for s.Latest().Err == nil {
		time.Sleep(time.Millisecond)
	}
	if snap := s.Latest(); snap.GPUs != nil || snap.Err.Error() != "boom" {
		t.Errorf("failed round: %+v", snap)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	n := src.n.Load()
	time.Sleep(20 * time.Millisecond)
	if src.n.Load() != n {
		t.Error("sampling went on after Close returned")
	}
	if err := s.Close(); err != nil {
		t.Error("second Close:", err)
	}
}

// The Sampler over a Host: the owner closes the Host first by mistake,
// and the Sampler reports ErrClosed instead of calling NVML.
func TestSamplerOverHost(t *testing.T) {
	h, err := OpenLib(fourGPUs().build())
	if err != nil {
		t.Fatal(err)
	}
	s := NewSampler(h, time.Millisecond)
	if snap := s.Latest(); len(snap.GPUs) != 4 || snap.GPUs[1].MemoryUsed != 2<<30 || snap.GPUs[2].TemperatureC != 42 {
		t.Errorf("first round: %+v", snap)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	for !errors.Is(s.Latest().Err, ErrClosed) {
		time.Sleep(time.Millisecond)
	}
	s.Close()
}
