package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrClosed is returned by a Host's methods after Close.
var ErrClosed = errors.New("device: host is closed")

// libMu guards every NVML call. go-nvml rewrites package variables (its
// versioned symbols) in Init and Shutdown, so those take it for writing
// and every other call for reading. It also makes "no call without a
// successful Init" checkable: Host.lib is non-nil exactly while Init has
// succeeded and Shutdown has not run, and it is only read under libMu.
var libMu sync.RWMutex

// Host is this machine's devices, held open: the NVML library while there
// is a driver (Init has succeeded and Close has not run), the CPU alone
// when there is none. Its methods are safe for concurrent use.
type Host struct {
	lib      nvml.Interface // nil without a driver or after Close
	closed   bool
	gpus     []handle
	driver   string
	drvVer   string
	cudaVer  string
	warnings []string
	missing  map[string]bool // NVML functions this driver lacks
	sys      string          // sysfs root, "/sys" except in tests
}

type handle struct {
	dev     nvml.Device
	index   int
	uuid    string
	uuidRet nvml.Return
}

// Open opens the NVIDIA driver through libnvidia-ml.so.1. Without a driver
// it returns a Host with no GPUs whose Driver says why, not an error; it
// fails only when the driver loads but cannot count its GPUs. Close it.
func Open() (*Host, error) { return open(nvml.New(), "/sys") }

// OpenLib is Open over any NVML implementation, such as go-nvml's
// mock.Interface in tests.
func OpenLib(lib nvml.Interface) (*Host, error) { return open(lib, "/sys") }

// Discover opens the driver, takes an Inventory and closes it again.
// Without a driver or GPU it returns the CPU alone and no error.
func Discover() (*Inventory, error) { return DiscoverFrom(nvml.New()) }

// DiscoverFrom is Discover over any NVML implementation.
func DiscoverFrom(lib nvml.Interface) (*Inventory, error) { return discover(lib, "/sys") }

func discover(lib nvml.Interface, sys string) (*Inventory, error) {
	h, err := open(lib, sys)
	if err != nil {
		return nil, err
	}
	inv, err := h.Inventory()
	if cerr := h.Close(); err == nil && cerr != nil {
		return nil, cerr
	}
	return inv, err
}

func open(lib nvml.Interface, sys string) (*Host, error) {
	h := &Host{sys: sys}
	libMu.Lock()
	ret := lib.Init()
	if ret != nvml.SUCCESS {
		libMu.Unlock()
		h.driver = noDriver(ret)
		return h, nil
	}
	h.lib = lib
	err := h.enumerate()
	libMu.Unlock()
	if err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// symbols are the NVML functions called after Init that an older driver
// may lack. go-nvml binds them lazily: calling one the library does not
// have kills the process, so enumerate looks each up first and call
// skips the missing. (Init, the device count and handles, and the
// versioned functions go-nvml resolves itself are in every driver.)
var symbols = []string{
	"nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion",
	"nvmlDeviceGetIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetCudaComputeCapability",
	"nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
	"nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
	"nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo",
	"nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
	"nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkWidth",
	"nvmlDeviceGetNumaNodeId", "nvmlDeviceGetNvLinkState", "nvmlDeviceGetNvLinkRemoteDeviceType",
	"nvmlDeviceGetP2PStatus", "nvmlDeviceGetTopologyCommonAncestor",
}

// call makes the NVML call f unless the driver lacks its function sym.
func call[T any](h *Host, sym string, f func() (T, nvml.Return)) (T, nvml.Return) {
	if h.missing[sym] {
		var zero T
		return zero, nvml.ERROR_FUNCTION_NOT_FOUND
	}
	return f()
}

// enumerate reads the driver's versions and opens every GPU. It runs
// under libMu, after a successful Init.
func (h *Host) enumerate() error {
	h.missing = map[string]bool{}
	ext := h.lib.Extensions()
	for _, sym := range symbols {
		if ext.LookupSymbol(sym) != nil {
			h.missing[sym] = true
		}
	}
	h.driver = "NVIDIA driver"
	if v, ret := call(h, "nvmlSystemGetDriverVersion", h.lib.SystemGetDriverVersion); ret == nvml.SUCCESS {
		h.drvVer = v
		h.driver += " " + v
	}
	if v, ret := call(h, "nvmlSystemGetCudaDriverVersion", h.lib.SystemGetCudaDriverVersion); ret == nvml.SUCCESS && v > 0 {
		h.cudaVer = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
		h.driver += ", CUDA " + h.cudaVer
	}
	count, ret := h.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("device: %s loaded but cannot count GPUs: %s", h.driver, reason(ret))
	}
	for i := range count {
		d, ret := h.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			h.warnings = append(h.warnings, fmt.Sprintf("GPU %d skipped: %s", i, reason(ret)))
			continue
		}
		g := handle{dev: d, index: i}
		if idx, ret := call(h, "nvmlDeviceGetIndex", d.GetIndex); ret == nvml.SUCCESS {
			g.index = idx
		}
		g.uuid, g.uuidRet = call(h, "nvmlDeviceGetUUID", d.GetUUID)
		h.gpus = append(h.gpus, g)
	}
	if len(h.gpus) == 0 {
		h.driver += ": no GPUs visible"
	}
	return nil
}

