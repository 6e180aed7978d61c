package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

const day = 24 * time.Hour

func newCA(t *testing.T, typ pki.KeyType) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("test CA "+string(typ), typ, 365*day)
	require.NoError(t, err)
	return ca
}

func newKey(t *testing.T, typ pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(typ)
	require.NoError(t, err)
	return k
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestNewCA(t *testing.T) {
	tests := []struct {
		name     string
		cn       string
		typ      pki.KeyType
		validity time.Duration
		ok       bool
	}{
		{"ecdsa", "root", pki.ECDSAP256, day, true},
		{"ed25519", "root", pki.Ed25519, day, true},
		{"rsa", "root", pki.RSA2048, day, true},
		{"empty name", "", pki.ECDSAP256, day, false},
		{"zero validity", "root", pki.ECDSAP256, 0, false},
		{"unknown key type", "root", "dsa", day, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			ca, err := pki.NewCA(tt.cn, tt.typ, tt.validity)
			if !tt.ok {
				require.Error(t, err)
				assert.Nil(t, ca)
				return
			}
			require.NoError(t, err)
			c := ca.Cert
			assert.True(t, c.IsCA)
			assert.True(t, c.BasicConstraintsValid)
			assert.Equal(t, x509.KeyUsageCertSign|x509.KeyUsageCRLSign, c.KeyUsage)
			assert.Equal(t, tt.cn, c.Subject.CommonName)
			assert.NoError(t, c.CheckSignatureFrom(c), "a root CA is self-signed")
			assert.Positive(t, c.SerialNumber.Sign())
			assert.LessOrEqual(t, c.SerialNumber.BitLen(), 128)
			assert.WithinDuration(t, before.Add(-5*time.Minute), c.NotBefore, 5*time.Second)
			assert.WithinDuration(t, before.Add(tt.validity), c.NotAfter, 5*time.Second)
		})
	}
}

func TestNewCASerialsDiffer(t *testing.T) {
	a := newCA(t, pki.ECDSAP256)
	b := newCA(t, pki.ECDSAP256)
	assert.NotEqual(t, a.Cert.SerialNumber, b.Cert.SerialNumber, "serials are random")
}

// TestIssueVerifies issues server and client certificates from CAs of each
// key type for leaves of each key type and checks that x509.Verify accepts
// them for their own usage only.
func TestIssueVerifies(t *testing.T) {
	leafKeys := map[pki.KeyType]crypto.Signer{}
	for _, typ := range []pki.KeyType{pki.ECDSAP256, pki.Ed25519, pki.RSA2048} {
		leafKeys[typ] = newKey(t, typ)
	}
	for _, caType := range []pki.KeyType{pki.ECDSAP256, pki.ECDSAP384, pki.Ed25519, pki.RSA2048} {
		ca := newCA(t, caType)
		for leafType, leafKey := range leafKeys {
			tests := []struct {
				name  string
				issue func() (*x509.Certificate, error)
				usage x509.ExtKeyUsage
				other x509.ExtKeyUsage
				dns   string
			}{
				{"server", func() (*x509.Certificate, error) {
					return ca.IssueServer(leafKey.Public(), "mender.local", []string{"mender.local"}, []net.IP{net.IPv4(127, 0, 0, 1)}, day)
				}, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, "mender.local"},
				{"client", func() (*x509.Certificate, error) {
					return ca.IssueClient(leafKey.Public(), "device-1", day)
				}, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth, ""},
			}
			for _, tt := range tests {
				t.Run(string(caType)+"/"+string(leafType)+"/"+tt.name, func(t *testing.T) {
					leaf, err := tt.issue()
					require.NoError(t, err)
					assert.False(t, leaf.IsCA)
					assert.True(t, leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leafKey.Public()))
					assert.NotZero(t, leaf.KeyUsage&x509.KeyUsageDigitalSignature)
					_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(ca.Cert), DNSName: tt.dns,
						KeyUsages: []x509.ExtKeyUsage{tt.usage}})
					assert.NoError(t, err, "the leaf must verify for its own usage")
					_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(ca.Cert),
						KeyUsages: []x509.ExtKeyUsage{tt.other}})
					assert.Error(t, err, "the leaf must not verify for the other usage")
					_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(newCA(t, pki.ECDSAP256).Cert),
						KeyUsages: []x509.ExtKeyUsage{tt.usage}})
					assert.Error(t, err, "the leaf must not verify against another CA")
				})
			}
		}
	}
}

