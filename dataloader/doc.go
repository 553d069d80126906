// Package dataloader streams sharded datasets from disk, HTTP or S3 to the
// ranks of a data-parallel job.
//
// A dataset is a directory (or URL prefix) holding shard files in ringo's
// shard format (package shard) and an index.json:
//
//	{"format": "ringo-dataset", "version": 1,
//	 "records": 10000,
//	 "shards": [{"name": "shard-00000.rgs", "bytes": 1234, "records": 5000, "xxh64": "…"}, …],
//	 "metadata": {"fields": {"image": "uint8[28,28]", "label": "uint8"}, …}}
//
// Pack* functions build datasets from MNIST IDX files, JSON lines, CSV and
// directories of files; Open reads one from any source (package source),
// checking each shard's size against the index; Verify checks every
// shard's hash and every block's checksum. The order in which a job reads
// it is package order's; the loader that streams it is this package's.
package dataloader
