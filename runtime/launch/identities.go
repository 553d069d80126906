package launch

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ringo-ml/ringo/collective/transport/p2p"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

// p2pFiles are where a round's libp2p identities live on this node.
type p2pFiles struct {
	identity []string // by local rank: the worker's private key file (0600)
	peers    string   // every rank's peer ID, one per line, by global rank
}

// prepareIdentities gives each local worker of round r a fresh libp2p
// identity, publishes their peer IDs through the store, and writes the
// job's allowlist (every rank's peer ID) once all nodes have published:
// the workers then accept connections from the job's own peers only.
// Keys never leave this node; only peer IDs travel.
func (a *agent) prepareIdentities(ctx context.Context, r *rendezvous.Round) (*p2pFiles, error) {
	if err := a.ensurePrivDir(); err != nil {
		return nil, err
	}
	dir := filepath.Join(a.privDir, fmt.Sprintf("p2p-gen%d", r.Gen))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f := &p2pFiles{peers: filepath.Join(dir, "peers")}
	ids := make([]string, a.cfg.NProc)
	for l := range a.cfg.NProc {
		key, err := p2p.NewIdentity()
		if err != nil {
			return nil, err
		}
		id, err := p2p.PeerID(key)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, fmt.Sprintf("identity-%d", l))
		if err := p2p.WriteIdentity(path, key); err != nil {
			return nil, err
		}
		f.identity = append(f.identity, path)
		ids[l] = id.String()
	}
	mine, _ := json.Marshal(ids)
	key := func(node int) string { return a.m.Prefix + strconv.Itoa(r.Gen) + "/p2p/" + strconv.Itoa(node) }
	if err := a.store.Set(ctx, key(r.NodeRank), mine); err != nil {
		return nil, fmt.Errorf("publishing this node's peer IDs: %w", err)
	}
	keys := make([]string, len(r.Nodes))
	for i := range keys {
		keys[i] = key(i)
	}
	vals, err := a.store.Wait(ctx, keys...)
	if err != nil {
		return nil, fmt.Errorf("waiting for every node's peer IDs: %w", err)
	}
	var all []string
	for i, v := range vals {
		var nodeIDs []string
		if err := json.Unmarshal(v, &nodeIDs); err != nil || len(nodeIDs) != r.Nodes[i].NProc {
			return nil, fmt.Errorf("node %d (%s) published %d peer IDs for %d workers (%v)", i, r.Nodes[i].Host, len(nodeIDs), r.Nodes[i].NProc, err)
		}
		all = append(all, nodeIDs...)
	}
	if err := os.WriteFile(f.peers, []byte(strings.Join(all, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	return f, nil
}

// ensurePrivDir makes the launcher's private directory (mode 0700),
// removed when it exits.
func (a *agent) ensurePrivDir() error {
	if a.privDir != "" {
		return nil
	}
	dir, err := os.MkdirTemp("", "ringo-launch-")
	if err != nil {
		return err
	}
	a.privDir = dir
	return nil
}
