// Package topology measures the links between the ranks of a job and
// solves, from what it measured, for the order of ranks around the ring
// and the placement of workers on hosts: a ring all-reduce runs at the
// speed of its slowest link, so the order decides the job's speed.
//
// It imports nothing of ringo's but internal: the probe talks to peers
// through a small interface that the runtime implements with the
// collective group's point-to-point calls.
//
// # Solvers
//
// SolveRing finds the ring order with the largest bottleneck (slowest
// link, each link taken as the slower of its two directions): exactly up
// to MaxExact (12) ranks, by binary search over the link bandwidths with
// a bitmask Hamiltonian-cycle check, the ties broken by the largest sum
// of links; beyond, by the same search with an iterated local search in
// place of the check. HierarchicalRing keeps each host's ranks together
// and crosses the network once between neighbouring hosts. Place puts a
// job's ranks on hosts' slots and orders its ring; Allocate shares a
// cluster's slots among jobs (a linear programme with rounding).
//
// # While the job runs
//
// Live keeps a running job's estimate of its links: the probe's matrix,
// each link replaced by the rate the job's own traffic got on it (bytes
// acknowledged over the time the sockets had data in flight, from
// TCP_INFO), and the links the ring no longer crosses scaled by the median
// measured-to-probed ratio, so that the two kinds of figures compare. Its
// Observe says to move the ring when the best ring's bottleneck beats the
// current one's by Margin (20%) in Confirm (2) observations in a row; a
// link the ring left keeps its last measured rate, so a recovered link
// does not pull the ring back and forth. Fed each node's KernelLinks (the
// eBPF counts of every program's connections), it also lowers a link the
// job left idle by what others send over it, down to the share TCP would
// give the job's sockets beside theirs.
//
// StartTCPCounters attaches eBPF programs to the TCP tracepoints that
// count retransmits, received segments and their RTT, for the whole
// machine (Read) and per connection under its addresses (Conns), for
// every program's sockets; per connection also its bytes acknowledged.
//
// ReadTCPInfo reads TCP_INFO of a socket; ReadTCPInfoByAddr asks the
// kernel for the same by the connection's addresses (sock_diag, as ss(8)
// does), for connections whose socket a library keeps (libp2p's); a
// SockDiag keeps the netlink socket open for a caller that asks often.
//
// # Hosts file (version 1)
//
// The hosts that Place (and ringo topo place --hosts) may use, as a JSON
// array, or the same array as "hosts" in an object with "version": 1:
//
//	[{"name": "h0", "addr": "10.0.0.1", "slots": 4, "intra_bandwidth": 3e11},
//	 {"name": "h1", "addr": "10.0.0.2", "slots": 4}]
//
// name (required, unique) is how plans name the host; addr (optional,
// unique) is its address, and a matrix row may name the host by either;
// slots (at least 1) is how many ranks it can run, one per GPU or CPU
// slot; intra_bandwidth (optional, bytes/s) is what two of its slots get
// between them (NVLink or PCIe, as ringo devices shows); left out, it is
// taken to be faster than any link. Unknown fields are errors.
// The matrix given with it is measured between hosts: one row per host,
// each host of the file in it, nothing else.
package topology
