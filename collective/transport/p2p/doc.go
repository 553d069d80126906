// Package p2p is ringo's libp2p transport: the same mesh as package tcp,
// but every rank is known by its libp2p peer ID, every byte between ranks
// is encrypted and authenticated (Noise by default, or libp2p's TLS), and
// only the peer IDs on the job's allowlist can connect at all.
//
// Use it where identity and encryption are the point (ranks on networks
// you do not trust); on a trusted network package tcp is much faster for
// bulk data. Every byte is encrypted, framed by yamux and copied more
// often, and one connection per pair means one core's worth of crypto per
// direction. BenchmarkAllReduce measures both side by side: on a 2-core
// VM, two ranks on loopback, the median busbw of a 16 MiB all-reduce was
// 0.53 GB/s over Noise and 0.58 over TLS against 1.72 over tcp (0.31 and
// 0.34 of tcp; 0.25 and 0.28 at 1 MiB), while 4 KiB all-reduces, bound by
// latency, took about as long as over tcp (0.92 and 1.04). TLS is the
// faster of the two where the CPU has AES instructions.
//
// # Hosts
//
// Each rank runs one libp2p host with its Config.Identity: TCP is the only
// libp2p transport (no QUIC, WebTransport or WebRTC), yamux the only muxer,
// and there is no relay, NAT port mapping, hole punching, mDNS, ping or
// metrics. The resource manager is libp2p's null one: a group's streams
// are a handful of bulk transfers between peers the allowlist admitted,
// and limits sized for a public node would throttle them. The allowlist
// is a libp2p ConnectionGater: the host dials no other peer, and drops a
// connection from any other peer as soon as its security handshake has
// proved which peer it is, before any stream can be opened on it.
//
// # Bootstrap and streams, version 2
//
// Rank 0 listens on the rendezvous address (Config.Rendezvous, a
// multiaddr ending in /p2p/<rank 0's peer ID>). Every other rank connects
// to it over libp2p, so that both ends are authenticated and the
// allowlists apply, opens a stream with protocol /ringo/bootstrap/2.0.0
// and sends package transport's registration (version 2), offering
// {"id":"12D3...","addrs":[multiaddr...]}. Rank 0 files each under the
// peer ID the handshake proved (never one the message claims) and answers
// with the table, or with an error when registrations conflict: a size
// that differs, a rank registered twice, or one identity registered as
// two ranks. When Config.Peers pins every rank to its identity, a
// registration from any other peer is answered with an error on its own
// and the rendezvous goes on waiting for the real rank.
//
// Then each rank connects to every lower rank and opens two streams with
// protocol /ringo/collective/2.0.0 on that one connection, each starting
// with the hello of package transport: index 0 is the control stream, 1
// the data stream. The accepting rank refuses a hello with another nonce
// (a stale process of an earlier group), from a rank that is not higher
// than its own, or from a rank whose peer ID is not the one the
// connection proved.
//
// Both streams are used in both directions. On the data stream each
// message is a transport.Header followed by its payload, exactly as on a
// tcp data connection. The control stream carries fault notices and
// goodbyes; a reader on it sees a peer's death at once (libp2p resets every
// stream of a connection that breaks), even when no data is flowing.
//
// # Closing
//
// Closing a libp2p connection throws away whatever the peer has received
// but not yet read, which a TCP socket's close does not. So Close first
// ends this rank's half of each data stream, then sends its goodbye and
// ends its half of each control stream, and waits (up to a second) until
// each peer has read the goodbye and ended its own half in reply. Frames
// of one connection arrive in order, so by then each peer holds
// everything this rank sent, readable even after the connection goes.
// Only then does Close shut the host down.
//
// # Identity files, version 1
//
// WriteIdentity stores a key as one PEM block of type "RINGO P2P
// IDENTITY" with headers "Version: 1" and "Peer-Id: <peer ID>", whose
// bytes are the key in libp2p's protobuf encoding; the file is written
// 0600 through a rename. ReadIdentity checks the version, that the key's
// peer ID is the one the header names, and that the file is not readable
// by group or others.
package p2p
