package p2p

import (
	"bytes"
	"testing"
)

// FuzzDecodeIdentity: the identity file parser never panics, and whatever
// it accepts round-trips to the same key. Seeds live under
// testdata/fuzz/FuzzDecodeIdentity.
func FuzzDecodeIdentity(f *testing.F) {
	key, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	good, err := encodeIdentity(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN RINGO P2P IDENTITY-----\nVersion: 1\n\nAAAA\n-----END RINGO P2P IDENTITY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := decodeIdentity(b)
		if err != nil {
			return
		}
		again, err := encodeIdentity(k)
		if err != nil {
			t.Fatalf("accepted a key it cannot encode: %v", err)
		}
		k2, err := decodeIdentity(again)
		if err != nil || !k2.Equals(k) {
			t.Fatalf("round trip failed: %v", err)
		}
		if bytes.Equal(b, good) && !k.Equals(key) {
			t.Fatal("decoded the seed to another key")
		}
	})
}

// FuzzHello: the hello check never panics and accepts only hellos from a
// higher rank with the group's nonce.
func FuzzHello(f *testing.F) {
	f.Add(encodeHello(7, 2, kindData), uint64(7))
	f.Add(encodeHello(7, 0, kindControl), uint64(7))
	f.Add([]byte("RGP2"), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, nonce uint64) {
		ms := make([]member, 4) // all with the empty peer ID
		from, kind, err := checkHello(b, nonce, 1, ms, "")
		if err != nil {
			return
		}
		if from <= 1 || from >= 4 || (kind != kindControl && kind != kindData) {
			t.Fatalf("accepted from=%d kind=%d", from, kind)
		}
		if !bytes.Equal(encodeHello(nonce, from, kind), b) {
			t.Fatalf("accepted a hello that is not the canonical encoding: %x", b)
		}
	})
}
