// Package device finds the GPUs (through NVIDIA's NVML, via go-nvml) and
// the CPUs of this machine, and samples GPU telemetry while a job runs.
//
//	inv, err := device.Discover()   // no error just because there is no GPU
//	for _, g := range inv.GPUs { ... g.Index, g.UUID, g.NUMANode ... }
//	if len(inv.GPUs) == 0 { log.Print(inv.Driver); /* CPU slots: inv.CPU */ }
//
// A long-lived caller opens the driver once and samples it:
//
//	h, err := device.Open()         // no driver: a Host with no GPUs
//	defer h.Close()
//	s := device.NewSampler(h, time.Second)
//	defer s.Close()                 // before h.Close
//	snap := s.Latest()              // utilisation, memory, temperature, power
//
// # What is reported
//
// Per GPU: index, UUID, name, compute capability, memory total and used,
// SM and memory clocks (now and maximum),
// utilisation, temperature, power and its limit, PCIe generation and width
// (current and maximum), PCI address, NUMA node (NVML, else sysfs), and
// every NVLink with its state and the PCI address and kind of device at
// its far end. Between every pair of GPUs: peer-to-peer status (reads, and
// over NVLink) and the closest common ancestor in the PCIe/CPU tree, in
// nvidia-smi topo's terms (PIX, PXB, PHB, NODE, SYS).
//
// Boards differ in what they report: NVLink on PCIe cards, power on some
// boards and NUMA on older drivers are often "not supported". Such a field
// is Unknown (-1) or empty, with the reason in GPU.Unknown; it never fails
// discovery.
//
// Without a driver (libnvidia-ml.so.1 missing, kernel module not loaded,
// version mismatch) Inventory.GPUs is empty, Inventory.Driver says why, and
// Inventory.CPU still lists the logical CPUs this process may use and the
// NUMA nodes of /sys/devices/system/node with their CPUs.
//
// # NVML safety
//
// go-nvml dlopens the driver library inside Init; any other NVML call
// without a successful Init kills the process with a symbol lookup error.
// Here only a Host whose Init succeeded holds the library, it drops it in
// Close, and every call runs under one package lock that Init and Shutdown
// take exclusively, so no call can come before Init or after Shutdown.
// Calling a function that an older driver lacks dies the same way, so
// after Init every function used is looked up (LookupSymbol) and a missing
// one reads as "not in this driver version" instead of being called.
// Building needs cgo (CGO_CFLAGS=-Wno-deprecated-declarations quiets the
// headers). Tests use go-nvml's mock package (mock.Interface and the
// dgxh100 server) instead of a driver.
//
// NVML sees every GPU of the machine; it does not read CUDA_VISIBLE_DEVICES.
package device
