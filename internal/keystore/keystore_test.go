package keystore_test

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// TestOpenKeyForms opens every key encoding openssl and Mender write, and
// checks the strength and type rules.
func TestOpenKeyForms(t *testing.T) {
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	p256 := genKey(t, pki.ECDSAP256).(*ecdsa.PrivateKey)
	p384 := genKey(t, pki.ECDSAP384).(*ecdsa.PrivateKey)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	ed := genKey(t, pki.Ed25519)
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	x25519DER, err := x509.MarshalPKCS8PrivateKey(x25519)
	require.NoError(t, err)
	sec1 := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return pemBlock("EC PRIVATE KEY", der)
	}
	ecParams, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	require.NoError(t, err)
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   []byte{1, 2, 3}})

	tests := []struct {
		name     string
		data     []byte
		want     crypto.Signer // nil: an error is expected
		sentinel error
		contains string
	}{
		{"rsa2048 pkcs1", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa2048)), rsa2048, nil, ""},
		{"rsa2048 pkcs8", pkcs8(t, rsa2048), rsa2048, nil, ""},
		{"p256 sec1", sec1(p256), p256, nil, ""},
		{"p256 ec parameters + sec1", append(pemBlock("EC PARAMETERS", ecParams), sec1(p256)...), p256, nil, ""},
		{"p256 pkcs8", pkcs8(t, p256), p256, nil, ""},
		{"p384 sec1", sec1(p384), p384, nil, ""},
		{"p384 pkcs8", pkcs8(t, p384), p384, nil, ""},
		{"ed25519 pkcs8", pkcs8(t, ed), ed, nil, ""},
		{"rsa1024 pkcs1 is weak", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa1024)), nil, keystore.ErrWeakKey, "1024 bits"},
		{"rsa1024 pkcs8 is weak", pkcs8(t, rsa1024), nil, keystore.ErrWeakKey, "at least 2048"},
		{"p224 unsupported", sec1(p224), nil, keystore.ErrUnsupported, "P-224"},
		{"x25519 cannot sign", pemBlock("PRIVATE KEY", x25519DER), nil, keystore.ErrUnsupported, "cannot sign"},
		{"encrypted", encrypted, nil, keystore.ErrUnsupported, "decrypt"},
		{"certificate instead of key", pemBlock("CERTIFICATE", []byte{0x30, 0}), nil, keystore.ErrUnsupported, `"CERTIFICATE"`},
		{"not pem", []byte("not a key"), nil, pki.ErrNoPEM, "PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			writeFile(t, path, tt.data, 0o600)
			k, err := keystore.Open(t.Context(), path, keystore.Options{})
			if tt.want == nil {
				require.Error(t, err)
				assert.Nil(t, k)
				assert.ErrorIs(t, err, tt.sentinel)
				assert.Contains(t, err.Error(), path, "the error names the file")
				assert.Contains(t, err.Error(), tt.contains)
				return
			}
			require.NoError(t, err)
			defer k.Close()
			assert.True(t, equalKeys(k.Public(), tt.want.Public()), "the opened key is the one in the file")
			assert.Equal(t, path, k.Ref())
			assert.Equal(t, menderapi.Fingerprint(tt.want.Public()), k.Fingerprint())
			assert.Nil(t, k.CertificateChain(), "no certificate configured")
			assert.Empty(t, k.Warnings())
			_, err = k.TLSCertificate()
			assert.ErrorIs(t, err, keystore.ErrNotFound, "no certificate, no TLS certificate")
		})
	}
}

func TestOpenPermissions(t *testing.T) {
	keyPEM := pkcs8(t, genKey(t, pki.Ed25519))
	tests := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o700, true},
		{0o644, false},
		{0o640, false},
		{0o604, false},
		{0o660, false},
		{0o601, false},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			writeFile(t, path, keyPEM, tt.mode)
			k, err := keystore.Open(t.Context(), path, keystore.Options{})
			if tt.ok {
				require.NoError(t, err)
				assert.NotEmpty(t, k.Fingerprint())
				return
			}
			require.ErrorIs(t, err, keystore.ErrInsecurePermissions)
			assert.Nil(t, k)
			assert.Contains(t, err.Error(), "chmod 600 "+path, "the error says how to fix it")
		})
	}
}

