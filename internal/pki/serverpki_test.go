package pki_test

import (
	"crypto"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
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

// A server certificate that EnsureServerPKI made is reissued, with its
// reason, when it no longer fits; the CA, the keys and their modes stay.
func TestEnsureServerPKIReissues(t *testing.T) {
	tests := []struct {
		name       string
		hosts2     []string
		tamper     func(t *testing.T, res *pki.ServerPKIResult)
		wantReason string
		newCA      bool // the test replaced the CA
	}{
		{name: "new host", hosts2: []string{"mender.local", "gateway.example"}, wantReason: "it does not cover gateway.example"},
		{name: "new ip", hosts2: []string{"mender.local", "192.168.7.1"}, wantReason: "it does not cover 192.168.7.1"},
		{name: "CA replaced", hosts2: []string{"mender.local"}, newCA: true, wantReason: "not signed by the CA",
			tamper: func(t *testing.T, res *pki.ServerPKIResult) {
				require.NoError(t, os.Remove(res.CACert))
				require.NoError(t, os.Remove(res.CAKey))
				require.NoError(t, newCA(t, pki.ECDSAP256).Save(res.CACert, res.CAKey, false))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := pki.EnsureServerPKI(dir, []string{"mender.local"})
			require.NoError(t, err)
			require.True(t, first.Managed)
			if tt.tamper != nil {
				tt.tamper(t, first)
			}
			caFP := pki.CertFingerprint(readCert(t, first.CACert))
			serverKey := readFile(t, first.ServerKey)
			caKey := readFile(t, first.CAKey)
			// Tighter than 0600: a reissue must not loosen these.
			require.NoError(t, os.Chmod(first.CAKey, 0o400))
			require.NoError(t, os.Chmod(first.ServerKey, 0o400))

			res, err := pki.EnsureServerPKI(dir, tt.hosts2)
			require.NoError(t, err)
			assert.True(t, res.Reissued)
			assert.Contains(t, res.ReissueReason, tt.wantReason)
			assert.True(t, res.Managed)
			assert.Empty(t, res.Created)
			assert.Empty(t, res.Uncovered)
			assertServes(t, res, append(tt.hosts2, "localhost", "127.0.0.1")...)
			assert.Equal(t, caFP, pki.CertFingerprint(readCert(t, res.CACert)), "the CA is kept")
			assert.Equal(t, serverKey, readFile(t, res.ServerKey), "the server key is kept")
			assert.Equal(t, caKey, readFile(t, res.CAKey), "the CA key is kept")
			assert.Equal(t, os.FileMode(0o400), fileMode(t, res.CAKey), "CA key permissions are never loosened")
			assert.Equal(t, os.FileMode(0o400), fileMode(t, res.ServerKey), "server key permissions are never loosened")
			assert.Equal(t, os.FileMode(0o644), fileMode(t, res.ServerCert))

			issued, err := pki.ReadIssued(dir)
			require.NoError(t, err)
			ca, err := pki.LoadCA(res.CACert, res.CAKey)
			require.NoError(t, err)
			_, ok := pki.FindIssued(issued, ca, res.Cert.SerialNumber)
			assert.True(t, ok, "the reissued certificate is in the CA's index")

			again, err := pki.EnsureServerPKI(dir, tt.hosts2)
			require.NoError(t, err)
			assert.False(t, again.Reissued, "the reissued certificate is kept on the next call")
		})
	}
}

// A server certificate EnsureServerPKI did not make (pki server, openssl,
// a copy) is never replaced: it is used as it is, with the names it covers
// and the hosts it does not; files it cannot be served with are errors.
func TestEnsureServerPKIKeepsForeignCertificate(t *testing.T) {
	tests := []struct {
		name          string
		hosts         []string
		put           func(t *testing.T, dir string, ca *pki.CA) // writes server.crt and server.key
		wantErr       string
		wantNames     []string
		wantUncovered []string
		wantWarning   string
	}{
		{name: "pki server certificate for other names", hosts: []string{"10.0.0.5"},
			put: func(t *testing.T, dir string, ca *pki.CA) {
				key := newKey(t, pki.ECDSAP256)
				c, err := ca.IssueServer(key.Public(), "mender.example.com", []string{"mender.example.com"}, nil, 30*day)
				require.NoError(t, err)
				writePair(t, dir, c, key)
			},
			wantNames: []string{"mender.example.com"}, wantUncovered: []string{"10.0.0.5", "localhost", "127.0.0.1"}},
		{name: "guide certificate: version 1, common name only", hosts: []string{"127.0.0.1"},
			put: func(t *testing.T, dir string, ca *pki.CA) {
				v1 := pkitest.NewV1CA(t)
				writeCA(t, v1.CA, dir, "ca.crt", "ca.key")
				tc, c := v1.LegacyServerCert(t, "localhost")
				writePair(t, dir, c, tc.PrivateKey.(crypto.Signer))
			},
			wantNames: []string{"localhost"}, wantUncovered: []string{"127.0.0.1"}},
		{name: "certificate of another CA", hosts: []string{"mender.local"},
			put: func(t *testing.T, dir string, _ *pki.CA) {
				key := newKey(t, pki.ECDSAP256)
				c, err := newCA(t, pki.ECDSAP256).IssueServer(key.Public(), "mender.local", []string{"mender.local", "localhost"},
					[]net.IP{net.ParseIP("127.0.0.1")}, 30*day)
				require.NoError(t, err)
				writePair(t, dir, c, key)
			},
			wantNames: []string{"mender.local", "localhost", "127.0.0.1"}, wantWarning: "is not signed by"},
		{name: "expired", hosts: nil,
			put: func(t *testing.T, dir string, ca *pki.CA) {
				key := newKey(t, pki.ECDSAP256)
				c, err := ca.Issue(key.Public(), pki.LeafOptions{CN: "localhost", DNSNames: []string{"localhost"},
					IPs: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-3 * day), Validity: day})
				require.NoError(t, err)
				writePair(t, dir, c, key)
			},
			wantNames: []string{"localhost", "127.0.0.1"}, wantWarning: "expired on"},
		{name: "key of another certificate",
			put: func(t *testing.T, dir string, ca *pki.CA) {
				c, err := ca.IssueServer(newKey(t, pki.ECDSAP256).Public(), "localhost", []string{"localhost"}, nil, 30*day)
				require.NoError(t, err)
				writePair(t, dir, c, newKey(t, pki.ECDSAP256))
			},
			wantErr: "is not the key of"},
		{name: "no key",
			put: func(t *testing.T, dir string, ca *pki.CA) {
				c, err := ca.IssueServer(newKey(t, pki.ECDSAP256).Public(), "localhost", []string{"localhost"}, nil, 30*day)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(dir, "server.crt"), pki.EncodeCertsPEM(c), 0o644))
			},
			wantErr: "server.key does not"},
		{name: "garbage",
			put: func(t *testing.T, dir string, _ *pki.CA) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "server.crt"), []byte("garbage"), 0o644))
			},
			wantErr: "not made by serve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ca := newCA(t, pki.ECDSAP256)
			require.NoError(t, ca.Save(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), false))
			tt.put(t, dir, ca)
			before, _ := os.ReadFile(filepath.Join(dir, "server.crt"))

			res, err := pki.EnsureServerPKI(dir, tt.hosts)
			after, _ := os.ReadFile(filepath.Join(dir, "server.crt"))
			assert.Equal(t, before, after, "server.crt is never replaced")
			assert.NoFileExists(t, filepath.Join(dir, pki.ServerCertMarkerName))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, err.Error(), filepath.Join(dir, "server.crt"), "the error names the file")
				return
			}
			require.NoError(t, err)
			assert.False(t, res.Managed)
			assert.False(t, res.Reissued)
			assert.Empty(t, res.Created)
			assert.Equal(t, tt.wantNames, res.Names)
			assert.Equal(t, tt.wantUncovered, res.Uncovered)
			if tt.wantWarning != "" {
				require.Len(t, res.Warnings, 1)
				assert.Contains(t, res.Warnings[0], tt.wantWarning)
			} else {
				assert.Empty(t, res.Warnings)
			}
		})
	}
}

// A certificate that serve made and someone then replaced (the marker no
// longer matches) is foreign from then on.
func TestEnsureServerPKIReplacedCertificateIsForeign(t *testing.T) {
	dir := t.TempDir()
	first, err := pki.EnsureServerPKI(dir, nil)
	require.NoError(t, err)
	ca, err := pki.LoadCA(first.CACert, first.CAKey)
	require.NoError(t, err)
	key := newKey(t, pki.ECDSAP256)
	c, err := ca.IssueServer(key.Public(), "mender.example.com", []string{"mender.example.com"}, nil, 30*day)
	require.NoError(t, err)
	writePair(t, dir, c, key)

	res, err := pki.EnsureServerPKI(dir, []string{"gateway.example"})
	require.NoError(t, err)
	assert.False(t, res.Managed)
	assert.False(t, res.Reissued)
	assert.Equal(t, pki.CertFingerprint(c), pki.CertFingerprint(readCert(t, res.ServerCert)))
	assert.Contains(t, res.Uncovered, "gateway.example")
}

func writePair(t *testing.T, dir string, c *x509.Certificate, key crypto.Signer) {
	t.Helper()
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.key"), keyPEM, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.crt"), pki.EncodeCertsPEM(c), 0o644))
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
