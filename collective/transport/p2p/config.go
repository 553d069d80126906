package p2p

import (
	"fmt"
	"net"
	"slices"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ringo-ml/ringo/collective/transport"
)

// Security protocols a Config may name.
const (
	SecurityNoise = "noise" // libp2p's Noise XX handshake, ChaCha20-Poly1305
	SecurityTLS   = "tls"   // libp2p's TLS 1.3 handshake, AES-GCM where the CPU has it
)

// DefaultListen is the address a rank listens on unless told otherwise:
// loopback, a port the kernel picks.
const DefaultListen = "/ip4/127.0.0.1/tcp/0"

// Config says how to join a group. Build it with DefaultConfig.
type Config struct {
	Rank, Size int

	// Identity is this rank's libp2p private key: its peer ID, which the
	// other ranks' allowlists name, is derived from it. Generate one with
	// NewIdentity, keep it with WriteIdentity and load it with
	// ReadIdentity. Required unless Size is 1.
	Identity crypto.PrivKey

	// Listen is where this rank accepts connections: a TCP multiaddr
	// (/ip4/10.0.0.2/tcp/0) or host:port. The addresses it listens on
	// are what it registers at the rendezvous. Rank 0 listens on the
	// rendezvous address instead, unless Listen names a fixed port (as it
	// must when the rendezvous names rank 0's host by DNS, or to listen on
	// all interfaces: /ip4/0.0.0.0/tcp/4001).
	Listen string

	// Rendezvous is rank 0's multiaddr, peer ID included:
	// /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW... (RendezvousAddr builds one
	// from host:port). Every rank registers there; rank 0's identity must
	// be the peer ID it names. Required unless Size is 1.
	Rendezvous string

	// Peers, if set, pins each rank to an identity: Peers[r] is rank r's
	// peer ID, so that a rank cannot register as another: rank 0 answers
	// a registration from any other peer with an error and goes on
	// waiting for the real one. Its length must be Size.
	Peers []peer.ID

	// Allow is the job's allowlist: connections from or to any other peer
	// ID are refused during the libp2p handshake (a ConnectionGater), so
	// such a peer can neither join the group nor open a stream to any
	// rank. It must name rank 0 (the rendezvous) and, on rank 0, every
	// rank. Empty means exactly Peers.
	Allow []peer.ID

	// Security is the libp2p channel security protocol: SecurityNoise
	// (the default) or SecurityTLS. All ranks must agree.
	Security string

	// OnFault, if set, is called once, synchronously, when the transport
	// records its first fault (before any call returns it). It must not
	// block.
	OnFault func(*transport.Fault)

	// OnRefuse, if set, is told about each connection the allowlist
	// refused: the peer ID it proved and where it came from, for logs and
	// the audit trail. It runs on its own goroutine, and must not block
	// for long.
	OnRefuse func(id peer.ID, remote string)
}

// DefaultConfig returns a Config that listens on loopback and uses Noise.
// Set Rank, Size, Identity, Rendezvous and Allow (or Peers).
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, Security: SecurityNoise}
}