// Driver says which driver is in use, or why there are no GPUs.
func (h *Host) Driver() string { return h.driver }

// Close shuts NVML down. Calls after the first do nothing.
func (h *Host) Close() error {
	libMu.Lock()
	defer libMu.Unlock()
	h.closed = true
	if h.lib == nil {
		return nil
	}
	ret := h.lib.Shutdown()
	h.lib = nil
	if ret != nvml.SUCCESS {
		return fmt.Errorf("device: NVML shutdown: %s", reason(ret))
	}
	return nil
}

// Sample reads every GPU's telemetry; without GPUs it returns none.
func (h *Host) Sample() ([]Sample, error) {
	libMu.RLock()
	defer libMu.RUnlock()
	if h.closed {
		return nil, ErrClosed
	}
	out := make([]Sample, len(h.gpus))
	for i, g := range h.gpus {
		out[i] = h.readSample(g, func(string, nvml.Return) {})
	}
	return out, nil
}

// Inventory reads everything about the GPUs and the CPU.
func (h *Host) Inventory() (*Inventory, error) {
	libMu.RLock()
	defer libMu.RUnlock()
	if h.closed {
		return nil, ErrClosed
	}
	inv := &Inventory{
		Driver:        h.driver,
		DriverVersion: h.drvVer,
		CUDAVersion:   h.cudaVer,
		GPUs:          []GPU{},
		CPU:           readCPU(h.sys),
		Warnings:      append([]string(nil), h.warnings...),
	}
	for _, g := range h.gpus {
		inv.GPUs = append(inv.GPUs, h.readGPU(g))
	}
	// Name the GPU at the far end of each NVLink.
	pos := map[string]int{}
	for i, g := range inv.GPUs {
		if g.BusID != "" {
			pos[g.BusID] = i
		}
	}
	for i := range inv.GPUs {
		for k, l := range inv.GPUs[i].NVLinks {
			if p, ok := pos[l.RemoteBusID]; ok && l.RemoteBusID != "" {
				inv.GPUs[i].NVLinks[k].RemoteGPU = p
			}
		}
	}
	n := len(h.gpus)
	if n == 0 {
		return inv, nil
	}
	inv.P2P, inv.NVLinkP2P, inv.Ancestor = square[P2PStatus](n), square[P2PStatus](n), square[Level](n)
	for i, a := range h.gpus {
		for j, b := range h.gpus {
			if i == j {
				inv.P2P[i][j], inv.NVLinkP2P[i][j], inv.Ancestor[i][j] = P2PSelf, P2PSelf, LevelSelf
				continue
			}
			inv.P2P[i][j] = p2p(call(h, "nvmlDeviceGetP2PStatus", func() (nvml.GpuP2PStatus, nvml.Return) {
				return a.dev.GetP2PStatus(b.dev, nvml.P2P_CAPS_INDEX_READ)
			}))
			inv.NVLinkP2P[i][j] = p2p(call(h, "nvmlDeviceGetP2PStatus", func() (nvml.GpuP2PStatus, nvml.Return) {
				return a.dev.GetP2PStatus(b.dev, nvml.P2P_CAPS_INDEX_NVLINK)
			}))
			if j < i {
				inv.Ancestor[i][j] = inv.Ancestor[j][i] // NVML's answer is symmetric
			} else {
				inv.Ancestor[i][j] = level(call(h, "nvmlDeviceGetTopologyCommonAncestor", func() (nvml.GpuTopologyLevel, nvml.Return) {
					return a.dev.GetTopologyCommonAncestor(b.dev)
				}))
			}
		}
	}
	return inv, nil
}

func square[T any](n int) [][]T {
	m := make([][]T, n)
	for i := range m {
		m[i] = make([]T, n)
	}
	return m
}

