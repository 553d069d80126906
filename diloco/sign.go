package diloco

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Signed deltas. With Federation.SiteKeys every message on the board
// carries an Ed25519 signature by its site's key over the federation's
// prefix, the sync's step, the site's name, the place and the message,
// so that a delta is taken only from the site it is posted for, for that
// sync and place: the store's token lets its holders write any key, and
// without signatures one of them could post for any site, or move a
// site's delta from one sync to another.
//
// A signed message's key holds 's', the signature and the message, or,
// for one larger than partBytes, 'q', the signature and the number of
// parts (the signature covers the whole message, not each part).
const (
	signedInlineTag = 's'
	signedPartsTag  = 'q'
)

// ForgedError is the error for a delta on the board that the site it is
// posted for did not sign for that sync and place: written by another
// holder of the store's token, moved from another sync or place, or
// damaged. Every rank that reads it refuses it, so no rank averages it.
//
// It is also the error for a sync's members that no site signed (Site
// empty, Place -1): a token holder could otherwise decide a sync without
// some sites.
type ForgedError struct {
	Site  string
	Place int
	Step  int64
	Why   string
}

func (e *ForgedError) Error() string {
	what := fmt.Sprintf("the delta of site %q (place %d) for the sync of step %d is", e.Site, e.Place, e.Step)
	if e.Site == "" {
		what = fmt.Sprintf("the members of the sync of step %d are", e.Step)
	}
	return fmt.Sprintf("federation: %s refused: %s; %s", what, e.Why, e.fix())
}

// fix says what the operator should do about the refusal. The sites
// agreed on their keys when they joined (join compares a fingerprint), so
// a message the keys refuse was written by someone else who can write to
// the store.
func (e *ForgedError) fix() string {
	return "whoever wrote it can write to the store without being a site: give the store and every site new credentials (ringo store's --token-file, or etcd's), and check that every site's --federation-peers lists the sites' own peer IDs"
}

// signedBytes is what a site signs for one message.
func (b *boardExchange) signedBytes(step int64, site, place int, msg []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(64 + len(b.Prefix) + len(msg))
	for _, f := range []string{"ringo federation delta v1", b.Prefix, strconv.FormatInt(step, 10), b.Sites[site], strconv.Itoa(place)} {
		buf.WriteString(f)
		buf.WriteByte(0)
	}
	buf.Write(msg)
	return buf.Bytes()
}

// sign returns the signature to store with this rank's msg for the sync
// of step, or nil in a federation without site keys.
func (b *boardExchange) sign(step int64, msg []byte) []byte {
	if b.SiteKeys == nil {
		return nil
	}
	return ed25519.Sign(b.Key, b.signedBytes(step, b.Site, b.place, msg))
}

// verify checks msg, read for site at this place in the sync of step,
// against the signature stored with it (nil: none was).
func (b *boardExchange) verify(step int64, site int, msg, sig []byte) error {
	forged := func(why string) error { return &ForgedError{Site: b.Sites[site], Place: b.place, Step: step, Why: why} }
	switch {
	case b.SiteKeys == nil && sig != nil:
		return forged("it is signed, but this federation has no site keys")
	case b.SiteKeys == nil:
		return nil
	case sig == nil:
		return forged("it is not signed, and every site's delta must be signed by its key")
	case !ed25519.Verify(b.SiteKeys[site], b.signedBytes(step, site, b.place, msg), sig):
		return forged(fmt.Sprintf("its signature is not that of the site's key %s for this sync and place (forged by another holder of the store's token, moved from another sync, or damaged)", keyName(b.SiteKeys[site])))
	}
	return nil
}

// keyName is a short, stable name for a public key in messages.
func keyName(k ed25519.PublicKey) string { return "ed25519:" + hex.EncodeToString(k[:8]) }