// Validate reports the first field out of range.
func (c Config) Validate() error {
	if err := transport.CheckRank("p2p", c.Rank, c.Size); err != nil {
		return err
	}
	switch {
	case c.Security != SecurityNoise && c.Security != SecurityTLS:
		return fmt.Errorf("p2p: Security %q: want %q or %q", c.Security, SecurityNoise, SecurityTLS)
	case c.Size == 1:
		return nil
	case c.Identity == nil:
		return fmt.Errorf("p2p: rank %d has no Identity (create one with p2p.NewIdentity, or load it with p2p.ReadIdentity)", c.Rank)
	case c.Rendezvous == "":
		return fmt.Errorf("p2p: a group of %d ranks needs a rendezvous address (rank 0's multiaddr with /p2p/<peer id>)", c.Size)
	case len(c.Peers) != 0 && len(c.Peers) != c.Size:
		return fmt.Errorf("p2p: Peers names %d identities for a group of %d ranks", len(c.Peers), c.Size)
	case len(c.Allow) == 0 && len(c.Peers) == 0:
		return fmt.Errorf("p2p: rank %d has an empty allowlist: set Allow (or Peers) to the peer IDs of the job's ranks", c.Rank)
	}
	if _, err := parseListen(c.Listen); c.Listen != "" && err != nil {
		return err
	}
	rv, err := parseRendezvous(c.Rendezvous)
	if err != nil {
		return err
	}
	self, err := peer.IDFromPrivateKey(c.Identity)
	if err != nil {
		return fmt.Errorf("p2p: rank %d: Identity: %w", c.Rank, err)
	}
	allow := c.allowlist()
	if !slices.Contains(allow, rv.ID) {
		return fmt.Errorf("p2p: rank %d: the rendezvous peer %s is not in the allowlist", c.Rank, rv.ID)
	}
	if c.Rank == 0 && rv.ID != self {
		return fmt.Errorf("p2p: rank 0's identity is %s, but the rendezvous address names %s", self, rv.ID)
	}
	if len(c.Peers) != 0 {
		if c.Peers[c.Rank] != self {
			return fmt.Errorf("p2p: rank %d's identity is %s, but Peers pins rank %d to %s", c.Rank, self, c.Rank, c.Peers[c.Rank])
		}
		if c.Peers[0] != rv.ID {
			return fmt.Errorf("p2p: Peers pins rank 0 to %s, but the rendezvous address names %s", c.Peers[0], rv.ID)
		}
		for r, id := range c.Peers {
			if j := slices.Index(c.Peers, id); j != r {
				return fmt.Errorf("p2p: Peers pins ranks %d and %d to the same identity %s", j, r, id)
			}
		}
	}
	return nil
}

// allowlist is Allow, or Peers when Allow is empty.
func (c Config) allowlist() []peer.ID {
	if len(c.Allow) != 0 {
		return c.Allow
	}
	return c.Peers
}

// parseListen accepts a TCP multiaddr or host:port.
func parseListen(s string) (ma.Multiaddr, error) {
	if s == "" {
		s = DefaultListen
	}
	var a ma.Multiaddr
	var err error
	if s[0] == '/' {
		a, err = ma.NewMultiaddr(s)
	} else {
		a, err = hostPortAddr(s)
	}
	if err != nil {
		return nil, fmt.Errorf("p2p: listen address %q: %w", s, err)
	}
	if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
		return nil, fmt.Errorf("p2p: listen address %q is not a TCP address (only TCP is supported)", s)
	}
	if _, err := a.ValueForProtocol(ma.P_P2P); err == nil {
		return nil, fmt.Errorf("p2p: listen address %q must not name a peer ID", s)
	}
	return a, nil
}

// hostPortAddr turns host:port into /ip4|ip6|dns/host/tcp/port.
func hostPortAddr(hp string) (ma.Multiaddr, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return nil, err
	}
	proto := "dns"
	if ip := net.ParseIP(host); ip != nil {
		proto = "ip6"
		if ip.To4() != nil {
			proto = "ip4"
		}
	}
	return ma.NewMultiaddr(fmt.Sprintf("/%s/%s/tcp/%s", proto, host, port))
}

// parseRendezvous splits rank 0's multiaddr into its peer ID and address.
func parseRendezvous(s string) (*peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, fmt.Errorf("p2p: rendezvous %q is not a multiaddr: %w (want /ip4/HOST/tcp/PORT/p2p/PEERID)", s, err)
	}
	info, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return nil, fmt.Errorf("p2p: rendezvous %q: %w (want /ip4/HOST/tcp/PORT/p2p/PEERID)", s, err)
	}
	if len(info.Addrs) != 1 {
		return nil, fmt.Errorf("p2p: rendezvous %q has no address before its /p2p/ part", s)
	}
	if _, err := info.Addrs[0].ValueForProtocol(ma.P_TCP); err != nil {
		return nil, fmt.Errorf("p2p: rendezvous %q is not a TCP address (only TCP is supported)", s)
	}
	return info, nil
}

// RendezvousAddr builds the Rendezvous multiaddr of rank 0 from host:port
// and rank 0's peer ID.
func RendezvousAddr(hostPort string, id peer.ID) (string, error) {
	a, err := hostPortAddr(hostPort)
	if err != nil {
		return "", fmt.Errorf("p2p: rendezvous %q: %w", hostPort, err)
	}
	p2p, err := ma.NewComponent("p2p", id.String())
	if err != nil {
		return "", fmt.Errorf("p2p: peer ID %q: %w", id, err)
	}
	return a.Encapsulate(p2p).String(), nil
}
