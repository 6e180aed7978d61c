package pki

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSerial(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"3a7f", 0x3a7f, true},
		{"3A7F", 0x3a7f, true},
		{"0x3a7f", 0x3a7f, true},
		{"00:3a:7f", 0x3a7f, true},
		{"  0003a7f \n", 0x3a7f, true},
		{"", 0, false},
		{"xyz", 0, false},
		{"-1", 0, false},
	}
	for _, tt := range tests {
		n, err := ParseSerial(tt.in)
		if !tt.ok {
			assert.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, n.Int64(), tt.in)
	}
}

func TestRevokeWritesBlacklistAndCRL(t *testing.T) {
	ca, err := NewCA("test CA", ECDSAP256, 24*time.Hour)
	require.NoError(t, err)
	dir := t.TempDir()
	bl, crlPath := filepath.Join(dir, "blacklist"), filepath.Join(dir, "crl.pem")

	res, err := Revoke(ca, bl, crlPath, "0A0B")
	require.NoError(t, err)
	assert.True(t, res.Added)
	assert.Equal(t, "a0b", res.Serial)
	assert.Equal(t, int64(1), res.CRLNumber)

	res, err = Revoke(ca, bl, crlPath, "ff")
	require.NoError(t, err)
	assert.Equal(t, 2, res.Count)
	assert.Equal(t, int64(2), res.CRLNumber)

	res, err = Revoke(ca, bl, crlPath, "0x0a0b") // already listed
	require.NoError(t, err)
	assert.False(t, res.Added)
	assert.Equal(t, 2, res.Count)
	assert.Equal(t, int64(3), res.CRLNumber, "the CRL is rewritten anyway, with a new number")

	data, err := os.ReadFile(bl)
	require.NoError(t, err)
	assert.Equal(t, "a0b\nff\n", string(data))
	list, err := ReadBlacklist(bl)
	require.NoError(t, err)
	require.Len(t, list, 2)

	pemData, err := os.ReadFile(crlPath)
	require.NoError(t, err)
	blk, _ := pem.Decode(pemData)
	require.NotNil(t, blk)
	require.Equal(t, "X509 CRL", blk.Type)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	require.NoError(t, err)
	require.NoError(t, crl.CheckSignatureFrom(ca.Cert), "the CRL is signed by the CA")
	var serials []*big.Int
	for _, e := range crl.RevokedCertificateEntries {
		serials = append(serials, e.SerialNumber)
	}
	assert.ElementsMatch(t, []*big.Int{big.NewInt(0xa0b), big.NewInt(0xff)}, serials)
	assert.True(t, crl.NextUpdate.After(time.Now()))
}

func TestReadBlacklistErrors(t *testing.T) {
	dir := t.TempDir()
	list, err := ReadBlacklist(filepath.Join(dir, "missing"))
	require.NoError(t, err, "a missing blacklist is empty")
	assert.Empty(t, list)

	p := filepath.Join(dir, "bl")
	require.NoError(t, os.WriteFile(p, []byte("# comment\n\nab\nnot-hex\n"), 0o644))
	_, err = ReadBlacklist(p)
	require.Error(t, err)
	assert.Contains(t, err.Error(), p+": line 4")

	_, err = Revoke(&CA{}, filepath.Join(dir, "b2"), filepath.Join(dir, "c2"), "zz")
	assert.Error(t, err)
}

func TestParseSerialRejectsSignsAndJunk(t *testing.T) {
	for _, s := range []string{"+ab", "a b", "0x", "g1", "ab_cd"} {
		_, err := ParseSerial(s)
		assert.Error(t, err, "%q", s)
	}
}
