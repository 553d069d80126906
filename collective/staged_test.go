package collective_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
)

// encode writes small integers as elements of d.
func encode(d collective.DType, vals []int) []byte {
	b := make([]byte, len(vals)*d.Size())
	for i, v := range vals {
		switch d {
		case collective.Float32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(v)))
		case collective.Float64:
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(v)))
		case collective.Int32:
			binary.LittleEndian.PutUint32(b[4*i:], uint32(int32(v)))
		case collective.Int64:
			binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(v)))
		case collective.BFloat16:
			binary.LittleEndian.PutUint16(b[2*i:], collective.BF16FromFloat32(float32(v)))
		case collective.Float16:
			binary.LittleEndian.PutUint16(b[2*i:], collective.F16FromFloat32(float32(v)))
		}
	}
	return b
}

// stagedInput is rank r's element i: small integers, so that every
// reduction is exact in every dtype and the order of reduction does not
// matter (products of up to 4 ranks stay below 2^8).
func stagedInput(r, i, count int) []int {
	v := make([]int, count)
	for j := range v {
		v[j] = (r*7+(i+j)*3)%9 - 4
	}
	return v
}

func stagedCfg() collective.Config {
	cfg := collective.DefaultConfig()
	cfg.ChunkBytes = 64
	cfg.Timeout = 20 * time.Second
	return cfg
}

// TestStagedMatchesHost checks every staged collective against the same
// collective on host buffers, for every dtype and op, world sizes 1 to 4,
// sizes of no, one and many chunks, in place and out of place.
func TestStagedMatchesHost(t *testing.T) {
	scfg := collective.StagingConfig{ChunkBytes: 96, Slots: 3}
	for n := 1; n <= 4; n++ {
		host := inprocGroup(t, n, stagedCfg())
		dev := inprocGroup(t, n, stagedCfg())
		stagers := make([]*collective.Stager, n)
		for r := range stagers {
			s, err := collective.NewStager(dev[r], scfg)
			if err != nil {
				t.Fatal(err)
			}
			stagers[r] = s
			t.Cleanup(func() { s.Close() })
		}
		for _, d := range collective.DTypes {
			for _, count := range []int{0, 1, 7, 48, 101} {
				for _, op := range collective.Ops {
					t.Run(fmt.Sprintf("n%d/%v/%v/c%d", n, d, op, count), func(t *testing.T) {
						checkStagedAllReduce(t, host, dev, stagers, d, op, count)
					})
				}
				t.Run(fmt.Sprintf("n%d/%v/c%d/others", n, d, count), func(t *testing.T) {
					checkStagedOthers(t, host, stagers, d, count)
				})
			}
		}
	}
}

func checkStagedAllReduce(t *testing.T, host, dev []collective.Comm, stagers []*collective.Stager, d collective.DType, op collective.Op, count int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := len(host)
	want := make([][]byte, n)
	errs := each(host, func(c collective.Comm) error {
		b := encode(d, stagedInput(c.Rank(), 0, count))
		want[c.Rank()] = b
		return c.AllReduce(ctx, collective.BufferOf(d, b), collective.BufferOf(d, b), op)
	})
	failOn(t, errs)
	for _, inPlace := range []bool{true, false} {
		got := make([][]byte, n)
		errs = each(dev, func(c collective.Comm) error {
			r := c.Rank()
			send := collectivetest.NewHostDevice(count * d.Size())
			send.Store(encode(d, stagedInput(r, 0, count)))
			recv := send
			if !inPlace {
				recv = collectivetest.NewHostDevice(count * d.Size())
			}
			err := stagers[r].AllReduce(ctx, collective.OnDevice(d, send), collective.OnDevice(d, recv), op)
			got[r] = recv.Load()
			if !inPlace && !bytes.Equal(send.Load(), encode(d, stagedInput(r, 0, count))) {
				return fmt.Errorf("out-of-place all-reduce changed the send buffer")
			}
			return err
		})
		failOn(t, errs)
		for r := range got {
			if !bytes.Equal(got[r], want[r]) {
				t.Fatalf("in place %v: rank %d: staged all-reduce gave\n%x\nhost all-reduce gave\n%x", inPlace, r, got[r], want[r])
			}
		}
	}
}

