// Package collective moves and reduces tensors between the ranks of a
// group: all-reduce, reduce-scatter, all-gather, broadcast, reduce,
// barrier, and point-to-point send and receive, over any Transport (TCP
// today, shared memory and RDMA later).
//
//	comm, err := collective.NewTCP(ctx, tcpCfg, collective.DefaultConfig())
//	grads := make([]float32, n)
//	err = comm.AllReduce(ctx, collective.Float32s(grads), collective.Float32s(grads), collective.Avg)
//
// # Algorithms
//
// Algorithms produce schedules (which peer, which bytes, send, receive or
// receive-and-reduce) and do no I/O; an executor runs a schedule over a
// transport, sends on one goroutine and receives on the caller's, so that
// sending a chunk overlaps receiving and reducing the next. Schedules are
// cached per call shape, so a training loop's steady state allocates
// nothing. Calls of up to Config.PollBytes (2 MiB; 1 MiB where a host's
// workers are more than two per core, PollBytesFor; RINGO_POLL_BYTES) ask
// the transport to poll on both lanes instead of sleeping between
// messages (transport.Poller), where wake-ups are still a large part of
// the time; halving-doubling calls of up to that size skip the lanes and
// run in program order, each pair of ranks ordered so that the lower sends
// first and the higher receives first.
//
//   - All-reduce, large: ring reduce-scatter then ring all-gather, in
//     pipelined chunks (Config.ChunkBytes); each rank sends 2(n-1)/n of the
//     buffer, the bandwidth optimum.
//   - All-reduce, small: recursive doubling, ceil(log2 n) exchanges; ranks
//     beyond the largest power of two fold in first and get the result back.
//   - All-reduce, mid (from Config.HalvingBytes, 128 KiB, RINGO_ALGO_HALVING,
//     up to Config.MidBytes, 8 MiB, RINGO_ALGO_MID) on 4, 8, 16 ... ranks:
//     halving-doubling (Rabenseifner), a reduce-scatter by recursive
//     halving then an all-gather by recursive doubling, the ring's bytes in
//     2·log2(n) steps. A tuning table (RINGO_TUNING, written by ringo bench
//     tune) overrides these size bands per world.
//   - Reduce-scatter and all-gather: the two halves of the ring.
//   - Broadcast and reduce: binomial trees when small, pipelined chains
//     around the ring when large.
//   - Barrier: dissemination, ceil(log2 n) rounds of empty messages.
//   - Hierarchical (AlgoHier, hier.go), for a group of several hosts with
//     the same number (>1) of ranks each: all-reduce is a reduce-scatter
//     inside each host, an all-reduce of each rank's block between the
//     ranks of the same local index on every host (ring, or recursive
//     doubling when the block is small), and an all-gather inside each
//     host; reduce-scatter and all-gather are its halves. The layout is
//     Config.Hosts or the transport's (package mix reports it); auto uses
//     it from Config.HierBytes up (RINGO_HIER_THRESHOLD).
//
// Buffers that lie in an shm.Window are lent, not copied, to the ranks of
// the same host (lend.go) by the ring's and the hierarchical algorithms'
// intra-host sends in calls of Config.LendBytes (2 MiB, RINGO_LEND_BYTES)
// and more: the peer reads them in this process's memory, and the
// executor waits for it to have done so before a receive writes over
// them and before the call returns. Lends says whether a call of a size
// would lend; runtime.Gradients puts its buckets in windows where theirs
// would. At 2 hosts of 2 ranks on 2 cores, 64 MiB took 72 ms in
// windows against 99-102 ms hierarchically without them (BENCHMARKS.md).
//
// A group's ring order (Config.RingOrder, the topology solver's) can change
// between calls: Reorderer.Reorder is a collective call that every rank
// makes with the same order, checked by an all-reduce of its hash.
//
// "Small" is below Config.SmallBytes (512 KiB by default; RINGO_ALGO_THRESHOLD).
// RINGO_ALGO=ring|rd|hd|hier forces a family. Every algorithm handles any count (0,
// 1, fewer elements than ranks, primes) and any group size.
//
// # Numbers
//
// Every element of a result is computed once, by one rank, in a fixed order
// of operands, then copied to the others: all ranks get bit-identical
// results, and the same inputs, group size and algorithm give the same bits
// on every run. 16-bit floats are widened to float32 for each operation and
// rounded back to nearest-even. Avg is a sum followed by a division by the
// group size in the element type (integers truncate toward zero). NaN and
// Inf propagate as IEEE 754 says; Min and Max propagate NaN.
//
// # Device memory
//
// A Stager runs AllReduce, ReduceScatter, AllGather and Broadcast over
// memory the host cannot address (a GPU's), through anything with Len,
// CopyToHost and CopyFromHost (DeviceMemory; device/cuda's Mem is one).
// Each call is cut into chunks that flow through three stages over a ring
// of host slots (pinned memory, when StagingConfig.Alloc gives it): chunk
// k+1 is copied off the device while chunk k is on the wire and chunk k-1
// is copied back, so the copies hide behind the network. The wire stage is
// this package's host collective on each chunk, so results are those of
// host buffers, bit for bit, on every rank. AllReduceAs sends float32
// device memory as bfloat16 or float16; Concat joins many tensors into one
// call (bucketing). StageStats says how long each stage was busy.
//
// # Failures
//
// Every call has a deadline: its context's, or Config.Timeout from the
// start of the call (RINGO_TIMEOUT). Every message carries the call's
// sequence number and fingerprint (op, dtype, count, reduction, root,
// algorithm), so ranks that make different calls fail with ErrMismatch
// naming both calls; ranks that disagree only on the root wait on different
// peers, so the rank that times out first looks at what the others already
// sent and reports the disagreement rather than a bare timeout. A dead peer (its connection closes without a goodbye)
// or a silent one (nothing by the deadline) fails every live rank with a
// *PeerError naming it: the rank that notices tells all others at once.
// After any failure the group is unusable; close it and form a new one.
// Arguments that are wrong locally (lengths, root, peer, dtype) are refused
// with an *ArgError before anything is sent, and the group stays usable.
package collective
