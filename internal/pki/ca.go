package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// File modes for what this package writes.
const (
	KeyFileMode  os.FileMode = 0o600
	CertFileMode os.FileMode = 0o644
)

// File names in a CA directory: the certificate and key that `simulator
// pki init` and `simulator serve` write, and the key name of Mender's mTLS
// guide (`openssl ecparam -genkey ... -out ca-private.key`), which CAFiles
// also finds.
const (
	CACertName     = "ca.crt"
	CAKeyName      = "ca.key"
	GuideCAKeyName = "ca-private.key"
)

// CAFiles returns the paths of the CA certificate and key in dir:
// dir/ca.crt, and dir/ca.key, or dir/ca-private.key when only that one
// exists, so a directory made with the openssl commands of Mender's mTLS
// guide works as it is.
func CAFiles(dir string) (cert, key string) {
	cert, key = filepath.Join(dir, CACertName), filepath.Join(dir, CAKeyName)
	if _, err := os.Lstat(key); errors.Is(err, fs.ErrNotExist) {
		if guide := filepath.Join(dir, GuideCAKeyName); fileExists(guide) {
			key = guide
		}
	}
	return cert, key
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// backdate is how far before "now" a new certificate becomes valid, so that
// a peer whose clock is slightly behind accepts it at once.
const backdate = 5 * time.Minute

// CA is a certificate authority: a CA certificate and the private key that
// signs with it. Its methods only read the fields, so one CA may issue from
// several goroutines at once.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed root CA named cn with a new key of type t,
// valid from five minutes ago for validity. The certificate has
// BasicConstraints CA:TRUE, KeyUsage CertSign|CRLSign and a random 128-bit
// serial number.
func NewCA(cn string, t KeyType, validity time.Duration) (*CA, error) {
	if cn == "" {
		return nil, errors.New("new CA: common name is empty: give the CA a name")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("new CA %q: validity %v is not positive", cn, validity)
	}
	key, err := GenerateKey(t)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", cn, err)
	}
	tmpl, err := caTemplate(cn, validity)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", cn, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: self-sign: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse certificate: %w", cn, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueIntermediate creates an intermediate CA named cn with a new key of
// type t, signed by ca and valid for validity. It may sign leaf certificates
// but no further CAs (path length 0).
func (ca *CA) IssueIntermediate(cn string, t KeyType, validity time.Duration) (*CA, error) {
	if err := ca.check(); err != nil {
		return nil, err
	}
	if cn == "" {
		return nil, errors.New("issue intermediate CA: common name is empty: give the CA a name")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("issue intermediate CA %q: validity %v is not positive", cn, validity)
	}
	key, err := GenerateKey(t)
	if err != nil {
		return nil, fmt.Errorf("issue intermediate CA %q: %w", cn, err)
	}
	tmpl, err := caTemplate(cn, validity)
	if err != nil {
		return nil, fmt.Errorf("issue intermediate CA %q: %w", cn, err)
	}
	tmpl.MaxPathLenZero = true
	cert, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return nil, fmt.Errorf("issue intermediate CA %q: %w", cn, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func caTemplate(cn string, validity time.Duration) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil
}

// randomSerial returns a random positive serial number of up to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// IsCACert reports whether c may sign certificates: it has basic
// constraints CA:TRUE, or it is a self-signed version-1 certificate. Version
// 1 has no extensions, so no basic constraints; OpenSSL treats a
// self-signed one as a CA (root), and Mender's mTLS guide makes its CA that
// way (`openssl req -new -x509 -config ca.conf` without x509_extensions).
// A version-1 certificate that is not self-signed (what `openssl x509 -req`
// issues) is a leaf.
func IsCACert(c *x509.Certificate) bool {
	if c.BasicConstraintsValid {
		return c.IsCA
	}
	return isSelfSignedV1(c)
}

// isSelfSignedV1 reports whether c is a version-1 certificate whose issuer
// is its subject and whose signature verifies with its own key.
func isSelfSignedV1(c *x509.Certificate) bool {
	return c.Version == 1 && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// LoadCA reads a CA certificate (the first certificate in certPath) and its
// private key (keyPath, any form ParsePrivateKeyPEM accepts). It fails when
// the certificate is not a CA (see IsCACert; a self-signed version-1 root
// is one) or the key does not belong to it; errors name the file and wrap
// fs.ErrNotExist for a missing one.
func LoadCA(certPath, keyPath string) (*CA, error) {
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate %s: %w", certPath, err)
	}
	cert := certs[0]
	if !IsCACert(cert) {
		return nil, fmt.Errorf("load CA certificate %s: %q is not a CA certificate (no basic constraints CA:TRUE, and not a self-signed version-1 root): point to the CA, not a leaf", certPath, cert.Subject.CommonName)
	}
	data, err = os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	key, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("load CA key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("load CA: key %s does not belong to certificate %s: use the key the CA was created with", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Save writes the CA certificate to certPath (mode 0644) and its key, as
// PKCS#8, to keyPath (mode 0600), each atomically. Unless force is set it
// refuses, before writing anything, when either file exists (the error wraps
// atomicfile.ErrExists).
func (ca *CA) Save(certPath, keyPath string, force bool) error {
	if err := ca.check(); err != nil {
		return err
	}
	keyPEM, err := MarshalPrivateKeyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("save CA key %s: %w", keyPath, err)
	}
	write := atomicfile.Write
	if !force {
		write = atomicfile.WriteNew
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("save CA: %s: %w (use --force to overwrite)", p, atomicfile.ErrExists)
			}
		}
	}
	if err := write(keyPath, keyPEM, KeyFileMode); err != nil {
		return fmt.Errorf("save CA key: %w", err)
	}
	if err := write(certPath, EncodeCertsPEM(ca.Cert), CertFileMode); err != nil {
		return fmt.Errorf("save CA certificate: %w", err)
	}
	return nil
}

// LeafOptions describe an end-entity certificate for CA.Issue.
type LeafOptions struct {
	// CN is the subject common name. It may be empty only when DNSNames or
	// IPs are set.
	CN string
	// DNSNames and IPs are the subject alternative names; nil means none.
	DNSNames []string
	IPs      []net.IP
	// Validity is how long the certificate is valid; it must be positive.
	// With a zero NotBefore it runs from now, otherwise from NotBefore.
	Validity time.Duration
	// NotBefore is the start of validity; zero means five minutes ago.
	NotBefore time.Time
	// ExtKeyUsage lists the extended key usages; nil means the extension is
	// omitted (any usage).
	ExtKeyUsage []x509.ExtKeyUsage
}

// Issue signs a leaf certificate for pub as described by o. The leaf has
// KeyUsage DigitalSignature (plus KeyEncipherment for RSA keys), CA:FALSE
// and a random 128-bit serial number.
func (ca *CA) Issue(pub crypto.PublicKey, o LeafOptions) (*x509.Certificate, error) {
	if err := ca.check(); err != nil {
		return nil, err
	}
	if o.CN == "" && len(o.DNSNames) == 0 && len(o.IPs) == 0 {
		return nil, errors.New("issue certificate: no common name and no subject alternative names: set CN, DNSNames or IPs")
	}
	if o.Validity <= 0 {
		return nil, fmt.Errorf("issue certificate %q: validity %v is not positive", o.CN, o.Validity)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", o.CN, err)
	}
	notBefore, notAfter := o.NotBefore, o.NotBefore.Add(o.Validity)
	if notBefore.IsZero() {
		now := time.Now()
		notBefore, notAfter = now.Add(-backdate), now.Add(o.Validity)
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CN},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           slices.Clone(o.ExtKeyUsage),
		BasicConstraintsValid: true,
		DNSNames:              slices.Clone(o.DNSNames),
		IPAddresses:           slices.Clone(o.IPs),
	}
	cert, err := ca.sign(tmpl, pub)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", o.CN, err)
	}
	return cert, nil
}

