package pki_test

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in   string
		want pki.KeyType
		ok   bool
	}{
		{"ecdsa-p256", pki.ECDSAP256, true},
		{"ECDSA-P384", pki.ECDSAP384, true},
		{" ed25519 ", pki.Ed25519, true},
		{"rsa2048", pki.RSA2048, true},
		{"rsa3072", pki.RSA3072, true},
		{"rsa1024", "", false},
		{"p256", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := pki.ParseKeyType(tt.in)
			if !tt.ok {
				require.ErrorIs(t, err, pki.ErrUnknownKeyType)
				for _, name := range pki.KeyTypes() {
					assert.Contains(t, err.Error(), string(name), "the error must list every valid name")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestGenerateKeyUnknownType(t *testing.T) {
	k, err := pki.GenerateKey("dsa")
	require.ErrorIs(t, err, pki.ErrUnknownKeyType)
	assert.Nil(t, k)
}

// TestKeyRoundTrip generates every key type, marshals it as PKCS#8 and parses
// it back, and checks the algorithm and size are what the type promises.
func TestKeyRoundTrip(t *testing.T) {
	tests := []struct {
		typ   pki.KeyType
		check func(t *testing.T, k crypto.Signer)
	}{
		{pki.ECDSAP256, func(t *testing.T, k crypto.Signer) {
			assert.Equal(t, elliptic.P256(), k.(*ecdsa.PrivateKey).Curve)
		}},
		{pki.ECDSAP384, func(t *testing.T, k crypto.Signer) {
			assert.Equal(t, elliptic.P384(), k.(*ecdsa.PrivateKey).Curve)
		}},
		{pki.Ed25519, func(t *testing.T, k crypto.Signer) {
			assert.IsType(t, ed25519.PrivateKey{}, k)
		}},
		{pki.RSA2048, func(t *testing.T, k crypto.Signer) {
			assert.Equal(t, 2048, k.(*rsa.PrivateKey).N.BitLen())
		}},
		{pki.RSA3072, func(t *testing.T, k crypto.Signer) {
			assert.Equal(t, 3072, k.(*rsa.PrivateKey).N.BitLen())
		}},
	}
	for _, tt := range tests {
		t.Run(string(tt.typ), func(t *testing.T) {
			k, err := pki.GenerateKey(tt.typ)
			require.NoError(t, err)
			tt.check(t, k)

			pemBytes, err := pki.MarshalPrivateKeyPEM(k)
			require.NoError(t, err)
			blk, rest := pem.Decode(pemBytes)
			require.NotNil(t, blk)
			assert.Equal(t, "PRIVATE KEY", blk.Type, "keys are written as PKCS#8")
			assert.Empty(t, rest)

			got, err := pki.ParsePrivateKeyPEM(pemBytes)
			require.NoError(t, err)
			tt.check(t, got)
			assert.True(t, got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()),
				"the parsed key must be the generated one")
			assertSigns(t, got)
		})
	}
}

// assertSigns checks that k produces a signature its public key verifies.
func assertSigns(t *testing.T, k crypto.Signer) {
	t.Helper()
	msg := []byte("signed by a parsed key")
	digest := sha256.Sum256(msg)
	switch pub := k.Public().(type) {
	case ed25519.PublicKey:
		sig, err := k.Sign(rand.Reader, msg, crypto.Hash(0))
		require.NoError(t, err)
		assert.True(t, ed25519.Verify(pub, msg, sig))
	case *ecdsa.PublicKey:
		sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
		require.NoError(t, err)
		assert.True(t, ecdsa.VerifyASN1(pub, digest[:], sig))
	case *rsa.PublicKey:
		sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
		require.NoError(t, err)
		assert.NoError(t, rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig))
	default:
		t.Fatalf("unexpected public key type %T", pub)
	}
}

// ecParamsPEM is the "EC PARAMETERS" block `openssl ecparam -genkey` writes
// before the key: the DER of the named curve OID.
func ecParamsPEM(t *testing.T, curve elliptic.Curve) []byte {
	t.Helper()
	oids := map[string]asn1.ObjectIdentifier{
		"P-256": {1, 2, 840, 10045, 3, 1, 7},
		"P-384": {1, 3, 132, 0, 34},
	}
	der, err := asn1.Marshal(oids[curve.Params().Name])
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: der})
}

