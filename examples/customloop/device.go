package main

import (
	"context"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/device/cuda"
	"github.com/ringo-ml/ringo/runtime"
)

// deviceGrads holds the gradients in GPU memory for the all-reduce, as a
// trainer whose backward pass runs on the GPU would. This model computes
// them on the CPU, so each step copies them in and the averages back out;
// a GPU model would call AverageDevice on its own buffers and copy
// nothing.
type deviceGrads struct {
	ctx    *cuda.Context
	dw, db *cuda.Mem
}

// newDeviceGrads opens this worker's GPU (local rank mod the visible
// ones: the launcher gives each worker its own, or workers share one) and
// gives the gradients' staging pinned memory.
func newDeviceGrads(localRank int, cfg *runtime.GradConfig) (*deviceGrads, error) {
	c, err := cuda.OpenLocal(localRank)
	if err != nil {
		return nil, err
	}
	dg := &deviceGrads{ctx: c}
	if dg.dw, err = c.Alloc(4 * features); err == nil {
		dg.db, err = c.Alloc(4)
	}
	if err != nil {
		dg.Close()
		return nil, err
	}
	cfg.Staging.Alloc, cfg.Staging.Free = c.PinnedAllocator()
	return dg, nil
}

func (dg *deviceGrads) average(ctx context.Context, grads *runtime.Gradients, gw, gb []float32) error {
	for _, c := range []struct {
		m *cuda.Mem
		v []float32
	}{{dg.dw, gw}, {dg.db, gb}} {
		if err := c.m.CopyFromHost(0, collective.Float32s(c.v).Bytes()); err != nil {
			return err
		}
	}
	if err := grads.AverageDevice(ctx, dg.dw, dg.db); err != nil {
		return err
	}
	if err := dg.dw.CopyToHost(collective.Float32s(gw).Bytes(), 0); err != nil {
		return err
	}
	return dg.db.CopyToHost(collective.Float32s(gb).Bytes(), 0)
}

func (dg *deviceGrads) Close() {
	for _, m := range []*cuda.Mem{dg.dw, dg.db} {
		if m != nil {
			m.Free()
		}
	}
	dg.ctx.Close()
}
