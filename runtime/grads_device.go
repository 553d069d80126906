package runtime

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
)

// AverageDevice replaces every gradient in device memory (a GPU buffer, as
// package device/cuda provides) with its average over the group. Each
// holds float32s, so its Len must be a multiple of 4. The gradients are
// fused into buckets by the rule Average uses (consecutive tensors up to
// BucketBytes, a larger tensor alone, empty ones skipped); each bucket is
// joined with collective.Concat and all-reduced in place through a
// collective.Stager sized by GradConfig.Staging, which copies it through
// host memory chunk by chunk, overlapping the copies with the wire. With
// BF16 or FP16 the float32s are narrowed on the host and reduced as 16-bit
// floats, as Average does. Every rank gets bit-identical averages.
//
// They are also Average's bits for the same values where the Comm reduces
// every element in the same order: recursive doubling and halving-doubling
// (AlgoAuto below Config.SmallBytes, and up to MidBytes on 4 or 8 ranks),
// and any algorithm on 2 ranks. A ring of 3 or more reduces each of its
// blocks in its own order, and the Stager's chunks are cut into blocks
// differently from Average's whole bucket, so there the two paths can
// differ in the last bit of some elements (while the ranks still agree).
//
// The buckets go out one after another and AverageDevice returns when the
// last is back on the device; the first error stops it, and a failed copy
// on one rank makes every rank's call fail rather than hang.
func (g *Gradients) AverageDevice(ctx context.Context, grads ...collective.DeviceMemory) error {
	for i, m := range grads {
		if m == nil {
			return fmt.Errorf("device gradient %d of %d is nil", i+1, len(grads))
		}
		if n := m.Len(); n%4 != 0 {
			return fmt.Errorf("device gradient %d of %d is %d bytes: want a whole number of float32s (a multiple of 4)", i+1, len(grads), n)
		}
	}
	if g.comm.Size() == 1 {
		return nil
	}
	var buckets [][]collective.DeviceMemory
	fuse(len(grads), func(i int) int { return grads[i].Len() / 4 }, g.cfg.BucketBytes/4, func(idx []int, _ int) {
		b := make([]collective.DeviceMemory, len(idx))
		for j, i := range idx {
			b[j] = grads[i]
		}
		buckets = append(buckets, b)
	})
	if len(buckets) == 0 {
		return nil
	}
	if g.stager == nil {
		s, err := collective.NewStager(g.comm, g.cfg.Staging)
		if err != nil {
			return fmt.Errorf("averaging device gradients: %w", err)
		}
		g.stager = s
	}
	for i, parts := range buckets {
		// Concat even a lone tensor: a failed copy then names its tensor.
		buf := collective.OnDevice(collective.Float32, collective.Concat(parts...))
		var err error
		switch g.cfg.Compress {
		case BF16:
			err = g.stager.AllReduceAs(ctx, buf, buf, collective.BFloat16, collective.Avg)
		case FP16:
			err = g.stager.AllReduceAs(ctx, buf, buf, collective.Float16, collective.Avg)
		default:
			err = g.stager.AllReduce(ctx, buf, buf, collective.Avg)
		}
		if err != nil {
			return fmt.Errorf("averaging device gradient bucket %d of %d: %w", i+1, len(buckets), err)
		}
	}
	return nil
}

// DeviceStats returns where AverageDevice's time went: one staged call per
// bucket. It is zero before the first AverageDevice on a group of several.
func (g *Gradients) DeviceStats() collective.StageStats {
	if g.stager == nil {
		return collective.StageStats{}
	}
	return g.stager.Stats()
}

// Close frees the host buffers AverageDevice staged through (pinned
// memory, with a GPU allocator) and the bucket buffers that lie in shm
// windows. It does not close the Comm. The Gradients stay usable: a
// later average allocates them again.
func (g *Gradients) Close() error {
	g.f32.freeWindows()
	g.u16.freeWindows()
	if g.stager == nil {
		return nil
	}
	err := g.stager.Close()
	g.stager = nil
	return err
}
