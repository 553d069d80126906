package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Segment layout, version 1. One segment holds one ring, from one producer
// rank to one consumer rank; the consumer creates it. Little-endian.
//
//	off  size
//	  0     8 magic "RGSHRING"
//	  8     4 version 1
//	 12     4 slot bytes
//	 16     4 slots
//	 20     4 producer rank
//	 24     4 consumer rank
//	128     8 head: slots published by the producer (written by it only)
//	136     4 producer waiting for room (set by the producer, cleared by the consumer)
//	256     8 tail: slots released by the consumer (written by it only)
//	264     4 consumer waiting for data (set by the consumer, cleared by the producer)
//	4096    - slots × slot bytes of data
//
// head and tail count slots since the ring was made and never wrap; slot
// i lives at data offset (i mod slots) × slot bytes. Each counter has a
// 128-byte line of its own so that the two sides do not invalidate each
// other's line on every store (adjacent-line prefetchers pair 64-byte
// lines).
const (
	ringVersion = 1
	offHead     = 128
	offPWait    = 136
	offTail     = 256
	offCWait    = 264
	dataOff     = 4096
	// hdrArea is the room a message's header takes at the start of its
	// first slot: transport.HeaderSize rounded up to a cache line, so
	// that payloads start 64-byte aligned.
	hdrArea = 64
)

var ringMagic = [8]byte{'R', 'G', 'S', 'H', 'R', 'I', 'N', 'G'}

// ring is one side's view of a mapped segment.
type ring struct {
	mem       []byte // the whole mapping
	data      []byte // mem[dataOff:]
	head      *atomic.Uint64
	tail      *atomic.Uint64
	pwait     *atomic.Uint32
	cwait     *atomic.Uint32
	slotBytes uint64
	slots     uint64
	size      uint64 // slots × slotBytes
}

func segmentBytes(slotBytes, slots int) int { return dataOff + slotBytes*slots }

// newSegment creates and maps a fresh segment for the ring producer ->
// consumer. It returns the mapping and the descriptor to hand to the
// producer; the caller closes the descriptor once it has been passed on.
// Nothing of it has a name: a memfd is freed by the kernel when the last
// descriptor and mapping go, however the processes end.
func newSegment(slotBytes, slots, producer, consumer int) (*ring, int, error) {
	size := segmentBytes(slotBytes, slots)
	fd, err := sharedFile("ringo-shm", size)
	if err != nil {
		return nil, -1, err
	}
	r, err := mapSegment(fd, slotBytes, slots)
	if err != nil {
		unix.Close(fd)
		return nil, -1, err
	}
	h := r.mem[:32]
	copy(h, ringMagic[:])
	binary.LittleEndian.PutUint32(h[8:], ringVersion)
	binary.LittleEndian.PutUint32(h[12:], uint32(slotBytes))
	binary.LittleEndian.PutUint32(h[16:], uint32(slots))
	binary.LittleEndian.PutUint32(h[20:], uint32(producer))
	binary.LittleEndian.PutUint32(h[24:], uint32(consumer))
	return r, fd, nil
}

// sharedFile creates an unnamed file of size bytes to share by
// descriptor: a memfd, or where memfd_create is refused (an old kernel, or
// a seccomp filter) a /dev/shm file unlinked at once, so that it has no
// name a crash could leave.
func sharedFile(name string, size int) (int, error) {
	fd, err := -1, error(errNoMemfd)
	if !forceTmpfs {
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	}
	if err != nil {
		if fd, err = tmpfsFile(); err != nil {
			return -1, err
		}
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sizing a %d-byte shared file: %w (is /dev/shm or memory full?)", size, err)
	}
	return fd, nil
}

// forceTmpfs makes sharedFile skip memfd_create (tests of the fallback).
var forceTmpfs bool

var errNoMemfd = errors.New("memfd not used")

// tmpfsFile opens an unnamed file in /dev/shm (O_TMPFILE), or else creates
// a named one and unlinks it at once.
func tmpfsFile() (int, error) {
	if fd, err := unix.Open("/dev/shm", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return fd, nil
	}
	f, err := os.CreateTemp("/dev/shm", "ringo-shm-*")
	if err != nil {
		return -1, fmt.Errorf("creating a shared segment: no memfd, and /dev/shm: %w", err)
	}
	os.Remove(f.Name())
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return -1, fmt.Errorf("creating a shared segment: %w", err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// mapSegment maps a segment of the given shape from fd, checking its size.
func mapSegment(fd, slotBytes, slots int) (*ring, error) {
	size := segmentBytes(slotBytes, slots)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shared segment: %w", err)
	}
	if st.Size != int64(size) {
		return nil, fmt.Errorf("shared segment is %d bytes, a ring of %d slots of %d bytes needs %d", st.Size, slots, slotBytes, size)
	}
	// MAP_POPULATE: fault every page in now rather than in the first
	// transfers.
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mapping a %d-byte shared segment: %w", size, err)
	}
	return &ring{
		mem:       mem,
		data:      mem[dataOff:],
		head:      (*atomic.Uint64)(unsafe.Pointer(&mem[offHead])),
		tail:      (*atomic.Uint64)(unsafe.Pointer(&mem[offTail])),
		pwait:     (*atomic.Uint32)(unsafe.Pointer(&mem[offPWait])),
		cwait:     (*atomic.Uint32)(unsafe.Pointer(&mem[offCWait])),
		slotBytes: uint64(slotBytes),
		slots:     uint64(slots),
		size:      uint64(slotBytes) * uint64(slots),
	}, nil
}

