package runtime

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringo-ml/ringo/diloco"
	"github.com/ringo-ml/ringo/internal/audit"
)

func TestFederationKeys(t *testing.T) {
	dir := t.TempDir()
	sites := []string{"a", "b"}
	var peers []string
	for _, s := range sites {
		id, created, err := EnsureIdentity(filepath.Join(dir, s))
		if err != nil || !created {
			t.Fatalf("EnsureIdentity: %v (created %v)", err, created)
		}
		peers = append(peers, s+"="+id.String())
	}
	// A second call reads what the first made.
	again, created, err := EnsureIdentity(filepath.Join(dir, "a"))
	if err != nil || created || "a="+again.String() != peers[0] {
		t.Fatalf("EnsureIdentity again: %v, %v, created %v; want %s", again, err, created, peers[0])
	}
	list := strings.Join(peers, ",")
	priv, pubs, err := FederationKeys(filepath.Join(dir, "b"), list, sites, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(pubs) != 2 || !priv.Public().(ed25519.PublicKey).Equal(pubs[1]) || pubs[0].Equal(pubs[1]) {
		t.Fatalf("site b's key does not match its listed peer ID, or the sites share one")
	}
	// A signature by site b's key checks against b's public key.
	if msg := []byte("delta"); !ed25519.Verify(pubs[1], msg, ed25519.Sign(priv, msg)) {
		t.Fatal("site b's signature does not verify")
	}
	reversed := peers[1] + "," + peers[0] // order in the list does not matter
	if _, _, err := FederationKeys(filepath.Join(dir, "a"), reversed, sites, 0); err != nil {
		t.Errorf("peers in another order: %v", err)
	}
	for _, tc := range []struct {
		name, identity, peers string
		want                  string
	}{
		{"another site's identity", "b", list, `site "a"'s identity`},
		{"a site missing", "a", peers[0], "no peer ID for site b"},
		{"a site twice", "a", list + "," + peers[0], `site "a" is listed twice`},
		{"an unknown site", "a", list + ",z=" + strings.TrimPrefix(peers[0], "a="), `site "z" is not among the sites a,b`},
		{"not site=ID", "a", "a", `"a" is not site=PEERID`},
		{"not a peer ID", "a", "a=xyz," + peers[1], `"xyz" is not a peer ID`},
		{"no identity file", "nope", list, "no such file"},
	} {
		if _, _, err := FederationKeys(filepath.Join(dir, tc.identity), tc.peers, sites, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A key file others may read is refused, as ssh does.
	if err := os.Chmod(filepath.Join(dir, "a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := FederationKeys(filepath.Join(dir, "a"), list, sites, 0); err == nil || !strings.Contains(err.Error(), "readable by its owner only") {
		t.Errorf("an identity of mode 0644: %v", err)
	}
}

// A delta refused for its signature is audited, naming the site it came
// for; other errors are not.
func TestForgedDeltaIsAudited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	log, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	o := &Outer{Sites: &Sites{Names: []string{"a", "b"}, Index: 0}, rank: 3, audit: log}
	o.reportForged(errors.New("diloco: outer sync of step 5: the store is down"))
	o.reportForged(fmt.Errorf("diloco: outer sync of step 5: %w", &diloco.ForgedError{Site: "b", Place: 1, Step: 5, Why: "it is not signed"}))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != 1 || !strings.Contains(string(b), `"outer.delta_refused"`) ||
		!strings.Contains(string(b), `"from_site":"b"`) || !strings.Contains(string(b), `"what":"delta"`) || !strings.Contains(string(b), `"step":5`) {
		t.Fatalf("audit log (%d lines), want one outer.delta_refused naming site b and step 5:\n%s", n, b)
	}
	if _, err := audit.Verify(path); err != nil {
		t.Fatal(err)
	}
}
