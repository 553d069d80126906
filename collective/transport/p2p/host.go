package p2p

import (
	"fmt"
	"sync/atomic"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// gater is the job's allowlist, enforced by libp2p on every connection:
// dials to other peers are not attempted, and a connection from another
// peer is dropped as soon as its handshake has proved who it is, before
// any stream can be opened on it.
type gater struct {
	allow    map[peer.ID]bool
	refused  atomic.Int64 // connections refused after the handshake
	onRefuse func(peer.ID, string)
}

func newGater(ids []peer.ID, onRefuse func(peer.ID, string)) *gater {
	g := &gater{allow: make(map[peer.ID]bool, len(ids)), onRefuse: onRefuse}
	for _, id := range ids {
		g.allow[id] = true
	}
	return g
}

func (g *gater) InterceptPeerDial(p peer.ID) bool                 { return g.allow[p] }
func (g *gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.allow[p] }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, addrs network.ConnMultiaddrs) bool {
	if g.allow[p] {
		return true
	}
	g.refused.Add(1)
	if g.onRefuse != nil {
		remote := addrs.RemoteMultiaddr().String()
		go g.onRefuse(p, remote) // libp2p's handshake must not wait on it
	}
	return false
}

var _ connmgr.ConnectionGater = (*gater)(nil)

// muxer is go-libp2p's yamux with every stream's receive window at its
// largest (16 MiB) from the start instead of growing to it from 256 KiB.
//
// go-yamux v5.1.0 loses credit when it grows a window: the update that
// grows it tells the sender only the growth, not the bytes read that the
// same update returns. Grown to its largest, a window has lost half of
// itself. After the receiver has read everything it believes the sender
// may write at least half the window, and sends no update; the sender may
// in fact have nothing left, so a send that should fit waits for the
// receiver's next read. A rank that sends before it receives relies on
// that credit: a 100 KiB send after a 2 MiB one stalled in about 1 of 60
// runs on two busy cores (windows grow when updates follow each other
// within four round trips, which a loaded machine's inflated round trip
// makes common). A window that starts at its largest never grows and
// loses nothing; it costs memory only while a receiver lags.
var muxer = func() *yamux.Transport {
	c := *yamux.DefaultTransport.Config()
	c.InitialStreamWindowSize = c.MaxStreamWindowSize
	return (*yamux.Transport)(&c)
}()

// newHost builds a libp2p host for one rank: TCP only, the chosen
// security protocol, yamux, no resource limits (a collective's streams are
// bulk transfers between a few known peers; the allowlist is what keeps
// others out), no relay, NAT port mapping, hole punching, metrics or ping.
// It does not listen yet, so that stream handlers can be set first.
func newHost(key crypto.PrivKey, security string, g *gater) (host.Host, error) {
	sec := libp2p.Security(noise.ID, noise.New)
	if security == SecurityTLS {
		sec = libp2p.Security(libp2ptls.ID, libp2ptls.New)
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.NoListenAddrs,
		libp2p.NoTransports,
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		sec,
		libp2p.Muxer(yamux.ID, muxer),
		libp2p.ConnectionGater(g),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.ConnectionManager(connmgr.NullConnMgr{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.DisableIdentifyAddressDiscovery(),
		libp2p.ForceReachabilityPrivate(),
		libp2p.Ping(false),
		libp2p.UDPBlackHoleSuccessCounter(nil),
		libp2p.IPv6BlackHoleSuccessCounter(nil),
	)
	if err != nil {
		return nil, fmt.Errorf("starting the libp2p host: %w", err)
	}
	return h, nil
}
