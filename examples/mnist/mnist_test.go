package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/shard"
)

// synthDigits makes n random "digits": each class is a fixed random
// pattern of bright pixels (the same for every seed), and each digit is
// its class's pattern with a twentieth of the pixels flipped.
func synthDigits(n int, seed uint64) (images, labels []byte) {
	protos := rand.New(rand.NewPCG(99, 99))
	var pattern [classes][pixels]bool
	for c := range pattern {
		for j := range pattern[c] {
			pattern[c][j] = protos.IntN(6) == 0
		}
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for range n {
		c := r.IntN(classes)
		labels = append(labels, byte(c))
		for j := range pixels {
			on := pattern[c][j] != (r.IntN(20) == 0)
			v := byte(r.IntN(30))
			if on {
				v = 180 + byte(r.IntN(76))
			}
			images = append(images, v)
		}
	}
	return images, labels
}

func writeIDX(t testing.TB, path string, data []byte, dims ...int) {
	b := []byte{0, 0, 0x08, byte(len(dims))}
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	if err := os.WriteFile(path, append(b, data...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// synthDataset writes train/ and test/ under dir the way `make data`
// does: IDX files packed by the dataloader (small shards, so that the
// loader reads several).
func synthDataset(t testing.TB, dir string, train, test int) {
	for _, s := range []struct {
		name string
		n    int
		seed uint64
	}{{"train", train, 1}, {"test", test, 2}} {
		img, lab := synthDigits(s.n, s.seed)
		ip, lp := filepath.Join(dir, s.name+"-images"), filepath.Join(dir, s.name+"-labels")
		writeIDX(t, ip, img, s.n, 28, 28)
		writeIDX(t, lp, lab, s.n)
		opts := dataloader.DefaultPackOptions()
		opts.ShardBytes, opts.Shard.BlockSize = 64<<10, 16<<10
		if _, err := dataloader.PackMNIST(ip, lp, filepath.Join(dir, s.name), opts); err != nil {
			t.Fatal(err)
		}
	}
}

// digitsOf decodes synthetic digits through the record format.
func digitsOf(t testing.TB, n int, seed uint64) []digit {
	img, lab := synthDigits(n, seed)
	out := make([]digit, n)
	for i := range out {
		d, err := decodeDigit(shard.EncodeFields(map[string][]byte{"image": img[i*pixels : (i+1)*pixels], "label": lab[i : i+1]}))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

func TestTrainingReducesLoss(t *testing.T) {
	data := digitsOf(t, 160, 1)
	for _, kind := range []string{"cnn", "mlp"} {
		t.Run(kind, func(t *testing.T) {
			const batch, steps = 16, 10
			n, err := newNet(kind, defaultHidden, batch, 40, 1)
			if err != nil {
				t.Fatal(err)
			}
			opt := newAdam(n.params, 3e-3)
			var losses []float32
			for s := range steps {
				loss, err := n.step(data[s*batch : (s+1)*batch])
				if err != nil {
					t.Fatal(err)
				}
				opt.update(n.params, n.grads)
				losses = append(losses, loss)
			}
			first := (losses[0] + losses[1] + losses[2]) / 3
			last := (losses[steps-1] + losses[steps-2] + losses[steps-3]) / 3
			if !(last < 0.7*first) {
				t.Fatalf("loss went from %.3f to %.3f in %d steps (%v)", first, last, steps, losses)
			}
			pred, err := n.predict(data[:100])
			if err != nil {
				t.Fatal(err)
			}
			right := 0
			for i, p := range pred {
				if p == data[i].label {
					right++
				}
			}
			t.Logf("loss %.3f -> %.3f, %d/100 right", first, last, right)
			if right < 30 {
				t.Fatalf("only %d of 100 training digits right after %d steps", right, steps)
			}
		})
	}
}

// The gradient of a batch is the mean of its samples' gradients, so the
// average over ranks of equal local batches is the global batch's.
func TestGradientIsMeanOverBatch(t *testing.T) {
	data := digitsOf(t, 2, 3)
	for _, kind := range []string{"cnn", "mlp"} {
		t.Run(kind, func(t *testing.T) {
			two, err := newNet(kind, defaultHidden, 2, 1, 5)
			if err != nil {
				t.Fatal(err)
			}
			one, err := newNet(kind, defaultHidden, 1, 1, 5)
			if err != nil {
				t.Fatal(err)
			}
			l2, err := two.step(data)
			if err != nil {
				t.Fatal(err)
			}
			var sum [][]float64
			var l1 float32
			for i := range data {
				l, err := one.step(data[i : i+1])
				if err != nil {
					t.Fatal(err)
				}
				l1 += l / 2
				for p, g := range one.grads {
					if i == 0 {
						sum = append(sum, make([]float64, len(g)))
					}
					for j, v := range g {
						sum[p][j] += float64(v) / 2
					}
				}
				one.zeroGrads()
			}
			if math.Abs(float64(l1-l2)) > 1e-5*math.Abs(float64(l2)) {
				t.Errorf("loss of the batch %v, mean of the samples' %v", l2, l1)
			}
			for p, g := range two.grads {
				var diff, norm float64
				for j, v := range g {
					diff = max(diff, math.Abs(float64(v)-sum[p][j]))
					norm = max(norm, math.Abs(sum[p][j]))
				}
				if diff > 1e-4*norm+1e-7 {
					t.Errorf("%s: batch gradient differs from the mean of the samples' by %g (largest %g)", two.params[p].name, diff, norm)
				}
			}
		})
	}
}

func TestAdamFirstStep(t *testing.T) {
	p := &param{name: "w", shape: []int{3}}
	n, _ := newNet("mlp", defaultHidden, 1, 1, 1)
	p.w = n.params[1].w // any float32 tensor; use fc1.b's
	w := p.data()
	before := append([]float32(nil), w...)
	g := make([]float32, len(w))
	for i := range g {
		g[i] = float32(i%3) - 1 // -1, 0, 1, ...
	}
	a := newAdam([]*param{p}, 0.01)
	a.update([]*param{p}, [][]float32{g})
	for i := range w {
		// The first bias-corrected step is lr·sign(g) (0 for g = 0).
		want := before[i] - 0.01*float32(i%3-1)
		if math.Abs(float64(w[i]-want)) > 1e-6 || g[i] != 0 {
			t.Fatalf("element %d: %v, want %v; gradient left at %v", i, w[i], want, g[i])
		}
	}
	if a.steps[0] != 1 {
		t.Fatalf("step count %v", a.steps[0])
	}
}

var (
	buildOnce          sync.Once
	buildErr           error
	ringoBin, mnistBin string
	binDir             string
)

// binaries builds ringo and this example (without -race: they are real
// processes run by the launcher).
func binaries(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "mnist-example"); buildErr != nil {
			return
		}
		ringoBin, mnistBin = filepath.Join(binDir, "ringo"), filepath.Join(binDir, "mnist")
		for _, b := range [][2]string{{ringoBin, "../../cmd/ringo"}, {mnistBin, "."}} {
			if out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("building %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var hashLine = regexp.MustCompile(`\[rank 0\] all 2 replicas hold identical weights \(hash ([0-9a-f]{16})\) after step (\d+)`)

func launch(t *testing.T, args ...string) (out, hash string) {
	t.Helper()
	cmd := exec.Command(ringoBin, append([]string{"launch", "--nproc-per-node", "2"}, args...)...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	b, err := cmd.CombinedOutput()
	out = string(b)
	if err != nil {
		t.Fatalf("ringo launch: %v\n%s", err, out)
	}
	m := hashLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no identical-weights line:\n%s", out)
	}
	return out, m[1] + " at step " + m[2]
}

var resumedLine = regexp.MustCompile(`resumed from step (\d+)`)

// Two workers under the real launcher finish and agree. A run stopped
// mid-epoch and started again, and a run whose last rank crashes and is
// restarted by the launcher from its newest checkpoint, both end with the
// uninterrupted run's weights, bit for bit (and Adam's state with them):
// the checkpoint holds the optimiser and the data loader's position.
func TestLaunch(t *testing.T) {
	binaries(t)
	dir := t.TempDir()
	synthDataset(t, dir, 320, 100)
	args := func(ckpt string, extra ...string) []string {
		return append([]string{"--", mnistBin, "--data", dir, "--epochs", "2", "--batch", "16", "--eval-batch", "50",
			"--save-every", "4", "--verify-every", "3", "--ckpt", ckpt}, extra...)
	}

	out, want := launch(t, args(t.TempDir())...)
	for _, s := range []string{"epoch 1/2", "epoch 2/2", "checkpoint ", "final test accuracy"} {
		if !strings.Contains(out, s) {
			t.Errorf("no %q in the output:\n%s", s, out)
		}
	}
	if !strings.HasSuffix(want, "at step 40") {
		t.Errorf("%s: want step 40 (2 epochs of 320/16)", want)
	}
	t.Logf("uninterrupted:\n%s", out)

	t.Run("stop and start again", func(t *testing.T) {
		ckpt := t.TempDir()
		out, _ := launch(t, args(ckpt, "--max-steps", "27")...)
		if !strings.Contains(out, "stopped at step 27") {
			t.Errorf("no stop at step 27:\n%s", out)
		}
		out, got := launch(t, args(ckpt)...)
		if !strings.Contains(out, "resumed from step 27: epoch 2, 112 of its samples done") {
			t.Errorf("did not resume at step 27, 7 batches of 16 into epoch 2:\n%s", out)
		}
		if got != want {
			t.Errorf("stopped and resumed: weights hash %s; uninterrupted %s\n%s", got, want, out)
		}
	})

	t.Run("crash and restart", func(t *testing.T) {
		out, got := launch(t, append([]string{"--max-restarts", "1"}, args(t.TempDir(), "--crash-at-step", "35")...)...)
		m := resumedLine.FindStringSubmatch(out)
		if !strings.Contains(out, "crashing after step 35") || m == nil {
			t.Fatalf("the run did not crash at step 35 and resume:\n%s", out)
		}
		t.Logf("resumed from step %s", m[1])
		if got != want {
			t.Errorf("after a crash and a restart the weights hash %s; uninterrupted %s\n%s", got, want, out)
		}
	})
}

func TestDecodeDigit(t *testing.T) {
	img := make([]byte, pixels)
	img[0] = 255
	d, err := decodeDigit(shard.EncodeFields(map[string][]byte{"image": img, "label": {7}}))
	if err != nil || d.label != 7 || math.Abs(float64(d.x[0])-(1-pixMean)/pixStd) > 1e-6 || math.Abs(float64(d.x[1])+pixMean/pixStd) > 1e-6 {
		t.Fatalf("%v, label %d, pixels %v %v", err, d.label, d.x[0], d.x[1])
	}
	for _, rec := range []map[string][]byte{
		{"image": img[:100], "label": {1}},
		{"image": img, "label": {10}},
		{"image": img},
	} {
		if _, err := decodeDigit(shard.EncodeFields(rec)); err == nil {
			t.Errorf("record with image of %d bytes and label %v decoded", len(rec["image"]), rec["label"])
		}
	}
	if _, err := decodeDigit([]byte("not fields")); err == nil {
		t.Error("garbage decoded")
	}
}
