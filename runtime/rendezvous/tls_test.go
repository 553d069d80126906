package rendezvous

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/internal/tlstest"
)

// writeCA makes a CA and a certificate for 127.0.0.1 signed by it, as PEM
// files in dir.
func writeCA(t *testing.T, dir, prefix string) TLSFiles {
	f := tlstest.WriteCA(t, dir, prefix)
	return TLSFiles{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

func TestStoreOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	files := writeCA(t, dir, "job-")
	srvCfg, cliCfg, err := files.Configs()
	if err != nil {
		t.Fatal(err)
	}
	tok := auth.NewToken()
	srv, err := NewServerTLS("127.0.0.1:0", tok, srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	refused := make(chan string, 8)
	srv.OnRefuse(func(remote string, why error) { refused <- why.Error() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := DialTLS(ctx, srv.Addr(), tok, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("get over TLS: %q %v", v, err)
	}

	// Plain TCP to a TLS store: refused, and the refusal is reported.
	short, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	if _, err := Dial(short, srv.Addr(), tok); err == nil {
		t.Fatal("a plain client joined a TLS store")
	}
	select {
	case why := <-refused:
		if !strings.Contains(why, "TLS") {
			t.Errorf("refusal reason %q", why)
		}
	case <-time.After(5 * time.Second):
		t.Error("the refusal was not reported")
	}

	// A client whose certificate another CA signed: refused at once.
	other := writeCA(t, dir, "other-")
	_, otherCli, err := other.Configs()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = DialTLS(ctx, srv.Addr(), tok, otherCli)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("another CA's client: %v after %v", err, time.Since(start))
	}
	var certErr interface{ Unwrap() error }
	_ = errors.As(err, &certErr)
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error does not say it was the certificate: %v", err)
	}
}

func TestTLSFilesErrors(t *testing.T) {
	if _, _, err := (TLSFiles{Cert: "a"}).Configs(); err == nil || !strings.Contains(err.Error(), "all of") {
		t.Errorf("partial files: %v", err)
	}
	dir := t.TempDir()
	f := writeCA(t, dir, "x-")
	os.WriteFile(f.CA, []byte("not pem"), 0o600)
	if _, _, err := f.Configs(); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("bad CA: %v", err)
	}
}
