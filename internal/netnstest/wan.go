package netnstest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Link is one direction of an emulated wide-area link.
type Link struct {
	// Delay is the one-way latency: 25 ms makes a 50 ms round trip.
	Delay time.Duration
	// Loss is the fraction of packets dropped at random, each way.
	Loss float64
	// Rate is the link's speed in bits per second (0: unlimited).
	Rate float64
	// Queue is the longest a packet waits for the link before it is
	// dropped (tail drop, as tbf's latency); 0 means 200 ms.
	Queue time.Duration
}

// WAN is a wide-area network between the hosts, emulated in this process
// where the kernel has no netem: each host gets a TUN device, wan0, with
// an address of its own on the WAN's subnet, and every IP packet one host
// sends to another's WAN address is read here, held for the link's
// latency and serialisation time (or dropped, at random or when the queue
// is full) and written into the other host's wan0. Traffic to the hosts'
// bridge addresses does not cross it: point a job at Addrs to put it on
// the WAN.
type WAN struct {
	Addrs []string
	link  atomic.Pointer[Link]
	tuns  []*os.File
	links map[[2]int]*wanLink
	// readers and deliverers, stopped in that order by close
	readers, deliverers sync.WaitGroup
	// Delivered counts the bytes (IP headers included) that crossed, both
	// ways; Dropped the packets lost, at random or to a full queue.
	delivered, dropped, packets atomic.Int64
}

type wanLink struct {
	mu   sync.Mutex
	busy time.Time // when the link finishes sending what it holds
	rng  *rand.Rand
	q    chan wanPacket
}

type wanPacket struct {
	b  []byte
	at time.Time // when it arrives
}

// WAN puts the hosts on an emulated wide-area network whose every
// direction between two hosts behaves as l. It skips the test where TUN
// devices cannot be made.
func (h *Hosts) WAN(l Link) *WAN {
	h.T.Helper()
	w := &WAN{links: map[[2]int]*wanLink{}}
	if err := w.Set(l); err != nil {
		h.T.Fatal(err)
	}
	id := os.Getpid() % 200
	for i, ns := range h.Names {
		f, err := openTUN(ns, "wan0")
		if err != nil {
			w.close()
			h.T.Skipf("skipped: cannot make a TUN device in host %d: %v", i, err)
		}
		w.tuns = append(w.tuns, f)
		addr := fmt.Sprintf("10.232.%d.%d", id, i+1)
		for _, args := range [][]string{{"addr", "add", addr + "/24", "dev", "wan0"}, {"link", "set", "wan0", "up"}} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "ip"}, args...)...).CombinedOutput(); err != nil {
				w.close()
				h.T.Fatalf("WAN: host %d: ip %v: %v %s", i, args, err, out)
			}
		}
		w.Addrs = append(w.Addrs, addr)
	}
	for i := range h.Names {
		for j := range h.Names {
			if i != j {
				k := &wanLink{rng: rand.New(rand.NewPCG(uint64(i), uint64(j))), q: make(chan wanPacket, 1<<14)}
				w.links[[2]int{i, j}] = k
				w.deliverers.Go(func() { w.deliver(k, j) })
			}
		}
	}
	for i := range h.Names {
		w.readers.Go(func() { w.read(i) })
	}
	h.T.Cleanup(w.close)
	return w
}

// Set changes every link of the WAN to l, from the next packet on.
func (w *WAN) Set(l Link) error {
	if l.Queue == 0 {
		l.Queue = 200 * time.Millisecond
	}
	if l.Loss < 0 || l.Loss >= 1 || l.Delay < 0 || l.Rate < 0 {
		return fmt.Errorf("WAN: link %+v: want loss in [0, 1), a delay and a rate not negative", l)
	}
	w.link.Store(&l)
	return nil
}

// openTUN makes a TUN device in namespace ns (through InNS) and returns
// its file.
func openTUN(ns, name string) (*os.File, error) {
	var fd int
	if err := InNS(ns, func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("/dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("/dev/net/tun: %w", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tun "+ns), nil
}

// read takes the packets host i sends into its wan0 and queues each on
// the link to the host it is for.
func (w *WAN) read(i int) {
	buf := make([]byte, 1<<16)
	for {
		n, err := w.tuns[i].Read(buf)
		if err != nil {
			return // closed
		}
		p := buf[:n]
		if n < 20 || p[0]>>4 != 4 {
			continue // not IPv4 (router solicitations and the like)
		}
		j := int(p[19]) - 1
		k := w.links[[2]int{i, j}]
		if k == nil {
			continue // not another host's WAN address
		}
		w.packets.Add(1)
		l := w.link.Load()
		k.mu.Lock()
		now := time.Now()
		start := k.busy
		if start.Before(now) {
			start = now
		}
		drop := start.Sub(now) > l.Queue || k.rng.Float64() < l.Loss
		if !drop {
			if l.Rate > 0 {
				k.busy = start.Add(time.Duration(float64(n*8) / l.Rate * float64(time.Second)))
			} else {
				k.busy = start
			}
		}
		at := k.busy.Add(l.Delay)
		k.mu.Unlock()
		if drop {
			w.dropped.Add(1)
			continue
		}
		select {
		case k.q <- wanPacket{b: append([]byte(nil), p...), at: at}:
		default:
			w.dropped.Add(1)
		}
	}
}

// deliver writes the packets of link k into host j's wan0 when they are
// due. They are due in the order they were queued.
func (w *WAN) deliver(k *wanLink, j int) {
	for p := range k.q {
		if d := time.Until(p.at); d > 0 {
			time.Sleep(d)
		}
		if _, err := w.tuns[j].Write(p.b); err != nil && errors.Is(err, os.ErrClosed) {
			return
		}
		w.delivered.Add(int64(len(p.b)))
	}
}

func (w *WAN) close() {
	for _, f := range w.tuns {
		f.Close() // ends the readers' Read
	}
	w.readers.Wait()
	for _, k := range w.links {
		close(k.q)
	}
	w.deliverers.Wait()
	w.tuns, w.links = nil, nil
}

// Bytes is what crossed the WAN so far, both ways, IP headers included.
func (w *WAN) Bytes() int64 { return w.delivered.Load() }

// Drops is how many packets the WAN lost, of how many hosts sent into it.
func (w *WAN) Drops() (dropped, sent int64) { return w.dropped.Load(), w.packets.Load() }
