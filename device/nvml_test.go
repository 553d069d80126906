package device

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Four GPUs on two NUMA nodes, NVLink pairs 0-1 and 2-3 (two links each)
// and one link 0-2; six links per GPU, the rest down.
func fourGPUs() machine {
	return machine{
		n: 4, links: 6,
		nvlink: map[[2]int]int{{0, 1}: 2, {2, 3}: 2, {0, 2}: 1},
		numa:   func(i int) int { return i / 2 },
		ancestor: func(i, j int) nvml.GpuTopologyLevel {
			if i/2 == j/2 {
				return nvml.TOPOLOGY_SINGLE
			}
			return nvml.TOPOLOGY_SYSTEM
		},
		p2p: func(i, j int) nvml.GpuP2PStatus {
			if i/2 != j/2 && (i|j)&1 == 1 { // 1-2, 1-3, 0-3: across sockets, no NVLink
				return nvml.P2P_STATUS_CHIPSET_NOT_SUPPORTED
			}
			return nvml.P2P_STATUS_OK
		},
	}
}

func TestDiscoverFourGPUs(t *testing.T) {
	inv, err := discover(fourGPUs().build(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Driver != "NVIDIA driver 550.54.15, CUDA 12.4" || inv.DriverVersion != "550.54.15" || inv.CUDAVersion != "12.4" {
		t.Errorf("driver %q %q %q", inv.Driver, inv.DriverVersion, inv.CUDAVersion)
	}
	if len(inv.GPUs) != 4 {
		t.Fatalf("%d GPUs, want 4", len(inv.GPUs))
	}
	g := inv.GPUs[2]
	if g.Index != 2 || !strings.HasPrefix(g.UUID, "GPU-") || g.Name != "NVIDIA H100 80GB HBM3" || g.ComputeCapability != "9.0" {
		t.Errorf("GPU 2 identity: %+v", g)
	}
	want := Sample{Index: 2, UUID: g.UUID, Utilization: 20, MemoryUtilization: 10,
		MemoryUsed: 3 << 30, MemoryTotal: 80 << 30, TemperatureC: 42, PowerW: 103, SMClockMHz: 1020, MemoryClockMHz: 2619}
	if g.Sample != want {
		t.Errorf("GPU 2 telemetry %+v, want %+v", g.Sample, want)
	}
	if g.SMClockMaxMHz != 1980 || g.MemoryClockMaxMHz != 2619 {
		t.Errorf("GPU 2 maximum clocks %d and %d MHz, want 1980 and 2619", g.SMClockMaxMHz, g.MemoryClockMaxMHz)
	}
	if g.BusID != "0000:30:00.0" || g.PowerLimitW != 700 || g.PCIeGen != 5 || g.PCIeWidth != 16 ||
		g.PCIeMaxGen != 5 || g.PCIeMaxWidth != 16 || g.NUMANode != 1 || g.Unknown != nil {
		t.Errorf("GPU 2: %+v", g)
	}
	if len(g.NVLinks) != 6 {
		t.Fatalf("GPU 2 has %d links, want 6: %+v", len(g.NVLinks), g.NVLinks)
	}
	// GPU 2's links: first to 0, then two to 3, the rest down.
	wantLinks := []NVLink{
		{0, true, "0000:10:00.0", "gpu", 0},
		{1, true, "0000:40:00.0", "gpu", 3},
		{2, true, "0000:40:00.0", "gpu", 3},
		{3, false, "", "", Unknown},
		{4, false, "", "", Unknown},
		{5, false, "", "", Unknown},
	}
	if !reflect.DeepEqual(g.NVLinks, wantLinks) {
		t.Errorf("GPU 2 links:\n got %+v\nwant %+v", g.NVLinks, wantLinks)
	}
	nv := [][]int{{0, 2, 1, 0}, {2, 0, 0, 0}, {1, 0, 0, 2}, {0, 0, 2, 0}}
	for i := range 4 {
		for j := range 4 {
			if got := inv.NVLinks(i, j); got != nv[i][j] {
				t.Errorf("NVLinks(%d, %d) = %d, want %d", i, j, got, nv[i][j])
			}
		}
	}
	S, X, Y, OK, CNS, NS := LevelSingle, LevelSelf, LevelSystem, P2POK, P2PChipsetNotSupported, P2PNotSupported
	if want := [][]Level{{X, S, Y, Y}, {S, X, Y, Y}, {Y, Y, X, S}, {Y, Y, S, X}}; !reflect.DeepEqual(inv.Ancestor, want) {
		t.Errorf("ancestor %v, want %v", inv.Ancestor, want)
	}
	if want := [][]P2PStatus{{"X", OK, OK, CNS}, {OK, "X", CNS, CNS}, {OK, CNS, "X", OK}, {CNS, CNS, OK, "X"}}; !reflect.DeepEqual(inv.P2P, want) {
		t.Errorf("p2p %v, want %v", inv.P2P, want)
	}
	if want := [][]P2PStatus{{"X", OK, OK, NS}, {OK, "X", NS, NS}, {OK, NS, "X", OK}, {NS, NS, OK, "X"}}; !reflect.DeepEqual(inv.NVLinkP2P, want) {
		t.Errorf("p2p over NVLink %v, want %v", inv.NVLinkP2P, want)
	}

	// JSON round trip, with levels as nvidia-smi's words.
	b, err := json.Marshal(inv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"ancestor":[["X","PIX","SYS","SYS"]`) {
		t.Errorf("JSON ancestor not in nvidia-smi terms: %s", b)
	}
	var back Inventory
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, inv) {
		t.Errorf("JSON round trip differs:\n got %+v\nwant %+v", back, *inv)
	}
}

// A DGX-like machine: eight GPUs, all 18 links to NVSwitches.
func TestDiscoverNVSwitch(t *testing.T) {
	m := machine{n: 8, links: 18, toSwitch: true, numa: func(i int) int { return i / 4 },
		ancestor: func(i, j int) nvml.GpuTopologyLevel {
			if i/4 == j/4 {
				return nvml.TOPOLOGY_NODE
			}
			return nvml.TOPOLOGY_SYSTEM
		}}
	inv, err := discover(m.build(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.GPUs) != 8 {
		t.Fatalf("%d GPUs", len(inv.GPUs))
	}
	for i := range 8 {
		for j := range 8 {
			want := 18
			if i == j {
				want = 0
			}
			if got := inv.NVLinks(i, j); got != want {
				t.Fatalf("NVLinks(%d, %d) = %d, want %d", i, j, got, want)
			}
		}
	}
	if l := inv.GPUs[5].NVLinks[3]; l.RemoteType != "switch" || l.RemoteGPU != Unknown || l.RemoteBusID != "0000:c3:00.0" {
		t.Errorf("link to a switch: %+v", l)
	}
	if inv.Ancestor[1][6] != LevelSystem || inv.Ancestor[1][2] != LevelNode || inv.GPUs[6].NUMANode != 1 {
		t.Errorf("ancestor 1-6 %v, 1-2 %v, numa of 6 %d", inv.Ancestor[1][6], inv.Ancestor[1][2], inv.GPUs[6].NUMANode)
	}
}

// PCIe cards whose boards and driver leave much unsupported: the fields
// are Unknown with reasons, NUMA comes from sysfs, and nothing fails.
func TestDiscoverUnsupportedFields(t *testing.T) {
	m := machine{n: 2, unsupported: map[string]bool{"power": true, "power_limit": true, "numa": true, "pcie_max": true, "temperature": true, "clocks": true}}
	sys := t.TempDir()
	dev := filepath.Join(sys, "bus/pci/devices/0000:20:00.0")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "numa_node"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, err := discover(m.build(), sys)
	if err != nil {
		t.Fatal(err)
	}
	g0, g1 := inv.GPUs[0], inv.GPUs[1]
	if g0.PowerW != Unknown || g0.PowerLimitW != Unknown || g0.TemperatureC != Unknown ||
		g0.PCIeMaxGen != Unknown || g0.PCIeMaxWidth != Unknown || g0.NUMANode != Unknown || g0.NVLinks != nil ||
		g0.SMClockMHz != Unknown || g0.MemoryClockMHz != Unknown || g0.SMClockMaxMHz != Unknown || g0.MemoryClockMaxMHz != Unknown {
		t.Errorf("GPU 0 should have unknowns: %+v", g0)
	}
	if g0.PCIeGen != 5 || g0.MemoryTotal != 80<<30 || g0.Utilization != 0 {
		t.Errorf("GPU 0 lost supported fields: %+v", g0)
	}
	for _, f := range []string{"power", "power_limit", "temperature", "pcie_max_gen", "pcie_max_width", "numa_node", "nvlink", "sm_clock", "memory_clock", "sm_clock_max", "memory_clock_max"} {
		if g0.Unknown[f] != "not supported" {
			t.Errorf("GPU 0 Unknown[%q] = %q, want \"not supported\" (all: %v)", f, g0.Unknown[f], g0.Unknown)
		}
	}
	if g1.NUMANode != 1 {
		t.Errorf("GPU 1 NUMA node %d, want 1 from sysfs", g1.NUMANode)
	}
	if _, ok := g1.Unknown["numa_node"]; ok {
		t.Errorf("GPU 1 NUMA node came from sysfs but is listed unknown: %v", g1.Unknown)
	}
	if inv.Ancestor[0][1] != LevelUnknown || inv.Ancestor[1][0] != LevelUnknown || inv.NVLinks(0, 1) != 0 {
		t.Errorf("ancestor %v, NVLinks %d", inv.Ancestor, inv.NVLinks(0, 1))
	}
}

// When Init fails, nothing else is called: the mock has no other
// function, so any other call would panic.
func TestDiscoverWithoutDriver(t *testing.T) {
	for ret, want := range map[nvml.Return]string{
		nvml.ERROR_LIBRARY_NOT_FOUND:       "no NVIDIA driver: libnvidia-ml.so.1 not found",
		nvml.ERROR_DRIVER_NOT_LOADED:       "no NVIDIA driver: the nvidia kernel module is not loaded",
		nvml.ERROR_LIB_RM_VERSION_MISMATCH: "NVIDIA driver unusable: libnvidia-ml.so.1 and the kernel module differ",
		nvml.ERROR_UNKNOWN:                 "NVIDIA driver unusable: NVML init: unknown error",
	} {
		lib := &mock.Interface{InitFunc: func() nvml.Return { return ret }}
		inv, err := DiscoverFrom(lib)
		if err != nil {
			t.Fatalf("%v: %v", ret, err)
		}
		if !strings.HasPrefix(inv.Driver, want) || len(inv.GPUs) != 0 || inv.GPUs == nil || inv.P2P != nil {
			t.Errorf("%v: %+v", ret, inv)
		}
		if inv.CPU.Cores != runtime.NumCPU() {
			t.Errorf("%v: %d cores, want %d", ret, inv.CPU.Cores, runtime.NumCPU())
		}
		h, err := OpenLib(lib)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := h.Sample(); err != nil || len(s) != 0 {
			t.Errorf("Sample without a driver: %v, %v", s, err)
		}
		if err := h.Close(); err != nil {
			t.Error(err)
		}
	}
}

// On this machine, whatever it has: no error, the CPU, and either GPUs or
// the reason there are none.
func TestDiscoverHere(t *testing.T) {
	inv, err := Discover()
	if err != nil {
		t.Fatal(err)
	}
	if inv.CPU.Cores != runtime.NumCPU() || inv.CPU.Cores < 1 {
		t.Errorf("cores %d, want %d", inv.CPU.Cores, runtime.NumCPU())
	}
	if _, err := os.Stat("/sys/devices/system/node/node0"); err == nil && len(inv.CPU.NUMA) == 0 {
		t.Errorf("sysfs has NUMA node 0 but the inventory has no NUMA nodes")
	}
	if len(inv.GPUs) == 0 && inv.Driver == "" {
		t.Errorf("no GPUs and no reason why")
	}
	t.Logf("driver: %s; %d GPUs; %d cores; NUMA %+v", inv.Driver, len(inv.GPUs), inv.CPU.Cores, inv.CPU.NUMA)
}

// An older driver lacks some functions: they are looked up first and
// never called (the mock would panic on a nil function), and the fields
// read "not in this driver version".
func TestDiscoverOldDriver(t *testing.T) {
	s := fourGPUs().build()
	lacks := map[string]bool{"nvmlDeviceGetNumaNodeId": true, "nvmlDeviceGetNvLinkRemoteDeviceType": true, "nvmlSystemGetCudaDriverVersion": true}
	s.LookupSymbolFunc = func(sym string) error {
		if lacks[sym] {
			return errors.New("undefined symbol: " + sym)
		}
		return nil
	}
	s.SystemGetCudaDriverVersionFunc = nil
	for _, d := range s.Devices {
		d.(*server.Device).GetNumaNodeIdFunc = nil
		d.(*server.Device).GetNvLinkRemoteDeviceTypeFunc = nil
	}
	inv, err := discover(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Driver != "NVIDIA driver 550.54.15" || inv.CUDAVersion != "" {
		t.Errorf("driver %q, CUDA %q", inv.Driver, inv.CUDAVersion)
	}
	g := inv.GPUs[0]
	if g.NUMANode != Unknown || g.Unknown["numa_node"] != "not in this driver version" || g.NVLinks[0].RemoteType != "" || inv.NVLinks(0, 1) != 2 {
		t.Errorf("GPU 0: NUMA %d, unknown %v, links %+v", g.NUMANode, g.Unknown, g.NVLinks)
	}
}

func TestOpenCountFails(t *testing.T) {
	s := fourGPUs().build()
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	if _, err := DiscoverFrom(s); err == nil || !strings.Contains(err.Error(), "cannot count GPUs: unknown error") {
		t.Errorf("got %v", err)
	}
	if n := len(s.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times after a failed open, want 1", n)
	}
}

func TestOpenSkipsLostGPU(t *testing.T) {
	s := fourGPUs().build()
	get := s.DeviceGetHandleByIndexFunc
	s.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i == 1 {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return get(i)
	}
	inv, err := DiscoverFrom(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.GPUs) != 3 || inv.GPUs[1].Index != 2 || len(inv.Warnings) != 1 || inv.Warnings[0] != "GPU 1 skipped: GPU is lost" {
		t.Errorf("GPUs %d, second is index %d, warnings %q", len(inv.GPUs), inv.GPUs[1].Index, inv.Warnings)
	}
	// GPU 0's links to the lost GPU 1 name no GPU; the one to GPU 2 names position 1.
	if l := inv.GPUs[0].NVLinks; l[0].RemoteGPU != Unknown || l[2].RemoteGPU != 1 || inv.NVLinks(0, 1) != 1 {
		t.Errorf("links of GPU 0: %+v", l)
	}
}

func TestHostClosed(t *testing.T) {
	s := fourGPUs().build()
	h, err := OpenLib(s)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := h.Sample()
	if err != nil || len(samples) != 4 || samples[3].PowerW != 104.5 || samples[3].Index != 3 {
		t.Fatalf("Sample: %+v, %v", samples, err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	calls := len(s.Devices[0].(interface{ GetMemoryInfoCalls() []struct{} }).GetMemoryInfoCalls())
	if _, err := h.Sample(); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample after Close: %v", err)
	}
	if _, err := h.Inventory(); !errors.Is(err, ErrClosed) {
		t.Errorf("Inventory after Close: %v", err)
	}
	if n := len(s.Devices[0].(interface{ GetMemoryInfoCalls() []struct{} }).GetMemoryInfoCalls()); n != calls {
		t.Errorf("NVML called after Shutdown")
	}
	if err := h.Close(); err != nil || len(s.ShutdownCalls()) != 1 {
		t.Errorf("second Close: %v, %d Shutdowns", err, len(s.ShutdownCalls()))
	}
}

func TestLevelText(t *testing.T) {
	for l := LevelUnknown; l <= LevelSystem; l++ {
		b, _ := l.MarshalText()
		var back Level
		if err := back.UnmarshalText(b); err != nil || back != l {
			t.Errorf("%v: %q -> %v, %v", l, b, back, err)
		}
	}
	var l Level
	if err := l.UnmarshalText([]byte("NV4")); err == nil {
		t.Error("NV4 is not a level")
	}
}