// checkStagedOthers checks reduce-scatter, all-gather and broadcast
// (every root) against the host collectives.
func checkStagedOthers(t *testing.T, host []collective.Comm, stagers []*collective.Stager, d collective.DType, count int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := len(host)
	es := d.Size()
	type result struct{ rs, ag []byte }
	want := make([]result, n)
	failOn(t, each(host, func(c collective.Comm) error {
		r := c.Rank()
		send := encode(d, stagedInput(r, 0, count*n))
		rs := make([]byte, count*es)
		if err := c.ReduceScatter(ctx, collective.BufferOf(d, send), collective.BufferOf(d, rs), collective.Sum); err != nil {
			return err
		}
		ag := make([]byte, count*n*es)
		if err := c.AllGather(ctx, collective.BufferOf(d, encode(d, stagedInput(r, 5, count))), collective.BufferOf(d, ag)); err != nil {
			return err
		}
		want[r] = result{rs, ag}
		return nil
	}))
	errs := make([]error, n)
	got := make([]result, n)
	bcast := make([][][]byte, n)
	done := make(chan struct{})
	for r, s := range stagers {
		go func() {
			defer func() { done <- struct{}{} }()
			send := collectivetest.NewHostDevice(count * n * es)
			send.Store(encode(d, stagedInput(r, 0, count*n)))
			rs := collectivetest.NewHostDevice(count * es)
			if errs[r] = s.ReduceScatter(ctx, collective.OnDevice(d, send), collective.OnDevice(d, rs), collective.Sum); errs[r] != nil {
				return
			}
			in := collectivetest.NewHostDevice(count * es)
			in.Store(encode(d, stagedInput(r, 5, count)))
			ag := collectivetest.NewHostDevice(count * n * es)
			if errs[r] = s.AllGather(ctx, collective.OnDevice(d, in), collective.OnDevice(d, ag)); errs[r] != nil {
				return
			}
			got[r] = result{rs.Load(), ag.Load()}
			for root := range n {
				b := collectivetest.NewHostDevice(count * es)
				b.Store(encode(d, stagedInput(r, 11, count)))
				if errs[r] = s.Broadcast(ctx, collective.OnDevice(d, b), collective.OnDevice(d, b), root); errs[r] != nil {
					return
				}
				bcast[r] = append(bcast[r], b.Load())
			}
		}()
	}
	for range stagers {
		<-done
	}
	failOn(t, errs)
	for r := range got {
		if !bytes.Equal(got[r].rs, want[r].rs) {
			t.Fatalf("rank %d: staged reduce-scatter gave %x, host %x", r, got[r].rs, want[r].rs)
		}
		if !bytes.Equal(got[r].ag, want[r].ag) {
			t.Fatalf("rank %d: staged all-gather gave %x, host %x", r, got[r].ag, want[r].ag)
		}
		for root := range n {
			if w := encode(d, stagedInput(root, 11, count)); !bytes.Equal(bcast[r][root], w) {
				t.Fatalf("rank %d: staged broadcast from root %d gave %x, want %x", r, root, bcast[r][root], w)
			}
		}
	}
}

