package device

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// readCPU describes the host's CPUs: how many this process may use, and
// the NUMA nodes under sys (normally /sys). A node that cannot be read is
// left out; nothing here fails.
func readCPU(sys string) CPU {
	c := CPU{Cores: runtime.NumCPU()} // the affinity mask on Linux
	dirs, _ := filepath.Glob(filepath.Join(sys, "devices/system/node/node[0-9]*"))
	for _, dir := range dirs {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "node"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "cpulist"))
		if err != nil {
			continue
		}
		cpus, err := parseCPUList(string(b))
		if err != nil {
			continue
		}
		c.NUMA = append(c.NUMA, NUMANode{ID: id, CPUs: cpus, MemoryTotal: nodeMemory(dir)})
	}
	sort.Slice(c.NUMA, func(i, j int) bool { return c.NUMA[i].ID < c.NUMA[j].ID })
	return c
}

// parseCPUList reads the kernel's list format, "0-3,8-11,16".
func parseCPUList(s string) ([]int, error) {
	cpus := []int{}
	s = strings.TrimSpace(s)
	if s == "" {
		return cpus, nil // a node with memory and no CPUs
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("device: cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("device: cpu list %q: bad range %q", s, part)
			}
		}
		for n := a; n <= b; n++ {
			cpus = append(cpus, n)
		}
	}
	return cpus, nil
}

// nodeMemory reads "Node 0 MemTotal:  131072 kB" from a node's meminfo.
func nodeMemory(dir string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, "meminfo"))
	if err != nil {
		return Unknown
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 4 && f[2] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				return Unknown
			}
			return kb << 10
		}
	}
	return Unknown
}

// FormatCPUList writes CPUs in the kernel's list format, "0-3,8".
func FormatCPUList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
