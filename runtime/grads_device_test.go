package runtime

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/collective/collectivetest"
)

// deviceSizes are the tensors (float32 elements) of the device tests. With
// deviceCfg's 8 KiB buckets (2048 elements) they fuse into 3 buckets:
// {3, 1000, 257} (the empty tensor skipped), {65536} alone because it is
// larger than a bucket, and {5, 700, 1}. The 2 KiB staging chunks cut the
// first bucket inside its second and third tensors, and every chunk of the
// first and last bucket spans a tensor boundary or two.
var deviceSizes = []int{3, 1000, 0, 257, 65536, 5, 700, 1}

const deviceBuckets = 3

func deviceCfg(comp Compression) GradConfig {
	return GradConfig{
		BucketBytes: 8 << 10,
		Compress:    comp,
		Staging:     collective.StagingConfig{ChunkBytes: 2 << 10, Slots: 3},
	}
}

// gradValues is rank r's gradient i in round k: normally distributed
// values over 8 binades, so that sums round and the order of reduction
// would show.
func gradValues(r, i, k, n int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(r), uint64(i<<8|k)))
	v := make([]float32, n)
	for j := range v {
		v[j] = float32(rng.NormFloat64() * math.Ldexp(1, rng.IntN(8)-4))
	}
	return v
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// firstDiff returns the index of the first float32 of b that differs in
// its bits from want, or -1.
func firstDiff(b []byte, want []float32) int {
	for j, w := range want {
		if binary.LittleEndian.Uint32(b[4*j:]) != math.Float32bits(w) {
			return j
		}
	}
	return -1
}

// AverageDevice over stand-in device memory gives exactly Average's bits
// on host slices of the same values, for every wire format and world size,
// identical on every rank, and costs one staged call per bucket. The test's
// messages are small, so the Comm reduces them by recursive doubling, whose
// order of reduction is the same for every element; a forced ring on 3
// ranks reduces each of its blocks in its own order and the Stager's
// chunks block differently from Average's whole bucket, so there the two
// paths agree only to rounding (and the ranks still bit for bit).
func TestAverageDeviceMatchesAverage(t *testing.T) {
	const rounds = 2 // the second reuses the stager and the host buffers
	cases := []struct {
		n    int
		algo collective.Algo
	}{{1, collective.AlgoAuto}, {2, collective.AlgoAuto}, {3, collective.AlgoAuto}, {3, collective.AlgoRing}}
	for _, tc := range cases {
		n := tc.n
		exact := tc.algo != collective.AlgoRing
		ccfg := collective.DefaultConfig()
		ccfg.Algo = tc.algo
		for _, comp := range []Compression{NoCompression, BF16, FP16} {
			t.Run(fmt.Sprintf("n%d/%v/%sx", n, tc.algo, comp), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				results := make([][][]byte, n)
				errs := eachErr(t, n, ccfg, func(c collective.Comm) error {
					r := c.Rank()
					g, err := NewGradients(c, deviceCfg(comp))
					if err != nil {
						return err
					}
					defer g.Close()
					devs := make([]collective.DeviceMemory, len(deviceSizes))
					for k := range rounds {
						host := make([][]float32, len(deviceSizes))
						for i, sz := range deviceSizes {
							host[i] = gradValues(r, i, k, sz)
							d := collectivetest.NewHostDevice(4 * sz)
							d.Store(f32Bytes(host[i]))
							devs[i] = d
						}
						if err := g.Average(ctx, host...); err != nil {
							return fmt.Errorf("host average: %w", err)
						}
						if err := g.AverageDevice(ctx, devs...); err != nil {
							return fmt.Errorf("device average: %w", err)
						}
						for i, sz := range deviceSizes {
							got := devs[i].(*collectivetest.HostDevice).Load()
							if exact {
								if j := firstDiff(got, host[i]); j >= 0 {
									return fmt.Errorf("round %d tensor %d element %d: device average differs from the host's", k, i, j)
								}
								continue
							}
							if err := closeTo(got, host[i], comp, n, i, k, sz); err != nil {
								return fmt.Errorf("round %d tensor %d: %w", k, i, err)
							}
						}
					}
					res := make([][]byte, len(devs))
					for i, d := range devs {
						res[i] = d.(*collectivetest.HostDevice).Load()
					}
					results[r] = res
					st := g.DeviceStats()
					wantCalls, wantBytes := 0, int64(0)
					if n > 1 {
						wantCalls = rounds * deviceBuckets
						for _, sz := range deviceSizes {
							wantBytes += rounds * 4 * int64(sz)
						}
					}
					if st.Calls != wantCalls || st.Bytes != wantBytes {
						return fmt.Errorf("device stats: %d staged calls of %d bytes, want %d calls (%d buckets a round) of %d",
							st.Calls, st.Bytes, wantCalls, deviceBuckets, wantBytes)
					}
					return nil
				})
				for r, err := range errs {
					if err != nil {
						t.Fatalf("rank %d: %v", r, err)
					}
				}
				for r := 1; r < n; r++ {
					for i := range results[r] {
						if string(results[r][i]) != string(results[0][i]) {
							t.Fatalf("ranks 0 and %d disagree on tensor %d", r, i)
						}
					}
				}
			})
		}
	}
}

