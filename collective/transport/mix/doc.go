// Package mix is a transport whose links are chosen per peer: shared
// memory to the ranks on this host, TCP to the others, all in one
// transport.Mesh, so that a group spanning hosts moves its intra-host
// traffic through rings in memory and only the rest over the network.
//
// It adds no protocol of its own. Every rank registers both a tcp and an
// shm offer in one rendezvous (the bootstrap of package transport); once
// the table is in, each pair of ranks picks its link kind with the same
// function of the two table entries, so both ends agree without another
// round trip. The shm links form first, then the TCP ones; neither phase
// waits on the other's peers, so the order cannot deadlock.
//
// Which kind a pair gets is Config.Choose: by default shm where the two
// ranks share a kernel and network namespace (transport.Host.SameHost),
// TCP elsewhere. A hierarchical schedule, or a test that stands in for
// several hosts on one, supplies its own.
package mix
