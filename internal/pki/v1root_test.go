package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// writeCA writes ca's certificate and key to dir under the given names.
func writeCA(t *testing.T, ca *pki.CA, dir, certName, keyName string) (string, string) {
	t.Helper()
	keyPEM, err := pki.MarshalPrivateKeyPEM(ca.Key)
	require.NoError(t, err)
	crt, key := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	require.NoError(t, os.WriteFile(crt, pki.EncodeCertsPEM(ca.Cert), 0o644))
	require.NoError(t, os.WriteFile(key, keyPEM, 0o600))
	return crt, key
}

// Mender's mTLS guide makes its CA with `openssl req -new -x509 -config
// ca.conf`: a self-signed version-1 certificate without basic constraints.
// OpenSSL treats it as a CA, so must LoadCA, and what it signs (leaves,
// CRLs) must verify against it.
func TestSelfSignedV1RootIsACA(t *testing.T) {
	v1 := pkitest.NewV1CA(t)
	require.Equal(t, 1, v1.Cert.Version)
	require.False(t, v1.Cert.BasicConstraintsValid, "no extensions at all")

	dir := t.TempDir()
	crt, key := writeCA(t, v1.CA, dir, "ca.crt", "ca-private.key")
	ca, err := pki.LoadCA(crt, key)
	require.NoError(t, err, "a self-signed v1 root is a CA")

	leafKey := newKey(t, pki.ECDSAP256)
	leaf, err := ca.IssueClient(leafKey.Public(), "device-1", day)
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(v1.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err, "a leaf signed by the v1 root verifies")

	crlPath := filepath.Join(dir, "crl.pem")
	res, err := pki.Revoke(ca, filepath.Join(dir, "blacklist"), crlPath, leaf.SerialNumber.Text(16))
	require.NoError(t, err, "a v1 root signs CRLs although it has no key usage or key identifier")
	assert.True(t, res.Added)
	data, err := os.ReadFile(crlPath)
	require.NoError(t, err)
	blk, _ := pem.Decode(data)
	require.NotNil(t, blk)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	require.NoError(t, err)
	assert.NoError(t, crl.CheckSignatureFrom(v1.Cert), "the CRL verifies against the real v1 root")
	assert.Equal(t, v1.Cert.RawSubject, crl.RawIssuer)
	require.Len(t, crl.RevokedCertificateEntries, 1)
	assert.Equal(t, 0, crl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.SerialNumber))
}

// Only a self-signed v1 certificate is a CA: a v1 leaf (what `openssl x509
// -req` issues) is not, nor is a v3 certificate without CA:TRUE.
func TestLoadCARefusesV1Leaf(t *testing.T) {
	v1 := pkitest.NewV1CA(t)
	_, leaf := v1.LegacyServerCert(t, "localhost")
	require.Equal(t, 1, leaf.Version)
	dir := t.TempDir()
	crt := filepath.Join(dir, "leaf.crt")
	require.NoError(t, os.WriteFile(crt, pki.EncodeCertsPEM(leaf), 0o644))
	_, keyPath := writeCA(t, v1.CA, dir, "unused.crt", "ca.key")
	_, err := pki.LoadCA(crt, keyPath)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a CA certificate")
	assert.Contains(t, err.Error(), crt)
}
