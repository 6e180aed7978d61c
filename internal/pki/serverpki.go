package pki

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// Names and lifetimes EnsureServerPKI uses for what it creates.
const (
	// ServerCAName is the common name of a CA that EnsureServerPKI creates.
	ServerCAName = "Mender mTLS test CA"
	// ServerCAValidity is the lifetime of a CA that EnsureServerPKI creates.
	ServerCAValidity = 10 * 365 * 24 * time.Hour
	// ServerCertValidity is the lifetime of a server certificate that
	// EnsureServerPKI issues.
	ServerCertValidity = 2 * 365 * 24 * time.Hour
	// ServerCertRenewBefore: EnsureServerPKI reissues a server certificate
	// that expires within this time.
	ServerCertRenewBefore = 30 * 24 * time.Hour
)

// ServerCertMarkerName is the file next to server.crt that says
// EnsureServerPKI made it: it holds the SHA-256 of the server.crt it wrote.
// A server.crt without a matching marker (from `simulator pki server`,
// openssl, an older simulator) is never replaced.
const ServerCertMarkerName = "server.crt.managed"

// ServerPKIResult reports what EnsureServerPKI found and did.
type ServerPKIResult struct {
	// CACert, CAKey, ServerCert and ServerKey are the paths of the four
	// files. CAKey is dir/ca-private.key when that is the CA key (CAFiles).
	CACert, CAKey, ServerCert, ServerKey string
	// Created lists the paths of the files this call created, in creation
	// order; empty when everything existed.
	Created []string
	// Reissued is true when a server certificate EnsureServerPKI had made
	// was replaced; ReissueReason then says why (it did not cover a host,
	// was not signed by the CA, did not match the server key, was expiring
	// or did not parse).
	Reissued      bool
	ReissueReason string
	// Managed is true when server.crt is one EnsureServerPKI made, which it
	// replaces when needed; false for a certificate from elsewhere, which is
	// used as it is, never replaced.
	Managed bool
	// Cert is the server certificate (the first one of server.crt).
	Cert *x509.Certificate
	// Names are ServerNames(Cert): the names devices may use in ServerURL.
	Names []string
	// Uncovered lists the hosts asked for (localhost and 127.0.0.1
	// included) that Cert does not cover; always empty when Managed.
	Uncovered []string
	// Warnings describe problems of a server.crt that is not Managed which
	// do not stop serving it: expired or not yet valid, not signed by the CA
	// in the directory.
	Warnings []string
}

// EnsureServerPKI makes sure dir holds a CA and a TLS server certificate:
// dir/ca.crt, dir/ca.key (0600; dir/ca-private.key, the name of Mender's
// mTLS guide, is used when it is the one that exists), dir/server.crt and
// dir/server.key (0600). Missing files are created: the CA is ServerCAName,
// ECDSA P-256, valid for ServerCAValidity; the server key is ECDSA P-256;
// the server certificate is valid for ServerCertValidity with hosts as
// subject alternative names (IP literals as IP addresses, everything else as
// DNS names), always including localhost and 127.0.0.1. Its common name is
// the first host, or localhost. A certificate it issues is marked as its own
// (ServerCertMarkerName) and recorded in the CA's index (RecordIssued).
//
// Existing files are loaded and kept, keys are never rewritten and their
// modes never changed. A server certificate EnsureServerPKI made is reissued
// for the existing server key when it does not cover every host, is not
// signed by the CA, does not match the key, or expires within
// ServerCertRenewBefore. Any other server certificate (`simulator pki
// server`, openssl) is used as it is: the result lists the names it covers
// and the hosts it does not, and it must parse and match server.key.
// dir is created (mode 0700) when missing. Only one of ca.crt and its key
// existing is an error, as is a server key or CA file that does not parse.
func EnsureServerPKI(dir string, hosts []string) (*ServerPKIResult, error) {
	return ensureServerPKI(dir, hosts, time.Now())
}

func ensureServerPKI(dir string, hosts []string, now time.Time) (*ServerPKIResult, error) {
	if dir == "" {
		return nil, errors.New("ensure server PKI: directory is empty: give a directory for the certificates")
	}
	cn, dnsNames, ips, all, err := splitHosts(hosts)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ensure server PKI: create directory: %w", err)
	}
	res := &ServerPKIResult{
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
	}
	res.CACert, res.CAKey = CAFiles(dir)
	ca, err := ensureCA(res)
	if err != nil {
		return nil, err
	}
	marker := filepath.Join(dir, ServerCertMarkerName)
	data, err := os.ReadFile(res.ServerCert)
	switch {
	case err == nil && !markerMatches(marker, data):
		return useServerCert(res, ca, data, all, now)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	key, err := ensureServerKey(res)
	if err != nil {
		return nil, err
	}
	if data == nil {
		res.Created = append(res.Created, res.ServerCert)
	} else if certs, err := ParseCertsPEM(data); err != nil {
		res.Reissued, res.ReissueReason = true, "it does not parse"
	} else if why := serverCertProblem(certs[0], ca, key, all, now); why != "" {
		res.Reissued, res.ReissueReason = true, why
	} else {
		res.Managed, res.Cert, res.Names = true, certs[0], ServerNames(certs[0])
		return res, nil
	}
	cert, err := ca.IssueServer(key.Public(), cn, dnsNames, ips, ServerCertValidity)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: issue %s: %w", res.ServerCert, err)
	}
	certPEM := EncodeCertsPEM(cert)
	if err := atomicfile.Write(res.ServerCert, certPEM, CertFileMode); err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	if err := atomicfile.Write(marker, markerContent(certPEM), CertFileMode); err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	if err := RecordIssued(dir, ca, KindServer, res.ServerCert, cert); err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	res.Managed, res.Cert, res.Names = true, cert, ServerNames(cert)
	return res, nil
}

