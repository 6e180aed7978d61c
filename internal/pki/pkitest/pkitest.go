// Package pkitest provides a throwaway certificate authority for tests:
// server and mutual-TLS configurations for 127.0.0.1, client leaves written
// to disk, a legacy version-1 server certificate for negative tests, and a
// self-signed version-1 root like the one Mender's mTLS guide makes.
// Every helper takes a testing.TB, calls tb.Helper and fails the test on
// error, so call sites stay one line long. Production code must not import
// this package.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Lifetimes of what this package issues. Tests that need other dates use
// pki.CA.Issue with explicit LeafOptions.
const (
	caValidity   = 2 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
)

// CA is a throwaway certificate authority for one test.
type CA struct{ *pki.CA }

// NewCA creates a CA with an ECDSA P-256 key, valid for two years.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := pki.NewCA("pkitest CA "+tb.Name(), pki.ECDSAP256, caValidity)
	if err != nil {
		tb.Fatalf("pkitest: create CA: %v", err)
	}
	return &CA{ca}
}

// Pool returns a certificate pool holding only the CA certificate.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

// CertPEM returns the CA certificate as PEM.
func (c *CA) CertPEM() []byte { return pki.EncodeCertsPEM(c.Cert) }

// WriteCA writes the CA certificate to dir/ca.crt and returns the path.
func (c *CA) WriteCA(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "ca.crt")
	if err := atomicfile.Write(path, c.CertPEM(), pki.CertFileMode); err != nil {
		tb.Fatalf("pkitest: %v", err)
	}
	return path
}

// ServerTLSConfig returns a TLS 1.2+ server configuration with a new ECDSA
// P-256 certificate valid for hosts plus 127.0.0.1 and localhost. The
// certificate's common name is the first host, or localhost.
func (c *CA) ServerTLSConfig(tb testing.TB, hosts ...string) *tls.Config {
	tb.Helper()
	key := newKey(tb, pki.ECDSAP256)
	var (
		dns []string
		ips []net.IP
	)
	for _, h := range append(slices.Clone(hosts), "localhost", "127.0.0.1") {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	cn := "localhost"
	if len(hosts) > 0 {
		cn = hosts[0]
	}
	cert, err := c.IssueServer(key.Public(), cn, dns, ips, leafValidity)
	if err != nil {
		tb.Fatalf("pkitest: issue server certificate: %v", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{
			Certificate: [][]byte{cert.Raw},
			PrivateKey:  key,
			Leaf:        cert,
		}},
	}
}

// MTLSServerConfig is ServerTLSConfig that also requires a client
// certificate issued by this CA (tls.RequireAndVerifyClientCert).
func (c *CA) MTLSServerConfig(tb testing.TB, hosts ...string) *tls.Config {
	tb.Helper()
	cfg := c.ServerTLSConfig(tb, hosts...)
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = c.Pool()
	return cfg
}

// Leaf is a client certificate with its private key, in memory and as PEM
// (the key as PKCS#8).
type Leaf struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// TLSCertificate returns the leaf as a tls.Certificate.
func (l *Leaf) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
}

// Client issues a client certificate (ExtKeyUsageClientAuth) named cn for a
// new key of type t, valid for one year.
func (c *CA) Client(tb testing.TB, cn string, t pki.KeyType) *Leaf {
	tb.Helper()
	key := newKey(tb, t)
	cert, err := c.IssueClient(key.Public(), cn, leafValidity)
	if err != nil {
		tb.Fatalf("pkitest: issue client certificate %q: %v", cn, err)
	}
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		tb.Fatalf("pkitest: %v", err)
	}
	return &Leaf{Cert: cert, Key: key, CertPEM: pki.EncodeCertsPEM(cert), KeyPEM: keyPEM}
}

// WriteClient issues a client certificate as Client does and writes it to
// dir/<cn>.crt (0644) and its key to dir/<cn>.key (0600); characters of cn
// that are unsafe in file names become "_".
func (c *CA) WriteClient(tb testing.TB, dir, cn string, t pki.KeyType) (certPath, keyPath string) {
	tb.Helper()
	leaf := c.Client(tb, cn, t)
	base := filepath.Join(dir, safeName(cn))
	certPath, keyPath = base+".crt", base+".key"
	if err := atomicfile.Write(certPath, leaf.CertPEM, pki.CertFileMode); err != nil {
		tb.Fatalf("pkitest: %v", err)
	}
	if err := atomicfile.Write(keyPath, leaf.KeyPEM, pki.KeyFileMode); err != nil {
		tb.Fatalf("pkitest: %v", err)
	}
	return certPath, keyPath
}

func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
	if s == "" || s == "." || s == ".." {
		return "client"
	}
	return s
}

func newKey(tb testing.TB, t pki.KeyType) crypto.Signer {
	tb.Helper()
	key, err := pki.GenerateKey(t)
	if err != nil {
		tb.Fatalf("pkitest: %v", err)
	}
	return key
}