// closeTo checks a device average against the host's where the two reduce
// in different orders. Each rounds its partial sums, whose magnitude is up
// to n times the largest input; the two orders may then differ by a unit
// in the last place of that sum from each side.
func closeTo(got []byte, host []float32, comp Compression, n, i, k, sz int) error {
	ulp := math.Ldexp(1, -23) // float32: 24-bit significand
	switch comp {
	case BF16:
		ulp = math.Ldexp(1, -7) // 8 bits
	case FP16:
		ulp = math.Ldexp(1, -10) // 11 bits
	}
	ins := make([][]float32, n)
	for r := range ins {
		ins[r] = gradValues(r, i, k, sz)
	}
	for j, h := range host {
		big := 0.0
		for r := range ins {
			big = max(big, math.Abs(float64(ins[r][j])))
		}
		d := float64(math.Float32frombits(binary.LittleEndian.Uint32(got[4*j:])))
		if math.Abs(d-float64(h)) > 2*ulp*float64(n)*big {
			return fmt.Errorf("element %d: device %v, host %v: more than rounding apart (inputs up to %v)", j, d, h, big)
		}
	}
	return nil
}

func TestAverageDeviceBadTensor(t *testing.T) {
	for _, n := range []int{1, 2} {
		each(t, n, func(c collective.Comm) error {
			g, err := NewGradients(c, deviceCfg(NoCompression))
			if err != nil {
				return err
			}
			defer g.Close()
			err = g.AverageDevice(context.Background(), collectivetest.NewHostDevice(8), collectivetest.NewHostDevice(6))
			if err == nil || !strings.Contains(err.Error(), "device gradient 2 of 2 is 6 bytes") {
				return fmt.Errorf("a 6-byte tensor on a group of %d: got %v, want an error naming tensor 2 and its 6 bytes", n, err)
			}
			if st := g.DeviceStats(); st.Calls != 0 {
				return fmt.Errorf("a rejected call made %d staged calls", st.Calls)
			}
			return nil
		})
	}
}

// A copy that fails on one rank fails that rank's AverageDevice with the
// copy's error and the bucket it was in, and the other ranks' promptly.
func TestAverageDeviceCopyFailure(t *testing.T) {
	const n, bad = 3, 1
	injected := errors.New("injected copy failure")
	cfg := collective.DefaultConfig()
	cfg.Timeout = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := eachErr(t, n, cfg, func(c collective.Comm) error {
		g, err := NewGradients(c, deviceCfg(BF16))
		if err != nil {
			return err
		}
		defer g.Close()
		devs := make([]collective.DeviceMemory, len(deviceSizes))
		for i, sz := range deviceSizes {
			d := collectivetest.NewHostDevice(4 * sz)
			d.Store(f32Bytes(gradValues(c.Rank(), i, 0, sz)))
			if c.Rank() == bad && i == 4 { // the second bucket, alone
				d.Hook = func(dir collectivetest.Direction, off, _ int) error {
					if dir == collectivetest.ToHost && off >= 16<<10 {
						return injected
					}
					return nil
				}
			}
			devs[i] = d
		}
		return g.AverageDevice(ctx, devs...)
	})
	for r, err := range errs {
		switch {
		case err == nil:
			t.Errorf("rank %d: no error", r)
		case errors.Is(err, context.DeadlineExceeded):
			t.Errorf("rank %d waited for the deadline instead of failing with rank %d: %v", r, bad, err)
		case r == bad && (!errors.Is(err, injected) || !strings.Contains(err.Error(), "averaging device gradient bucket 2 of 3")):
			t.Errorf("rank %d: %v; want the injected error, in bucket 2 of 3", r, err)
		default:
			t.Logf("rank %d: %v", r, err)
		}
	}
}

func TestGradientsCloseWithoutStager(t *testing.T) {
	g, err := NewGradients(nil, DefaultGradConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if st := g.DeviceStats(); st != (collective.StageStats{}) {
		t.Fatalf("stats without a stager: %+v", st)
	}
}
