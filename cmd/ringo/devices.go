package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ringo-ml/ringo/device"
	"github.com/ringo-ml/ringo/device/cuda"
)

const devicesUsage = `Usage: ringo devices [--json] [--watch 1s]

Lists this machine's GPUs (through the NVIDIA driver's NVML) with their
memory, utilisation, temperature, power, PCIe link, NUMA node and NVLinks;
the topology between every pair of GPUs; and the CPUs and NUMA nodes.
Without a driver it lists the CPUs and says why there are no GPUs.
Fields the board does not report show as "-". Last, the devices the CUDA
driver lets this process use (CUDA_VISIBLE_DEVICES applies), with their
ordinals: what --device cuda and a worker's GPU code will see.

Flags:
`

func runDevices(ctx context.Context, args []string) error {
	fs := newFlagSet("devices", devicesUsage)
	asJSON := fs.Bool("json", false, "print the inventory as one JSON object (one line per refresh with --watch)")
	watch := fs.Duration("watch", 0, "refresh every interval (e.g. 1s) until interrupted")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *watch < 0 {
		return usageErr(fs, "--watch %v: want a positive interval such as 1s", *watch)
	}
	h, err := device.Open()
	if err != nil {
		return err
	}
	defer h.Close()
	clearScreen := *watch > 0 && !*asJSON && isTerminal(os.Stdout)
	cv := cudaDevices()
	for first := true; ; first = false {
		inv, err := h.Inventory()
		if err != nil {
			return err
		}
		switch {
		case *asJSON:
			printJSON(struct {
				*device.Inventory
				CUDA cudaView `json:"cuda"`
			}{inv, cv})
		case clearScreen:
			fmt.Print("\033[H\033[2J")
			fmt.Printf("every %v: ringo devices  %s\n\n", *watch, time.Now().Format(time.DateTime))
			renderDevices(os.Stdout, inv)
			renderCUDA(os.Stdout, cv)
		default:
			if !first {
				fmt.Println()
			}
			renderDevices(os.Stdout, inv)
			renderCUDA(os.Stdout, cv)
		}
		if *watch == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
	}
}

// renderDevices writes the inventory as tables: the GPUs, the topology
// and peer-to-peer matrices, and the CPUs.
func renderDevices(out io.Writer, inv *device.Inventory) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	if len(inv.GPUs) == 0 {
		fmt.Fprintf(w, "%s\n", inv.Driver)
	} else {
		fmt.Fprintf(w, "%s: %d GPUs\n", inv.Driver, len(inv.GPUs))
		fmt.Fprintln(w, "GPU\tNAME\tCC\tMEMORY\tUTIL\tTEMP\tPOWER\tCLOCKS SM/MEM MHZ\tPCIE\tNUMA\tNVLINK\tBUS\tUUID")
		for _, g := range inv.GPUs {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				g.Index, orDash(g.Name), orDash(g.ComputeCapability), gpuMemory(g), unknownOr(g.Utilization, "%d%%"),
				unknownOr(g.TemperatureC, "%dC"), gpuPower(g), gpuClocks(g), gpuPCIe(g), unknownOr(g.NUMANode, "%d"),
				gpuNVLinks(g), orDash(g.BusID), orDash(g.UUID))
		}
		for _, warn := range inv.Warnings {
			fmt.Fprintf(w, "warning: %s\n", warn)
		}
		fmt.Fprintln(w, "\nTopology: NV# = # NVLinks, else the closest common ancestor (PIX, PXB, PHB, NODE, SYS; ? unknown)")
		devicesMatrix(w, inv, "CPUS\tNUMA", func(i, j int) string {
			if n := inv.NVLinks(i, j); n > 0 {
				return fmt.Sprintf("NV%d", n)
			}
			return inv.Ancestor[i][j].String()
		}, func(g device.GPU) string {
			return orDash(numaCPUs(inv, g.NUMANode)) + "\t" + unknownOr(g.NUMANode, "%d")
		})
		fmt.Fprintln(w, "\nPeer-to-peer reads: OK; CNS, GNS, TNS, NS = chipset, GPU, topology, not supported; DIS disabled; U unknown")
		devicesMatrix(w, inv, "", func(i, j int) string {
			s := string(inv.P2P[i][j])
			if inv.NVLinkP2P[i][j] == device.P2POK && i != j {
				s += " (NVLink)"
			}
			return s
		}, nil)
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "CPU: %d logical CPUs\n", inv.CPU.Cores)
	if len(inv.CPU.NUMA) > 0 {
		fmt.Fprintln(w, "NUMA\tCPUS\tMEMORY")
		for _, n := range inv.CPU.NUMA {
			mem := "-"
			if n.MemoryTotal != device.Unknown {
				mem = humanBytes(n.MemoryTotal)
			}
			fmt.Fprintf(w, "%d\t%s\t%s\n", n.ID, orDash(device.FormatCPUList(n.CPUs)), mem)
		}
	}
}

