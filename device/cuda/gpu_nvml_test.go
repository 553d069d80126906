//go:build cgo

package cuda

import (
	"fmt"
	"testing"

	"github.com/ringo-ml/ringo/device"
)

// NVML (go-nvml) needs cgo; the rest of the package's tests do not.

// TestGPUMatchesNVML checks what NVML (package device, ringo devices)
// reports about the GPU against what the CUDA driver reports: the same
// UUID, name and memory size, from two separate libraries.
func TestGPUMatchesNVML(t *testing.T) {
	c := realGPU(t)
	inv, err := device.Discover()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range inv.GPUs {
		if g.UUID != c.UUID() {
			continue
		}
		t.Logf("NVML: %+v", g)
		if g.Name != c.Name() || g.MemoryTotal != c.TotalMem() {
			t.Errorf("NVML says %q with %d bytes; the CUDA driver says %q with %d bytes", g.Name, g.MemoryTotal, c.Name(), c.TotalMem())
		}
		if maj, min := c.ComputeCapability(); g.ComputeCapability != fmt.Sprintf("%d.%d", maj, min) {
			t.Errorf("NVML says compute capability %s; the CUDA driver %d.%d", g.ComputeCapability, maj, min)
		}
		for field, v := range map[string]int{"temperature": g.TemperatureC, "sm clock": g.SMClockMHz, "sm clock max": g.SMClockMaxMHz, "memory clock": g.MemoryClockMHz} {
			if v <= 0 {
				t.Errorf("NVML reports %s %d on a data-centre GPU (unknown: %v)", field, v, g.Unknown)
			}
		}
		if g.PowerW <= 0 || g.PowerLimitW <= 0 || g.PCIeMaxGen <= 0 {
			t.Errorf("NVML reports power %v W of %v W, PCIe max gen %d (unknown: %v)", g.PowerW, g.PowerLimitW, g.PCIeMaxGen, g.Unknown)
		}
		return
	}
	t.Fatalf("NVML lists no GPU with the CUDA driver's UUID %s (%s); it lists %d GPUs (%s)", c.UUID(), c.Name(), len(inv.GPUs), inv.Driver)
}
