package auth

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func pair(t *testing.T, dialTok, acceptTok Token) (dialErr, acceptErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- Accept(c, acceptTok, time.Now().Add(2*time.Second))
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dialErr = Dial(c, dialTok, time.Now().Add(2*time.Second))
	c.Close()
	return dialErr, <-done
}

func TestHandshake(t *testing.T) {
	a, b := NewToken(), NewToken()
	if d, x := pair(t, a, a); d != nil || x != nil {
		t.Fatalf("same token refused: dial %v, accept %v", d, x)
	}
	d, x := pair(t, a, b)
	if !errors.Is(x, ErrDenied) {
		t.Fatalf("acceptor took a wrong token: %v", x)
	}
	if d == nil {
		t.Fatal("dialler with a wrong token was not told it failed")
	}
	// A dialler with no token sends nothing; the acceptor times out or
	// sees the connection close, and refuses either way.
	if _, x := pair(t, nil, a); x == nil {
		t.Fatal("acceptor took a dialler without a token")
	}
	if d, x := pair(t, nil, nil); d != nil || x != nil {
		t.Fatalf("no token on either side must pass: %v %v", d, x)
	}
}

func TestTokenNeverPrints(t *testing.T) {
	tok := Token("supersecretvalue-0123456789")
	for _, s := range []string{tok.String(), errors.New(tok.String()).Error()} {
		if strings.Contains(s, "supersecret") {
			t.Fatalf("token shown: %s", s)
		}
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tok")
	tok := NewToken()
	if err := WriteTokenFile(p, tok); err != nil {
		t.Fatal(err)
	}
	got, err := ReadTokenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(tok) || len(got) != 64 {
		t.Fatalf("hex token of %d chars", len(got))
	}
	os.Chmod(p, 0o644)
	if _, err := ReadTokenFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable token file: %v", err)
	}
	os.Chmod(p, 0o600)
	os.WriteFile(p, []byte("short"), 0o600)
	if _, err := ReadTokenFile(p); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Fatalf("short token: %v", err)
	}
}
