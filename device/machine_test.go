package device

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// machine describes a fake multi-GPU host; build turns it into go-nvml's
// mock server (dgxh100) with the calls that server leaves out filled in.
type machine struct {
	n     int
	links int // NVLinks per GPU; 0 for PCIe cards (NVLink not supported)
	// nvlink[[2]int{i, j}] is how many of i's links go to GPU j (i < j;
	// the mirror is implied). Unlisted links are down, or, with
	// toSwitch, go to an NVSwitch.
	nvlink   map[[2]int]int
	toSwitch bool
	numa     func(i int) int // GPU i's NUMA node
	ancestor func(i, j int) nvml.GpuTopologyLevel
	p2p      func(i, j int) nvml.GpuP2PStatus
	// unsupported fields answer ERROR_NOT_SUPPORTED on every GPU:
	// "power", "power_limit", "numa", "pcie_max", "temperature".
	unsupported map[string]bool
}

func bus(i int) nvml.PciInfo {
	p := nvml.PciInfo{Domain: 0, Bus: uint32(0x10 + 0x10*i), Device: 0}
	for k, c := range fmt.Sprintf("00000000:%02X:00.0", p.Bus) {
		p.BusId[k] = int8(c)
	}
	return p
}

func switchBus(k int) nvml.PciInfo { return nvml.PciInfo{Domain: 0, Bus: uint32(0xc0 + k)} }

func (m machine) build() *server.Server {
	s := dgxh100.NewWithGPUs(gpus.Multiple(m.n, gpus.H100_SXM5_80GB)...)
	ret := func(field string) nvml.Return {
		if m.unsupported[field] {
			return nvml.ERROR_NOT_SUPPORTED
		}
		return nvml.SUCCESS
	}
	// peer[i][l] is the GPU at the far end of GPU i's link l, -1 for none.
	peer := make([][]int, m.n)
	for i := range peer {
		peer[i] = make([]int, m.links)
		for l := range peer[i] {
			peer[i][l] = -1
		}
	}
	next := make([]int, m.n)
	for i := 0; i < m.n; i++ {
		for j := i + 1; j < m.n; j++ {
			for range m.nvlink[[2]int{i, j}] {
				peer[i][next[i]], peer[j][next[j]] = j, i
				next[i]++
				next[j]++
			}
		}
	}
	index := func(d nvml.Device) int { return d.(*server.Device).Index }
	for i, dev := range s.Devices {
		d := dev.(*server.Device)
		d.MemoryInfo.Used = uint64(i+1) << 30
		d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return bus(i), nvml.SUCCESS }
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i), Memory: uint32(5 * i)}, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			return uint32(40 + i), ret("temperature")
		}
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(100000 + 1500*i), ret("power") }
		d.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 700000, ret("power_limit") }
		d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
			if c == nvml.CLOCK_MEM {
				return 2619, ret("clocks")
			}
			return uint32(1000 + 10*i), ret("clocks")
		}
		d.GetMaxClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
			if c == nvml.CLOCK_MEM {
				return 2619, ret("clocks")
			}
			return 1980, ret("clocks")
		}
		d.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 5, nvml.SUCCESS }
		d.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
		d.GetMaxPcieLinkGenerationFunc = func() (int, nvml.Return) { return 5, ret("pcie_max") }
		d.GetMaxPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, ret("pcie_max") }
		d.GetNumaNodeIdFunc = func() (int, nvml.Return) {
			if m.numa == nil {
				return 0, ret("numa")
			}
			return m.numa(i), ret("numa")
		}
		d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
			switch {
			case m.links == 0:
				return 0, nvml.ERROR_NOT_SUPPORTED
			case l >= m.links:
				return 0, nvml.ERROR_INVALID_ARGUMENT
			case peer[i][l] >= 0 || m.toSwitch:
				return nvml.FEATURE_ENABLED, nvml.SUCCESS
			}
			return nvml.FEATURE_DISABLED, nvml.SUCCESS
		}
		d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
			if p := peer[i][l]; p >= 0 {
				return bus(p), nvml.SUCCESS
			}
			return switchBus(l % 4), nvml.SUCCESS
		}
		d.GetNvLinkRemoteDeviceTypeFunc = func(l int) (nvml.IntNvLinkDeviceType, nvml.Return) {
			if peer[i][l] >= 0 {
				return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
			}
			return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
		}
		d.GetP2PStatusFunc = func(other nvml.Device, caps nvml.GpuP2PCapsIndex) (nvml.GpuP2PStatus, nvml.Return) {
			j := index(other)
			if caps == nvml.P2P_CAPS_INDEX_NVLINK {
				if m.toSwitch || m.nvlink[[2]int{min(i, j), max(i, j)}] > 0 {
					return nvml.P2P_STATUS_OK, nvml.SUCCESS
				}
				return nvml.P2P_STATUS_NOT_SUPPORTED, nvml.SUCCESS
			}
			if m.p2p == nil {
				return nvml.P2P_STATUS_OK, nvml.SUCCESS
			}
			return m.p2p(i, j), nvml.SUCCESS
		}
		d.GetTopologyCommonAncestorFunc = func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
			if m.ancestor == nil {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return m.ancestor(i, index(other)), nvml.SUCCESS
		}
	}
	return s
}
