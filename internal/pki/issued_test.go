package pki_test

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

func TestIssuedIndex(t *testing.T) {
	dir := t.TempDir()
	list, err := pki.ReadIssued(dir)
	require.NoError(t, err, "no index yet is an empty list")
	assert.Empty(t, list)

	ca, other := newCA(t, pki.ECDSAP256), newCA(t, pki.ECDSAP256)
	dev, err := ca.IssueClient(newKey(t, pki.ECDSAP256).Public(), "dev-1", day)
	require.NoError(t, err)
	srv, err := other.IssueServer(newKey(t, pki.ECDSAP256).Public(), "mender.local", []string{"mender.local"}, nil, day)
	require.NoError(t, err)
	require.NoError(t, pki.RecordIssued(dir, ca, pki.KindDevice, "/out/mender-cert.pem", dev))
	require.NoError(t, pki.RecordIssued(dir, other, pki.KindServer, "", srv))

	list, err = pki.ReadIssued(dir)
	require.NoError(t, err)
	require.Len(t, list, 2)
	e, ok := pki.FindIssued(list, ca, dev.SerialNumber)
	require.True(t, ok)
	assert.Equal(t, pki.FormatSerial(dev.SerialNumber), e.Serial)
	assert.Equal(t, "CN=dev-1", e.Subject)
	assert.Equal(t, pki.KindDevice, e.Kind)
	assert.Equal(t, "/out/mender-cert.pem", e.Path)
	assert.True(t, dev.NotAfter.Equal(e.NotAfter))
	_, ok = pki.FindIssued(list, ca, srv.SerialNumber)
	assert.False(t, ok, "a serial of another CA is not this CA's")
	_, ok = pki.FindIssued(list, ca, big.NewInt(12345))
	assert.False(t, ok)
	assert.Len(t, pki.IssuedBy(list, other), 1)
	assert.Equal(t, os.FileMode(0o644), fileMode(t, filepath.Join(dir, pki.IssuedIndexName)))
}

// Signing commands running at once on one CA directory lose no entry.
func TestIssuedIndexConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, pki.ECDSAP256)
	const n = 20
	certs := make([]*x509.Certificate, n)
	for i := range certs {
		c, err := ca.IssueClient(newKey(t, pki.ECDSAP256).Public(), fmt.Sprintf("dev-%d", i), day)
		require.NoError(t, err)
		certs[i] = c
	}
	var wg sync.WaitGroup
	for _, c := range certs {
		wg.Go(func() { assert.NoError(t, pki.RecordIssued(dir, ca, pki.KindDevice, "", c)) })
	}
	wg.Wait()
	list, err := pki.ReadIssued(dir)
	require.NoError(t, err)
	assert.Len(t, list, n)
}

func TestIssuedIndexErrors(t *testing.T) {
	for name, content := range map[string]string{
		"not JSON":      "garbage",
		"wrong version": `{"version": 99, "certificates": []}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			index := filepath.Join(dir, pki.IssuedIndexName)
			require.NoError(t, os.WriteFile(index, []byte(content), 0o644))
			_, err := pki.ReadIssued(dir)
			require.Error(t, err)
			assert.Contains(t, err.Error(), index, "the error names the file")
			err = pki.RecordIssued(dir, newCA(t, pki.ECDSAP256), pki.KindDevice, "")
			assert.Error(t, err, "a broken index is not overwritten")
		})
	}
}

func TestCAFiles(t *testing.T) {
	dir := t.TempDir()
	crt, key := pki.CAFiles(dir)
	assert.Equal(t, filepath.Join(dir, "ca.crt"), crt)
	assert.Equal(t, filepath.Join(dir, "ca.key"), key, "nothing there: the name to create")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca-private.key"), nil, 0o600))
	_, key = pki.CAFiles(dir)
	assert.Equal(t, filepath.Join(dir, "ca-private.key"), key, "the guide's name when only it exists")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.key"), nil, 0o600))
	_, key = pki.CAFiles(dir)
	assert.Equal(t, filepath.Join(dir, "ca.key"), key, "ca.key wins")
}

// A CA whose key usage lacks cRLSign (Mender Gateway's guide: keyCertSign,
// digitalSignature) cannot sign a CRL verifiers accept: Revoke writes the
// blacklist only and says why.
func TestRevokeWithoutCRLSign(t *testing.T) {
	ca := newCA(t, pki.ECDSAP256)
	ca.Cert.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	dir := t.TempDir()
	res, err := pki.Revoke(ca, filepath.Join(dir, "blacklist"), filepath.Join(dir, "crl.pem"), "1f")
	require.NoError(t, err)
	assert.True(t, res.Added)
	assert.Contains(t, res.NoCRL, "without cRLSign")
	assert.Empty(t, res.CRLPath)
	assert.NoFileExists(t, filepath.Join(dir, "crl.pem"))
	list, err := pki.ReadBlacklist(filepath.Join(dir, "blacklist"))
	require.NoError(t, err)
	assert.Len(t, list, 1)
	_, err = pki.WriteCRL(ca, filepath.Join(dir, "crl.pem"), list)
	assert.ErrorContains(t, err, "cRLSign")
	assert.Empty(t, pki.CRLRefusal(newCA(t, pki.ECDSAP256).Cert), "our CAs may sign CRLs")
}
