package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/ringo-ml/ringo/dataloader"
)

// features is the number of inputs of the synthetic task.
const features = 16

// sample is one record: an id (to check coverage), the inputs, a label.
type sample struct {
	id uint64
	x  [features]float32
	y  float32
}

const recordSize = 8 + 4*features + 4

func decode(b []byte) (sample, error) {
	var s sample
	if len(b) != recordSize {
		return s, fmt.Errorf("record of %d bytes, want %d", len(b), recordSize)
	}
	s.id = binary.LittleEndian.Uint64(b)
	for i := range s.x {
		s.x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[8+4*i:]))
	}
	s.y = math.Float32frombits(binary.LittleEndian.Uint32(b[8+4*features:]))
	return s, nil
}

// writeDataset packs n samples of a noisy linear classification task.
func writeDataset(dir string, n int) error {
	opts := dataloader.DefaultPackOptions()
	opts.ShardBytes = 16 << 10 // several shards even for small sets
	p, err := dataloader.NewPacker(dir, opts)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(7, 7))
	var truth [features]float32
	for i := range truth {
		truth[i] = float32(rng.NormFloat64())
	}
	rec := make([]byte, recordSize)
	for id := range n {
		binary.LittleEndian.PutUint64(rec, uint64(id))
		var z float32
		for i := range features {
			x := float32(rng.NormFloat64())
			z += truth[i] * x
			binary.LittleEndian.PutUint32(rec[8+4*i:], math.Float32bits(x))
		}
		y := float32(0)
		if z+float32(rng.NormFloat64())*0.5 > 0 {
			y = 1
		}
		binary.LittleEndian.PutUint32(rec[8+4*features:], math.Float32bits(y))
		if err := p.Add(rec); err != nil {
			return err
		}
	}
	_, err = p.Close(map[string]any{"task": "synthetic logistic regression", "features": features})
	return err
}
