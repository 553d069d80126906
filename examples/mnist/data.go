package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/ringo-ml/ringo/dataloader"
	"github.com/ringo-ml/ringo/dataloader/shard"
	"github.com/ringo-ml/ringo/dataloader/source"
)

// pixels is the size of one 28×28 image.
const pixels = 28 * 28

// digit is one decoded record: normalised pixels and the label.
type digit struct {
	x     [pixels]float32
	label int
}

// MNIST's pixel mean and standard deviation (of pixel/255), the usual
// normalisation.
const pixMean, pixStd = 0.1307, 0.3081

// decodeDigit decodes a record that `ringo data pack --from mnist` wrote:
// fields "image" (784 bytes, row-major) and "label" (one byte, 0–9).
func decodeDigit(rec []byte) (digit, error) {
	var d digit
	f, err := shard.DecodeFields(rec)
	if err != nil {
		return d, err
	}
	img, lab := f["image"], f["label"]
	if len(img) != pixels || len(lab) != 1 || lab[0] > 9 {
		return d, fmt.Errorf("not an MNIST record: image of %d bytes (want %d), label %v (want one byte 0–9)", len(img), pixels, lab)
	}
	for i, p := range img {
		d.x[i] = (float32(p)/255 - pixMean) / pixStd
	}
	d.label = int(lab[0])
	return d, nil
}

// openSplit opens data/name: a directory or a URL prefix (http(s)://,
// s3://) holding a dataset.
func openSplit(ctx context.Context, data, name string) (*dataloader.Dataset, error) {
	loc := strings.TrimRight(data, "/") + "/" + name
	src, err := source.Parse(loc)
	if err != nil {
		return nil, err
	}
	ds, err := dataloader.Open(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("%w (run `make data` to fetch and pack MNIST)", err)
	}
	return ds, nil
}

// readAll decodes every record of ds, in order: the test set is small
// enough to hold.
func readAll(ctx context.Context, ds *dataloader.Dataset) ([]digit, error) {
	out := make([]digit, 0, ds.Index.Records)
	for i, info := range ds.Index.Shards {
		r, obj, err := ds.OpenShard(ctx, i)
		if err != nil {
			return nil, err
		}
		for b := 0; b < r.Blocks(); b++ {
			recs, err := r.ReadBlock(b)
			if err != nil {
				obj.Close()
				return nil, err
			}
			for j, rec := range recs {
				d, err := decodeDigit(rec)
				if err != nil {
					obj.Close()
					return nil, fmt.Errorf("shard %s, record %d: %w", info.Name, r.Block(b).First+int64(j), err)
				}
				out = append(out, d)
			}
		}
		obj.Close()
	}
	return out, nil
}
