// Package bench runs ringo's collective benchmarks: `ringo bench` starts N
// local worker processes that form a real group (over TCP, or with
// --transport shm over shared memory), sweep a range of sizes,
// check every result against the value it must have, and report one row
// per size in nccl-tests' format (time, algbw, busbw, wrong results).
//
// busbw follows nccl-tests: algbw = bytes / time, and busbw = algbw ×
// 2(n−1)/n for all-reduce, × (n−1)/n for all-gather and reduce-scatter,
// × 1 for broadcast, so that the figure is comparable with the link's
// bandwidth whatever the group size.
package bench
