package pki_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	certs, err := pki.ParseCertsPEM(data)
	require.NoError(t, err)
	return certs[0]
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// assertServes checks that the server certificate in res verifies against
// the CA in res as a TLS server certificate for every host.
func assertServes(t *testing.T, res *pki.ServerPKIResult, hosts ...string) {
	t.Helper()
	ca, cert := readCert(t, res.CACert), readCert(t, res.ServerCert)
	for _, h := range hosts {
		_, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: h,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		assert.NoError(t, err, "server certificate must be valid for %q", h)
	}
}

func TestEnsureServerPKICreatesThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	hosts := []string{"mender.local", "10.1.2.3", "[::1]"}

	res, err := pki.EnsureServerPKI(dir, hosts)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{res.CACert, res.CAKey, res.ServerCert, res.ServerKey}, res.Created)
	assert.False(t, res.Reissued)
	assert.Equal(t, filepath.Join(dir, "ca.crt"), res.CACert)
	assert.Equal(t, filepath.Join(dir, "server.key"), res.ServerKey)
	for path, mode := range map[string]os.FileMode{res.CAKey: 0o600, res.ServerKey: 0o600, res.CACert: 0o644, res.ServerCert: 0o644} {
		assert.Equal(t, mode, fileMode(t, path), path)
	}
	ca := readCert(t, res.CACert)
	assert.Equal(t, pki.ServerCAName, ca.Subject.CommonName)
	server := readCert(t, res.ServerCert)
	assert.Equal(t, "mender.local", server.Subject.CommonName, "the first host names the certificate")
	assert.ElementsMatch(t, []string{"mender.local", "localhost"}, server.DNSNames)
	assert.Len(t, server.IPAddresses, 3, "10.1.2.3, ::1 and 127.0.0.1")
	assertServes(t, res, "mender.local", "10.1.2.3", "::1", "localhost", "127.0.0.1")

	again, err := pki.EnsureServerPKI(dir, hosts)
	require.NoError(t, err)
	assert.Empty(t, again.Created, "existing files are kept")
	assert.False(t, again.Reissued)
	assert.Equal(t, pki.CertFingerprint(ca), pki.CertFingerprint(readCert(t, again.CACert)), "same CA on the second call")
	assert.Equal(t, pki.CertFingerprint(server), pki.CertFingerprint(readCert(t, again.ServerCert)), "same server certificate")
}

