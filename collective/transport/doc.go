// Package transport defines how ringo moves bytes between the ranks of a
// group, and the wire header every message carries.
//
// A Transport is deliberately small: it sends one message (a Header plus a
// payload) to a peer, and receives the next message from a peer in two
// parts, header first, so that the caller can check who sent what before a
// single payload byte lands in a user's buffer. Messages between one pair of
// ranks arrive in the order they were sent. Everything else (algorithms,
// reductions, pipelining, mismatch detection) lives above, in package
// collective, so that TCP, shared memory, RDMA and libp2p transports only
// have to move bytes.
//
// # Failure model
//
// A transport that loses a peer (connection reset, EOF, a peer process that
// died) or is told by a peer that the group is being torn down becomes
// faulted: every blocked and future call returns a *Fault that names the
// rank at fault and why. Abort lets the layer above publish a fault of its
// own (a timeout, two ranks that disagree) to every peer, so that all live
// ranks fail with the same explanation instead of waiting for their own
// timeouts.
//
// # Wire header, version 1
//
// Every message starts with a fixed 48-byte little-endian header:
//
//	off size field
//	  0    2 magic       0x52 0x47 ("RG")
//	  2    1 version     1
//	  3    1 kind        1 = data, 2 = fault notice, 3 = goodbye
//	  4    1 op          collective kind (opaque to the transport)
//	  5    1 dtype       element type (opaque)
//	  6    1 redop       reduction (opaque)
//	  7    1 algo        algorithm (opaque)
//	  8    8 seq         call sequence number
//	 16    8 count       element count of the call
//	 24    4 root        root rank, or -1
//	 28    4 step        index of this message within the call
//	 32    8 length      payload bytes that follow
//	 40    4 from        sender's rank
//	 44    4 crc         CRC-32C of bytes 0..43
//
// Decode rejects a wrong magic, an unknown version or kind, a bad checksum
// and a payload longer than MaxPayload, so a stray connection or a corrupted
// stream is reported, never read as data. The decoder is fuzzed from the
// seed corpus under testdata/fuzz.
package transport
