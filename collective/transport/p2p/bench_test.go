package p2p_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

// pair runs rank 1 of a two-rank group on a persistent goroutine, so that
// measuring rank 0's calls counts no goroutine start-up.
type pair struct {
	comms []collective.Comm
	kick  chan struct{}
	errs  chan error
}

func newPair(b *testing.B, g collectivetest.Group, bytes int) (*pair, []float32) {
	p := &pair{comms: g.Comms, kick: make(chan struct{}), errs: make(chan error)}
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

// BenchmarkAllReduce compares this transport (Noise and TLS) with package
// tcp, side by side in one run: an all-reduce of float32 between two
// ranks in this process over loopback. MB/s is algbw; busbw_GB/s is
// algbw × 2(n−1)/n as nccl-tests report it (equal to algbw for n = 2).
func BenchmarkAllReduce(b *testing.B) {
	const n = 2
	cfg := collective.DefaultConfig()
	cfg.Timeout = 60 * time.Second
	transports := []struct {
		name string
		form func(b *testing.B) collectivetest.Group
	}{
		{"tcp", func(b *testing.B) collectivetest.Group { return collectivetest.TCP(b, n, cfg, nil) }},
		{"p2p-noise", func(b *testing.B) collectivetest.Group { return group(b, n, cfg, nil) }},
		{"p2p-tls", func(b *testing.B) collectivetest.Group {
			return group(b, n, cfg, func(r int, c *p2p.Config) { c.Security = p2p.SecurityTLS })
		}},
	}
	for _, bytes := range []int{4 << 10, 1 << 20, 16 << 20} {
		for _, tr := range transports {
			b.Run(fmt.Sprintf("bytes=%d/%s", bytes, tr.name), func(b *testing.B) {
				p, b0 := newPair(b, tr.form(b), bytes)
				if err := p.allReduce(b0); err != nil { // warm up: windows, pools
					b.Fatal(err)
				}
				b.SetBytes(int64(bytes))
				b.ResetTimer()
				for range b.N {
					if err := p.allReduce(b0); err != nil {
						b.Fatal(err)
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(float64(bytes)/sec*2*(n-1)/n/1e9, "busbw_GB/s")
			})
		}
	}
}

// BenchmarkStream: rank 0 streams messages to rank 1, one way: the
// transport's own throughput, without reductions.
func BenchmarkStream(b *testing.B) {
	for _, bytes := range []int{1 << 20, 16 << 20} {
		for _, sec := range []string{p2p.SecurityNoise, p2p.SecurityTLS} {
			b.Run(fmt.Sprintf("bytes=%d/%s", bytes, sec), func(b *testing.B) {
				_, tts := mustJoin(b, 2, func(r int, c *p2p.Config) { c.Security = sec })
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
}
