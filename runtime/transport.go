package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringo-ml/ringo/collective/transport"
	"github.com/ringo-ml/ringo/collective/transport/p2p"
	"github.com/ringo-ml/ringo/collective/transport/shm"
	"github.com/ringo-ml/ringo/collective/transport/tcp"
	"github.com/ringo-ml/ringo/internal/audit"
)

// joinTransport forms this worker's transport: the one RINGO_TRANSPORT
// names, else shared memory when every rank of the job runs on this host
// (one node), else mix: a link per peer, shared memory to the ranks on
// this host and TCP to the others. tcfg carries what every transport
// shares: the rendezvous, rank, size, token and fault hook. Over libp2p
// it also returns the configuration, which the groups NewSites forms
// reuse.
func joinTransport(ctx context.Context, e workerEnv, tcfg tcp.Config) (transport.Transport, string, *p2p.Config, error) {
	kind := e.transport
	if kind == "" {
		kind = defaultTransport(e)
	}
	if kind == "p2p" {
		kind = "libp2p"
	}
	switch kind {
	case "mix":
		tr, err := joinMix(ctx, e, tcfg)
		return tr, kind, nil, err
	case "tcp":
		tr, err := tcp.Join(ctx, tcfg)
		return tr, kind, nil, err
	case "shm":
		if e.nodes > 1 {
			return nil, kind, nil, fmt.Errorf("%s=shm: the job spans %d nodes, and shared memory reaches only ranks on this host; use tcp", EnvTransport, e.nodes)
		}
		c, err := shmConfig(e)
		if err != nil {
			return nil, kind, nil, err
		}
		c.Rendezvous, c.Rank, c.Size, c.Token, c.OnFault = tcfg.Rendezvous, tcfg.Rank, tcfg.Size, tcfg.Token, tcfg.OnFault
		tr, err := shm.Join(ctx, c)
		return tr, kind, nil, err
	case "libp2p":
		c, err := p2pConfig(e, tcfg)
		if err != nil {
			return nil, kind, nil, err
		}
		tr, err := p2p.Join(ctx, c)
		return tr, kind, &c, err
	}
	return nil, kind, nil, fmt.Errorf("%s=%q: want tcp, shm, mix or libp2p", EnvTransport, kind)
}

// p2pConfig reads the identity and allowlist files the launcher wrote.
func p2pConfig(e workerEnv, tcfg tcp.Config) (p2p.Config, error) {
	c := p2p.DefaultConfig()
	c.Rank, c.Size, c.OnFault = tcfg.Rank, tcfg.Size, tcfg.OnFault
	if e.size == 1 {
		return c, nil
	}
	if e.p2pIdentity == "" || e.p2pPeers == "" {
		return c, fmt.Errorf("%s=libp2p needs %s and %s (ringo launch --transport libp2p sets them)", EnvTransport, EnvP2PIdentity, EnvP2PPeers)
	}
	key, err := p2p.ReadIdentity(e.p2pIdentity)
	if err != nil {
		return c, err
	}
	b, err := os.ReadFile(e.p2pPeers)
	if err != nil {
		return c, fmt.Errorf("the job's peer IDs: %w", err)
	}
	lines := strings.Fields(string(b))
	if len(lines) != e.size {
		return c, fmt.Errorf("%s lists %d peer IDs for %d ranks", e.p2pPeers, len(lines), e.size)
	}
	for i, l := range lines {
		id, err := peer.Decode(l)
		if err != nil {
			return c, fmt.Errorf("%s line %d: %v", e.p2pPeers, i+1, err)
		}
		c.Peers = append(c.Peers, id)
	}
	c.Identity = key
	rank := tcfg.Rank
	c.OnRefuse = func(id peer.ID, remote string) {
		fmt.Fprintf(os.Stderr, "ringo: rank %d refused a libp2p connection from %s (peer ID %s, not in the job's allowlist)\n", rank, remote, id)
		audit.FromEnv().Record("collective.refused", map[string]any{"rank": rank, "peer_id": id.String(), "remote": remote, "transport": "libp2p"})
	}
	if c.Rendezvous, err = p2p.RendezvousAddr(tcfg.Rendezvous, c.Peers[0]); err != nil {
		return c, err
	}
	if e.nodeAddr != "" {
		c.Listen = net.JoinHostPort(e.nodeAddr, "0")
	}
	return c, nil
}
