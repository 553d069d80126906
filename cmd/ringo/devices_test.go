package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/device"
	"github.com/ringo-ml/ringo/device/cuda/cudatest"
)

// ringoDevices runs `ringo devices` and fails the test with a hint when
// main.go does not know the command yet.
func ringoDevices(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ringo(t, append([]string{"devices"}, args...)...)
	if strings.Contains(out, `unknown command "devices"`) {
		t.Fatalf("ringo devices is not registered: add {\"devices\", ..., runDevices} to subcommands() in main.go")
	}
	if err != nil {
		t.Fatalf("ringo devices %v: %v\n%s", args, err, out)
	}
	return out
}

// Whatever this machine has, the command succeeds and shows the CPUs, and
// either GPUs or why there are none.
func TestDevicesCommand(t *testing.T) {
	var inv device.Inventory
	if err := json.Unmarshal([]byte(ringoDevices(t, "--json")), &inv); err != nil {
		t.Fatalf("--json is not one inventory: %v", err)
	}
	if inv.CPU.Cores != runtime.NumCPU() {
		t.Errorf("--json: %d cores, want %d", inv.CPU.Cores, runtime.NumCPU())
	}
	if len(inv.GPUs) == 0 && inv.Driver == "" {
		t.Errorf("--json: no GPUs and no reason why: %+v", inv)
	}

	out := ringoDevices(t)
	if !strings.Contains(out, inv.Driver) || !strings.Contains(out, "CPU: ") || !strings.Contains(out, " logical CPUs") {
		t.Errorf("table lacks the driver line or the CPUs:\n%s", out)
	}
	if len(inv.GPUs) == 0 {
		if strings.Contains(out, "GPU0") {
			t.Errorf("no GPUs, yet the table shows some:\n%s", out)
		}
	} else if !strings.Contains(out, inv.GPUs[0].UUID) || !strings.Contains(out, "Topology") {
		t.Errorf("table lacks GPU 0 or the topology:\n%s", out)
	}
	for _, n := range inv.CPU.NUMA {
		if !strings.Contains(out, device.FormatCPUList(n.CPUs)) {
			t.Errorf("table lacks NUMA node %d's CPUs %v:\n%s", n.ID, n.CPUs, out)
		}
	}

	if out, err := ringo(t, "devices", "extra"); err == nil || !strings.Contains(out, `unexpected argument "extra"`) {
		t.Errorf("a stray argument was accepted: %v\n%s", err, out)
	}
	if out, err := ringo(t, "devices", "--watch", "-1s"); err == nil {
		t.Errorf("a negative --watch was accepted:\n%s", out)
	}
	if out := ringoDevices(t, "--help"); !strings.Contains(out, "Usage: ringo devices [--json] [--watch 1s]") {
		t.Errorf("--help:\n%s", out)
	}
}