// LegacyServerCert returns a version-1 server certificate signed by the CA
// for a new ECDSA P-256 key, whose only name is the subject common name cn:
// no subject alternative names and no extensions at all, exactly what
// `openssl x509 -req` produces without -extfile. Go's TLS client refuses to
// verify such a certificate for a host name, which is what tests of that
// error path need. It is built by hand because x509.CreateCertificate always
// writes version 3.
func (c *CA) LegacyServerCert(tb testing.TB, cn string) (tls.Certificate, *x509.Certificate) {
	tb.Helper()
	key := newKey(tb, pki.ECDSAP256)
	cert := signV1(tb, c.Cert.RawSubject, c.Key, pkix.Name{CommonName: cn}, key.Public(), leafValidity)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, cert
}

// NewV1CA creates a self-signed version-1 root with an ECDSA P-256 key and
// no extensions at all (no basic constraints, no key usage, no key
// identifiers), valid for two years: what Mender's mTLS guide makes with
// `openssl req -new -x509 -config ca.conf` when ca.conf names no
// x509_extensions. OpenSSL treats such a self-signed v1 certificate as a CA.
func NewV1CA(tb testing.TB) *CA {
	tb.Helper()
	key := newKey(tb, pki.ECDSAP256)
	name := pkix.Name{CommonName: "pkitest v1 CA " + tb.Name(), Organization: []string{"My Organization"}}
	subject, err := asn1.Marshal(name.ToRDNSequence())
	if err != nil {
		tb.Fatalf("pkitest: marshal subject: %v", err)
	}
	return &CA{&pki.CA{Cert: signV1(tb, subject, key, name, key.Public(), caValidity), Key: key}}
}

// signV1 builds a version-1 certificate (no extensions) for pub named
// subject, issued by issuer (its raw subject) and signed by signer. It is
// built by hand because x509.CreateCertificate always writes version 3.
func signV1(tb testing.TB, issuer []byte, signer crypto.Signer, subject pkix.Name, pub crypto.PublicKey, validFor time.Duration) *x509.Certificate {
	tb.Helper()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatalf("pkitest: marshal public key: %v", err)
	}
	subj, err := asn1.Marshal(subject.ToRDNSequence())
	if err != nil {
		tb.Fatalf("pkitest: marshal subject: %v", err)
	}
	sigAlg, hash := signatureAlgorithm(tb, signer.Public())
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("pkitest: serial: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	tbs, err := asn1.Marshal(tbsCertificateV1{
		SerialNumber: new(big.Int).Add(serial, big.NewInt(1)),
		Signature:    sigAlg,
		Issuer:       asn1.RawValue{FullBytes: issuer},
		Validity:     validity{NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(validFor)},
		Subject:      asn1.RawValue{FullBytes: subj},
		PublicKey:    asn1.RawValue{FullBytes: spki},
	})
	if err != nil {
		tb.Fatalf("pkitest: marshal TBSCertificate: %v", err)
	}
	signed := tbs
	if hash != 0 {
		h := hash.New()
		h.Write(tbs)
		signed = h.Sum(nil)
	}
	sig, err := signer.Sign(rand.Reader, signed, hash)
	if err != nil {
		tb.Fatalf("pkitest: sign version-1 certificate: %v", err)
	}
	der, err := asn1.Marshal(certificateV1{
		TBS:                asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: sigAlg,
		Signature:          asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		tb.Fatalf("pkitest: marshal certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("pkitest: parse version-1 certificate: %v", err)
	}
	return cert
}

// signatureAlgorithm returns the AlgorithmIdentifier and hash for a
// signing key.
func signatureAlgorithm(tb testing.TB, pub crypto.PublicKey) (pkix.AlgorithmIdentifier, crypto.Hash) {
	tb.Helper()
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}, crypto.SHA256
		case elliptic.P384():
			return pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}}, crypto.SHA384
		}
	case *rsa.PublicKey:
		return pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11},
			Parameters: asn1.NullRawValue}, crypto.SHA256
	case ed25519.PublicKey:
		return pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 3, 101, 112}}, crypto.Hash(0)
	}
	tb.Fatalf("pkitest: version-1 certificate: unsupported signing key %T", pub)
	return pkix.AlgorithmIdentifier{}, 0
}

// tbsCertificateV1 is RFC 5280 TBSCertificate without the version field
// (DEFAULT v1) and without extensions.
type tbsCertificateV1 struct {
	SerialNumber *big.Int
	Signature    pkix.AlgorithmIdentifier
	Issuer       asn1.RawValue
	Validity     validity
	Subject      asn1.RawValue
	PublicKey    asn1.RawValue
}

type validity struct {
	NotBefore, NotAfter time.Time
}

type certificateV1 struct {
	TBS                asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          asn1.BitString
}
