package p2p_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringo-ml/ringo/collective/transport/p2p"
)

func TestValidate(t *testing.T) {
	j := newJob(t, 3)
	other, _ := p2p.NewIdentity()
	otherID, _ := p2p.PeerID(other)
	cases := []struct {
		name string
		edit func(c *p2p.Config)
		want string // "" means valid
	}{
		{"ok", func(c *p2p.Config) {}, ""},
		{"pinned", func(c *p2p.Config) { c.Allow, c.Peers = nil, j.ids }, ""},
		{"host:port listen", func(c *p2p.Config) { c.Listen = "127.0.0.1:0" }, ""},
		{"tls", func(c *p2p.Config) { c.Security = p2p.SecurityTLS }, ""},
		{"size", func(c *p2p.Config) { c.Size = 0 }, "at least 1"},
		{"rank", func(c *p2p.Config) { c.Rank = 3 }, "outside 0..2"},
		{"security", func(c *p2p.Config) { c.Security = "plaintext" }, "Security"},
		{"identity", func(c *p2p.Config) { c.Identity = nil }, "NewIdentity"},
		{"rendezvous", func(c *p2p.Config) { c.Rendezvous = "" }, "rendezvous"},
		{"rendezvous without peer", func(c *p2p.Config) { c.Rendezvous = "/ip4/127.0.0.1/tcp/4001" }, "rendezvous"},
		{"rendezvous quic", func(c *p2p.Config) { c.Rendezvous = "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/" + j.ids[0].String() }, "TCP"},
		{"empty allowlist", func(c *p2p.Config) { c.Allow = nil }, "allowlist"},
		{"rendezvous not allowed", func(c *p2p.Config) { c.Allow = j.ids[1:] }, "not in the allowlist"},
		{"listen udp", func(c *p2p.Config) { c.Listen = "/ip4/127.0.0.1/udp/0" }, "TCP"},
		{"listen garbage", func(c *p2p.Config) { c.Listen = "nonsense" }, "listen"},
		{"pins length", func(c *p2p.Config) { c.Peers = j.ids[:2] }, "Peers"},
		{"pinned elsewhere", func(c *p2p.Config) { c.Peers = []peer.ID{j.ids[0], otherID, j.ids[2]} }, "pins rank 1"},
		{"pins twice", func(c *p2p.Config) {
			c.Rank, c.Identity = 2, j.keys[2]
			c.Peers = []peer.ID{j.ids[0], j.ids[2], j.ids[2]}
		}, "same identity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := j.config(1)
			c.edit(&cfg)
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error mentioning %q", err, c.want)
			}
		})
	}
	// Rank 0 must be the peer the rendezvous names.
	cfg := j.config(0)
	cfg.Identity = j.keys[1]
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "rank 0's identity") {
		t.Fatalf("rank 0 with another identity: %v", err)
	}
}

func TestRendezvousAddr(t *testing.T) {
	j := newJob(t, 1)
	for hp, want := range map[string]string{
		"10.0.0.1:4001":    "/ip4/10.0.0.1/tcp/4001/p2p/",
		"[::1]:4001":       "/ip6/::1/tcp/4001/p2p/",
		"node-3.local:999": "/dns/node-3.local/tcp/999/p2p/",
	} {
		got, err := p2p.RendezvousAddr(hp, j.ids[0])
		if err != nil || got != want+j.ids[0].String() {
			t.Errorf("RendezvousAddr(%q) = %q, %v; want %q", hp, got, err, want+j.ids[0].String())
		}
	}
	if _, err := p2p.RendezvousAddr("no-port", j.ids[0]); err == nil {
		t.Error("RendezvousAddr accepted an address without a port")
	}
}

func TestIdentityFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rank0.key")
	key, err := p2p.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if err := p2p.WriteIdentity(path, key); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %#o, want 0600", st.Mode().Perm())
	}
	got, err := p2p.ReadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equals(key) {
		t.Fatal("the key read back differs")
	}
	id, _ := p2p.PeerID(key)
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "Peer-Id: "+id.String()) || !strings.Contains(string(b), "Version: 1") {
		t.Fatalf("identity file does not show its version and peer ID:\n%s", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("WriteIdentity left %d files behind", len(ents))
	}

	// Overwriting keeps 0600 and replaces the key.
	key2, _ := p2p.NewIdentity()
	if err := p2p.WriteIdentity(path, key2); err != nil {
		t.Fatal(err)
	}
	if got, err := p2p.ReadIdentity(path); err != nil || !got.Equals(key2) {
		t.Fatalf("after overwriting: %v", err)
	}

	// A key others can read is refused.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p2p.ReadIdentity(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group/world-readable identity: %v", err)
	}

	// Damaged files are refused with a reason.
	bad := map[string]string{
		"empty":     "",
		"not pem":   "hello",
		"wrong id":  strings.Replace(string(b), id.String(), "12D3KooWAbc", 1),
		"version 2": strings.Replace(string(b), "Version: 1", "Version: 2", 1),
		"trailing":  string(b) + "junk",
	}
	for name, content := range bad {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := p2p.ReadIdentity(p); err == nil {
			t.Errorf("%s: ReadIdentity accepted it", name)
		}
	}
	if _, err := p2p.ReadIdentity(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadIdentity of a missing file succeeded")
	}
}
