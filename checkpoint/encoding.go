package checkpoint

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Optional encodings of the stored pieces, recorded in the manifest's
// "encoding" field. With any of them a shard still parses as safetensors,
// but each tensor is stored as a U8 blob of its encoded bytes, so only
// ringo (or `ringo ckpt export`) can read the values.
const (
	encZstd = "zstd+shuffle" // byte planes shuffled, then zstd
	encAES  = "aes-256-gcm"  // 12-byte random nonce, then the sealed bytes
)

// Environment variables holding the encryption key: 64 hex digits, or a
// file with 32 raw bytes or 64 hex digits.
const (
	EnvKey     = "RINGO_CKPT_KEY"
	EnvKeyFile = "RINGO_CKPT_KEY_FILE"
)

// keyFromEnv reads the AES-256 key from RINGO_CKPT_KEY or
// RINGO_CKPT_KEY_FILE.
func keyFromEnv() ([]byte, error) {
	var raw []byte
	src := EnvKey
	if v := os.Getenv(EnvKey); v != "" {
		raw = []byte(v)
	} else if path := os.Getenv(EnvKeyFile); path != "" {
		src = path
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading the checkpoint key: %w", err)
		}
		raw = b
	} else {
		return nil, fmt.Errorf("the checkpoint is encrypted: set %s (64 hex digits) or %s (a key file)", EnvKey, EnvKeyFile)
	}
	if len(raw) == 32 {
		return raw, nil
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("the key in %s must be 32 bytes or 64 hex digits", src)
	}
	return key, nil
}

var (
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdDec  *zstd.Decoder
)

func zstdCodecs() (*zstd.Encoder, *zstd.Decoder) {
	zstdOnce.Do(func() {
		// EncodeAll and DecodeAll may be called concurrently.
		zstdEnc, _ = zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
		zstdDec, _ = zstd.NewReader(nil)
	})
	return zstdEnc, zstdDec
}

// codec encodes and decodes stored pieces.
type codec struct {
	compress bool
	aead     cipher.AEAD
}

// name is the manifest's encoding field.
func (c codec) name() string {
	var parts []string
	if c.compress {
		parts = append(parts, encZstd)
	}
	if c.aead != nil {
		parts = append(parts, encAES)
	}
	return strings.Join(parts, ",")
}

func newCodec(compress, encrypt bool) (codec, error) {
	c := codec{compress: compress}
	if encrypt {
		key, err := keyFromEnv()
		if err != nil {
			return c, err
		}
		block, _ := aes.NewCipher(key)
		c.aead, _ = cipher.NewGCM(block)
	}
	return c, nil
}

// parseEncoding reads a manifest's encoding field.
func parseEncoding(encoding string) (compress, encrypt bool, err error) {
	for _, p := range strings.Split(encoding, ",") {
		switch p {
		case "":
		case encZstd:
			compress = true
		case encAES:
			encrypt = true
		default:
			return false, false, fmt.Errorf("unknown encoding %q", p)
		}
	}
	return compress, encrypt, nil
}

// codecFor is the codec that reads pieces stored with encoding.
func codecFor(encoding string) (codec, error) {
	compress, encrypt, err := parseEncoding(encoding)
	if err != nil {
		return codec{}, err
	}
	return newCodec(compress, encrypt)
}

func (c codec) active() bool { return c.compress || c.aead != nil }

// shuffle gathers byte k of every element into plane k: the exponents of
// floats then sit together, which is what compresses.
func shuffle(dst, src []byte, esize int) {
	n := len(src) / esize
	for i := 0; i < n; i++ {
		for k := 0; k < esize; k++ {
			dst[k*n+i] = src[i*esize+k]
		}
	}
}

func unshuffle(dst, src []byte, esize int) {
	n := len(src) / esize
	for i := 0; i < n; i++ {
		for k := 0; k < esize; k++ {
			dst[i*esize+k] = src[k*n+i]
		}
	}
}

func (c codec) encode(data []byte, esize int) ([]byte, error) {
	out := data
	if c.compress {
		if esize > 1 {
			sh := make([]byte, len(data))
			shuffle(sh, data, esize)
			out = sh
		}
		enc, _ := zstdCodecs()
		out = enc.EncodeAll(out, nil)
	}
	if c.aead != nil {
		nonce := make([]byte, c.aead.NonceSize(), c.aead.NonceSize()+len(out)+c.aead.Overhead())
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		out = c.aead.Seal(nonce, nonce, out, nil)
	}
	return out, nil
}

var errBadKey = errors.New("decryption failed: wrong key, or the data was altered")

// decode reverses encode; want is the plain length.
func (c codec) decode(blob []byte, esize int, want int64) ([]byte, error) {
	out := blob
	if c.aead != nil {
		ns := c.aead.NonceSize()
		if len(out) < ns {
			return nil, errBadKey
		}
		plain, err := c.aead.Open(nil, out[:ns], out[ns:], nil)
		if err != nil {
			return nil, errBadKey
		}
		out = plain
	}
	if c.compress {
		_, dec := zstdCodecs()
		plain, err := dec.DecodeAll(out, make([]byte, 0, want))
		if err != nil {
			return nil, fmt.Errorf("decompressing: %w", err)
		}
		if esize > 1 && int64(len(plain)) == want {
			un := make([]byte, len(plain))
			unshuffle(un, plain, esize)
			plain = un
		}
		out = plain
	}
	if int64(len(out)) != want {
		return nil, fmt.Errorf("decodes to %d bytes, want %d", len(out), want)
	}
	return out, nil
}
