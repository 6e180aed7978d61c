package menderapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

func benchKeys(b *testing.B) []struct {
	name string
	key  crypto.Signer
} {
	b.Helper()
	r2, _ := rsa.GenerateKey(rand.Reader, 2048)
	r3, _ := rsa.GenerateKey(rand.Reader, 3072)
	e256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	return []struct {
		name string
		key  crypto.Signer
	}{{"rsa2048", r2}, {"rsa3072", r3}, {"ecdsa-p256", e256}, {"ecdsa-p384", e384}, {"ed25519", ed}}
}

// BenchmarkBuildAndSign measures what a device does per auth request: build
// the body and sign it.
func BenchmarkBuildAndSign(b *testing.B) {
	id := Attributes{"mac": {"02:00:00:00:00:01"}}.IdentityJSON()
	for _, k := range benchKeys(b) {
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				body, err := BuildAuthRequest(id, k.key.Public(), "")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Sign(k.key, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyAuthRequest measures the server side: parse and verify.
func BenchmarkVerifyAuthRequest(b *testing.B) {
	id := Attributes{"mac": {"02:00:00:00:00:01"}}.IdentityJSON()
	for _, k := range benchKeys(b) {
		body, _ := BuildAuthRequest(id, k.key.Public(), "")
		sig, _ := Sign(k.key, body)
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := VerifyAuthRequest(body, sig); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
