package p2p

import (
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Identity file format, version 1: one PEM block of type
// "RINGO P2P IDENTITY" with headers "Version: 1" and "Peer-Id: <peer ID>"
// (for people and tools that want to read the ID without the key); its
// bytes are the key in libp2p's protobuf encoding (crypto.MarshalPrivateKey).
// ReadIdentity checks the version and that the key matches Peer-Id.
const (
	identityPEMType = "RINGO P2P IDENTITY"
	identityVersion = "1"
	maxIdentityFile = 64 << 10
)

// NewIdentity generates a fresh Ed25519 libp2p identity.
func NewIdentity() (crypto.PrivKey, error) {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("p2p: generating an identity: %w", err)
	}
	return k, nil
}

// PeerID returns the peer ID of key, the name allowlists use for it.
func PeerID(key crypto.PrivKey) (peer.ID, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("p2p: peer ID of the identity: %w", err)
	}
	return id, nil
}

// encodeIdentity renders key in the identity file format.
func encodeIdentity(key crypto.PrivKey) ([]byte, error) {
	id, err := PeerID(key)
	if err != nil {
		return nil, err
	}
	b, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("p2p: encoding the identity: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: identityPEMType,
		Headers: map[string]string{"Version": identityVersion, "Peer-Id": id.String()}, Bytes: b}), nil
}

// decodeIdentity parses the identity file format. It never panics.
func decodeIdentity(b []byte) (crypto.PrivKey, error) {
	blk, rest := pem.Decode(b)
	switch {
	case blk == nil:
		return nil, errors.New("no PEM block: not a ringo p2p identity file")
	case blk.Type != identityPEMType:
		return nil, fmt.Errorf("PEM block of type %q, want %q", blk.Type, identityPEMType)
	case blk.Headers["Version"] != identityVersion:
		return nil, fmt.Errorf("identity file version %q, this build reads %q", blk.Headers["Version"], identityVersion)
	case len(rest) != 0 && len(trimSpace(rest)) != 0:
		return nil, errors.New("trailing data after the identity")
	}
	key, err := crypto.UnmarshalPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bad key: %w", err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("bad key: %w", err)
	}
	if want := blk.Headers["Peer-Id"]; want != id.String() {
		return nil, fmt.Errorf("the key's peer ID is %s, the file says %q", id, want)
	}
	return key, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// WriteIdentity writes key to path, readable by its owner only (0600). It
// writes a temporary file beside path and renames it, so that a crash
// leaves either the old file or the new one.
func WriteIdentity(path string, key crypto.PrivKey) error {
	b, err := encodeIdentity(key)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("p2p: writing identity %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("p2p: writing identity %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := f.Write(b); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("p2p: writing identity %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("p2p: writing identity %s: %w", path, err)
	}
	return nil
}

// ReadIdentity loads a key written by WriteIdentity. It refuses a file
// that group or others may read or write, as ssh does with private keys.
func ReadIdentity(path string) (crypto.PrivKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("p2p: reading identity: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("p2p: reading identity: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("p2p: identity %s has mode %#o: a private key must be readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxIdentityFile+1))
	if err != nil {
		return nil, fmt.Errorf("p2p: reading identity %s: %w", path, err)
	}
	if len(b) > maxIdentityFile {
		return nil, fmt.Errorf("p2p: identity %s is over %d bytes: not an identity file", path, maxIdentityFile)
	}
	key, err := decodeIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("p2p: identity %s: %w", path, err)
	}
	return key, nil
}
