// Package topology measures the links between the ranks of a job and
// solves, from what it measured, for the order of ranks around the ring
// and the placement of workers on hosts: a ring all-reduce runs at the
// speed of its slowest link, so the order decides the job's speed.
//
// It imports nothing of ringo's but internal: the probe talks to peers
// through a small interface that the runtime implements with the
// collective group's point-to-point calls.
package topology
