package device

import "fmt"

// Unknown is the value of a numeric field that NVML could not report
// (not supported on this board, no permission, driver too old). The reason
// is in GPU.Unknown under the field's name.
const Unknown = -1

// Inventory is what Discover found on this machine.
type Inventory struct {
	// Driver says which NVIDIA driver is in use ("NVIDIA driver 550.54.15,
	// CUDA 12.4") or why there are no GPUs ("no NVIDIA driver:
	// libnvidia-ml.so.1 not found").
	Driver        string `json:"driver"`
	DriverVersion string `json:"driver_version,omitempty"`
	CUDAVersion   string `json:"cuda_version,omitempty"` // newest CUDA the driver supports, "12.4"
	// GPUs in NVML index order. Empty without a driver.
	GPUs []GPU `json:"gpus"`
	// Matrices between GPUs, indexed by position in GPUs; the diagonal is
	// P2PSelf / LevelSelf. Nil when there are no GPUs.
	P2P       [][]P2PStatus `json:"p2p,omitempty"`        // peer-to-peer reads (over PCIe or NVLink)
	NVLinkP2P [][]P2PStatus `json:"p2p_nvlink,omitempty"` // peer-to-peer over NVLink
	Ancestor  [][]Level     `json:"ancestor,omitempty"`   // closest common ancestor in the PCIe/CPU tree
	CPU       CPU           `json:"cpu"`
	// Warnings name GPUs that NVML lists but could not open; they are not
	// in GPUs.
	Warnings []string `json:"warnings,omitempty"`
}

// Sample is one GPU's telemetry at one moment. Fields NVML cannot report
// are Unknown.
type Sample struct {
	Index             int     `json:"index"` // NVML index (nvidia-smi's GPU number)
	UUID              string  `json:"uuid"`
	Utilization       int     `json:"utilization_pct"`        // % of time a kernel ran
	MemoryUtilization int     `json:"memory_utilization_pct"` // % of time memory was read or written
	MemoryUsed        int64   `json:"memory_used_bytes"`
	MemoryTotal       int64   `json:"memory_total_bytes"`
	TemperatureC      int     `json:"temperature_c"`
	PowerW            float64 `json:"power_w"`
	SMClockMHz        int     `json:"sm_clock_mhz"`     // streaming multiprocessors, now
	MemoryClockMHz    int     `json:"memory_clock_mhz"` // now
}

// GPU is one GPU: its telemetry at discovery (the embedded Sample, which
// also carries Index and UUID) and the facts that do not change.
type GPU struct {
	Sample
	Name              string  `json:"name"`
	BusID             string  `json:"bus_id"`             // PCI address as in sysfs and lspci, "0000:07:00.0"
	ComputeCapability string  `json:"compute_capability"` // "9.0"; "" when unknown
	PowerLimitW       float64 `json:"power_limit_w"`
	SMClockMaxMHz     int     `json:"sm_clock_max_mhz"`
	MemoryClockMaxMHz int     `json:"memory_clock_max_mhz"`
	PCIeGen           int     `json:"pcie_gen"` // current; drops when the GPU idles
	PCIeWidth         int     `json:"pcie_width"`
	PCIeMaxGen        int     `json:"pcie_max_gen"`
	PCIeMaxWidth      int     `json:"pcie_max_width"`
	NUMANode          int     `json:"numa_node"` // Unknown when the machine has no NUMA or NVML and sysfs do not say
	// NVLinks holds every link NVML answered for; nil on PCIe-only GPUs.
	NVLinks []NVLink `json:"nvlinks,omitempty"`
	// Unknown maps a field that NVML could not report ("power",
	// "nvlink", "numa_node", ...) to the reason ("not supported").
	Unknown map[string]string `json:"unknown,omitempty"`
}

// NVLink is one NVLink of a GPU.
type NVLink struct {
	Link        int    `json:"link"`
	Active      bool   `json:"active"`
	RemoteBusID string `json:"remote_bus_id,omitempty"` // of the GPU or NVSwitch at the other end
	RemoteType  string `json:"remote_type,omitempty"`   // "gpu", "switch", "ibmnpu"; "" unknown
	RemoteGPU   int    `json:"remote_gpu"`              // position in Inventory.GPUs, or Unknown
}

// CPU describes the host's processors, the slots of a job without GPUs.
type CPU struct {
	Cores int        `json:"cores"`          // logical CPUs this process may run on (its affinity mask)
	NUMA  []NUMANode `json:"numa,omitempty"` // from /sys/devices/system/node; empty when not exposed
}

// NUMANode is one NUMA node.
type NUMANode struct {
	ID          int   `json:"id"`
	CPUs        []int `json:"cpus"`
	MemoryTotal int64 `json:"memory_total_bytes"` // Unknown when not exposed
}

// NVLinks counts the NVLinks that join GPUs i and j (positions in GPUs):
// links from i straight to j, or, when there are none and both GPUs have
// active links to NVSwitches, the smaller of their switch-link counts (as
// nvidia-smi topo -m reports NV18 between GPUs of a DGX H100).
func (inv *Inventory) NVLinks(i, j int) int {
	if i == j || i < 0 || j < 0 || i >= len(inv.GPUs) || j >= len(inv.GPUs) {
		return 0
	}
	direct := 0
	for _, l := range inv.GPUs[i].NVLinks {
		if l.Active && l.RemoteGPU == j {
			direct++
		}
	}
	if direct > 0 {
		return direct
	}
	return min(switchLinks(inv.GPUs[i]), switchLinks(inv.GPUs[j]))
}

func switchLinks(g GPU) int {
	n := 0
	for _, l := range g.NVLinks {
		if l.Active && l.RemoteType == "switch" {
			n++
		}
	}
	return n
}

// P2PStatus is whether one GPU can read another's memory directly, in
// nvidia-smi topo -p2p's words.
type P2PStatus string

const (
	P2PSelf                 P2PStatus = "X"
	P2POK                   P2PStatus = "OK"
	P2PChipsetNotSupported  P2PStatus = "CNS"
	P2PGPUNotSupported      P2PStatus = "GNS"
	P2PTopologyNotSupported P2PStatus = "TNS"
	P2PDisabled             P2PStatus = "DIS" // disabled by a driver registry key
	P2PNotSupported         P2PStatus = "NS"
	P2PUnknown              P2PStatus = "U" // NVML says unknown, or the query failed
)

// Level is the closest common ancestor of two GPUs in the PCIe and CPU
// tree, as in nvidia-smi topo -m. Larger is farther; LevelUnknown is the
// zero value and means the query failed.
type Level int

const (
	LevelUnknown Level = iota
	LevelSelf
	LevelBoard      // both on one board (multi-GPU cards)
	LevelSingle     // PIX: at most one PCIe bridge
	LevelMultiple   // PXB: several PCIe bridges, no host bridge
	LevelHostBridge // PHB: a PCIe host bridge
	LevelNode       // NODE: host bridges within one NUMA node
	LevelSystem     // SYS: across NUMA nodes (the SMP interconnect)
)

var levelNames = [...]string{"?", "X", "BOARD", "PIX", "PXB", "PHB", "NODE", "SYS"}

func (l Level) String() string {
	if l < 0 || int(l) >= len(levelNames) {
		return fmt.Sprintf("Level(%d)", int(l))
	}
	return levelNames[l]
}

// MarshalText writes the nvidia-smi abbreviation, so JSON holds "PIX".
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (l *Level) UnmarshalText(b []byte) error {
	for i, name := range levelNames {
		if name == string(b) {
			*l = Level(i)
			return nil
		}
	}
	return fmt.Errorf("device: unknown topology level %q", b)
}