func TestIssueIntermediateChain(t *testing.T) {
	root := newCA(t, pki.ECDSAP256)
	inter, err := root.IssueIntermediate("intermediate", pki.ECDSAP256, 30*day)
	require.NoError(t, err)
	assert.True(t, inter.Cert.IsCA)
	assert.True(t, inter.Cert.MaxPathLenZero)
	leaf, err := inter.IssueClient(newKey(t, pki.Ed25519).Public(), "device-7", day)
	require.NoError(t, err)

	chains, err := leaf.Verify(x509.VerifyOptions{Roots: pool(root.Cert), Intermediates: pool(inter.Cert),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)
	require.Len(t, chains, 1)
	assert.Len(t, chains[0], 3, "leaf, intermediate, root")

	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool(root.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.Error(t, err, "without the intermediate the chain is incomplete")

	_, err = inter.IssueIntermediate("too deep", pki.ECDSAP256, day)
	require.NoError(t, err, "issuing works; verification enforces the path length")
}

func TestIssueOptions(t *testing.T) {
	ca := newCA(t, pki.ECDSAP256)
	pub := newKey(t, pki.ECDSAP256).Public()
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

	tests := []struct {
		name  string
		opts  pki.LeafOptions
		check func(t *testing.T, c *x509.Certificate)
	}{
		{"explicit not before", pki.LeafOptions{CN: "x", NotBefore: start, Validity: 10 * day}, func(t *testing.T, c *x509.Certificate) {
			assert.True(t, c.NotBefore.Equal(start))
			assert.True(t, c.NotAfter.Equal(start.Add(10*day)))
		}},
		{"zero not before is five minutes ago", pki.LeafOptions{CN: "x", Validity: day}, func(t *testing.T, c *x509.Certificate) {
			assert.WithinDuration(t, time.Now().Add(-5*time.Minute), c.NotBefore, 5*time.Second)
			assert.WithinDuration(t, time.Now().Add(day), c.NotAfter, 5*time.Second)
		}},
		{"sans only", pki.LeafOptions{DNSNames: []string{"a.example"}, IPs: []net.IP{net.ParseIP("::1")}, Validity: day}, func(t *testing.T, c *x509.Certificate) {
			assert.Equal(t, []string{"a.example"}, c.DNSNames)
			require.Len(t, c.IPAddresses, 1)
			assert.True(t, c.IPAddresses[0].Equal(net.ParseIP("::1")))
		}},
		{"no eku means no extension", pki.LeafOptions{CN: "x", Validity: day}, func(t *testing.T, c *x509.Certificate) {
			assert.Empty(t, c.ExtKeyUsage)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ca.Issue(pub, tt.opts)
			require.NoError(t, err)
			tt.check(t, c)
		})
	}

	errTests := []struct {
		name string
		ca   *pki.CA
		opts pki.LeafOptions
	}{
		{"no names", ca, pki.LeafOptions{Validity: day}},
		{"zero validity", ca, pki.LeafOptions{CN: "x"}},
		{"negative validity", ca, pki.LeafOptions{CN: "x", Validity: -day}},
		{"empty CA", &pki.CA{}, pki.LeafOptions{CN: "x", Validity: day}},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.ca.Issue(pub, tt.opts)
			assert.Error(t, err)
			assert.Nil(t, c)
		})
	}
}

func makeCSR(t *testing.T, key crypto.Signer, cn string) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"evil.example"}}, key)
	require.NoError(t, err)
	csr, err := x509.ParseCertificateRequest(der)
	require.NoError(t, err)
	return csr
}

