// Package shm is ringo's shared-memory transport, for ranks that are
// processes on one host.
//
// Between every ordered pair of ranks there is one ring in a shared
// segment: a memfd (or, where memfd_create is refused, an unnamed
// O_TMPFILE file in /dev/shm) that the receiving rank creates and passes
// to the sender over a unix socket with SCM_RIGHTS. Segments never have a
// name, so nothing can outlive a job, however its processes end (kill -9
// included): the kernel frees a segment when the last descriptor and
// mapping of it go.
//
// # Rings
//
// A ring is single-producer, single-consumer and lock-free: Slots slots of
// SlotBytes each, a head counter the sender alone writes (slots
// published) and a tail counter the receiver alone writes (slots
// released), each on a cache line of its own. A message starts at a slot
// boundary: its 48-byte header (the same header and checksum as on TCP)
// in a 64-byte area, then its payload, running on through as many slots
// as it needs. The sender copies 64 KiB at a time and publishes each
// batch, and the receiver copies out and releases in the same steps, so a
// message larger than the ring streams through it with both sides copying
// at once. A sender that finds its copies of large messages (256 KiB and
// up) into a ring slow, which happens when the reader's core holds the
// ring's lines in a cache the writer's core does not share, switches to
// non-temporal stores for that ring, and tries ordinary ones again every
// 200 ms (see ntMin in shm.go for the measurements). RecvPayloadFunc hands
// out the payload where it lies in the ring, so that a reduction can read
// the peer's data without a copy first.
//
// # Windows: lending instead of copying
//
// A Window (NewWindow) is memory in a memfd of its own. A send of 64 KiB
// or more whose payload lies in a window, made through SendLent (the
// collective schedules do it for the ring's and the hierarchical
// algorithms' intra-host sends, from collective's LendBytes, 2 MiB), puts
// a 32-byte reference in the ring instead of the bytes: the window's
// random id, its descriptor in the sender and the offset. The byte after
// the message's header marks it (it is written for every message, since
// a slot holds whatever an older message left there). The receiver maps
// the window read-only through /proc/<sender pid>/fd/<descriptor> the
// first time (it checks the id in the window's header, so a reused
// descriptor is never mistaken for the window), keeps up to 16 of each
// peer's windows mapped, and reduces or copies straight out of the
// sender's memory; it releases the reference's slot when it is done.
// That release is what AwaitLent waits for: the sender must not change
// the bytes before, and the collective executor waits before a receive
// writes over lent bytes and before a call returns. A byte so crosses
// between the two processes' buffers in one copy, not two (into the ring
// and out). Each side says in its offer whether it can map the other's
// windows (it sees the peer's process: SO_PEERCRED gave a pid, and
// /proc/<pid>/fd opens); a rank that cannot, or that turned lending off
// (Config.NoLend, RINGO_SHM_LEND=0), is never lent to.
//
// # Waiting
//
// A rank that waits for data (or for room in a full ring) polls the
// counter for up to Config.Spin (1 ms by default), in bursts of looks with
// a yield between bursts: to its own goroutines (the other lane of a
// collective may need the only P), and, after the first 20 µs or from the
// start when ranks outnumber cores (Config.Yield), to other processes (the
// peer it waits for may be waiting for this very core). Then it raises a
// waiting flag in the segment, looks once more, and sleeps on an eventfd
// in Go's poller, holding no thread. The other side checks the flag after
// each publish or release and, if it is up, clears it and writes the
// eventfd. Since both the flag and the counter are sequentially
// consistent atomics, a wake-up is never lost; an idle rank costs nothing
// once its poll has run out.
//
// # Failures
//
// Beside the rings, every pair of ranks keeps the unix socket the rings
// were passed on. It carries fault notices (Abort) and goodbyes (Close),
// as the tcp transport's control connections do. The kernel closes a dead
// process's sockets, so the end of the socket without a goodbye tells its
// peers at once that it died, even while they wait on a ring it will
// never write again; every waiting call is woken and fails with a
// transport.Fault that wraps ErrPeerLost and names the rank. A peer that
// is alive but silent is caught by the call's deadline (ErrTimeout).
//
// # Bootstrap
//
// The group meets through package transport's bootstrap (version 2) at
// the TCP rendezvous address. Every rank opens an abstract unix socket
// ("@ringo-shm-<pid>-<random>": a name in the kernel, not a file) and
// offers {"sock":S,"slot_bytes":SB,"slots":K}; rank 0's ring shape wins.
// Rank 0 checks that every rank runs under its kernel (the boot id) and
// in its network namespace, and names the rank that does not. Each rank
// then dials every lower rank's socket; the connection opens with the
// token challenge and the hello, and both ends send a 32-byte offer:
// "RGSO", version u32 (2), nonce u64, from u32, slot bytes u32, slots
// u32, flags u32 (bit 0: "I can map your windows"), with three
// descriptors attached: the ring the sender will
// read (the other side writes it), and the two eventfds that wake the
// sender (data has arrived; room has been made). The segment layout is
// documented in ring.go. The offer decoder is fuzzed. Endpoint is that
// half of Join alone, for a mixed transport.
package shm