// IssueServer issues a TLS server certificate (ExtKeyUsageServerAuth) for
// pub named cn, with dns and ips as subject alternative names.
func (ca *CA) IssueServer(pub crypto.PublicKey, cn string, dns []string, ips []net.IP, validity time.Duration) (*x509.Certificate, error) {
	return ca.Issue(pub, LeafOptions{CN: cn, DNSNames: dns, IPs: ips, Validity: validity,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
}

// IssueClient issues a TLS client certificate (ExtKeyUsageClientAuth) for
// pub named cn.
func (ca *CA) IssueClient(pub crypto.PublicKey, cn string, validity time.Duration) (*x509.Certificate, error) {
	return ca.Issue(pub, LeafOptions{CN: cn, Validity: validity,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// SignCSR issues a client certificate for a device's certificate request:
// it checks the request's signature first (proof that the requester holds
// the key), then issues IssueClient(csr.PublicKey, csr's common name). Only
// the common name is taken from the request; requested extensions and
// alternative names are ignored. Failures wrap ErrInvalidCSR.
func (ca *CA) SignCSR(csr *x509.CertificateRequest, validity time.Duration) (*x509.Certificate, error) {
	if csr == nil {
		return nil, fmt.Errorf("sign CSR: %w: request is nil", ErrInvalidCSR)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign CSR %q: %w: signature does not verify: %w", csr.Subject.CommonName, ErrInvalidCSR, err)
	}
	if csr.Subject.CommonName == "" {
		return nil, fmt.Errorf("sign CSR: %w: subject common name is empty: put the device id in the CN", ErrInvalidCSR)
	}
	return ca.IssueClient(csr.PublicKey, csr.Subject.CommonName, validity)
}

func (ca *CA) check() error {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return errors.New("CA has no certificate or key: create it with NewCA or LoadCA")
	}
	return nil
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign with CA %q: %w", ca.Cert.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return cert, nil
}
