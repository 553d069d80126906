// Package ceiling measures the machine's own limit for a TCP ring: the
// highest per-rank receive throughput that N processes connected in a
// ring over loopback sustain when every rank streams to its successor
// and receives from its predecessor at the same time.
//
// A ring all-reduce moves 2(n-1)/n of the buffer through every link, so
// its bus bandwidth (nccl-tests' convention) cannot exceed this number:
// it is the busbw ceiling that ringo's TCP transport is compared against,
// by `ringo bench allreduce --check-ceiling` in the same run as the
// sweep, and by scripts/ringceiling on its own.
//
// Measure opens one listener per rank, re-executes the running binary N
// times (with the same arguments: the binary must call RunChild early,
// which recognises a child by its environment), waits until every child
// is connected, starts them together, and collects one result line from
// each over its stdout.
package ceiling
