// Package collectivetest is the conformance suite that every transport and
// algorithm of package collective must pass.
//
// A transport's test hands Run a Factory that forms a fresh group of n
// ranks over that transport; Run then checks, against a naive reference
// computed here in float64:
//
//   - every collective (AllReduce, ReduceScatter, AllGather, Broadcast and
//     Reduce from every root, Barrier, Send/Recv, AllReduceAsync) with every
//     dtype and reduction, world sizes 1 to 8, awkward counts (0, 1, 2,
//     fewer than the ranks, primes, counts the world size does not divide,
//     and counts large enough for several pipeline chunks), each algorithm
//     forced in turn, in place and out of place;
//   - determinism: every rank gets the same bits, and the same call gives
//     the same bits twice;
//   - NaN and Inf propagation;
//   - bad arguments, refused with *collective.ArgError while the group
//     stays usable;
//   - faults: a peer that dies mid-call, a peer that never calls, a rank
//     whose context is cancelled, ranks that disagree about the call; every
//     live rank must fail within the configured timeout (plus a second of
//     slack) with a *collective.PeerError that names the culprit, and later
//     calls must fail at once instead of hanging;
//   - no goroutine outlives Close.
//
// Inputs are small integers wherever the result is checked exactly, so that
// the exact answer is representable in every dtype (bfloat16 included) and
// the order of reduction does not matter. Every call runs under a context
// with a deadline, so that a bug shows as a failure that names the rank,
// the call and the element, never as a hung test.
//
// RunQuick runs a reduced matrix (fewer world sizes and counts) for
// transports whose groups are slower to form, such as TCP.
package collectivetest