func TestSignCSR(t *testing.T) {
	ca := newCA(t, pki.ECDSAP256)
	tests := []struct {
		name string
		csr  func(t *testing.T) *x509.CertificateRequest
		ok   bool
	}{
		{"ecdsa", func(t *testing.T) *x509.CertificateRequest { return makeCSR(t, newKey(t, pki.ECDSAP256), "dev-1") }, true},
		{"ed25519", func(t *testing.T) *x509.CertificateRequest { return makeCSR(t, newKey(t, pki.Ed25519), "dev-2") }, true},
		{"rsa", func(t *testing.T) *x509.CertificateRequest { return makeCSR(t, newKey(t, pki.RSA2048), "dev-3") }, true},
		{"tampered signature", func(t *testing.T) *x509.CertificateRequest {
			csr := makeCSR(t, newKey(t, pki.ECDSAP256), "dev-4")
			csr.Signature[len(csr.Signature)-1] ^= 0xff
			return csr
		}, false},
		{"public key swapped", func(t *testing.T) *x509.CertificateRequest {
			csr := makeCSR(t, newKey(t, pki.ECDSAP256), "dev-5")
			csr.PublicKey = newKey(t, pki.ECDSAP256).Public()
			return csr
		}, false},
		{"empty common name", func(t *testing.T) *x509.CertificateRequest { return makeCSR(t, newKey(t, pki.ECDSAP256), "") }, false},
		{"nil", func(*testing.T) *x509.CertificateRequest { return nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr := tt.csr(t)
			cert, err := ca.SignCSR(csr, day)
			if !tt.ok {
				require.ErrorIs(t, err, pki.ErrInvalidCSR)
				assert.Nil(t, cert)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, csr.Subject.CommonName, cert.Subject.CommonName)
			assert.Empty(t, cert.DNSNames, "requested SANs are not copied")
			assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cert.ExtKeyUsage)
			assert.True(t, cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey))
			_, err = cert.Verify(x509.VerifyOptions{Roots: pool(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			assert.NoError(t, err)
		})
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

func TestCASaveLoad(t *testing.T) {
	for _, typ := range []pki.KeyType{pki.ECDSAP256, pki.Ed25519, pki.RSA2048} {
		t.Run(string(typ), func(t *testing.T) {
			dir := t.TempDir()
			certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			ca := newCA(t, typ)
			require.NoError(t, ca.Save(certPath, keyPath, false))
			assert.Equal(t, os.FileMode(0o600), fileMode(t, keyPath))
			assert.Equal(t, os.FileMode(0o644), fileMode(t, certPath))

			loaded, err := pki.LoadCA(certPath, keyPath)
			require.NoError(t, err)
			assert.Equal(t, ca.Cert.Raw, loaded.Cert.Raw)
			assert.True(t, loaded.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.Key.Public()))

			other := newCA(t, pki.ECDSAP256)
			err = other.Save(certPath, keyPath, false)
			require.ErrorIs(t, err, atomicfile.ErrExists, "no overwrite without force")
			again, err := pki.LoadCA(certPath, keyPath)
			require.NoError(t, err)
			assert.Equal(t, ca.Cert.Raw, again.Cert.Raw, "a refused save changes nothing")

			require.NoError(t, other.Save(certPath, keyPath, true))
			again, err = pki.LoadCA(certPath, keyPath)
			require.NoError(t, err)
			assert.Equal(t, other.Cert.Raw, again.Cert.Raw, "force overwrites")
			assert.Equal(t, os.FileMode(0o600), fileMode(t, keyPath))
		})
	}
}

func TestCASaveRefusesWhenOnlyOneFileExists(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	require.NoError(t, os.WriteFile(certPath, []byte("keep me"), 0o644))
	err := newCA(t, pki.ECDSAP256).Save(certPath, keyPath, false)
	require.ErrorIs(t, err, atomicfile.ErrExists)
	assert.NoFileExists(t, keyPath, "nothing is written when the save is refused")
}

func TestLoadCAErrors(t *testing.T) {
	ca := newCA(t, pki.ECDSAP256)
	leafKey := newKey(t, pki.ECDSAP256)
	leaf, err := ca.IssueClient(leafKey.Public(), "leaf", day)
	require.NoError(t, err)
	caKeyPEM, err := pki.MarshalPrivateKeyPEM(ca.Key)
	require.NoError(t, err)
	leafKeyPEM, err := pki.MarshalPrivateKeyPEM(leafKey)
	require.NoError(t, err)

	tests := []struct {
		name     string
		cert     []byte // nil: file missing
		key      []byte // nil: file missing
		notExist bool
		contains string
	}{
		{"missing cert", nil, caKeyPEM, true, "ca.crt"},
		{"missing key", pki.EncodeCertsPEM(ca.Cert), nil, true, "ca.key"},
		{"leaf instead of CA", pki.EncodeCertsPEM(leaf), leafKeyPEM, false, "not a CA"},
		{"wrong key", pki.EncodeCertsPEM(ca.Cert), leafKeyPEM, false, "does not belong"},
		{"garbage cert", []byte("junk"), caKeyPEM, false, "ca.crt"},
		{"garbage key", pki.EncodeCertsPEM(ca.Cert), []byte("junk"), false, "ca.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			if tt.cert != nil {
				require.NoError(t, os.WriteFile(certPath, tt.cert, 0o644))
			}
			if tt.key != nil {
				require.NoError(t, os.WriteFile(keyPath, tt.key, 0o600))
			}
			got, err := pki.LoadCA(certPath, keyPath)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.Equal(t, tt.notExist, isNotExist(err))
			assert.Contains(t, err.Error(), tt.contains)
		})
	}
}

