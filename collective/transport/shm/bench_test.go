package shm_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/transport"
)

// pair runs rank 1 of a two-rank group on a persistent goroutine, so that
// measuring rank 0's calls counts no goroutine start-up.
type pair struct {
	comms []collective.Comm
	kick  chan struct{}
	errs  chan error
}

func newPair(b *testing.B, bytes int) (*pair, []float32) {
	cfg := collective.DefaultConfig()
	cfg.Timeout = 30 * time.Second
	p := &pair{comms: group(b, 2, cfg, nil).Comms, kick: make(chan struct{}), errs: make(chan error)}
	b0, b1 := make([]float32, bytes/4), make([]float32, bytes/4)
	go func() {
		for range p.kick {
			p.errs <- p.comms[1].AllReduce(context.Background(), collective.Float32s(b1), collective.Float32s(b1), collective.Sum)
		}
	}()
	b.Cleanup(func() { close(p.kick) })
	return p, b0
}

func (p *pair) allReduce(b0 []float32) error {
	p.kick <- struct{}{}
	err := p.comms[0].AllReduce(context.Background(), collective.Float32s(b0), collective.Float32s(b0), collective.Sum)
	if err1 := <-p.errs; err == nil {
		err = err1
	}
	return err
}

// BenchmarkAllReduce: two ranks in this process (goroutines, so the
// numbers include Go's scheduling between them); `ringo bench allreduce
// --transport shm` measures separate processes.
func BenchmarkAllReduce(b *testing.B) {
	for _, bytes := range []int{4 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprint(bytes), func(b *testing.B) {
			p, b0 := newPair(b, bytes)
			b.SetBytes(int64(bytes))
			for b.Loop() {
				if err := p.allReduce(b0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStream: one rank streams messages to the other through one
// ring, copy in and copy out: the transport's own throughput.
func BenchmarkStream(b *testing.B) {
	for _, bytes := range []int{4 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprint(bytes), func(b *testing.B) {
			tts, errs := joinAll(b, 2, nil)
			defer closeAll(tts)
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			src, dst := make([]byte, bytes), make([]byte, bytes)
			done := make(chan error, 1)
			b.SetBytes(int64(bytes))
			b.ResetTimer()
			go func() {
				for range b.N {
					if err := tts[0].Send(1, &transport.Header{Kind: transport.KindData}, src, time.Time{}); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			var h transport.Header
			for range b.N {
				if err := tts[1].RecvHeader(0, &h, time.Time{}); err != nil {
					b.Fatal(err)
				}
				if err := tts[1].RecvPayload(0, dst, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

func addInto(acc []float32, b []byte) {
	for i := range acc {
		acc[i] += math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// BenchmarkReduceFromRing compares receiving a message into a scratch
// buffer and then adding it into an accumulator (what the layer above does
// today) with adding it straight out of the ring (RecvPayloadFunc).
func BenchmarkReduceFromRing(b *testing.B) {
	const bytes = 16 << 20
	for _, direct := range []bool{false, true} {
		b.Run(map[bool]string{false: "copy-then-add", true: "add-from-ring"}[direct], func(b *testing.B) {
			tts, errs := joinAll(b, 2, nil)
			defer closeAll(tts)
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			src, scratch := make([]byte, bytes), make([]byte, bytes)
			acc := make([]float32, bytes/4)
			done := make(chan error, 1)
			b.SetBytes(bytes)
			b.ResetTimer()
			go func() {
				for range b.N {
					if err := tts[0].Send(1, &transport.Header{Kind: transport.KindData}, src, time.Time{}); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			var h transport.Header
			add := func(off int, part []byte) { addInto(acc[off/4:off/4+len(part)/4], part) }
			for range b.N {
				if err := tts[1].RecvHeader(0, &h, time.Time{}); err != nil {
					b.Fatal(err)
				}
				var err error
				if direct {
					err = tts[1].RecvPayloadFunc(0, bytes, add, time.Time{})
				} else {
					err = tts[1].RecvPayload(0, scratch, time.Time{})
					addInto(acc, scratch)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
