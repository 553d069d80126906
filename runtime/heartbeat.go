package runtime

import (
	"encoding/binary"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// beatEvery bounds how often a worker writes to the launcher: a training
// loop may call Heartbeat thousands of times a second.
const beatEvery = 50 * time.Millisecond

// beater passes the latest step to the launcher through the heartbeat
// pipe. The step is written only when it changed, so the launcher's time
// of the last beat is the time of the last progress, give or take
// beatEvery, and the step it reports for a hang is exact.
type beater struct {
	// report, when set, builds the worker's Report, sent every
	// reportEvery.
	report  func() []byte
	mu      sync.Mutex // one message at a time on the pipe
	f       *os.File
	step    atomic.Int64
	started atomic.Bool
	quit    chan struct{}
	wg      sync.WaitGroup
}

func (b *beater) set(step int64) { b.step.Store(step) }

func (b *beater) start(f *os.File) {
	b.step.Store(-1)
	b.f = f
	b.quit = make(chan struct{})
	b.started.Store(true)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer b.closeFile()
		// The first message only says this is a Go worker; the hang clock
		// starts at its first Heartbeat, not at Init, so that a long
		// set-up (loading data, restoring a checkpoint) is not a hang.
		if !b.send(BeatInit, 0) {
			return
		}
		last := int64(-1)
		t := time.NewTicker(beatEvery)
		defer t.Stop()
		lastReport := time.Now()
		for {
			if b.report != nil && time.Since(lastReport) >= reportEvery {
				lastReport = time.Now()
				if !b.sendBytes(BeatReport, b.report()) {
					return
				}
			}
			if s := b.step.Load(); s != last && s >= 0 {
				last = s
				if !b.send(BeatGo, s) {
					return // the launcher is gone: nothing to tell
				}
			}
			select {
			case <-t.C:
			case <-b.quit:
				return
			}
		}
	}()
}

// send writes one message; false when the launcher is gone.
func (b *beater) send(kind byte, v int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.f == nil {
		return false
	}
	var buf [BeatSize]byte
	buf[0] = kind
	binary.LittleEndian.PutUint64(buf[1:], uint64(v))
	if _, err := b.f.Write(buf[:]); err != nil {
		b.f.Close()
		b.f = nil
		return false
	}
	return true
}

// sendBytes writes a message with a payload: the length, then the bytes.
func (b *beater) sendBytes(kind byte, payload []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.f == nil {
		return false
	}
	buf := make([]byte, BeatSize, BeatSize+len(payload))
	buf[0] = kind
	binary.LittleEndian.PutUint64(buf[1:], uint64(len(payload)))
	if _, err := b.f.Write(append(buf, payload...)); err != nil {
		b.f.Close()
		b.f = nil
		return false
	}
	return true
}

// fault tells the launcher, at once, whom this worker's group blames.
func (b *beater) fault(peer int) {
	if b.started.Load() {
		b.send(BeatFault, int64(peer))
	}
}

func (b *beater) closeFile() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
}

func (b *beater) close() {
	if b.started.CompareAndSwap(true, false) {
		close(b.quit)
		b.wg.Wait()
	}
}