func TestOpenReferences(t *testing.T) {
	dir := t.TempDir()
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name        string
		ctx         context.Context
		ref         string
		sentinel    error
		contains    string
		notContains string
	}{
		{"pkcs11", t.Context(), "pkcs11:token=dev;object=auth?pin-value=123456", keystore.ErrPKCS11,
			"pkcs11 keys are not supported by this agent", "123456"},
		{"pkcs11 upper case", t.Context(), "PKCS11:object=auth", keystore.ErrPKCS11, "PKCS11:object=auth", ""},
		{"tpm handle not a number", t.Context(), "handle:0xnope", keystore.ErrInvalidHandle, "not a number", ""},
		{"tpm scheme", t.Context(), "tpm:handle=0x81000001", keystore.ErrUnsupported, "handle:0x81", ""},
		{"empty", t.Context(), " ", keystore.ErrNotFound, "empty", ""},
		{"missing file", t.Context(), filepath.Join(dir, "nope.pem"), keystore.ErrNotFound, filepath.Join(dir, "nope.pem"), ""},
		{"directory", t.Context(), dir, keystore.ErrUnsupported, "regular file", ""},
		{"canceled", canceled, filepath.Join(dir, "nope.pem"), context.Canceled, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := keystore.Open(tt.ctx, tt.ref, keystore.Options{})
			require.Error(t, err)
			assert.Nil(t, k)
			assert.ErrorIs(t, err, tt.sentinel)
			assert.Contains(t, err.Error(), tt.contains)
			if tt.notContains != "" {
				assert.NotContains(t, err.Error(), tt.notContains, "a PIN must never reach an error message")
			}
		})
	}

	_, err := keystore.Open(t.Context(), filepath.Join(dir, "nope.pem"), keystore.Options{})
	assert.ErrorIs(t, err, fs.ErrNotExist, "a missing file also wraps fs.ErrNotExist")
}

