// Package safetensors reads and writes the safetensors file format, the
// format of ringo's checkpoint shards, so that any safetensors reader (the
// Python package, Hugging Face tools) can open them.
//
// # Format
//
// A file is:
//
//	8 bytes   N, the header length, unsigned little-endian
//	N bytes   a JSON object, UTF-8, optionally padded with spaces:
//	          {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]},
//	           ...,
//	           "__metadata__": {"key": "value", ...}}
//	rest      the tensors' bytes, little-endian, row-major
//
// Offsets count from the first byte after the header. The tensors must
// cover that data exactly: no holes, no overlaps, nothing after the last
// one (a file cannot hide other content), and each tensor's length must be
// its element count times its dtype's size. Names are unique; metadata
// values are strings.
//
// The writer pads the header with spaces so that the data starts at a
// multiple of 8 bytes, and lays tensors out by descending element size
// (then by name), so that every tensor starts at a multiple of its own
// element size: data can be viewed in place as typed slices.
//
// The parser checks all of the above, refuses headers over MaxHeader
// bytes, and never panics whatever the input (it is fuzzed from the corpus
// under testdata/fuzz).
package safetensors