// readSample reads the telemetry of one GPU; fail hears of each field
// NVML could not report, which stays Unknown.
func (h *Host) readSample(g handle, fail func(field string, r nvml.Return)) Sample {
	s := Sample{
		Index: g.index, UUID: g.uuid,
		Utilization: Unknown, MemoryUtilization: Unknown,
		MemoryUsed: Unknown, MemoryTotal: Unknown,
		TemperatureC: Unknown, PowerW: Unknown,
		SMClockMHz: Unknown, MemoryClockMHz: Unknown,
	}
	if m, ret := call(h, "nvmlDeviceGetMemoryInfo", g.dev.GetMemoryInfo); ret == nvml.SUCCESS {
		s.MemoryUsed, s.MemoryTotal = int64(m.Used), int64(m.Total)
	} else {
		fail("memory", ret)
	}
	if u, ret := call(h, "nvmlDeviceGetUtilizationRates", g.dev.GetUtilizationRates); ret == nvml.SUCCESS {
		s.Utilization, s.MemoryUtilization = int(u.Gpu), int(u.Memory)
	} else {
		fail("utilization", ret)
	}
	if t, ret := call(h, "nvmlDeviceGetTemperature", func() (uint32, nvml.Return) {
		return g.dev.GetTemperature(nvml.TEMPERATURE_GPU)
	}); ret == nvml.SUCCESS {
		s.TemperatureC = int(t)
	} else {
		fail("temperature", ret)
	}
	if mw, ret := call(h, "nvmlDeviceGetPowerUsage", g.dev.GetPowerUsage); ret == nvml.SUCCESS {
		s.PowerW = float64(mw) / 1000
	} else {
		fail("power", ret)
	}
	s.SMClockMHz = h.clock(g, "nvmlDeviceGetClockInfo", g.dev.GetClockInfo, nvml.CLOCK_SM, "sm_clock", fail)
	s.MemoryClockMHz = h.clock(g, "nvmlDeviceGetClockInfo", g.dev.GetClockInfo, nvml.CLOCK_MEM, "memory_clock", fail)
	return s
}

// clock reads one clock in MHz through get (the current or the maximum
// clock of its kind), or Unknown.
func (h *Host) clock(g handle, sym string, get func(nvml.ClockType) (uint32, nvml.Return), kind nvml.ClockType, field string, fail func(string, nvml.Return)) int {
	mhz, ret := call(h, sym, func() (uint32, nvml.Return) { return get(kind) })
	if ret != nvml.SUCCESS {
		fail(field, ret)
		return Unknown
	}
	return int(mhz)
}

// readGPU reads everything about one GPU; a field NVML cannot report is
// Unknown (or empty) and its reason goes into GPU.Unknown.
func (h *Host) readGPU(g handle) GPU {
	gpu := GPU{PowerLimitW: Unknown, PCIeGen: Unknown, PCIeWidth: Unknown,
		PCIeMaxGen: Unknown, PCIeMaxWidth: Unknown, NUMANode: Unknown}
	fail := func(field string, r nvml.Return) {
		if gpu.Unknown == nil {
			gpu.Unknown = map[string]string{}
		}
		gpu.Unknown[field] = reason(r)
	}
	gpu.Sample = h.readSample(g, fail)
	d := g.dev
	gpu.SMClockMaxMHz = h.clock(g, "nvmlDeviceGetMaxClockInfo", d.GetMaxClockInfo, nvml.CLOCK_SM, "sm_clock_max", fail)
	gpu.MemoryClockMaxMHz = h.clock(g, "nvmlDeviceGetMaxClockInfo", d.GetMaxClockInfo, nvml.CLOCK_MEM, "memory_clock_max", fail)
	if g.uuidRet != nvml.SUCCESS {
		fail("uuid", g.uuidRet)
	}
	if v, ret := call(h, "nvmlDeviceGetName", d.GetName); ret == nvml.SUCCESS {
		gpu.Name = v
	} else {
		fail("name", ret)
	}
	if cc, ret := call(h, "nvmlDeviceGetCudaComputeCapability", func() (string, nvml.Return) {
		major, minor, ret := d.GetCudaComputeCapability()
		return fmt.Sprintf("%d.%d", major, minor), ret
	}); ret == nvml.SUCCESS {
		gpu.ComputeCapability = cc
	} else {
		fail("compute_capability", ret)
	}
	if mw, ret := call(h, "nvmlDeviceGetEnforcedPowerLimit", d.GetEnforcedPowerLimit); ret == nvml.SUCCESS {
		gpu.PowerLimitW = float64(mw) / 1000
	} else {
		fail("power_limit", ret)
	}
	for _, f := range []struct {
		name, sym string
		get       func() (int, nvml.Return)
		dst       *int
	}{
		{"pcie_gen", "nvmlDeviceGetCurrPcieLinkGeneration", d.GetCurrPcieLinkGeneration, &gpu.PCIeGen},
		{"pcie_width", "nvmlDeviceGetCurrPcieLinkWidth", d.GetCurrPcieLinkWidth, &gpu.PCIeWidth},
		{"pcie_max_gen", "nvmlDeviceGetMaxPcieLinkGeneration", d.GetMaxPcieLinkGeneration, &gpu.PCIeMaxGen},
		{"pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth", d.GetMaxPcieLinkWidth, &gpu.PCIeMaxWidth},
	} {
		if v, ret := call(h, f.sym, f.get); ret == nvml.SUCCESS {
			*f.dst = v
		} else {
			fail(f.name, ret)
		}
	}
	if p, ret := d.GetPciInfo(); ret == nvml.SUCCESS {
		gpu.BusID = busID(p)
	} else {
		fail("bus_id", ret)
	}
	// NVML writes the node as a uint32; anything implausible is no answer.
	if node, ret := call(h, "nvmlDeviceGetNumaNodeId", d.GetNumaNodeId); ret == nvml.SUCCESS && node >= 0 && node < 1<<16 {
		gpu.NUMANode = node
	} else if node, ok := sysfsNUMA(h.sys, gpu.BusID); ok {
		gpu.NUMANode = node
	} else if ret == nvml.SUCCESS {
		fail("numa_node", nvml.ERROR_NO_DATA)
	} else {
		fail("numa_node", ret)
	}
	gpu.NVLinks = h.readNVLinks(d, fail)
	return gpu
}

