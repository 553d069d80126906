package rendezvous

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/internal/auth"
)

// writeCA makes a CA and a certificate for 127.0.0.1 signed by it, as PEM
// files in dir.
func writeCA(t *testing.T, dir, prefix string) TLSFiles {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: prefix + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	f := TLSFiles{Cert: filepath.Join(dir, prefix+"cert.pem"), Key: filepath.Join(dir, prefix+"key.pem"), CA: filepath.Join(dir, prefix+"ca.pem")}
	os.WriteFile(f.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.WriteFile(f.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	return f
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