func failOn(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// TestStagedOverlaps proves the stages run side by side: the copy of
// chunk 0 back to the device is held until the copy of chunk 2 off the
// device has begun. A stager that ran the chunks one after another would
// never start chunk 2 and the held copy would give up.
func TestStagedOverlaps(t *testing.T) {
	const chunk = 64
	comms := inprocGroup(t, 2, stagedCfg())
	errs := each(comms, func(c collective.Comm) error {
		s, err := collective.NewStager(c, collective.StagingConfig{ChunkBytes: chunk, Slots: 3})
		if err != nil {
			return err
		}
		defer s.Close()
		dev := collectivetest.NewHostDevice(8 * chunk)
		started := make(chan struct{})
		dev.Hook = func(dir collectivetest.Direction, off, n int) error {
			switch {
			case dir == collectivetest.ToHost && off == 2*chunk:
				close(started)
			case dir == collectivetest.ToDevice && off == 0:
				select {
				case <-started:
				case <-time.After(10 * time.Second):
					return errors.New("chunk 2 was not copied off the device while chunk 0 waited to be copied back: the stages do not overlap")
				}
			}
			return nil
		}
		if err := s.AllReduce(context.Background(), collective.OnDevice(collective.Float32, dev), collective.OnDevice(collective.Float32, dev), collective.Sum); err != nil {
			return err
		}
		st := s.Stats()
		if st.Chunks != 8 || st.Bytes != 8*chunk || st.Calls != 1 {
			return fmt.Errorf("stats %+v: want 8 chunks, %d bytes, 1 call", st, 8*chunk)
		}
		if dev.Copies(collectivetest.ToHost) != 8 || dev.Copies(collectivetest.ToDevice) != 8 {
			return fmt.Errorf("%d copies to host and %d to device, want 8 each", dev.Copies(collectivetest.ToHost), dev.Copies(collectivetest.ToDevice))
		}
		return nil
	})
	failOn(t, errs)
}

// TestStagedCopyFailure: a copy that fails on one rank fails that rank's
// call with an error naming the chunk and the stage, and every other rank
// gets a PeerError naming that rank at once, not at its timeout.
func TestStagedCopyFailure(t *testing.T) {
	for _, dir := range []collectivetest.Direction{collectivetest.ToHost, collectivetest.ToDevice} {
		t.Run(dir.String(), func(t *testing.T) {
			cfg := stagedCfg()
			cfg.Timeout = time.Minute
			comms := inprocGroup(t, 3, cfg)
			boom := errors.New("injected copy failure")
			start := time.Now()
			errs := each(comms, func(c collective.Comm) error {
				s, err := collective.NewStager(c, collective.StagingConfig{ChunkBytes: 64, Slots: 3})
				if err != nil {
					return err
				}
				defer s.Close()
				dev := collectivetest.NewHostDevice(10 * 64)
				if c.Rank() == 1 {
					dev.Hook = func(d collectivetest.Direction, off, n int) error {
						if d == dir && off == 3*64 {
							return boom
						}
						return nil
					}
				}
				return s.AllReduce(context.Background(), collective.OnDevice(collective.Float32, dev), collective.OnDevice(collective.Float32, dev), collective.Sum)
			})
			if took := time.Since(start); took > 30*time.Second {
				t.Fatalf("the failure took %v to reach every rank, as long as a timeout", took)
			}
			if !errors.Is(errs[1], boom) || !strings.Contains(errs[1].Error(), "chunk 4 of 10") || !strings.Contains(errs[1].Error(), dir.String()) {
				t.Fatalf("rank 1: %v; want the injected failure, naming chunk 4 of 10 and %q", errs[1], dir)
			}
			for _, r := range []int{0, 2} {
				var pe *collective.PeerError
				if !errors.As(errs[r], &pe) || pe.Rank != 1 || errors.Is(errs[r], collective.ErrTimeout) {
					t.Fatalf("rank %d: %v; want a PeerError naming rank 1 (not a timeout)", r, errs[r])
				}
			}
		})
	}
}

// TestStagedLengthMismatch: ranks whose buffers differ by whole chunks
// (so each chunk's count agrees) fail together with ErrMismatch.
func TestStagedLengthMismatch(t *testing.T) {
	comms := inprocGroup(t, 2, stagedCfg())
	errs := each(comms, func(c collective.Comm) error {
		s, err := collective.NewStager(c, collective.StagingConfig{ChunkBytes: 64, Slots: 3})
		if err != nil {
			return err
		}
		defer s.Close()
		dev := collectivetest.NewHostDevice((3 + c.Rank()) * 64)
		return s.AllReduce(context.Background(), collective.OnDevice(collective.Float32, dev), collective.OnDevice(collective.Float32, dev), collective.Sum)
	})
	for r, err := range errs {
		if !errors.Is(err, collective.ErrMismatch) || !strings.Contains(err.Error(), "192 to 256 bytes") {
			t.Fatalf("rank %d: %v; want ErrMismatch naming both lengths", r, err)
		}
	}
}

func TestStagedArgErrors(t *testing.T) {
	comms := inprocGroup(t, 2, stagedCfg())
	s, err := collective.NewStager(comms[0], collective.StagingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	f32 := func(n int) collective.DeviceBuffer {
		return collective.OnDevice(collective.Float32, collectivetest.NewHostDevice(n))
	}
	ctx := context.Background()
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"dtype", s.AllReduce(ctx, f32(16), collective.OnDevice(collective.Float64, collectivetest.NewHostDevice(16)), collective.Sum), "dtypes"},
		{"ragged", s.AllReduce(ctx, f32(15), f32(15), collective.Sum), "not a whole number"},
		{"sizes", s.AllReduce(ctx, f32(16), f32(32), collective.Sum), "want recv"},
		{"rs", s.ReduceScatter(ctx, f32(16), f32(16), collective.Sum), "want recv"},
		{"ag", s.AllGather(ctx, f32(16), f32(16)), "want recv"},
		{"root", s.Broadcast(ctx, f32(16), f32(16), 2), "root 2"},
		{"op", s.AllReduce(ctx, f32(16), f32(16), collective.Op(99)), "not supported"},
		{"op as bf16", s.AllReduceAs(ctx, f32(16), f32(16), collective.BFloat16, collective.Op(99)), "reducing bfloat16"},
	}
	for _, c := range cases {
		var ae *collective.ArgError
		if !errors.As(c.err, &ae) || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v; want an ArgError mentioning %q", c.name, c.err, c.want)
		}
	}
	s.Close()
	if err := s.AllReduce(ctx, f32(16), f32(16), collective.Sum); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("after Close: %v; want an error saying the stager is closed", err)
	}
	if _, err := collective.NewStager(comms[0], collective.StagingConfig{Slots: 2}); err == nil {
		t.Error("2 slots accepted; a pipeline of three stages needs 3")
	}
	if _, err := collective.NewStager(comms[0], collective.StagingConfig{Alloc: func(int) ([]byte, error) { return nil, errors.New("no pinned memory") }}); err == nil || !strings.Contains(err.Error(), "no pinned memory") {
		t.Errorf("failing allocator: %v", err)
	}
}

