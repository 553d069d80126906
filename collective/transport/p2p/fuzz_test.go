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
