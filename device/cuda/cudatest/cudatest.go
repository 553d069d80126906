// Package cudatest builds a stand-in for the CUDA driver library, so that
// tests of package cuda and of its users run the Go binding for real on
// machines without a GPU. The stand-in (testdata/fakecuda.c) backs device
// memory with host memory, insists that a context is current on the
// calling thread, fails allocations past its size with
// CUDA_ERROR_OUT_OF_MEMORY, and refuses to launch kernels.
package cudatest

import (
	_ "embed"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

//go:embed testdata/fakecuda.c
var source []byte

var (
	once  sync.Once
	built string
	skip  string // why the stand-in cannot be built here
	fail  string // why building it failed
)

// FakeDriver compiles the stand-in once per test binary and returns the
// path of the shared library (for cuda's RINGO_CUDA_LIBRARY). It skips
// the test, with the reason, where no C compiler is installed.
func FakeDriver(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		cc, err := exec.LookPath("gcc")
		if err != nil {
			if cc, err = exec.LookPath("cc"); err != nil {
				skip = "no C compiler (gcc or cc) to build the stand-in CUDA driver"
				return
			}
		}
		dir, err := os.MkdirTemp("", "fakecuda")
		if err != nil {
			fail = err.Error()
			return
		}
		src := filepath.Join(dir, "fakecuda.c")
		lib := filepath.Join(dir, "libcuda.so.1")
		if err := os.WriteFile(src, source, 0o644); err != nil {
			fail = err.Error()
			return
		}
		if out, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-o", lib, src, "-lpthread").CombinedOutput(); err != nil {
			fail = "building the stand-in CUDA driver: " + err.Error() + ": " + string(out)
			return
		}
		built = lib
	})
	switch {
	case skip != "":
		t.Skip(skip)
	case fail != "":
		t.Fatal(fail)
	}
	return built
}