// TestStagedAllReduceAs: float32 device memory reduced as bfloat16 or
// float16 gives what a host all-reduce of the narrowed values gives,
// widened back, on every rank; and the wire carries half the bytes.
func TestStagedAllReduceAs(t *testing.T) {
	const count = 301 // not a whole number of chunks
	for _, wire := range []collective.DType{collective.BFloat16, collective.Float16} {
		narrowTo := collective.BF16FromFloat32
		widenFrom := collective.BF16ToFloat32
		if wire == collective.Float16 {
			narrowTo, widenFrom = collective.F16FromFloat32, collective.F16ToFloat32
		}
		// Values with more mantissa than 16 bits hold, so rounding shows.
		input := func(r int) []float32 {
			v := make([]float32, count)
			for i := range v {
				v[i] = float32(r+1)*0.3337 + float32(i%17)*0.01171 - 0.1
			}
			return v
		}
		for _, n := range []int{1, 3} {
			t.Run(fmt.Sprintf("%v/n%d", wire, n), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				host := inprocGroup(t, n, stagedCfg())
				want := make([][]float32, n)
				failOn(t, each(host, func(c collective.Comm) error {
					h := make([]uint16, count)
					for i, v := range input(c.Rank()) {
						h[i] = narrowTo(v)
					}
					b := make([]byte, 2*count)
					for i, x := range h {
						binary.LittleEndian.PutUint16(b[2*i:], x)
					}
					if err := c.AllReduce(ctx, collective.BufferOf(wire, b), collective.BufferOf(wire, b), collective.Sum); err != nil {
						return err
					}
					want[c.Rank()] = make([]float32, count)
					for i := range want[c.Rank()] {
						want[c.Rank()][i] = widenFrom(binary.LittleEndian.Uint16(b[2*i:]))
					}
					return nil
				}))
				dev := inprocGroup(t, n, stagedCfg())
				got := make([][]byte, n)
				stats := make([]collective.StageStats, n)
				failOn(t, each(dev, func(c collective.Comm) error {
					s, err := collective.NewStager(c, collective.StagingConfig{ChunkBytes: 128, Slots: 3})
					if err != nil {
						return err
					}
					defer s.Close()
					m := collectivetest.NewHostDevice(4 * count)
					b := make([]byte, 4*count)
					for i, v := range input(c.Rank()) {
						binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
					}
					m.Store(b)
					if err := s.AllReduceAs(ctx, collective.OnDevice(collective.Float32, m), collective.OnDevice(collective.Float32, m), wire, collective.Sum); err != nil {
						return err
					}
					got[c.Rank()], stats[c.Rank()] = m.Load(), s.Stats()
					return nil
				}))
				for r := range got {
					for i := range count {
						g := math.Float32frombits(binary.LittleEndian.Uint32(got[r][4*i:]))
						if math.Float32bits(g) != math.Float32bits(want[r][i]) {
							t.Fatalf("rank %d element %d: staged %v all-reduce gave %v, host %v", r, i, wire, g, want[r][i])
						}
					}
					if !bytes.Equal(got[r], got[0]) {
						t.Fatalf("rank %d's result differs from rank 0's", r)
					}
				}
				if v := input(0)[5]; n == 1 && widenFrom(narrowTo(v)) == v {
					t.Fatalf("test input %v is exact in %v: the rounding would not show", v, wire)
				}
				if stats[0].Chunks != (4*count+127)/128 {
					t.Fatalf("stats %+v: want %d chunks of the float32 memory", stats[0], (4*count+127)/128)
				}
			})
		}
	}
	comms := inprocGroup(t, 1, stagedCfg())
	s, err := collective.NewStager(comms[0], collective.StagingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := collective.OnDevice(collective.Float64, collectivetest.NewHostDevice(64))
	var ae *collective.ArgError
	if err := s.AllReduceAs(context.Background(), m, m, collective.BFloat16, collective.Sum); !errors.As(err, &ae) || !strings.Contains(err.Error(), "float64") {
		t.Errorf("float64 memory as bfloat16: %v; want an ArgError naming float64", err)
	}
	f := collective.OnDevice(collective.Float32, collectivetest.NewHostDevice(64))
	if err := s.AllReduceAs(context.Background(), f, f, collective.Int32, collective.Sum); !errors.As(err, &ae) {
		t.Errorf("float32 as int32: %v; want an ArgError", err)
	}
}