func TestEnsureServerPKIReissues(t *testing.T) {
	tests := []struct {
		name   string
		hosts2 []string
		tamper func(t *testing.T, res *pki.ServerPKIResult)
	}{
		{"new host", []string{"mender.local", "gateway.example"}, nil},
		{"new ip", []string{"mender.local", "192.168.7.1"}, nil},
		{"certificate from another CA", []string{"mender.local"}, func(t *testing.T, res *pki.ServerPKIResult) {
			other := newCA(t, pki.ECDSAP256)
			key, err := pki.ParsePrivateKeyPEM(readFile(t, res.ServerKey))
			require.NoError(t, err)
			c, err := other.IssueServer(key.Public(), "mender.local", []string{"mender.local", "localhost"}, nil, day)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(res.ServerCert, pki.EncodeCertsPEM(c), 0o644))
		}},
		{"certificate for another key", []string{"mender.local"}, func(t *testing.T, res *pki.ServerPKIResult) {
			ca, err := pki.LoadCA(res.CACert, res.CAKey)
			require.NoError(t, err)
			c, err := ca.IssueServer(newKey(t, pki.ECDSAP256).Public(), "mender.local", []string{"mender.local", "localhost"}, nil, day)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(res.ServerCert, pki.EncodeCertsPEM(c), 0o644))
		}},
		{"certificate expiring soon", []string{"mender.local"}, func(t *testing.T, res *pki.ServerPKIResult) {
			ca, err := pki.LoadCA(res.CACert, res.CAKey)
			require.NoError(t, err)
			key, err := pki.ParsePrivateKeyPEM(readFile(t, res.ServerKey))
			require.NoError(t, err)
			c, err := ca.IssueServer(key.Public(), "mender.local", []string{"mender.local", "localhost"}, nil, 10*day)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(res.ServerCert, pki.EncodeCertsPEM(c), 0o644))
		}},
		{"corrupt certificate file", []string{"mender.local"}, func(t *testing.T, res *pki.ServerPKIResult) {
			require.NoError(t, os.WriteFile(res.ServerCert, []byte("garbage"), 0o644))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := pki.EnsureServerPKI(dir, []string{"mender.local"})
			require.NoError(t, err)
			caFP := pki.CertFingerprint(readCert(t, first.CACert))
			serverKey := readFile(t, first.ServerKey)
			caKey := readFile(t, first.CAKey)
			if tt.tamper != nil {
				tt.tamper(t, first)
			}
			// Tighter than 0600: a reissue must not loosen these.
			require.NoError(t, os.Chmod(first.CAKey, 0o400))
			require.NoError(t, os.Chmod(first.ServerKey, 0o400))

			res, err := pki.EnsureServerPKI(dir, tt.hosts2)
			require.NoError(t, err)
			assert.True(t, res.Reissued)
			assert.Empty(t, res.Created)
			assertServes(t, res, append(tt.hosts2, "localhost", "127.0.0.1")...)
			assert.Equal(t, caFP, pki.CertFingerprint(readCert(t, res.CACert)), "the CA is kept")
			assert.Equal(t, serverKey, readFile(t, res.ServerKey), "the server key is kept")
			assert.Equal(t, caKey, readFile(t, res.CAKey), "the CA key is kept")
			assert.Equal(t, os.FileMode(0o400), fileMode(t, res.CAKey), "CA key permissions are never loosened")
			assert.Equal(t, os.FileMode(0o400), fileMode(t, res.ServerKey), "server key permissions are never loosened")
			assert.Equal(t, os.FileMode(0o644), fileMode(t, res.ServerCert))

			again, err := pki.EnsureServerPKI(dir, tt.hosts2)
			require.NoError(t, err)
			assert.False(t, again.Reissued, "the reissued certificate is kept on the next call")
		})
	}
}

func TestEnsureServerPKIPartialFiles(t *testing.T) {
	tests := []struct {
		name        string
		keep        []string // files of a complete set that stay
		wantErr     string
		wantCreated []string
		reissued    bool
	}{
		{"only ca.crt", []string{"ca.crt"}, "ca.key", nil, false},
		{"only ca.key", []string{"ca.key"}, "ca.crt", nil, false},
		{"server certificate missing", []string{"ca.crt", "ca.key", "server.key"}, "", []string{"server.crt"}, false},
		{"server key missing", []string{"ca.crt", "ca.key", "server.crt"}, "", []string{"server.key"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := pki.EnsureServerPKI(dir, nil)
			require.NoError(t, err)
			for _, f := range []string{"ca.crt", "ca.key", "server.crt", "server.key"} {
				if !slices.Contains(tt.keep, f) {
					require.NoError(t, os.Remove(filepath.Join(dir, f)))
				}
			}
			res, err := pki.EnsureServerPKI(dir, nil)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr, "the error names the missing file")
				return
			}
			require.NoError(t, err)
			var created []string
			for _, f := range tt.wantCreated {
				created = append(created, filepath.Join(dir, f))
			}
			assert.Equal(t, created, res.Created)
			assert.Equal(t, tt.reissued, res.Reissued)
			assertServes(t, res, "localhost", "127.0.0.1")
		})
	}
}

func TestEnsureServerPKIErrors(t *testing.T) {
	badKeyDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(badKeyDir, "server.key"), []byte("not a key"), 0o600))

	tests := []struct {
		name    string
		dir     string
		hosts   []string
		wantErr string
	}{
		{"empty dir", "", nil, "directory"},
		{"host with port", t.TempDir(), []string{"mender.local:443"}, `"mender.local:443"`},
		{"url", t.TempDir(), []string{"https://mender.local"}, "https://mender.local"},
		{"unparsable server key", badKeyDir, nil, "server.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := pki.EnsureServerPKI(tt.dir, tt.hosts)
			require.Error(t, err)
			assert.Nil(t, res)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}