// checkSegment verifies the identity block of a segment a peer made.
func (r *ring) check(producer, consumer int) error {
	h := r.mem[:32]
	switch {
	case [8]byte(h[:8]) != ringMagic:
		return errors.New("not a ringo ring segment")
	case binary.LittleEndian.Uint32(h[8:]) != ringVersion:
		return fmt.Errorf("ring segment version %d, this build speaks %d: run the same ringo on every rank", binary.LittleEndian.Uint32(h[8:]), ringVersion)
	case uint64(binary.LittleEndian.Uint32(h[12:])) != r.slotBytes || uint64(binary.LittleEndian.Uint32(h[16:])) != r.slots:
		return fmt.Errorf("ring segment of %d slots of %d bytes, the group agreed on %d of %d",
			binary.LittleEndian.Uint32(h[16:]), binary.LittleEndian.Uint32(h[12:]), r.slots, r.slotBytes)
	case int(binary.LittleEndian.Uint32(h[20:])) != producer || int(binary.LittleEndian.Uint32(h[24:])) != consumer:
		return fmt.Errorf("ring segment for ranks %d -> %d, expected %d -> %d",
			binary.LittleEndian.Uint32(h[20:]), binary.LittleEndian.Uint32(h[24:]), producer, consumer)
	}
	return nil
}

func (r *ring) unmap() {
	if r != nil && r.mem != nil {
		unix.Munmap(r.mem)
		r.mem, r.data = nil, nil
	}
}

// put copies b into the ring's data at stream byte position pos, wrapping
// at the end of the ring. b must fit in the ring.
func (r *ring) put(pos uint64, b []byte) {
	o := pos % r.size
	n := copy(r.data[o:], b)
	if n < len(b) {
		copy(r.data, b[n:])
	}
}

// putNT is put with non-temporal stores for the whole 64-byte blocks of b
// (pos must be 64-byte aligned): the bytes go to memory instead of
// staying in this core's caches, from where the reader's core would have
// to fetch them line by line.
func (r *ring) putNT(pos uint64, b []byte) {
	o := pos % r.size
	n := min(uint64(len(b)), r.size-o)
	ntPart(r.data[o:o+n], b[:n])
	if n < uint64(len(b)) {
		ntPart(r.data[:uint64(len(b))-n], b[n:])
	}
}

func ntPart(dst, src []byte) {
	copyNT(dst, src)
	if k := len(src) &^ 63; k < len(src) {
		copy(dst[k:], src[k:])
	}
}

// get copies from the ring at stream byte position pos into b.
func (r *ring) get(pos uint64, b []byte) {
	o := pos % r.size
	n := copy(b, r.data[o:])
	if n < len(b) {
		copy(b[n:], r.data)
	}
}

// span returns the bytes at stream position pos, up to n of them, as one
// slice of the ring (shorter than n where the ring wraps).
func (r *ring) span(pos, n uint64) []byte {
	o := pos % r.size
	return r.data[o : o+min(n, r.size-o)]
}

// evfd is an eventfd: the sleeping side of a wake-up. Its owner reads it
// (through Go's poller, so a sleeping rank holds no thread and deadlines
// work); the peer holds a duplicate and writes it.
type evfd struct {
	f   *os.File
	dl  time.Time // read deadline last set
	buf [8]byte
	one [8]byte
}

func newEventfd() (int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("creating an eventfd: %w", err)
	}
	return fd, nil
}

// fileEventfd wraps a non-blocking eventfd descriptor. os.NewFile sees
// the O_NONBLOCK flag and registers it with Go's poller.
func fileEventfd(fd int, name string) *evfd {
	e := &evfd{f: os.NewFile(uintptr(fd), name)}
	binary.LittleEndian.PutUint64(e.one[:], 1)
	return e
}

// wake adds one to the counter, waking a reader. Safe after close (it then
// does nothing), and concurrent with other wakes.
func (e *evfd) wake() {
	e.f.Write(e.one[:])
}

// sleep waits until the counter is non-zero and clears it, or until the
// deadline (os.ErrDeadlineExceeded). One reader at a time.
func (e *evfd) sleep(deadline time.Time) error {
	if deadline != e.dl {
		e.dl = deadline
		if err := e.f.SetReadDeadline(deadline); err != nil {
			return err
		}
	}
	_, err := e.f.Read(e.buf[:])
	return err
}

func (e *evfd) close() {
	if e != nil && e.f != nil {
		e.f.Close()
	}
}