// TestParsePrivateKeyPEMOpenSSLForms parses the forms openssl writes:
// PKCS#1 for RSA, SEC1 for EC with and without a leading EC PARAMETERS block.
func TestParsePrivateKeyPEMOpenSSLForms(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	sec1 := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}

	tests := []struct {
		name string
		data []byte
		want crypto.Signer
	}{
		{"pkcs1 rsa", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey},
		{"sec1 p256", sec1(p256), p256},
		{"sec1 p384", sec1(p384), p384},
		{"ec parameters + sec1 p256", append(ecParamsPEM(t, elliptic.P256()), sec1(p256)...), p256},
		{"ec parameters + sec1 p384", append(ecParamsPEM(t, elliptic.P384()), sec1(p384)...), p384},
		{"leading text before the block", append([]byte("# generated by openssl\n"), sec1(p256)...), p256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pki.ParsePrivateKeyPEM(tt.data)
			require.NoError(t, err)
			assert.True(t, got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.want.Public()))
			assertSigns(t, got)
		})
	}
}

func TestParsePrivateKeyPEMErrors(t *testing.T) {
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	x25519DER, err := x509.MarshalPKCS8PrivateKey(x25519)
	require.NoError(t, err)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pubDER, err := x509.MarshalPKIXPublicKey(p256.Public())
	require.NoError(t, err)
	block := func(typ string, der []byte, hdr map[string]string) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: hdr, Bytes: der})
	}

	tests := []struct {
		name     string
		data     []byte
		sentinel error
		contains string
	}{
		{"empty", nil, pki.ErrNoPEM, "private key"},
		{"not pem", []byte("hello"), pki.ErrNoPEM, ""},
		{"only ec parameters", ecParamsPEM(t, elliptic.P256()), pki.ErrNoPEM, ""},
		{"pkcs8 encrypted", block("ENCRYPTED PRIVATE KEY", []byte{0x30, 0}, nil), pki.ErrEncryptedKey, "ENCRYPTED PRIVATE KEY"},
		{"legacy openssl encryption", block("RSA PRIVATE KEY", []byte{1, 2, 3},
			map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"}), pki.ErrEncryptedKey, "decrypt"},
		{"certificate", block("CERTIFICATE", []byte{0x30, 0}, nil), pki.ErrUnsupportedKey, `"CERTIFICATE"`},
		{"public key", block("PUBLIC KEY", pubDER, nil), pki.ErrUnsupportedKey, `"PUBLIC KEY"`},
		{"x25519 cannot sign", block("PRIVATE KEY", x25519DER, nil), pki.ErrUnsupportedKey, "cannot sign"},
		{"garbage pkcs8", block("PRIVATE KEY", []byte{0x30, 3, 1, 2, 3}, nil), nil, `"PRIVATE KEY"`},
		{"garbage sec1", block("EC PRIVATE KEY", []byte{0x30, 0}, nil), nil, `"EC PRIVATE KEY"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := pki.ParsePrivateKeyPEM(tt.data)
			require.Error(t, err)
			assert.Nil(t, k)
			if tt.sentinel != nil {
				assert.ErrorIs(t, err, tt.sentinel)
			}
			assert.Contains(t, err.Error(), tt.contains)
		})
	}
}

// opaqueSigner is a signer whose private part cannot be exported, like a TPM key.
type opaqueSigner struct{ crypto.Signer }

func TestMarshalPrivateKeyPEM(t *testing.T) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tests := []struct {
		name string
		key  crypto.Signer
		ok   bool
	}{
		{"ed25519 value", edKey, true},
		{"ed25519 pointer", &edKey, true},
		{"ecdsa", ecKey, true},
		{"opaque signer", opaqueSigner{ecKey}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := pki.MarshalPrivateKeyPEM(tt.key)
			if !tt.ok {
				require.ErrorIs(t, err, pki.ErrUnsupportedKey)
				assert.Nil(t, out)
				return
			}
			require.NoError(t, err)
			back, err := pki.ParsePrivateKeyPEM(out)
			require.NoError(t, err)
			assert.True(t, back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.key.Public()))
		})
	}
}

// FuzzParsePrivateKeyPEM checks that arbitrary bytes never panic the parser,
// and that whatever it accepts can be written back as PKCS#8 and re-read as
// the same key.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	for _, typ := range []pki.KeyType{pki.ECDSAP256, pki.Ed25519} {
		k, err := pki.GenerateKey(typ)
		require.NoError(f, err)
		p, err := pki.MarshalPrivateKeyPEM(k)
		require.NoError(f, err)
		f.Add(p)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(f, err)
	sec1, err := x509.MarshalECPrivateKey(ec)
	require.NoError(f, err)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7}}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := pki.ParsePrivateKeyPEM(data)
		if err != nil {
			if k != nil {
				t.Fatalf("got key %T together with error %v", k, err)
			}
			return
		}
		out, err := pki.MarshalPrivateKeyPEM(k)
		if err != nil {
			t.Fatalf("parsed key %T cannot be marshalled: %v", k, err)
		}
		back, err := pki.ParsePrivateKeyPEM(out)
		if err != nil {
			t.Fatalf("marshalled key does not parse: %v", err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Fatal("round trip changed the key")
		}
	})
}
