package runtime

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

// A federation's sites sign their deltas (diloco.Federation.Key) with an
// identity of their own, the libp2p kind (an Ed25519 key, named by its
// peer ID), and take a site's deltas only when that site's peer ID
// signed them: the store's token alone then no longer lets its holder
// post for a site.
const (
	// EnvFederationIdentity is this site's identity file (ringo launch
	// --federation-identity), the same at every rank of the site.
	EnvFederationIdentity = "RINGO_FEDERATION_IDENTITY"
	// EnvFederationPeers lists every site's peer ID, as
	// site=PEERID,site=PEERID,... (ringo launch --federation-peers).
	EnvFederationPeers = "RINGO_FEDERATION_PEERS"
)

// FederationKeys reads this site's identity and every site's peer ID
// from peers (site=PEERID,...; every site of sites once) and returns them
// as the keys diloco.Federation signs and checks with. It checks that the
// identity is the one peers lists for site.
func FederationKeys(identity, peers string, sites []string, site int) (ed25519.PrivateKey, []ed25519.PublicKey, error) {
	ids, err := ParseFederationPeers(peers, sites)
	if err != nil {
		return nil, nil, err
	}
	key, err := p2p.ReadIdentity(identity)
	if err != nil {
		return nil, nil, fmt.Errorf("federation: site %q: %w", sites[site], err)
	}
	own, err := p2p.PeerID(key)
	if err != nil {
		return nil, nil, err
	}
	if own != ids[site] {
		return nil, nil, fmt.Errorf("federation: site %q's identity %s is peer ID %s, but the federation's peers list %s for it: put %s=%s in every site's --federation-peers, or give this site the identity of %s", sites[site], identity, own, ids[site], sites[site], own, ids[site])
	}
	priv, err := rawEd25519(key)
	if err != nil {
		return nil, nil, fmt.Errorf("federation: site %q's identity %s: %w", sites[site], identity, err)
	}
	pubs := make([]ed25519.PublicKey, len(ids))
	for i, id := range ids {
		pk, err := id.ExtractPublicKey()
		if err != nil {
			return nil, nil, fmt.Errorf("federation: site %q's peer ID %s holds no public key: %w", sites[i], id, err)
		}
		raw, err := pk.Raw()
		if err != nil || pk.Type() != crypto.Ed25519 || len(raw) != ed25519.PublicKeySize {
			return nil, nil, fmt.Errorf("federation: site %q's peer ID %s is not of an Ed25519 key (ringo makes Ed25519 identities)", sites[i], id)
		}
		pubs[i] = ed25519.PublicKey(raw)
	}
	return priv, pubs, nil
}

// ParseFederationPeers parses site=PEERID,... into one peer ID per site,
// in sites' order.
func ParseFederationPeers(s string, sites []string) ([]peer.ID, error) {
	ids := make([]peer.ID, len(sites))
	for f := range strings.SplitSeq(s, ",") {
		name, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("federation peers %q: %q is not site=PEERID", s, f)
		}
		i := slices.Index(sites, name)
		if i < 0 {
			return nil, fmt.Errorf("federation peers: site %q is not among the sites %s", name, strings.Join(sites, ","))
		}
		if ids[i] != "" {
			return nil, fmt.Errorf("federation peers: site %q is listed twice", name)
		}
		id, err := peer.Decode(v)
		if err != nil {
			return nil, fmt.Errorf("federation peers: site %q: %q is not a peer ID: %w", name, v, err)
		}
		ids[i] = id
	}
	var missing []string
	for i, id := range ids {
		if id == "" {
			missing = append(missing, sites[i])
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("federation peers: no peer ID for site %s: list every site", strings.Join(missing, ", "))
	}
	return ids, nil
}

// rawEd25519 is key as a crypto/ed25519 private key.
func rawEd25519(key crypto.PrivKey) (ed25519.PrivateKey, error) {
	if key.Type() != crypto.Ed25519 {
		return nil, errors.New("not an Ed25519 key")
	}
	raw, err := key.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("an Ed25519 key of %d bytes: %v", len(raw), err)
	}
	return ed25519.PrivateKey(raw), nil
}

// EnsureIdentity creates a fresh identity at path unless a file is
// there, and returns the identity's peer ID; created says it was made.
func EnsureIdentity(path string) (id peer.ID, created bool, err error) {
	if _, err := os.Stat(path); err == nil {
		key, err := p2p.ReadIdentity(path)
		if err != nil {
			return "", false, err
		}
		id, err := p2p.PeerID(key)
		return id, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("identity %s: %w", path, err)
	}
	key, err := p2p.NewIdentity()
	if err != nil {
		return "", false, err
	}
	if err := p2p.WriteIdentity(path, key); err != nil {
		return "", false, err
	}
	id, err = p2p.PeerID(key)
	return id, true, err
}
