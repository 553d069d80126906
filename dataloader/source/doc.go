// Package source reads the files of a dataset from local disk, from HTTP(S)
// servers with range requests, or from S3-compatible object storage, all
// behind one small interface: open an object by name and read ranges of it.
//
// Remote sources retry failed requests with exponential backoff and name
// the object and URL in their errors. OpenSized opens an object whose size
// is known (a dataset's index records it) without asking the storage, and
// checks that size on every range the storage answers. Cached wraps any source with a local
// disk cache bounded in bytes (least recently used out) that downloads each
// object once and checks its size and XXH64 before it is used.
//
// Parse picks the source from a location: a directory, file:///path,
// http(s)://host/prefix, or s3://bucket/prefix (the endpoint from
// RINGO_S3_ENDPOINT or AWS_ENDPOINT_URL, credentials from
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
package source
