package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/device/cuda/cudatest"
)

// TestBenchDeviceCudaWithoutDriver: with no CUDA driver, --device cuda
// fails at once, saying so, before any worker starts.
func TestBenchDeviceCudaWithoutDriver(t *testing.T) {
	cmd := exec.Command(ringoBin, "bench", "allreduce", "--device", "cuda", "--np", "2")
	cmd.Env = append(cmd.Environ(), "RINGO_CUDA_LIBRARY=/nonexistent/libcuda.so.1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err == nil || !strings.Contains(string(out), "--device cuda: no CUDA driver found") || strings.Contains(string(out), "Rank") {
		t.Fatalf("err %v, output:\n%s\nwant a failure saying no CUDA driver was found, before any worker starts", err, out)
	}
	if took > time.Second {
		t.Errorf("failing took %v; want under a second", took)
	}
}

// TestBenchDeviceCudaStandIn runs every collective of the sweep on device
// memory of the stand-in driver (host memory behind the real driver API
// calls): results checked, stage shares reported.
func TestBenchDeviceCudaStandIn(t *testing.T) {
	env := []string{"RINGO_CUDA_LIBRARY=" + cudatest.FakeDriver(t)}
	for _, c := range []struct {
		op, dtype, redop string
		np               int
	}{
		{"allreduce", "float32", "sum", 3},
		{"allreduce", "bfloat16", "avg", 2},
		{"reducescatter", "float64", "max", 3},
		{"allgather", "float16", "sum", 2},
		{"broadcast", "int32", "sum", 3},
	} {
		t.Run(fmt.Sprintf("%s-%s-np%d", c.op, c.dtype, c.np), func(t *testing.T) {
			rows := runBenchJSONWithEnv(t, env, c.op, "--device", "cuda", "--np", fmt.Sprint(c.np), "--min-bytes", "0", "--max-bytes", "1M",
				"--factor", "8", "--iters", "2", "--warmup", "1", "--dtype", c.dtype, "--op", c.redop, "--stage-chunk", "64K", "--json")
			if len(rows) < 6 {
				t.Fatalf("%d rows, want one per size from 0 B to 1 MiB", len(rows))
			}
			for _, r := range rows {
				if r.Wrong != 0 || r.Device != "cuda" {
					t.Errorf("row %+v: want no wrong results, on device cuda", r)
				}
				if r.Bytes >= 64<<10 && (r.D2H <= 0 && c.op != "broadcast" || r.Wire <= 0 || r.H2D <= 0) {
					t.Errorf("row %+v: want the share of every stage", r)
				}
			}
		})
	}
	out, err := exec.Command(ringoBin, "bench", "allreduce", "--device", "tpu").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `--device "tpu": want host, window or cuda`) {
		t.Errorf("--device tpu: err %v, output %s", err, out)
	}
}

// TestBenchDeviceWindow: --device window over shared memory checks every
// collective's results with the buffers in shm windows, at sizes from
// below the lending threshold to above it (RINGO_LEND_BYTES=1M), so both
// the copying and the lending paths run.
func TestBenchDeviceWindow(t *testing.T) {
	for _, op := range []string{"allreduce", "reducescatter", "allgather", "broadcast"} {
		t.Run(op, func(t *testing.T) {
			rows := runBenchJSONWithEnv(t, []string{"RINGO_LEND_BYTES=1M"}, op, "--device", "window", "--transport", "shm", "--np", "3",
				"--min-bytes", "64K", "--max-bytes", "4M", "--factor", "4", "--iters", "2", "--warmup", "1", "--json")
			if len(rows) != 4 {
				t.Fatalf("%d rows, want one per size from 64 KiB to 4 MiB", len(rows))
			}
			for _, r := range rows {
				if r.Wrong != 0 {
					t.Errorf("row %+v: wrong results", r)
				}
			}
		})
	}
}