// siteKeysFingerprint names the federation's site keys for join, which
// checks that every site has the same ("none" without them).
func siteKeysFingerprint(keys []ed25519.PublicKey) string {
	if keys == nil {
		return "none"
	}
	h := sha256.New()
	for _, k := range keys {
		h.Write(k)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// validateKeys checks Key and SiteKeys: both or neither, one public key
// per site, and Key the one listed for this site.
func (f *Federation) validateKeys() error {
	switch {
	case f.Key == nil && f.SiteKeys == nil:
		return nil
	case f.Key == nil || f.SiteKeys == nil:
		return fmt.Errorf("federation: site %q has %s: give both this site's key and every site's public key, or neither", f.Sites[f.Site], map[bool]string{true: "a key but no site keys", false: "site keys but no key of its own"}[f.Key != nil])
	case len(f.Key) != ed25519.PrivateKeySize:
		return fmt.Errorf("federation: site %q: its key has %d bytes, not an Ed25519 private key's %d", f.Sites[f.Site], len(f.Key), ed25519.PrivateKeySize)
	case len(f.SiteKeys) != len(f.Sites):
		return fmt.Errorf("federation: %d site keys for %d sites %v: want one per site, in the same order", len(f.SiteKeys), len(f.Sites), f.Sites)
	}
	for i, k := range f.SiteKeys {
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("federation: the key of site %q has %d bytes, not an Ed25519 public key's %d", f.Sites[i], len(k), ed25519.PublicKeySize)
		}
	}
	if pub := f.Key.Public().(ed25519.PublicKey); !pub.Equal(f.SiteKeys[f.Site]) {
		return fmt.Errorf("federation: site %q's key is %s, but the site keys list %s for it", f.Sites[f.Site], keyName(pub), keyName(f.SiteKeys[f.Site]))
	}
	return nil
}

// Signed members: the proposal of a sync's members is the list, then
// membersSigSep, the proposer's site index, membersSigSep and its
// signature (hex) over the prefix, the step and the list.
const membersSigSep = ";"

func (b *boardExchange) membersBytes(step int64, list []byte) []byte {
	return []byte("ringo federation members v1\x00" + b.Prefix + "\x00" + strconv.FormatInt(step, 10) + "\x00" + string(list))
}

// signMembers returns the value to propose list as the members of the
// sync of step: list itself, or signed in a federation with site keys.
func (b *boardExchange) signMembers(step int64, list []byte) []byte {
	if b.SiteKeys == nil {
		return list
	}
	sig := ed25519.Sign(b.Key, b.membersBytes(step, list))
	return []byte(string(list) + membersSigSep + strconv.Itoa(b.Site) + membersSigSep + hex.EncodeToString(sig))
}

// verifyMembers returns the list of a members value, after checking, in
// a federation with site keys, that a site signed it for this sync.
func (b *boardExchange) verifyMembers(step int64, v []byte) ([]byte, error) {
	list, rest, signed := strings.Cut(string(v), membersSigSep)
	forged := func(why string) error { return &ForgedError{Place: -1, Step: step, Why: why} }
	switch {
	case b.SiteKeys == nil && signed:
		return nil, forged("they are signed, but this federation has no site keys")
	case b.SiteKeys == nil:
		return v, nil
	case !signed:
		return nil, forged(fmt.Sprintf("%q is not signed by a site", v))
	}
	who, sigHex, ok := strings.Cut(rest, membersSigSep)
	site, err := strconv.Atoi(who)
	sig, herr := hex.DecodeString(sigHex)
	if !ok || err != nil || site < 0 || site >= len(b.SiteKeys) || herr != nil {
		return nil, forged(fmt.Sprintf("%q does not end with a site's index and signature", v))
	}
	if !ed25519.Verify(b.SiteKeys[site], b.membersBytes(step, []byte(list)), sig) {
		return nil, forged(fmt.Sprintf("they say site %q proposed them, but its key %s did not sign them for this sync", b.Sites[site], keyName(b.SiteKeys[site])))
	}
	return []byte(list), nil
}