// devicesMatrix writes one row per GPU: cell(i, j) for every GPU j, then extra.
func devicesMatrix(w io.Writer, inv *device.Inventory, extraHead string, cell func(i, j int) string, extra func(device.GPU) string) {
	var b strings.Builder
	for _, g := range inv.GPUs {
		fmt.Fprintf(&b, "\tGPU%d", g.Index)
	}
	if extraHead != "" {
		b.WriteString("\t" + extraHead)
	}
	fmt.Fprintln(w, b.String())
	for i, g := range inv.GPUs {
		b.Reset()
		fmt.Fprintf(&b, "GPU%d", g.Index)
		for j := range inv.GPUs {
			b.WriteString("\t" + cell(i, j))
		}
		if extra != nil {
			b.WriteString("\t" + extra(g))
		}
		fmt.Fprintln(w, b.String())
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func unknownOr(v int, format string) string {
	if v == device.Unknown {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func gpuMemory(g device.GPU) string {
	if g.MemoryTotal == device.Unknown {
		return "-"
	}
	return humanBytes(g.MemoryUsed) + " / " + humanBytes(g.MemoryTotal)
}

func gpuPower(g device.GPU) string {
	now, limit := "-", "-"
	if g.PowerW != device.Unknown {
		now = fmt.Sprintf("%.0f", g.PowerW)
	}
	if g.PowerLimitW != device.Unknown {
		limit = fmt.Sprintf("%.0f", g.PowerLimitW)
	}
	if now == "-" && limit == "-" {
		return "-"
	}
	return now + " / " + limit + " W"
}

func gpuPCIe(g device.GPU) string {
	link := func(gen, width int) string {
		return "Gen" + unknownOr(gen, "%d") + " x" + unknownOr(width, "%d")
	}
	s := link(g.PCIeGen, g.PCIeWidth)
	if g.PCIeGen == device.Unknown && g.PCIeWidth == device.Unknown {
		s = "-"
	}
	if (g.PCIeMaxGen != device.Unknown && g.PCIeMaxGen != g.PCIeGen) || (g.PCIeMaxWidth != device.Unknown && g.PCIeMaxWidth != g.PCIeWidth) {
		s += " (max " + link(g.PCIeMaxGen, g.PCIeMaxWidth) + ")"
	}
	return s
}

func gpuNVLinks(g device.GPU) string {
	if len(g.NVLinks) == 0 {
		return "-"
	}
	up := 0
	for _, l := range g.NVLinks {
		if l.Active {
			up++
		}
	}
	return fmt.Sprintf("%d/%d up", up, len(g.NVLinks))
}

func numaCPUs(inv *device.Inventory, node int) string {
	for _, n := range inv.CPU.NUMA {
		if n.ID == node {
			return device.FormatCPUList(n.CPUs)
		}
	}
	return ""
}

// gpuClocks is "now/max" for the SM and memory clocks: 1980/1980 2619/2619.
func gpuClocks(g device.GPU) string {
	return unknownOr(g.SMClockMHz, "%d") + "/" + unknownOr(g.SMClockMaxMHz, "%d") + " " + unknownOr(g.MemoryClockMHz, "%d") + "/" + unknownOr(g.MemoryClockMaxMHz, "%d")
}

// cudaView is what the CUDA driver lets this process use.
type cudaView struct {
	Library string            `json:"library,omitempty"`
	Version string            `json:"version,omitempty"` // the CUDA version the driver supports, "12.4"
	Error   string            `json:"error,omitempty"`   // why there is none
	Devices []cuda.DeviceInfo `json:"devices"`
}

// cudaDevices asks the driver, without making a context on any device.
func cudaDevices() cudaView {
	d, err := cuda.Load()
	if err != nil {
		return cudaView{Error: err.Error(), Devices: []cuda.DeviceInfo{}}
	}
	v := cudaView{Library: d.Path(), Version: fmt.Sprintf("%d.%d", d.Version()/1000, d.Version()%1000/10), Devices: []cuda.DeviceInfo{}}
	n, err := d.Count()
	if err != nil {
		v.Error = err.Error()
		return v
	}
	for i := range n {
		info, err := d.Describe(i)
		if err != nil {
			v.Error = err.Error()
			return v
		}
		v.Devices = append(v.Devices, info)
	}
	return v
}

func renderCUDA(out io.Writer, v cudaView) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	if v.Error != "" && len(v.Devices) == 0 {
		fmt.Fprintf(w, "\nCUDA: %s\n", v.Error)
		return
	}
	fmt.Fprintf(w, "\nCUDA %s (%s): %d devices visible to this process (CUDA_VISIBLE_DEVICES=%s)\n", v.Version, v.Library, len(v.Devices), orDash(os.Getenv("CUDA_VISIBLE_DEVICES")))
	fmt.Fprintln(w, "ORDINAL\tNAME\tCC\tSMS\tMEMORY\tUUID")
	for _, d := range v.Devices {
		fmt.Fprintf(w, "%d\t%s\t%d.%d\t%d\t%s\t%s\n", d.Ordinal, d.Name, d.ComputeMajor, d.ComputeMinor, d.Multiprocessors, humanBytes(d.MemoryTotal), d.UUID)
	}
	if v.Error != "" {
		fmt.Fprintf(w, "warning: %s\n", v.Error)
	}
}
