package rendezvous

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"

	"github.com/ringo-ml/ringo/internal/auth"
)

// Values the etcd store writes when the job has a token (format version 1):
//
//	0x01 | 12-byte random nonce | AES-256-GCM(value, ad) with its 16-byte tag
//
// The key is HKDF-SHA256(token, info "ringo-etcd-v1 value key"); the
// additional data is "ringo-etcd-v1\x00" followed by the full etcd key, so a
// sealed value moved to another key does not open.
const (
	sealVersion  = 1
	sealDomain   = "ringo-etcd-v1"
	sealOverhead = 1 + 12 + 16
)

var errSealed = errors.New("value is not sealed with this job's token")

// sealer seals and opens etcd values. A nil *sealer stores them as they are.
type sealer struct{ aead cipher.AEAD }

func newSealer(token auth.Token) (*sealer, error) {
	if len(token) == 0 {
		return nil, nil
	}
	key, err := hkdf.Key(sha256.New, token, nil, sealDomain+" value key", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func sealAD(etcdKey string) []byte {
	return append([]byte(sealDomain+"\x00"), etcdKey...)
}

func (s *sealer) seal(etcdKey string, value []byte) []byte {
	if s == nil {
		return value
	}
	out := make([]byte, 1+12, sealOverhead+len(value))
	out[0] = sealVersion
	rand.Read(out[1:13])
	return s.aead.Seal(out, out[1:13], value, sealAD(etcdKey))
}

// open returns the value sealed in b, never nil: a stored empty value is
// present, and nil means "missing" to the rest of the package.
func (s *sealer) open(etcdKey string, b []byte) ([]byte, error) {
	if s == nil {
		if b == nil {
			b = []byte{}
		}
		return b, nil
	}
	if len(b) < sealOverhead || b[0] != sealVersion {
		return nil, errSealed
	}
	v, err := s.aead.Open(nil, b[1:13], b[13:], sealAD(etcdKey))
	if err != nil {
		return nil, errSealed
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}