// TestConcat: a staged all-reduce over tensors joined end to end, with
// chunks that straddle the joins, equals one over a single buffer; a copy
// outside the joined memory names the bounds, and one that fails inside
// a part names the tensor.
func TestConcat(t *testing.T) {
	sizes := []int{12, 100, 4, 0, 68} // bytes of float32 tensors; chunks of 64 straddle every join
	total := 0
	for _, s := range sizes {
		total += s
	}
	comms := inprocGroup(t, 2, stagedCfg())
	failOn(t, each(comms, func(c collective.Comm) error {
		s, err := collective.NewStager(c, collective.StagingConfig{ChunkBytes: 64, Slots: 3})
		if err != nil {
			return err
		}
		defer s.Close()
		all := encode(collective.Float32, stagedInput(c.Rank(), 0, total/4))
		whole := collectivetest.NewHostDevice(total)
		whole.Store(all)
		parts := make([]*collectivetest.HostDevice, len(sizes))
		mems := make([]collective.DeviceMemory, len(sizes))
		at := 0
		for i, n := range sizes {
			parts[i] = collectivetest.NewHostDevice(n)
			parts[i].Store(all[at : at+n])
			mems[i] = parts[i]
			at += n
		}
		joined := collective.Concat(mems...)
		if joined.Len() != total {
			return fmt.Errorf("joined length %d, want %d", joined.Len(), total)
		}
		ctx := context.Background()
		if err := s.AllReduce(ctx, collective.OnDevice(collective.Float32, whole), collective.OnDevice(collective.Float32, whole), collective.Sum); err != nil {
			return err
		}
		if err := s.AllReduce(ctx, collective.OnDevice(collective.Float32, joined), collective.OnDevice(collective.Float32, joined), collective.Sum); err != nil {
			return err
		}
		want := whole.Load()
		at = 0
		for i, p := range parts {
			if g := p.Load(); !bytes.Equal(g, want[at:at+sizes[i]]) {
				return fmt.Errorf("tensor %d: %x after the joined all-reduce, want %x", i, g, want[at:at+sizes[i]])
			}
			at += sizes[i]
		}
		if err := joined.CopyToHost(make([]byte, 8), total-4); err == nil || !strings.Contains(err.Error(), fmt.Sprint(total)) {
			return fmt.Errorf("copy past the end: %v; want an error naming the %d bytes", err, total)
		}
		boom := errors.New("injected")
		parts[2].Hook = func(collectivetest.Direction, int, int) error { return boom }
		if err := joined.CopyToHost(make([]byte, total), 0); !errors.Is(err, boom) || !strings.Contains(err.Error(), "tensor 3 of 5") {
			return fmt.Errorf("failing part: %v; want the failure, naming tensor 3 of 5", err)
		}
		return nil
	}))
}

