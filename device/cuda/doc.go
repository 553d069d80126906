// Package cuda drives NVIDIA GPUs through the CUDA driver API, loaded at
// run time: contexts, device and pinned host memory, streams, events, and
// modules of PTX text compiled by the driver's JIT (the reduction kernels
// of package kernels). Nothing links against libcuda.so.1, so one ringo
// binary starts on machines without a GPU, and reports why when asked for
// one:
//
//	d, err := cuda.Load()          // errors.Is(err, cuda.ErrNoDriver) without a driver
//	c, err := d.Open(0)            // ordinal among CUDA_VISIBLE_DEVICES
//	defer c.Close()
//	m, err := c.Alloc(n)           // errors.Is(err, cuda.ErrOutOfMemory)
//	err = m.CopyFromHost(0, host)  // m is a collective.DeviceMemory
//
// # Why purego
//
// The library is opened with github.com/ebitengine/purego (dlopen and a
// C-ABI call from Go) rather than cgo: the binding needs no CUDA headers
// or toolkit at build time, builds with CGO_ENABLED=0, and a missing
// library is an error from Load, not a loader failure at start. The
// functions called are the driver's versioned symbols (cuMemAlloc_v2 and
// the like), which every driver since CUDA 11 exports.
//
// # Contexts and threads
//
// Open retains the device's primary context, the one the CUDA runtime
// (and so PyTorch) uses, and makes two streams on it: one for copies to
// the host, one for copies to the device, so a Stager's two copy stages
// overlap each other and the wire. A context is current per OS thread in
// CUDA; every call here locks the goroutine to its thread and makes the
// context current first, so any goroutine may use a Context.
//
// # Errors
//
// A failed driver call is an *Error naming the device ordinal, the call
// and its main arguments, and the driver's name and text for the result
// (cuda device 0: cuMemAlloc(1073741824 bytes; 52428800 of 85899345920
// bytes free): CUDA_ERROR_OUT_OF_MEMORY (2): out of memory). errors.Is
// matches ErrOutOfMemory and ErrNoDevice; a module the JIT rejects
// carries the JIT's log.
//
// # Tests
//
// Package cudatest builds a stand-in driver library from C source (host
// memory as device memory, contexts that must be current, allocation
// limits, no kernels), so that the binding's calls run on every machine
// with a C compiler. Tests named TestGPU… and BenchmarkGPU… (here and in
// package kernels) use the machine's real driver and skip, with the
// reason, where there is none.
package cuda
