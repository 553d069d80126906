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
// # Layers
//
// Every transport is built the same way, from the bottom up:
//
//   - Bootstrap (bootstrap.go): rank 0 gathers one registration per rank
//     and answers every rank with the group's Table: a random nonce and,
//     per rank, its Member (Host: hostname, boot id, network namespace,
//     pid; and an offer per transport it speaks, e.g. a TCP address or an
//     abstract socket name). Rendezvous runs it over TCP with the job's
//     token challenge (internal/auth) first; libp2p runs the same
//     GatherTable and Register over its own authenticated streams.
//   - Connections (connect.go): FormMesh has every rank dial its lower
//     peers and accept its higher ones, each connection opening with the
//     token challenge (where it is not libp2p's) and a Hello that carries
//     the nonce, so a stray or stale process cannot join.
//   - Links (mesh.go): each transport turns a pair's connections into a
//     Link (data both ways, a control channel, interrupt and close), and
//     Mesh holds one Link per peer. Mesh owns the rest for every
//     transport alike: the FaultLatch, fault notices and goodbyes on the
//     control channels, a watcher per peer that sees it die at once, and
//     errors that name the rank and its address.
//
// A transport package (tcp, shm, p2p) supplies only its offer, how it
// dials and accepts, and its Link. Since Mesh takes any Links, one group
// can mix them: package mix is shm to the ranks on this host and TCP to
// the rest, chosen per pair from the table.
//
// # Bootstrap, version 2
//
// A rank registers with one JSON line {"v":2,"size":N,"rank":R,"host":
// {"name","boot","netns","pid"},"offers":{"tcp":{...},"shm":{...}}}. When
// all N have, rank 0 answers each with {"v":2,"nonce":X,"members":[...]}
// (entry r is rank r's registration), or with {"v":2,"error":"..."} that
// names the rank at fault (a size that differs, a rank taken twice, a
// table a transport's check refuses). Where a transport needs the group
// to agree on a setting (TCP's sockets per peer, shm's ring shape), rank
// 0's offer wins. Each connection between ranks then opens with a 24-byte
// hello: "RGHI", version u32 (2), nonce u64, from u32, index u32 (which
// of the pair's connections it is). The hello and both sides of the
// rendezvous are fuzzed from the seed corpus under testdata/fuzz.
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