// readNVLinks asks about every possible link and keeps those NVML answers
// for: PCIe cards answer none (not supported), NVLink GPUs as many as
// they have.
func (h *Host) readNVLinks(d nvml.Device, fail func(string, nvml.Return)) []NVLink {
	var links []NVLink
	first := nvml.SUCCESS
	for l := range nvml.NVLINK_MAX_LINKS {
		st, ret := call(h, "nvmlDeviceGetNvLinkState", func() (nvml.EnableState, nvml.Return) { return d.GetNvLinkState(l) })
		if ret != nvml.SUCCESS {
			if first == nvml.SUCCESS {
				first = ret
			}
			continue
		}
		link := NVLink{Link: l, Active: st == nvml.FEATURE_ENABLED, RemoteGPU: Unknown}
		if link.Active {
			if p, ret := d.GetNvLinkRemotePciInfo(l); ret == nvml.SUCCESS {
				link.RemoteBusID = busID(p)
			}
			if t, ret := call(h, "nvmlDeviceGetNvLinkRemoteDeviceType", func() (nvml.IntNvLinkDeviceType, nvml.Return) {
				return d.GetNvLinkRemoteDeviceType(l)
			}); ret == nvml.SUCCESS {
				link.RemoteType = map[nvml.IntNvLinkDeviceType]string{
					nvml.NVLINK_DEVICE_TYPE_GPU:    "gpu",
					nvml.NVLINK_DEVICE_TYPE_SWITCH: "switch",
					nvml.NVLINK_DEVICE_TYPE_IBMNPU: "ibmnpu",
				}[t]
			}
		}
		links = append(links, link)
	}
	if links == nil {
		fail("nvlink", first)
	}
	return links
}

// busID writes a PCI address the way sysfs and lspci do, so that a GPU's
// address and the far end of another GPU's NVLink compare equal.
func busID(p nvml.PciInfo) string {
	if p.Domain == 0 && p.Bus == 0 && p.Device == 0 {
		// Only the string is filled in: "00000000:07:00.0".
		var b []byte
		for _, c := range p.BusId {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		s := strings.ToLower(string(b))
		if dom, rest, ok := strings.Cut(s, ":"); ok && len(dom) > 4 {
			s = dom[len(dom)-4:] + ":" + rest
		}
		return s
	}
	return fmt.Sprintf("%04x:%02x:%02x.0", p.Domain, p.Bus, p.Device)
}

// sysfsNUMA reads the NUMA node of a PCI device from sysfs, for drivers
// too old for nvmlDeviceGetNumaNodeId.
func sysfsNUMA(sys, bus string) (int, bool) {
	if bus == "" {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(sys, "bus/pci/devices", bus, "numa_node"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