// BenchmarkStagedAllReduceTCP: a 2-rank TCP all-reduce of host buffers
// beside the same all-reduce of stand-in device memory through a Stager
// (4 MiB chunks, the default). The stand-in's copies are memcpys on the
// same cores as the ring, where a GPU's are DMA: this measures what the
// pipeline itself costs on a CPU, an upper bound on a GPU's overhead.
func BenchmarkStagedAllReduceTCP(b *testing.B) {
	for _, size := range []int{16 << 20, 64 << 20} {
		for _, staged := range []bool{false, true} {
			name := fmt.Sprintf("%dMiB/host", size>>20)
			if staged {
				name = fmt.Sprintf("%dMiB/staged", size>>20)
			}
			b.Run(name, func(b *testing.B) {
				cfg := collective.DefaultConfig()
				cfg.Timeout = time.Minute
				comms := tcpGroup(b, 2, cfg, tcp.DefaultConfig())
				calls := make([]func() error, 2)
				for r, c := range comms {
					host := make([]byte, size)
					calls[r] = func() error {
						return c.AllReduce(context.Background(), collective.BufferOf(collective.Float32, host), collective.BufferOf(collective.Float32, host), collective.Sum)
					}
					if staged {
						s, err := collective.NewStager(c, collective.DefaultStagingConfig())
						if err != nil {
							b.Fatal(err)
						}
						b.Cleanup(func() { s.Close() })
						dev := collective.OnDevice(collective.Float32, collectivetest.NewHostDevice(size))
						calls[r] = func() error { return s.AllReduce(context.Background(), dev, dev, collective.Sum) }
					}
				}
				b.SetBytes(int64(size))
				for b.Loop() {
					errs := make(chan error, 1)
					go func() { errs <- calls[1]() }()
					if err := calls[0](); err != nil {
						b.Fatal(err)
					}
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
