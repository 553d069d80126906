// Package rendezvous is the small key-value store in which the launchers of
// one job meet: they count themselves in, agree on a master address and a
// world size, and watch for peers that leave. Store is the interface;
// there are two backends, and Membership builds the launchers' rounds on
// either.
//
// # Embedded store (the default)
//
// The launcher on node 0 runs a Server (NewServer, or Serve on a listener
// of its own), an in-memory store served over TCP; every launcher, that one
// included, talks to it through a Client from Dial. No other process is
// needed. The store lives as long as that launcher: a job whose node 0 may
// be replaced should use etcd.
//
// Dial retries (backoff 20ms to 1s) until its ctx ends, because the
// server's launcher may start after the others. A Client multiplexes every
// call over one connection: requests carry ids, a reader goroutine hands
// each answer to its caller, and the server answers Wait and WaitChange from
// goroutines of their own, so a long Wait does not hold up a Set. A Wait
// whose ctx ends sends a cancel for its id. If the connection breaks, calls
// in flight fail with an error naming the endpoint (Get, Wait and
// WaitChange, which change nothing, are retried once on a new connection),
// and the next call dials again, once.
//
// Limits: keys are 1 to MaxKeyLen (4 KiB) bytes, values at most
// MaxValueSize (16 MiB); the client checks before sending and the server
// again, answering with an error. A frame that breaks the format closes that
// connection only. Counters written by Add are decimal ASCII ("3"), so Get
// reads them.
//
// # Wire protocol, version 1
//
// Every connection starts with a greeting each way, dialler first:
//
//	"RDZV" | version u16 | flags u8 | 0 u8        (8 bytes, big-endian)
//
// flags bit 0 says the sender holds a job token. The server answers even a
// greeting of another version, so the client can say which side to
// upgrade, then closes; it says nothing to bytes that are not a greeting.
// Sides that disagree about having a token refuse each other. Then, if there
// is a token, comes the HMAC-SHA256 challenge–response of internal/auth
// (version 1: 32-byte challenges, then proofs, dialler first; the server
// sends its proof only for a valid one, and closes otherwise). Until it has
// passed, the server reads nothing but the greeting and the handshake, so a
// process without the token can neither read nor write a key.
//
// After that, both directions carry frames:
//
//	length u32 | op u8 | id u64 | num i64
//	| nkeys u16 | nkeys × (len u16 | key bytes)
//	| nvals u16 | nvals × (present u8 | len u32 | value bytes)
//
// length counts the bytes after it and is at most 64 MiB. present is 0 for
// a missing value (len 0) and 1 for a value, so an empty value and a missing
// key stay apart. Requests (op) and what they use:
//
//	1 set          key, value
//	2 get          key
//	3 wait         keys (at least one)
//	4 waitchange   key, old value (missing: absent)
//	5 add          key, num = delta
//	6 cas          key, old (missing: absent), new
//	7 delete       key
//	8 cancel       id of an outstanding wait or waitchange; no answer
//
// Each request but cancel gets one answer with the same id. Its op is a
// status: 0x40 ok (values: get's value, wait's values, waitchange's new
// value, cas's value after the call, with num = 1 if it swapped; num: add's
// count), 0x41 not found, 0x42 error (value 0: a message), 0x43 the store is
// closing. Answers to different requests may come in any order.
//
// # etcd store
//
// NewEtcd keeps the store in an existing etcd cluster, under a prefix, for
// jobs that run one already or must survive the loss of node 0.
// CompareAndSwap and Add read the key, compare (or add) in the client, and
// write in a transaction that succeeds only if the key's mod revision (or,
// for a missing key, its create revision 0) is still the one read, retrying
// otherwise; Wait and WaitChange watch from the revision of their read, so
// no write between the read and the watch is missed.
//
// etcd cannot run the handshake, so when the job has a token every value is
// sealed with AES-256-GCM under a key derived from it with HKDF-SHA256,
// with the full etcd key as additional data (format: 0x01 | 12-byte nonce |
// ciphertext and tag). A process without the token can neither read values
// nor write ones the store accepts: a value that does not open, whether
// written with another token, without one, by hand, or copied from another
// key, is refused with an error wrapping ErrAuth that names the key. Key
// names, and who writes when, stay visible to whoever can read the etcd;
// use etcd's own TLS and authentication to hide them.
//
// # Tokens
//
// The token never goes on the wire or into an error: the embedded store
// proves possession with HMACs, and auth.Token prints as "token(redacted)".
// An empty token turns authentication and sealing off.
package rendezvous
