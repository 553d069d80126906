package shm

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/internal/auth"
)

// Config says how to join a group. Build it with DefaultConfig.
type Config struct {
	// Rendezvous is rank 0's bootstrap address, host:port, as for the tcp
	// transport. Rank 0 listens there; the others connect to it. Only the
	// bootstrap uses it: the ranks then meet over abstract unix sockets
	// and exchange their rings, so every rank must run on this host.
	Rendezvous string
	Rank, Size int
	// Token, when set, is the job's secret: the rendezvous and every
	// connection between ranks open with an HMAC challenge-response
	// (internal/auth), so a process without it cannot join or map a ring.
	Token auth.Token
	// Spin is how long a rank waiting for a peer (for a message, or for
	// room in a full ring) polls the ring before it sleeps until the peer
	// wakes it (0: it sleeps at once). Between bursts of looks it lets
	// its own goroutines run. Polling trades CPU for latency; it counts
	// only the time spent looking, so a poll interrupted by useful work
	// on the process's other goroutines lasts longer.
	Spin time.Duration
	// Yield makes a polling rank give its core to other processes
	// (sched_yield) between bursts of looks from the start of its poll,
	// which pays when ranks outnumber cores: the peer it waits for may be
	// waiting for that core. Without it a poll keeps its core for its
	// first 20 µs only, then yields too. See YieldFor.
	Yield bool
	// SlotBytes and Slots shape every ring: Slots slots of SlotBytes each,
	// one ring per ordered pair of ranks. A message starts at a slot
	// boundary; its 64-byte header and payload run on through as many
	// slots as they need, so a message longer than the ring streams
	// through it. Rank 0's values win.
	SlotBytes, Slots int
	// NoLend turns off lending (see Window): every payload is copied
	// through the ring, even one that lies in a window. For comparing
	// the two paths; a rank that does not take loans is never lent to.
	NoLend bool
	// OnFault, if set, is called once, synchronously, when the transport
	// records its first fault (before any call returns it), so that a
	// worker can tell its launcher whom it blames. It must not block.
	OnFault func(*transport.Fault)

	// hostID overrides this host's identity (tests of the same-host check).
	hostID string
}

// Environment variables read by FromEnv.
const (
	EnvSpin      = "RINGO_SPIN"      // a Go duration, e.g. 50us; 0 turns polling off
	EnvYield     = "RINGO_SHM_YIELD" // 1 or 0
	EnvSlotBytes = "RINGO_SHM_SLOT_BYTES"
	EnvSlots     = "RINGO_SHM_SLOTS"
	EnvLend      = "RINGO_SHM_LEND" // 1 or 0 (0 sets NoLend)
)

// Limits on the ring shape. minRingBytes keeps a ring large enough that
// the layer above can send one message of up to 64 KiB to a peer and only
// then receive from it (collective's inline path) without waiting for
// room, as a socket buffer would let it.
const (
	minSlotBytes = 4 << 10
	maxSlotBytes = 16 << 20
	minSlots     = 4
	maxSlots     = 1 << 16
	minRingBytes = 256 << 10
	maxRingBytes = 1 << 30
)

// DefaultConfig returns rings of 16 slots of 64 KiB (1 MiB per ordered
// pair of ranks), 1 ms of polling, and YieldFor(1). A launcher that knows
// how many ranks share the host should set Yield to YieldFor of that
// number.
//
// Measured on 2 cores (BENCHMARKS.md): polling for 1 ms instead of
// 100 µs took a 4 MiB all-reduce between 2 processes from about 1060 to
// 630 µs, and between 4 from about 3300 to 2100 µs, because the waits
// inside a pipelined collective (a peer reducing a chunk) last a few
// hundred microseconds, and waking a sleeping process costs tens of
// microseconds on a virtual machine. Past 1 ms nothing more was gained.
func DefaultConfig() Config {
	return Config{Spin: time.Millisecond, Yield: YieldFor(1), SlotBytes: 64 << 10, Slots: 16}
}

// YieldFor suggests Yield when ranksPerHost ranks share this machine:
// only when they outnumber the cores (as MPI libraries yield only when
// oversubscribed). While each rank has a core, a yield only adds a system
// call, or a context switch to some unrelated thread, to every wait.
func YieldFor(ranksPerHost int) bool { return ranksPerHost > runtime.NumCPU() }

// FromEnv overrides Spin, Yield, SlotBytes, Slots and NoLend from the
// environment.
func (c Config) FromEnv() (Config, error) {
	if v := os.Getenv(EnvSpin); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return c, fmt.Errorf("%s=%q: not a duration (e.g. 50us, or 0)", EnvSpin, v)
		}
		c.Spin = d
	}
	if v := os.Getenv(EnvYield); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: want 1 or 0", EnvYield, v)
		}
		c.Yield = b
	}
	if v := os.Getenv(EnvLend); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: want 1 or 0", EnvLend, v)
		}
		c.NoLend = !b
	}
	if v := os.Getenv(EnvSlotBytes); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: not a number of bytes", EnvSlotBytes, v)
		}
		c.SlotBytes = n
	}
	if v := os.Getenv(EnvSlots); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("%s=%q: not a number", EnvSlots, v)
		}
		c.Slots = n
	}
	return c, nil
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	if err := transport.CheckRank("shm", c.Rank, c.Size); err != nil {
		return err
	}
	switch {
	case c.Spin < 0:
		return fmt.Errorf("shm: Spin %v must not be negative", c.Spin)
	case c.SlotBytes < minSlotBytes || c.SlotBytes > maxSlotBytes || c.SlotBytes%64 != 0:
		return fmt.Errorf("shm: SlotBytes %d must be a multiple of 64 from %d to %d", c.SlotBytes, minSlotBytes, maxSlotBytes)
	case c.Slots < minSlots || c.Slots > maxSlots:
		return fmt.Errorf("shm: Slots %d must be %d..%d", c.Slots, minSlots, maxSlots)
	case c.SlotBytes*c.Slots < minRingBytes || c.SlotBytes*c.Slots > maxRingBytes:
		return fmt.Errorf("shm: a ring of %d slots of %d bytes holds %d bytes; it must hold %d to %d", c.Slots, c.SlotBytes, c.SlotBytes*c.Slots, minRingBytes, maxRingBytes)
	case c.Size > 1 && c.Rendezvous == "":
		return fmt.Errorf("shm: a group of %d ranks needs a rendezvous address", c.Size)
	}
	return nil
}

// overrideHost applies hostID, if set, to h.
func (c Config) overrideHost(h *transport.Host) {
	if c.hostID != "" {
		h.Name, h.Boot = c.hostID, c.hostID
	}
}
