// Package tlstest writes a throwaway certificate authority and a node
// certificate signed by it, for tests of mutual TLS (the rendezvous
// store's, a federation's). It is test support, not API.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Files are the PEM files WriteCA wrote.
type Files struct{ Cert, Key, CA string }

// WriteCA makes a CA and a certificate for 127.0.0.1 signed by it, valid
// for an hour, as PEM files in dir whose names start with prefix.
func WriteCA(t testing.TB, dir, prefix string) Files {
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
	f := Files{Cert: filepath.Join(dir, prefix+"cert.pem"), Key: filepath.Join(dir, prefix+"key.pem"), CA: filepath.Join(dir, prefix+"ca.pem")}
	for _, w := range []struct {
		path string
		b    *pem.Block
	}{{f.Cert, &pem.Block{Type: "CERTIFICATE", Bytes: der}}, {f.Key, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}}, {f.CA, &pem.Block{Type: "CERTIFICATE", Bytes: caDER}}} {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(w.b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}
