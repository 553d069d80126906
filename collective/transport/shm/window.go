package shm

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A Window is memory that the other ranks on this host can read in place.
// A buffer that lies in one is lent, not copied, by the sends that the
// collective schedules mark as lendable (the ring's, and the intra-host
// phases of the hierarchical algorithms, in calls from collective's
// LendBytes up): the ring carries a 32-byte reference, and the
// receiving rank reduces or copies straight from this process's memory,
// so that each byte crosses between the two processes' buffers in one
// copy instead of two (into the ring and out of it). This is what NCCL's
// registered buffers and MPI's single-copy intra-node paths do; the peer
// maps the window through /proc/<pid>/fd, which needs no system call
// beyond open and mmap on a kernel of any age, and no privileges beyond
// the same user's.
//
// Layout: a memfd of one 4096-byte header page ("RGSHWIN1", a random
// 64-bit id, the data size) and the data after it, page-aligned.
type Window struct {
	fd   int
	id   uint64
	mem  []byte
	data []byte
}

const (
	winHeader  = 4096
	winVersion = 1
)

var winMagic = [8]byte{'R', 'G', 'S', 'H', 'W', 'I', 'N', '1'}

// NewWindow allocates a window of n bytes, zeroed.
func NewWindow(n int) (*Window, error) {
	if n <= 0 {
		return nil, fmt.Errorf("shm: a window of %d bytes: want at least 1", n)
	}
	size := winHeader + n
	fd, err := sharedFile("ringo-window", size)
	if err != nil {
		return nil, fmt.Errorf("shm: a %d-byte window: %w", n, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: mapping a %d-byte window: %w", n, err)
	}
	var idb [8]byte
	rand.Read(idb[:])
	w := &Window{fd: fd, id: binary.LittleEndian.Uint64(idb[:]) | 1, mem: mem, data: mem[winHeader:]}
	copy(mem, winMagic[:])
	binary.LittleEndian.PutUint64(mem[8:], w.id)
	binary.LittleEndian.PutUint64(mem[16:], uint64(n))
	windows.add(w)
	return w, nil
}

// Bytes returns the window's memory. It stays valid until Close.
func (w *Window) Bytes() []byte { return w.data }

// Close frees the window. A peer that has it mapped keeps its mapping
// (the kernel frees the memory with the last one), but nothing may be
// lent from it any more: call Close only when no collective is using it.
func (w *Window) Close() error {
	if w == nil || w.mem == nil {
		return nil
	}
	windows.remove(w)
	err := unix.Munmap(w.mem)
	unix.Close(w.fd)
	w.mem, w.data = nil, nil
	return err
}

// windowSet is this process's open windows, by address, so that a send
// finds whether its payload lies in one.
type windowSet struct {
	mu   sync.RWMutex
	list []*Window // sorted by the address of data
}

var windows windowSet

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func (s *windowSet) add(w *Window) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.list, addrOf(w.data), byAddr)
	s.list = slices.Insert(s.list, i, w)
}

func (s *windowSet) remove(w *Window) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.list, w); i >= 0 {
		s.list = slices.Delete(s.list, i, i+1)
	}
}

func byAddr(x *Window, a uintptr) int { return cmp.Compare(addrOf(x.data), a) }

// find returns the window b lies in entirely, and b's offset in its data.
func (s *windowSet) find(b []byte) (*Window, uint64, bool) {
	if len(b) == 0 {
		return nil, 0, false
	}
	a := addrOf(b)
	s.mu.RLock()
	defer s.mu.RUnlock()
	// The last window starting at or before a.
	i, found := slices.BinarySearchFunc(s.list, a, byAddr)
	if !found {
		i--
	}
	if i < 0 {
		return nil, 0, false
	}
	w := s.list[i]
	off := uint64(a - addrOf(w.data))
	if off+uint64(len(b)) > uint64(len(w.data)) {
		return nil, 0, false
	}
	return w, off, true
}

