package dataloader

import "github.com/ringo-ml/ringo/dataloader/shard"

var shardErrCorrupt = shard.ErrCorrupt