// markerContent is what the marker file holds for a server.crt of data.
func markerContent(data []byte) []byte {
	sum := sha256.Sum256(data)
	return []byte("# simulator serve made server.crt and replaces it when the names it must cover change.\n" +
		"# Remove this file to make serve keep server.crt as it is.\n" +
		"sha256:" + hex.EncodeToString(sum[:]) + "\n")
}

// markerMatches reports whether the marker file names exactly data.
func markerMatches(marker string, data []byte) bool {
	got, err := os.ReadFile(marker)
	return err == nil && bytes.Equal(got, markerContent(data))
}

// useServerCert checks a server certificate that EnsureServerPKI did not
// make and fills res to serve it as it is.
func useServerCert(res *ServerPKIResult, ca *CA, data []byte, hosts []string, now time.Time) (*ServerPKIResult, error) {
	keep := fmt.Sprintf("it was not made by serve, so serve does not replace it: fix it, or remove %s and %s to let serve create both",
		res.ServerCert, res.ServerKey)
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: server certificate %s: %w; %s", res.ServerCert, err, keep)
	}
	cert := certs[0]
	keyData, err := os.ReadFile(res.ServerKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ensure server PKI: %s exists but %s does not: put the certificate's private key there, or remove %s to let serve create both",
			res.ServerCert, res.ServerKey, res.ServerCert)
	}
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	key, err := ParsePrivateKeyPEM(keyData)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: server key %s: %w", res.ServerKey, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("ensure server PKI: %s is not the key of %s; %s", res.ServerKey, res.ServerCert, keep)
	}
	res.Cert, res.Names = cert, ServerNames(cert)
	for _, h := range hosts {
		if !CoversHost(cert, h) {
			res.Uncovered = append(res.Uncovered, h)
		}
	}
	switch {
	case now.After(cert.NotAfter):
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s expired on %s: devices will refuse it", res.ServerCert, cert.NotAfter.UTC().Format(time.DateOnly)))
	case now.Before(cert.NotBefore):
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s is not valid before %s: devices will refuse it until then", res.ServerCert, cert.NotBefore.UTC().Format(time.RFC3339)))
	}
	if !chainsTo(certs, ca.Cert) {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s is not signed by %s: devices need the CA of %q in ServerCertificate",
			res.ServerCert, res.CACert, cert.Issuer.String()))
	}
	return res, nil
}

func ensureCA(res *ServerPKIResult) (*CA, error) {
	_, certErr := os.Lstat(res.CACert)
	_, keyErr := os.Lstat(res.CAKey)
	switch {
	case certErr == nil && keyErr == nil:
		ca, err := LoadCA(res.CACert, res.CAKey)
		if err != nil {
			return nil, fmt.Errorf("ensure server PKI: %w", err)
		}
		return ca, nil
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		ca, err := NewCA(ServerCAName, ECDSAP256, ServerCAValidity)
		if err != nil {
			return nil, fmt.Errorf("ensure server PKI: %w", err)
		}
		if err := ca.Save(res.CACert, res.CAKey, false); err != nil {
			return nil, fmt.Errorf("ensure server PKI: %w", err)
		}
		res.Created = append(res.Created, res.CAKey, res.CACert)
		return ca, nil
	case certErr == nil:
		return nil, fmt.Errorf("ensure server PKI: %s exists but %s (or %s) does not: restore the CA key, or remove %s to create a new CA",
			res.CACert, res.CAKey, GuideCAKeyName, res.CACert)
	case keyErr == nil:
		return nil, fmt.Errorf("ensure server PKI: %s exists but %s does not: restore the CA certificate, or remove %s to create a new CA", res.CAKey, res.CACert, res.CAKey)
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("ensure server PKI: %w", certErr)
	default:
		return nil, fmt.Errorf("ensure server PKI: %w", keyErr)
	}
}

func ensureServerKey(res *ServerPKIResult) (crypto.Signer, error) {
	data, err := os.ReadFile(res.ServerKey)
	if err == nil {
		key, err := ParsePrivateKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("ensure server PKI: server key %s: %w", res.ServerKey, err)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: server key %s: %w", res.ServerKey, err)
	}
	pemKey, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: server key %s: %w", res.ServerKey, err)
	}
	if err := atomicfile.WriteNew(res.ServerKey, pemKey, KeyFileMode); err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
	}
	res.Created = append(res.Created, res.ServerKey)
	return key, nil
}

