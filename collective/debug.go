package collective

// DebugSchedule prints the all-reduce schedule that rank (of size, in ring
// order 0..size-1) runs for count elements of d with algorithm a, cut into
// chunks of chunkBytes: one transfer a line, with the dependencies the
// executor honours. It sends nothing; it is for reading algorithms.
func DebugSchedule(a Algo, size, rank, count int, d DType, chunkBytes int) string {
	ring := make([]int, size)
	for i := range ring {
		ring[i] = i
	}
	sh := shape{n: size, pos: rank, ring: ring, count: count, esize: d.Size(), chunkElems: max(1, chunkBytes/d.Size())}
	return allReduceSchedule(a, sh).String()
}

// allReduceSchedule is the all-reduce schedule of algorithm a.
func allReduceSchedule(a Algo, sh shape) *schedule {
	switch a {
	case AlgoRecursiveDoubling:
		return recursiveDoubling(sh)
	case AlgoHalvingDoubling:
		return halvingDoubling(sh)
	}
	return ringAllReduce(sh)
}