// TestOpenCertificateChecks covers the checks Open makes on the certificate
// file, with the clock placed relative to a leaf valid for 100 days.
func TestOpenCertificateChecks(t *testing.T) {
	ca := newCA(t)
	key := genKey(t, pki.ECDSAP256)
	start := time.Now().Truncate(time.Second)
	leaf := issue(t, ca, key.Public(), "device-1", start, 100*day)
	other := issue(t, ca, genKey(t, pki.ECDSAP256).Public(), "device-2", start, 100*day)
	serverOnly, err := ca.Issue(key.Public(), pki.LeafOptions{CN: "device-1", NotBefore: start, Validity: 100 * day,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.NoError(t, err)
	inter, err := ca.IssueIntermediate("short-lived intermediate", pki.ECDSAP256, 10*day)
	require.NoError(t, err)
	interLeaf := issue(t, inter, key.Public(), "device-1", start, 100*day)
	at := func(d time.Duration) time.Time { return start.Add(d) }

	tests := []struct {
		name         string
		certPEM      []byte // nil: no file
		now          time.Time
		sentinel     error
		contains     []string
		warnings     [][]string // per warning, substrings it must contain
		chainLen     int
		wantNotExist bool
	}{
		{"valid", pki.EncodeCertsPEM(leaf), at(day), nil, nil, nil, 1, false},
		{"31 days left: no warning", pki.EncodeCertsPEM(leaf), at(69 * day), nil, nil, nil, 1, false},
		{"12 days left: warning", pki.EncodeCertsPEM(leaf), at(88*day - time.Minute), nil, nil,
			[][]string{{"expires in 12 days (" + leaf.NotAfter.UTC().Format(time.DateOnly) + "): renew it"}}, 1, false},
		{"hours left: warning", pki.EncodeCertsPEM(leaf), at(100*day - time.Hour), nil, nil, [][]string{{"less than a day"}}, 1, false},
		{"server-only certificate: warning", pki.EncodeCertsPEM(serverOnly), at(day), nil, nil, [][]string{{"clientAuth"}}, 1, false},
		{"mismatch", pki.EncodeCertsPEM(other), at(day), keystore.ErrKeyMismatch,
			[]string{menderapi.Fingerprint(other.PublicKey), menderapi.Fingerprint(key.Public()), "device-2"}, nil, 0, false},
		{"chain in wrong order", pki.EncodeCertsPEM(inter.Cert, interLeaf), at(day), keystore.ErrKeyMismatch, []string{"first in the file"}, nil, 0, false},
		{"expired", pki.EncodeCertsPEM(leaf), at(100*day + time.Hour), keystore.ErrExpired,
			[]string{leaf.NotAfter.UTC().Format(time.RFC3339), "renew"}, nil, 0, false},
		{"not yet valid", pki.EncodeCertsPEM(leaf), at(-time.Hour), keystore.ErrNotYetValid,
			[]string{leaf.NotBefore.UTC().Format(time.RFC3339), "clock"}, nil, 0, false},
		{"intermediate expiring: warning", pki.EncodeCertsPEM(interLeaf, inter.Cert), at(day), nil, nil,
			[][]string{{`intermediate certificate "short-lived intermediate"`, "expires in 9 days"}}, 2, false},
		{"intermediate expired", pki.EncodeCertsPEM(interLeaf, inter.Cert), at(20 * day), keystore.ErrExpired,
			[]string{"intermediate"}, nil, 0, false},
		{"missing file", nil, at(day), keystore.ErrNotFound, []string{"does not exist"}, nil, 0, true},
		{"not a certificate", []byte("garbage"), at(day), pki.ErrNoPEM, []string{"CERTIFICATE"}, nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			keyPath, certPath := filepath.Join(dir, "device.key"), filepath.Join(dir, "device.crt")
			writeFile(t, keyPath, pkcs8(t, key), 0o600)
			if tt.certPEM != nil {
				writeFile(t, certPath, tt.certPEM, 0o644)
			}
			now := tt.now
			k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath, Now: func() time.Time { return now }})
			if tt.sentinel != nil {
				require.Error(t, err)
				assert.Nil(t, k)
				assert.ErrorIs(t, err, tt.sentinel)
				assert.Equal(t, tt.wantNotExist, errors.Is(err, fs.ErrNotExist))
				assert.Contains(t, err.Error(), certPath, "the error names the certificate file")
				for _, s := range tt.contains {
					assert.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			assert.Len(t, k.CertificateChain(), tt.chainLen)
			w := k.Warnings()
			require.Len(t, w, len(tt.warnings), "warnings: %q", w)
			for i, subs := range tt.warnings {
				for _, s := range subs {
					assert.Contains(t, w[i], s)
				}
				assert.Contains(t, w[i], certPath)
			}
		})
	}
}

func TestOpenOrGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "mender")
	path := filepath.Join(dir, "mender-agent.pem")

	k, generated, err := keystore.OpenOrGenerate(t.Context(), path, keystore.Options{})
	require.NoError(t, err)
	assert.True(t, generated)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	di, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), di.Mode().Perm(), "a created directory is private")

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(data)
	require.NotNil(t, blk)
	assert.Equal(t, "PRIVATE KEY", blk.Type, "PKCS#8, as Mender 5 writes it")
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	require.NoError(t, err)
	assert.IsType(t, ed25519.PrivateKey{}, parsed)
	assert.True(t, equalKeys(parsed.(crypto.Signer).Public(), k.Public()))

	again, generated, err := keystore.OpenOrGenerate(t.Context(), path, keystore.Options{})
	require.NoError(t, err)
	assert.False(t, generated, "an existing key is opened, not replaced")
	assert.Equal(t, k.Fingerprint(), again.Fingerprint())
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, data, after)
}

