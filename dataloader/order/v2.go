package order

// Order version 2: spans dealt to streams. See the package doc for the
// algorithm and its guarantees; the comments here say why each step is
// the way it is.

// span is a run of consecutive samples of one shard.
type span struct {
	shard int
	start int64
	n     int64
}

// cutSpans cuts every shard into spans of about target samples (0:
// DefaultSpan). With a block layout a span ends only at a block boundary
// (it is the shortest run of whole blocks holding at least target
// samples, or what is left of the shard), so two spans never share a
// block and a reader of one span reads only its own blocks.
func cutSpans(shards []int64, blocks [][]int64, target int) []span {
	t := int64(target)
	if t <= 0 {
		t = DefaultSpan
	}
	var out []span
	for sh, n := range shards {
		if blocks == nil {
			for s := int64(0); s < n; s += t {
				out = append(out, span{sh, s, min(t, n-s)})
			}
			continue
		}
		var start, acc int64
		for _, b := range blocks[sh] {
			acc += b
			if acc >= t {
				out = append(out, span{sh, start, acc})
				start, acc = start+acc, 0
			}
		}
		if acc > 0 {
			out = append(out, span{sh, start, acc})
		}
	}
	return out
}

// newPCGv2 seeds V2's generators: stream -1 permutes the spans, stream s
// shuffles stream s. The high word is xor-ed with a value that is distinct
// for every stream (mix64 is a bijection), so no two generators of one
// (seed, epoch) share a state, and each stream's draws do not depend on
// how many draws another stream made.
func newPCGv2(seed uint64, epoch, stream int) *pcg {
	hi, lo := deriveSeed(seed, epoch)
	return &pcg{hi: hi ^ mix64(domainV2+uint64(int64(stream)+1)), lo: lo}
}

// deal hands the spans, in the given order, to streams: each span goes to
// the stream with the fewest samples so far (the lower index on a tie).
// Stream s is filled to exactly total/streams samples, one more for the
// first total%streams streams; a span that would take its stream past
// that is split and the rest dealt on. So streams differ by at most one
// sample, which keeps ranks in step to the last batch without reading each
// other's blocks, and at most streams-1 splits cost a block shared by two
// streams.
func deal(spans []span, streams int, total int64) [][]span {
	out := make([][]span, streams)
	count := make([]int64, streams)
	target := make([]int64, streams)
	h := make(minHeap, 0, streams)
	for s := range target {
		target[s] = total / int64(streams)
		if int64(s) < total%int64(streams) {
			target[s]++
		}
		if target[s] > 0 {
			h.push(s, 0)
		}
	}
	for _, sp := range spans {
		for sp.n > 0 {
			s := h.pop()
			take := min(sp.n, target[s]-count[s])
			out[s] = append(out[s], span{sp.shard, sp.start, take})
			count[s] += take
			sp.start += take
			sp.n -= take
			if count[s] < target[s] {
				h.push(s, count[s])
			}
		}
	}
	return out
}

// minHeap orders streams by (samples so far, index).
type minHeap []struct {
	n int64
	s int
}

func (h minHeap) less(i, j int) bool {
	return h[i].n < h[j].n || (h[i].n == h[j].n && h[i].s < h[j].s)
}

func (h *minHeap) push(s int, n int64) {
	*h = append(*h, struct {
		n int64
		s int
	}{n, s})
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if !a.less(i, p) {
			break
		}
		a[i], a[p] = a[p], a[i]
		i = p
	}
}

func (h *minHeap) pop() int {
	a := *h
	top := a[0].s
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(a) && a.less(l, m) {
			m = l
		}
		if r < len(a) && a.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// fillV2 writes the V2 order of epoch for the given streams and chunk
// into out (len Total).
func (o *Order) fillV2(epoch, streams, chunk int, out []Sample) {
	spans := append([]span(nil), o.spans...)
	if o.cfg.Shuffle {
		rng := newPCGv2(o.cfg.Seed, epoch, -1)
		for i := len(spans) - 1; i > 0; i-- {
			j := rng.Intn(i + 1)
			spans[i], spans[j] = spans[j], spans[i]
		}
	}
	dealt := deal(spans, streams, o.total)
	seqs := make([][]Sample, streams)
	for s, sps := range dealt {
		var n int64
		for _, sp := range sps {
			n += sp.n
		}
		seq := make([]Sample, 0, n)
		for _, sp := range sps {
			for i := range sp.n {
				seq = append(seq, Sample{Shard: sp.shard, Index: sp.start + i})
			}
		}
		if o.cfg.Shuffle && o.cfg.Window > 1 {
			seq = shuffleStream(seq, o.cfg.Window, newPCGv2(o.cfg.Seed, epoch, s))
		}
		seqs[s] = seq
	}
	// Round-robin in chunks of one per-rank batch: with world = streams
	// and that batch size, global batch i is chunk i of every stream and
	// rank r's share of it is stream r's chunk.
	k := 0
	for k < len(out) {
		for s, seq := range seqs {
			n := min(chunk, len(seq))
			k += copy(out[k:], seq[:n])
			seqs[s] = seq[n:]
		}
	}
}

// shuffleStream passes seq through a shuffle buffer of w slots (the
// algorithm of V1's step 3) and returns the emitted order.
func shuffleStream(seq []Sample, w int, rng *pcg) []Sample {
	if w > len(seq) {
		w = len(seq)
	}
	out := make([]Sample, 0, len(seq))
	buf := make([]Sample, 0, w)
	for _, s := range seq {
		if len(buf) < w {
			buf = append(buf, s)
			continue
		}
		j := rng.Intn(w)
		out = append(out, buf[j])
		buf[j] = s
	}
	for n := len(buf); n > 0; n-- {
		j := rng.Intn(n)
		out = append(out, buf[j])
		buf[j] = buf[n-1]
	}
	return out
}
