package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/device/cuda"
)

// Devices are where a sweep's buffers live: host memory, or GPU memory
// staged through pinned host memory (collective.Stager).
var Devices = []string{"host", "cuda"}

// checkDevice fails at once, in the process the user started, when the
// device asked for is not there: before any worker starts.
func checkDevice(c Config) error {
	if c.Device != "cuda" {
		return nil
	}
	d, err := cuda.Load()
	if err == nil {
		_, err = d.Visible()
	}
	if err != nil {
		return fmt.Errorf("--device cuda: %w", err)
	}
	return nil
}

// gpuSide is a worker's GPU: its context (rank mod the visible devices,
// so several ranks may share one GPU, each process with its own context)
// and the stager its collectives run through.
type gpuSide struct {
	ctx    *cuda.Context
	stager *collective.Stager
}

func openGPU(c Config, comm collective.Comm) (*gpuSide, error) {
	ctx, err := cuda.OpenLocal(comm.Rank())
	if err != nil {
		return nil, err
	}
	scfg := collective.DefaultStagingConfig()
	if c.StageChunk > 0 {
		scfg.ChunkBytes = c.StageChunk
	}
	scfg.Alloc, scfg.Free = ctx.PinnedAllocator()
	s, err := collective.NewStager(comm, scfg)
	if err != nil {
		ctx.Close()
		return nil, err
	}
	return &gpuSide{ctx: ctx, stager: s}, nil
}

func (g *gpuSide) Close() error {
	return errors.Join(g.stager.Close(), g.ctx.Close())
}

// deviceBuffers mirror a size's host buffers in GPU memory: the host ones
// hold the inputs and, after a checked call, the outputs read back.
type deviceBuffers struct {
	g          *gpuSide
	send, recv *cuda.Mem
}

func (g *gpuSide) buffers(b *buffers) (*deviceBuffers, error) {
	send, err := g.ctx.Alloc(len(b.send))
	if err != nil {
		return nil, err
	}
	recv, err := g.ctx.Alloc(len(b.recv))
	if err != nil {
		send.Free()
		return nil, err
	}
	db := &deviceBuffers{g: g, send: send, recv: recv}
	if err := send.CopyFromHost(0, b.send); err != nil {
		db.Free()
		return nil, err
	}
	return db, nil
}

func (db *deviceBuffers) Free() { db.send.Free(); db.recv.Free() }

// load copies the host recv buffer (reset's fresh inputs or poison) to
// the device; store copies the device's result back for checking.
func (db *deviceBuffers) load(b *buffers) error { return db.recv.CopyFromHost(0, b.recv) }

func (db *deviceBuffers) store(b *buffers) error { return db.recv.CopyToHost(b.recv, 0) }

// run is buffers.run on device memory.
func (db *deviceBuffers) run(ctx context.Context, b *buffers) error {
	return call(ctx, db.g.stager, b, collective.OnDevice(b.dtype, db.send), collective.OnDevice(b.dtype, db.recv))
}

// stageShares is each stage's busy time as a fraction of the calls' wall
// time. The stages overlap, so the shares add up to more than 1 when the
// pipeline hides copies behind the wire.
func stageShares(st collective.StageStats) (d2h, wire, h2d float64) {
	if st.Total <= 0 {
		return 0, 0, 0
	}
	t := float64(st.Total)
	return float64(st.D2H) / t, float64(st.Wire) / t, float64(st.H2D) / t
}
