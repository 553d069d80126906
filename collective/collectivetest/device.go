package collectivetest

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Direction is the way a staging copy goes.
type Direction int

const (
	ToHost   Direction = iota // device to host
	ToDevice                  // host to device
)

func (d Direction) String() string {
	if d == ToHost {
		return "device to host"
	}
	return "host to device"
}

// HostDevice is a collective.DeviceMemory kept in ordinary memory: a
// stand-in for a GPU buffer with the same contract, so that the staging
// pipeline is tested where no GPU is. Its memory is reachable only through
// the copies (and Load/Store for the test's own setup and checks); it
// enforces the contract that copies in one direction never overlap each
// other; and Hook lets a test fail a copy or hold it until something else
// has happened.
type HostDevice struct {
	mem []byte
	// Hook, if set, runs before every copy with its direction, its
	// offset and length; an error fails the copy.
	Hook func(dir Direction, off, n int) error
	busy [2]atomic.Bool
	mu   sync.Mutex // guards copies
	// completed copies by direction
	copies [2]int
}

// NewHostDevice returns n bytes of zeroed stand-in device memory.
func NewHostDevice(n int) *HostDevice { return &HostDevice{mem: make([]byte, n)} }

// Len returns the size in bytes.
func (d *HostDevice) Len() int { return len(d.mem) }

// CopyToHost copies len(dst) bytes from off into dst.
func (d *HostDevice) CopyToHost(dst []byte, off int) error {
	if err := d.begin(ToHost, off, len(dst)); err != nil {
		return err
	}
	copy(dst, d.mem[off:off+len(dst)])
	d.end(ToHost)
	return nil
}

// CopyFromHost copies src to off.
func (d *HostDevice) CopyFromHost(off int, src []byte) error {
	if err := d.begin(ToDevice, off, len(src)); err != nil {
		return err
	}
	copy(d.mem[off:off+len(src)], src)
	d.end(ToDevice)
	return nil
}

func (d *HostDevice) begin(dir Direction, off, n int) error {
	if off < 0 || n < 0 || off+n > len(d.mem) {
		return fmt.Errorf("stand-in device: copy %v of bytes %d..%d outside a buffer of %d bytes", dir, off, off+n, len(d.mem))
	}
	if !d.busy[dir].CompareAndSwap(false, true) {
		return fmt.Errorf("stand-in device: two copies %v at once; a stager must issue one direction's copies in order", dir)
	}
	if d.Hook != nil {
		if err := d.Hook(dir, off, n); err != nil {
			d.busy[dir].Store(false)
			return err
		}
	}
	return nil
}

func (d *HostDevice) end(dir Direction) {
	d.busy[dir].Store(false)
	d.mu.Lock()
	d.copies[dir]++
	d.mu.Unlock()
}

// Copies returns how many copies completed in direction dir.
func (d *HostDevice) Copies(dir Direction) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.copies[dir]
}

// Store sets the device contents from b (test setup, not a staged copy).
func (d *HostDevice) Store(b []byte) { copy(d.mem, b) }

// Load returns a copy of the device contents (for checks).
func (d *HostDevice) Load() []byte { return append([]byte(nil), d.mem...) }