func TestLoadCAOpenSSLKey(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	ca := newCA(t, pki.ECDSAP256)
	der, err := x509.MarshalECPrivateKey(ca.Key.(*ecdsa.PrivateKey))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certPath, pki.EncodeCertsPEM(ca.Cert), 0o644))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600))
	loaded, err := pki.LoadCA(certPath, keyPath)
	require.NoError(t, err)
	assert.Equal(t, ca.Cert.Raw, loaded.Cert.Raw)
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

func TestParseCertsPEM(t *testing.T) {
	ca := newCA(t, pki.ECDSAP256)
	a, err := ca.IssueClient(newKey(t, pki.ECDSAP256).Public(), "a", day)
	require.NoError(t, err)
	keyPEM, err := pki.MarshalPrivateKeyPEM(newKey(t, pki.Ed25519))
	require.NoError(t, err)

	tests := []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr string
	}{
		{"chain in order", pki.EncodeCertsPEM(a, ca.Cert), []*x509.Certificate{a, ca.Cert}, ""},
		{"other blocks skipped", append(append([]byte{}, keyPEM...), pki.EncodeCertsPEM(a)...), []*x509.Certificate{a}, ""},
		{"none", keyPEM, nil, "CERTIFICATE"},
		{"empty", nil, nil, "CERTIFICATE"},
		{"bad second cert", append(pki.EncodeCertsPEM(a), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}})...), nil, "#2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pki.ParseCertsPEM(tt.data)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Len(t, got, len(tt.want))
			for i := range got {
				assert.Equal(t, tt.want[i].Raw, got[i].Raw)
			}
		})
	}
}

func TestCertFingerprint(t *testing.T) {
	a := newCA(t, pki.ECDSAP256).Cert
	b := newCA(t, pki.ECDSAP256).Cert
	sum := sha256.Sum256(a.Raw)
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:8]), pki.CertFingerprint(a))
	assert.Regexp(t, `^sha256:[0-9a-f]{16}$`, pki.CertFingerprint(b))
	assert.NotEqual(t, pki.CertFingerprint(a), pki.CertFingerprint(b))
}
