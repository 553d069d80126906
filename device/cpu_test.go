package device

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
)

func TestReadCPU(t *testing.T) {
	sys := t.TempDir()
	write := func(rel, body string) {
		p := filepath.Join(sys, "devices/system/node", rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("node1/cpulist", "4-7,12-15\n")
	write("node1/meminfo", "Node 1 MemTotal:       65536 kB\nNode 1 MemFree:        1024 kB\n")
	write("node0/cpulist", "0-3,8-11\n")
	write("node0/meminfo", "Node 0 MemTotal:       131072 kB\n")
	write("node2/cpulist", "\n") // memory only (CXL, HBM)
	write("node3/cpulist", "garbage\n")
	write("online", "0-2\n")

	c := readCPU(sys)
	want := CPU{Cores: runtime.NumCPU(), NUMA: []NUMANode{
		{ID: 0, CPUs: []int{0, 1, 2, 3, 8, 9, 10, 11}, MemoryTotal: 128 << 20},
		{ID: 1, CPUs: []int{4, 5, 6, 7, 12, 13, 14, 15}, MemoryTotal: 64 << 20},
		{ID: 2, CPUs: []int{}, MemoryTotal: Unknown},
	}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}

	if c := readCPU(t.TempDir()); c.Cores != runtime.NumCPU() || c.NUMA != nil {
		t.Errorf("no sysfs: %+v", c)
	}
}

func TestCPUList(t *testing.T) {
	for _, s := range []string{"0", "0-3", "0-3,8-11,16", "1,3,5", ""} {
		cpus, err := parseCPUList(s + "\n")
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if got := FormatCPUList(cpus); got != s {
			t.Errorf("%q -> %v -> %q", s, cpus, got)
		}
	}
	for _, bad := range []string{"x", "3-1", "1-", "1,,2"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