// chainsTo reports whether certs[0] is signed by ca, directly or through
// the other certificates of certs (the chain in server.crt). Validity
// periods are not checked: the question is who signed it.
func chainsTo(certs []*x509.Certificate, ca *x509.Certificate) bool {
	cur := certs[0]
	for range certs {
		if bytes.Equal(cur.RawIssuer, ca.RawSubject) && cur.CheckSignatureFrom(ca) == nil {
			return true
		}
		i := slices.IndexFunc(certs[1:], func(c *x509.Certificate) bool {
			return c != cur && bytes.Equal(cur.RawIssuer, c.RawSubject) && cur.CheckSignatureFrom(c) == nil
		})
		if i < 0 {
			return false
		}
		cur = certs[1+i]
	}
	return false
}

// serverCertProblem says why cert cannot stay the server certificate, or
// returns "".
func serverCertProblem(cert *x509.Certificate, ca *CA, key crypto.Signer, hosts []string, now time.Time) string {
	switch {
	case !publicKeysEqual(cert.PublicKey, key.Public()):
		return "it is not the certificate of server.key"
	case cert.CheckSignatureFrom(ca.Cert) != nil:
		return "it is not signed by the CA"
	case now.Before(cert.NotBefore):
		return "it is not valid yet"
	case now.Add(ServerCertRenewBefore).After(cert.NotAfter):
		return "it expires on " + cert.NotAfter.UTC().Format(time.DateOnly)
	}
	for _, h := range hosts {
		if !certCovers(cert, h) {
			return "it does not cover " + h
		}
	}
	return ""
}

// ServerNames returns the names a TLS client accepts cert for: its DNS and
// IP subject alternative names, or, for a certificate without the
// subjectAltName extension (version 1, as `openssl x509 -req` issues
// without -extfile), its common name, which Mender clients and this
// project's agent fall back to.
func ServerNames(cert *x509.Certificate) []string {
	if !hasSANExtension(cert) {
		if cert.Subject.CommonName == "" {
			return nil
		}
		return []string{cert.Subject.CommonName}
	}
	names := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// CoversHost reports whether a device accepts cert for host: as crypto/tls
// checks it, or, for a certificate without the subjectAltName extension, by
// its common name (an exact match or a one-label "*." wildcard,
// case-insensitive; never for an IP address).
func CoversHost(cert *x509.Certificate, host string) bool {
	host = strings.Trim(host, "[]")
	if cert.VerifyHostname(host) == nil {
		return true
	}
	if hasSANExtension(cert) || net.ParseIP(host) != nil {
		return false
	}
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	cn := strings.ToLower(strings.TrimSuffix(cert.Subject.CommonName, "."))
	if h == "" || cn == "" {
		return false
	}
	if h == cn {
		return true
	}
	suffix, ok := strings.CutPrefix(cn, "*")
	if !ok || !strings.HasPrefix(suffix, ".") || len(suffix) < 2 || strings.Contains(suffix, "*") {
		return false
	}
	label, ok := strings.CutSuffix(h, suffix)
	return ok && label != "" && !strings.Contains(label, ".")
}

// hasSANExtension reports whether cert carries the subjectAltName
// extension (RFC 5280, 4.2.1.6), even an empty one.
func hasSANExtension(cert *x509.Certificate) bool {
	oid := asn1.ObjectIdentifier{2, 5, 29, 17}
	return slices.ContainsFunc(cert.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oid) })
}

// certCovers reports whether cert names host, either as TLS verification
// sees it or literally (so that a wildcard host such as *.example.com counts
// as covered once it is in the SANs).
func certCovers(cert *x509.Certificate, host string) bool {
	if cert.VerifyHostname(host) == nil {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		return slices.ContainsFunc(cert.IPAddresses, ip.Equal)
	}
	return slices.ContainsFunc(cert.DNSNames, func(n string) bool { return strings.EqualFold(n, host) })
}

// splitHosts normalises hosts and adds localhost and 127.0.0.1. It returns
// the common name, the DNS names, the IPs and every host for coverage checks.
func splitHosts(hosts []string) (cn string, dnsNames []string, ips []net.IP, all []string, err error) {
	for _, h := range append(slices.Clone(hosts), "localhost", "127.0.0.1") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		}
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
			if !slices.Contains(all, h) {
				ips = append(ips, ip)
				all = append(all, h)
			}
		} else {
			if strings.ContainsAny(h, ":/ \t[]@") {
				return "", nil, nil, nil, fmt.Errorf("host %q is neither a DNS name nor an IP address: give a bare name without port or scheme", h)
			}
			h = strings.ToLower(h)
			if !slices.Contains(all, h) {
				dnsNames = append(dnsNames, h)
				all = append(all, h)
			}
		}
		if cn == "" {
			cn = h
		}
	}
	return cn, dnsNames, ips, all, nil
}