// --watch refreshes until interrupted, then exits cleanly.
func TestDevicesWatch(t *testing.T) {
	ringoDevices(t, "--help") // fails with a hint when the command is missing
	cmd := exec.Command(ringoBin, "devices", "--watch", "20ms", "--json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for n := 0; n < 3; n++ {
		if !sc.Scan() {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("refresh %d never came: %v\n%s", n, sc.Err(), stderr.String())
		}
		var inv device.Inventory
		if err := json.Unmarshal(sc.Bytes(), &inv); err != nil || inv.CPU.Cores < 1 {
			t.Fatalf("refresh %d: %v: %s", n, err, sc.Bytes())
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	go io.Copy(io.Discard, stdout)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGINT: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("still running 10s after SIGINT")
	}
}

// mockInventory is a four-GPU machine: NVLink pairs 0-1 and 2-3, one
// link 0-2, two NUMA nodes, and GPU 3 a board that reports little.
func mockInventory() *device.Inventory {
	gpu := func(i int) device.GPU {
		return device.GPU{
			Sample: device.Sample{Index: i, UUID: "GPU-0000000" + string(rune('0'+i)), Utilization: 25 * i, MemoryUtilization: 3,
				MemoryUsed: int64(i) << 30, MemoryTotal: 80 << 30, TemperatureC: 40 + i, PowerW: 120.4 + float64(i),
				SMClockMHz: 1980, MemoryClockMHz: 2619},
			Name: "NVIDIA H100 80GB HBM3", BusID: "0000:" + string(rune('1'+i)) + "0:00.0", ComputeCapability: "9.0",
			PowerLimitW: 700, SMClockMaxMHz: 1980, MemoryClockMaxMHz: 2619, PCIeGen: 5, PCIeWidth: 16, PCIeMaxGen: 5, PCIeMaxWidth: 16, NUMANode: i / 2,
		}
	}
	link := func(n, remote int) device.NVLink {
		return device.NVLink{Link: n, Active: true, RemoteType: "gpu", RemoteGPU: remote}
	}
	down := device.NVLink{Link: 3, RemoteGPU: device.Unknown}
	inv := &device.Inventory{
		Driver: "NVIDIA driver 550.54.15, CUDA 12.4",
		GPUs:   []device.GPU{gpu(0), gpu(1), gpu(2), gpu(3)},
		CPU: device.CPU{Cores: 16, NUMA: []device.NUMANode{
			{ID: 0, CPUs: []int{0, 1, 2, 3, 8, 9, 10, 11}, MemoryTotal: 64 << 30},
			{ID: 1, CPUs: []int{4, 5, 6, 7, 12, 13, 14, 15}, MemoryTotal: device.Unknown},
		}},
		Warnings: []string{"GPU 4 skipped: GPU is lost"},
	}
	inv.GPUs[0].NVLinks = []device.NVLink{link(0, 1), link(1, 1), link(2, 2), down}
	inv.GPUs[1].NVLinks = []device.NVLink{link(0, 0), link(1, 0), down}
	inv.GPUs[2].NVLinks = []device.NVLink{link(0, 0), link(1, 3), link(2, 3), down}
	inv.GPUs[1].PCIeGen, inv.GPUs[1].SMClockMHz = 1, 345 // idle
	g3 := &inv.GPUs[3]
	g3.Name, g3.PowerW, g3.PowerLimitW, g3.TemperatureC, g3.NUMANode = "NVIDIA A2", device.Unknown, device.Unknown, device.Unknown, device.Unknown
	g3.PCIeMaxGen, g3.PCIeMaxWidth = device.Unknown, device.Unknown
	g3.SMClockMHz, g3.MemoryClockMHz, g3.SMClockMaxMHz, g3.MemoryClockMaxMHz = device.Unknown, device.Unknown, device.Unknown, device.Unknown
	g3.ComputeCapability, g3.MemoryTotal = "", device.Unknown
	g3.NVLinks = []device.NVLink{link(0, 2), link(1, 2)}
	X, S, Y := device.LevelSelf, device.LevelSingle, device.LevelSystem
	U := device.LevelUnknown
	inv.Ancestor = [][]device.Level{{X, S, Y, Y}, {S, X, Y, U}, {Y, Y, X, S}, {Y, U, S, X}}
	OK, CNS, NS := device.P2POK, device.P2PChipsetNotSupported, device.P2PNotSupported
	inv.P2P = [][]device.P2PStatus{{"X", OK, OK, CNS}, {OK, "X", CNS, CNS}, {OK, CNS, "X", OK}, {CNS, CNS, OK, "X"}}
	inv.NVLinkP2P = [][]device.P2PStatus{{"X", OK, OK, NS}, {OK, "X", NS, NS}, {OK, NS, "X", OK}, {NS, NS, OK, "X"}}
	return inv
}

func TestRenderDevices(t *testing.T) {
	var b strings.Builder
	renderDevices(&b, mockInventory())
	want := `NVIDIA driver 550.54.15, CUDA 12.4: 4 GPUs
GPU  NAME                   CC   MEMORY              UTIL  TEMP  POWER        CLOCKS SM/MEM MHZ    PCIE                     NUMA  NVLINK  BUS           UUID
0    NVIDIA H100 80GB HBM3  9.0  0 B / 80.0 GiB      0%    40C   120 / 700 W  1980/1980 2619/2619  Gen5 x16                 0     3/4 up  0000:10:00.0  GPU-00000000
1    NVIDIA H100 80GB HBM3  9.0  1.0 GiB / 80.0 GiB  25%   41C   121 / 700 W  345/1980 2619/2619   Gen1 x16 (max Gen5 x16)  0     2/3 up  0000:20:00.0  GPU-00000001
2    NVIDIA H100 80GB HBM3  9.0  2.0 GiB / 80.0 GiB  50%   42C   122 / 700 W  1980/1980 2619/2619  Gen5 x16                 1     3/4 up  0000:30:00.0  GPU-00000002
3    NVIDIA A2              -    -                   75%   -     -            -/- -/-              Gen5 x16                 -     2/2 up  0000:40:00.0  GPU-00000003
warning: GPU 4 skipped: GPU is lost

Topology: NV# = # NVLinks, else the closest common ancestor (PIX, PXB, PHB, NODE, SYS; ? unknown)
      GPU0  GPU1  GPU2  GPU3  CPUS       NUMA
GPU0  X     NV2   NV1   SYS   0-3,8-11   0
GPU1  NV2   X     SYS   ?     0-3,8-11   0
GPU2  NV1   SYS   X     NV2   4-7,12-15  1
GPU3  SYS   ?     NV2   X     -          -

Peer-to-peer reads: OK; CNS, GNS, TNS, NS = chipset, GPU, topology, not supported; DIS disabled; U unknown
      GPU0         GPU1         GPU2         GPU3
GPU0  X            OK (NVLink)  OK (NVLink)  CNS
GPU1  OK (NVLink)  X            CNS          CNS
GPU2  OK (NVLink)  CNS          X            OK (NVLink)
GPU3  CNS          CNS          OK (NVLink)  X

CPU: 16 logical CPUs
NUMA  CPUS       MEMORY
0     0-3,8-11   64.0 GiB
1     4-7,12-15  -
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderNoGPU(t *testing.T) {
	var b strings.Builder
	renderDevices(&b, &device.Inventory{
		Driver: "no NVIDIA driver: libnvidia-ml.so.1 not found",
		GPUs:   []device.GPU{},
		CPU:    device.CPU{Cores: 2, NUMA: []device.NUMANode{{ID: 0, CPUs: []int{0, 1}, MemoryTotal: 8 << 30}}},
	})
	want := `no NVIDIA driver: libnvidia-ml.so.1 not found
CPU: 2 logical CPUs
NUMA  CPUS  MEMORY
0     0-1   8.0 GiB
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestDevicesCUDA: the devices the CUDA driver lets this process use,
// from the stand-in driver library, in the table and the JSON; without a
// driver, the reason.
func TestDevicesCUDA(t *testing.T) {
	cmd := exec.Command(ringoBin, "devices")
	cmd.Env = append(cmd.Environ(), "RINGO_CUDA_LIBRARY=/nonexistent/libcuda.so.1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CUDA: no CUDA driver found: loading /nonexistent/libcuda.so.1") {
		t.Errorf("without a driver: %v\n%s", err, out)
	}
	env := []string{"RINGO_CUDA_LIBRARY=" + cudatest.FakeDriver(t), "FAKECUDA_DEVICES=2"}
	cmd = exec.Command(ringoBin, "devices")
	cmd.Env = append(cmd.Environ(), env...)
	out, err = cmd.CombinedOutput()
	for _, want := range []string{"CUDA 12.4 (", "2 devices visible to this process", "GPU-00102030-4050-6070-8090-a0b0c0d0e0f0", "GPU-01112131-4151-6171-8191-a1b1c1d1e1f1"} {
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("with the stand-in driver: %v; output lacks %q:\n%s", err, want, out)
		}
	}
	cmd = exec.Command(ringoBin, "devices", "--json")
	cmd.Env = append(cmd.Environ(), env...)
	out, err = cmd.Output()
	var v struct {
		CPU  device.CPU `json:"cpu"`
		CUDA struct {
			Version string
			Devices []struct {
				Ordinal     int    `json:"ordinal"`
				UUID        string `json:"uuid"`
				MemoryTotal int64  `json:"memory_total_bytes"`
			}
		} `json:"cuda"`
	}
	if err != nil || json.Unmarshal(out, &v) != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if v.CPU.Cores < 1 || v.CUDA.Version != "12.4" || len(v.CUDA.Devices) != 2 || v.CUDA.Devices[1].Ordinal != 1 || v.CUDA.Devices[1].MemoryTotal != 1<<30 {
		t.Errorf("--json: %+v", v)
	}
}
