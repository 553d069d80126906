// Package tcp is ringo's TCP transport: a full mesh of connections between
// the ranks of a group, formed through a small bootstrap at a rendezvous
// address.
//
// Between each pair of ranks there is one control connection and
// SocketsPerPeer data connections. Small messages travel whole on the first
// data connection, written with one system call; messages of StripeMin
// bytes or more are striped: the header goes first on connection 0, then
// the payload is cut into SocketsPerPeer equal pieces written and read in
// parallel, one goroutine per connection, so that several cores share the
// copying (a single stream tops out near one core's memcpy rate; NCCL's
// socket transport stripes for the same reason). Striping is a function of
// the length alone, so both ends agree without asking each other.
//
// Connections keep Go's default TCP_NODELAY and the kernel's buffer
// autotuning (SocketBuffer pins SO_SNDBUF/SO_RCVBUF instead). A small
// message goes out with one write or writev, header and payload together.
// The first data connection is read through a 64 KiB buffer; a payload
// that is not striped can be handed to a reduction there, a buffer at a
// time (RecvPayloadFunc), so that it reads each piece while the piece is
// still in the cache the kernel copied it into, and skips the copy into
// scratch.
// While the layer above asks for polling (transport.Poller: small messages,
// and mid-size calls), a receive polls its socket for up to Config.Spin
// before sleeping in Go's network poller, as MPI libraries do, and so does
// a send on the first data connection that finds its socket full: a
// polling receive keeps Go's scheduler from reaching the network poller,
// so a parked send would sleep until the receive gave up. SpinFor polls
// longer when ranks outnumber cores up to three times over, and turns it
// off beyond that.
//
// The control connection carries fault notices and goodbyes. A reader on
// each one notices a peer's death (EOF without a goodbye) at once, even
// when no data is flowing to or from that peer, and a fault notice from any
// rank fails every call in flight with that rank's explanation.
//
// # Bootstrap
//
// The group meets through package transport's bootstrap (version 2), with
// rank 0 listening on the rendezvous address. A rank's offer is its data
// listener and its striping settings, {"addr":"ip:port","sockets":K,
// "stripe_min":S}; rank 0's K and S win, so the group agrees. Each rank
// then dials every lower rank K+1 times (index 0 is the control
// connection), each connection opening with the token challenge and the
// hello. Endpoint is that half of Join alone, for a mixed transport.
package tcp
