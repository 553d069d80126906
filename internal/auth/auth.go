package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// ErrDenied is returned when the peer's proof does not match the token.
var ErrDenied = errors.New("the peer does not hold this job's token")

const (
	challengeSize = 32
	proofSize     = sha256.Size
	domain        = "ringo-auth-v1"
)

// Token is a job's shared secret. Its String never shows the secret, so a
// Token can be logged or put in an error by mistake without leaking.
type Token []byte

func (t Token) String() string {
	if len(t) == 0 {
		return "token(none)"
	}
	return "token(redacted)"
}

// NewToken returns a fresh token: 32 random bytes, hex-encoded so that
// it survives a round trip through a token file unchanged.
func NewToken() Token {
	b := make([]byte, 32)
	rand.Read(b)
	return Token(hex.EncodeToString(b))
}

// ReadTokenFile reads a token file: its contents with surrounding white
// space removed. A file readable by group or others is refused, the way ssh
// refuses a private key anyone can read.
func ReadTokenFile(path string) (Token, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("token file %s: mode %v lets other users read it; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 16 {
		return nil, fmt.Errorf("token file %s: %d characters is too short for a secret (want at least 16)", path, len(s))
	}
	return Token(s), nil
}

// WriteTokenFile writes t to path with mode 0600, in the form
// ReadTokenFile reads back.
func WriteTokenFile(path string, t Token) error {
	return os.WriteFile(path, append(append([]byte(nil), t...), '\n'), 0o600)
}

func proof(t Token, role string, theirs, mine []byte) []byte {
	m := hmac.New(sha256.New, t)
	m.Write([]byte(domain))
	m.Write([]byte(role))
	m.Write(theirs)
	m.Write(mine)
	return m.Sum(nil)
}

// Dial runs the dialling side of the handshake on c. A zero deadline means
// 10 seconds from now.
func Dial(c net.Conn, t Token, deadline time.Time) error {
	return handshake(c, t, deadline, true)
}

// Accept runs the accepting side of the handshake on c.
func Accept(c net.Conn, t Token, deadline time.Time) error {
	return handshake(c, t, deadline, false)
}

func handshake(c net.Conn, t Token, deadline time.Time, dialer bool) error {
	if len(t) == 0 {
		return nil
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(10 * time.Second)
	}
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})

	mine := make([]byte, challengeSize)
	rand.Read(mine)
	theirs := make([]byte, challengeSize)
	myRole, theirRole := "accept", "dial"
	if dialer {
		myRole, theirRole = "dial", "accept"
	}
	// Send the challenge, read theirs. The dialler goes first in both
	// rounds so that neither side blocks on a full buffer.
	if dialer {
		if _, err := c.Write(mine); err != nil {
			return fmt.Errorf("auth: sending challenge to %s: %w", c.RemoteAddr(), err)
		}
	}
	if _, err := io.ReadFull(c, theirs); err != nil {
		return fmt.Errorf("auth: reading challenge from %s: %w", c.RemoteAddr(), err)
	}
	if !dialer {
		if _, err := c.Write(mine); err != nil {
			return fmt.Errorf("auth: sending challenge to %s: %w", c.RemoteAddr(), err)
		}
	}
	want := proof(t, theirRole, mine, theirs)
	got := make([]byte, proofSize)
	send := func() error {
		if _, err := c.Write(proof(t, myRole, theirs, mine)); err != nil {
			return fmt.Errorf("auth: sending proof to %s: %w", c.RemoteAddr(), err)
		}
		return nil
	}
	check := func() error {
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("auth: %s did not prove it holds the token: %w", c.RemoteAddr(), err)
		}
		if !hmac.Equal(got, want) {
			return fmt.Errorf("auth: %s: %w", c.RemoteAddr(), ErrDenied)
		}
		return nil
	}
	// The dialler proves first; the acceptor answers only a valid proof,
	// so a process without the token learns nothing from the acceptor.
	if dialer {
		if err := send(); err != nil {
			return err
		}
		return check()
	}
	if err := check(); err != nil {
		return err
	}
	return send()
}
