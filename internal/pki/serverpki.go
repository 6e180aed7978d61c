package pki

import (
	"crypto"
	"crypto/x509"
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

// ServerPKIResult reports what EnsureServerPKI found and did.
type ServerPKIResult struct {
	// CACert, CAKey, ServerCert and ServerKey are the paths of the four files.
	CACert, CAKey, ServerCert, ServerKey string
	// Created lists the paths of the files this call created, in creation
	// order; empty when everything existed.
	Created []string
	// Reissued is true when an existing server certificate was replaced
	// because it did not cover every host, was not signed by the CA, did not
	// match the server key, or was expired or about to expire.
	Reissued bool
}

// EnsureServerPKI makes sure dir holds a CA and a TLS server certificate
// signed by it: dir/ca.crt, dir/ca.key (0600), dir/server.crt and
// dir/server.key (0600). Missing files are created: the CA is ServerCAName,
// ECDSA P-256, valid for ServerCAValidity; the server key is ECDSA P-256;
// the server certificate is valid for ServerCertValidity with hosts as
// subject alternative names (IP literals as IP addresses, everything else as
// DNS names), always including localhost and 127.0.0.1. Its common name is
// the first host, or localhost.
//
// Existing files are loaded and kept, keys are never rewritten and their
// modes never changed. An existing server certificate is reissued for the
// existing server key when it does not cover every host, is not signed by
// the CA, does not match the key, or expires within ServerCertRenewBefore.
// dir is created (mode 0700) when missing. Only one of ca.crt and ca.key
// existing is an error, as is a server key or CA file that does not parse.
func EnsureServerPKI(dir string, hosts []string) (*ServerPKIResult, error) {
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
		CACert:     filepath.Join(dir, "ca.crt"),
		CAKey:      filepath.Join(dir, "ca.key"),
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
	}
	ca, err := ensureCA(res)
	if err != nil {
		return nil, err
	}
	key, err := ensureServerKey(res)
	if err != nil {
		return nil, err
	}
	cert, err := readFirstCert(res.ServerCert)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		res.Created = append(res.Created, res.ServerCert)
	case err == nil && serverCertFits(cert, ca, key, all, time.Now()):
		return res, nil
	default:
		// Unreadable, foreign or stale: the certificate is derived data,
		// so replace it rather than fail.
		res.Reissued = true
	}
	cert, err = ca.IssueServer(key.Public(), cn, dnsNames, ips, ServerCertValidity)
	if err != nil {
		return nil, fmt.Errorf("ensure server PKI: issue %s: %w", res.ServerCert, err)
	}
	if err := atomicfile.Write(res.ServerCert, EncodeCertsPEM(cert), CertFileMode); err != nil {
		return nil, fmt.Errorf("ensure server PKI: %w", err)
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
		return nil, fmt.Errorf("ensure server PKI: %s exists but %s does not: restore the CA key, or remove %s to create a new CA", res.CACert, res.CAKey, res.CACert)
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

func readFirstCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

func serverCertFits(cert *x509.Certificate, ca *CA, key crypto.Signer, hosts []string, now time.Time) bool {
	if !publicKeysEqual(cert.PublicKey, key.Public()) || cert.CheckSignatureFrom(ca.Cert) != nil {
		return false
	}
	if now.Before(cert.NotBefore) || now.Add(ServerCertRenewBefore).After(cert.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if !certCovers(cert, h) {
			return false
		}
	}
	return true
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