// The reference a lent message carries in the ring, after the header
// area: "RGLN", version u32, window id u64, the window's descriptor in
// the sender u32, 4 zero bytes, offset u64. The payload's length is the
// header's.
const refBytes = 32

var refMagic = [4]byte{'R', 'G', 'L', 'N'}

type windowRef struct {
	id  uint64
	fd  int
	off uint64
}

func (r windowRef) encode(b []byte) {
	copy(b, refMagic[:])
	binary.LittleEndian.PutUint32(b[4:], winVersion)
	binary.LittleEndian.PutUint64(b[8:], r.id)
	binary.LittleEndian.PutUint32(b[16:], uint32(r.fd))
	binary.LittleEndian.PutUint32(b[20:], 0)
	binary.LittleEndian.PutUint64(b[24:], r.off)
}

// decodeRef parses a reference; it never panics.
func decodeRef(b []byte) (windowRef, error) {
	if len(b) < refBytes || [4]byte(b[:4]) != refMagic || binary.LittleEndian.Uint32(b[20:]) != 0 {
		return windowRef{}, errors.New("not a window reference")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != winVersion {
		return windowRef{}, fmt.Errorf("window reference version %d, this build speaks %d: run the same ringo on every rank", v, winVersion)
	}
	return windowRef{
		id:  binary.LittleEndian.Uint64(b[8:]),
		fd:  int(int32(binary.LittleEndian.Uint32(b[16:]))),
		off: binary.LittleEndian.Uint64(b[24:]),
	}, nil
}

// peerWindows is one peer's windows as this rank has mapped them,
// read-only, the most recently used first. It is used by the link's
// receiving side only.
type peerWindows struct {
	pid  int // the peer's process, as this process sees it (0: not reachable)
	maps []peerWindow
}

type peerWindow struct {
	id   uint64
	mem  []byte
	data []byte
}

// maxPeerWindows bounds how many of one peer's windows stay mapped: a
// program that makes and frees windows does not pile up mappings.
const maxPeerWindows = 16

// lookup returns the data of the peer's window ref names, mapping it the
// first time.
func (p *peerWindows) lookup(ref windowRef) ([]byte, error) {
	for i, m := range p.maps {
		if m.id == ref.id {
			if i > 0 {
				copy(p.maps[1:i+1], p.maps[:i])
				p.maps[0] = m
			}
			return m.data, nil
		}
	}
	if p.pid <= 0 {
		return nil, errors.New("lent a window by a process this one cannot see")
	}
	path := fmt.Sprintf("/proc/%d/fd/%d", p.pid, ref.fd)
	// Non-blocking: a reference that names a pipe of the peer's must fail
	// here, not hang in open.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the peer's window: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("the peer's window: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() <= winHeader {
		return nil, fmt.Errorf("the peer's window %s is %d bytes, not a window", path, st.Size())
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the peer's window %s: %w", path, err)
	}
	n := binary.LittleEndian.Uint64(mem[16:])
	if [8]byte(mem[:8]) != winMagic || binary.LittleEndian.Uint64(mem[8:]) != ref.id || n != uint64(st.Size()-winHeader) {
		unix.Munmap(mem)
		return nil, fmt.Errorf("%s is not the window the peer lent (freed while in use?)", path)
	}
	if len(p.maps) == maxPeerWindows {
		unix.Munmap(p.maps[len(p.maps)-1].mem)
		p.maps = p.maps[:len(p.maps)-1]
	}
	p.maps = slices.Insert(p.maps, 0, peerWindow{id: ref.id, mem: mem, data: mem[winHeader:]})
	return p.maps[0].data, nil
}

func (p *peerWindows) close() {
	for _, m := range p.maps {
		unix.Munmap(m.mem)
	}
	p.maps = nil
}

// canSee says whether this process can map windows of process pid (as
// this process numbers it; 0 when the peer is in a PID namespace this
// one cannot see).
func canSee(pid int) bool {
	if pid <= 0 {
		return false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	f.Close()
	return true
}