func TestOpenOrGenerateErrors(t *testing.T) {
	t.Run("insecure existing key is not replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "mender-agent.pem")
		keyPEM := pkcs8(t, genKey(t, pki.Ed25519))
		writeFile(t, path, keyPEM, 0o644)
		k, generated, err := keystore.OpenOrGenerate(t.Context(), path, keystore.Options{})
		require.ErrorIs(t, err, keystore.ErrInsecurePermissions)
		assert.Nil(t, k)
		assert.False(t, generated)
		after, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, keyPEM, after)
	})
	t.Run("pkcs11 is never generated", func(t *testing.T) {
		k, generated, err := keystore.OpenOrGenerate(t.Context(), "pkcs11:object=x", keystore.Options{})
		require.ErrorIs(t, err, keystore.ErrPKCS11)
		assert.Nil(t, k)
		assert.False(t, generated)
	})
	t.Run("generated key with a certificate for another key", func(t *testing.T) {
		dir := t.TempDir()
		certPath := filepath.Join(dir, "device.crt")
		ca := newCA(t)
		writeFile(t, certPath, pki.EncodeCertsPEM(issue(t, ca, genKey(t, pki.Ed25519).Public(), "d", time.Now(), day)), 0o644)
		_, generated, err := keystore.OpenOrGenerate(t.Context(), filepath.Join(dir, "new.pem"), keystore.Options{CertFile: certPath})
		require.ErrorIs(t, err, keystore.ErrKeyMismatch)
		assert.False(t, generated)
	})
}

func TestChainWithIntermediate(t *testing.T) {
	root := newCA(t)
	inter, err := root.IssueIntermediate("intermediate", pki.ECDSAP256, 365*day)
	require.NoError(t, err)
	key := genKey(t, pki.Ed25519)
	leaf := issue(t, inter, key.Public(), "device-1", time.Time{}, 30*day+2*day)

	dir := t.TempDir()
	keyPath, certPath := filepath.Join(dir, "k.pem"), filepath.Join(dir, "c.pem")
	writeFile(t, keyPath, pkcs8(t, key), 0o600)
	writeFile(t, certPath, pki.EncodeCertsPEM(leaf, inter.Cert), 0o644)

	k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath})
	require.NoError(t, err)
	chain := k.CertificateChain()
	require.Len(t, chain, 2)
	assert.Equal(t, leaf.Raw, chain[0].Raw, "leaf first")
	assert.Equal(t, inter.Cert.Raw, chain[1].Raw)

	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters := x509.NewCertPool()
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err)

	tc, err := k.TLSCertificate()
	require.NoError(t, err)
	assert.Equal(t, [][]byte{leaf.Raw, inter.Cert.Raw}, tc.Certificate)
	assert.Same(t, k, tc.PrivateKey, "the TLS stack signs through the Key")

	chain[0] = nil
	assert.NotNil(t, k.CertificateChain()[0], "callers cannot modify the key's chain")
}

// TestSignaturesVerify signs through a Key the way the client does and
// checks that the fake backend's verifier accepts it.
func TestSignaturesVerify(t *testing.T) {
	for _, typ := range []pki.KeyType{pki.Ed25519, pki.ECDSAP256, pki.ECDSAP384, pki.RSA2048} {
		t.Run(string(typ), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			writeFile(t, path, pkcs8(t, genKey(t, typ)), 0o600)
			k, err := keystore.Open(t.Context(), path, keystore.Options{})
			require.NoError(t, err)

			body, err := menderapi.BuildAuthRequest(`{"mac":"52:54:00:ab:cd:ef"}`, k.Public(), "")
			require.NoError(t, err)
			sig, err := menderapi.Sign(k, body)
			require.NoError(t, err)
			assert.NoError(t, menderapi.Verify(k.Public(), body, sig))
			req, err := menderapi.VerifyAuthRequest(body, sig)
			require.NoError(t, err)
			assert.True(t, equalKeys(req.Key, k.Public()))

			tampered := append([]byte{}, body...)
			tampered[len(tampered)-2] ^= 1
			assert.ErrorIs(t, menderapi.Verify(k.Public(), tampered, sig), menderapi.ErrBadSignature)

			require.NoError(t, k.Close())
			require.NoError(t, k.Close(), "Close is idempotent")
			_, err = menderapi.Sign(k, body)
			assert.ErrorIs(t, err, keystore.ErrClosed)
			_, err = k.Sign(rand.Reader, make([]byte, 32), crypto.SHA256)
			assert.ErrorIs(t, err, keystore.ErrClosed)
		})
	}
}
