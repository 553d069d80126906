// Package cudatest builds a stand-in for the CUDA driver library, so that
// tests of package cuda and of its users run the Go binding for real on
// machines without a GPU. The stand-in (testdata/fakecuda.c) backs device
// memory with host memory, insists that a context is current on the
// calling thread, fails allocations past its size with
// CUDA_ERROR_OUT_OF_MEMORY, and refuses to launch kernels.
package cudatest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
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
		// One build per version of the source, kept in the temporary
		// directory and shared by test binaries; written under a temporary
		// name and renamed, so a binary never loads a half-written one.
		sum := sha256.Sum256(source)
		lib := filepath.Join(os.TempDir(), "ringo-fakecuda-"+hex.EncodeToString(sum[:8])+".so")
		if _, err := os.Stat(lib); err == nil {
			built = lib
			return
		}
		dir, err := os.MkdirTemp("", "fakecuda")
		if err != nil {
			fail = err.Error()
			return
		}
		defer os.RemoveAll(dir)
		src, out := filepath.Join(dir, "fakecuda.c"), filepath.Join(dir, "libcuda.so.1")
		if err := os.WriteFile(src, source, 0o644); err != nil {
			fail = err.Error()
			return
		}
		if msg, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-o", out, src, "-lpthread").CombinedOutput(); err != nil {
			fail = "building the stand-in CUDA driver: " + err.Error() + ": " + string(msg)
			return
		}
		if err := os.Rename(out, lib); err != nil {
			fail = err.Error()
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
