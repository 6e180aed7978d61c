package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// newTLSConfig builds the one TLS client configuration of the device:
// TLS 1.2 or later; the mTLS client certificate fetched from TLSCredential at
// every handshake; trusted roots from RootCAs (or the system pool) plus
// ServerCertificate; and server verification by verifyServer.
//
// crypto/tls's own verification is switched off (InsecureSkipVerify) only so
// that verifyServer can run instead: it performs the same chain and hostname
// checks and additionally accepts a legacy Common-Name-only server
// certificate, which crypto/tls refuses. With SkipVerify nothing is verified.
func (c *Client) newTLSConfig() (*tls.Config, error) {
	// HTTP/1.1 only, as Mender's clients speak it: the agent is built
	// without net/http's HTTP/2 (nethttpomithttp2, see the Makefile).
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if cred := c.opts.TLSCredential; cred != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return clientCertificate(cred), nil
		}
	}
	if c.opts.SkipVerify {
		cfg.InsecureSkipVerify = true // the operator asked for no verification; New warns
		return cfg, nil
	}
	roots, err := rootPool(c.opts.RootCAs, c.opts.ServerCertificate)
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = roots
	cfg.InsecureSkipVerify = true // verification happens in VerifyConnection below
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// Only reached through an HTTP proxy (CONNECT); direct connections
		// use forHost, which knows the host even when it is an IP address.
		return c.verifyServer(cs, cs.ServerName, roots)
	}
	return cfg, nil
}

// forHost returns base specialised for one server host: ServerName set and
// verification bound to host (cs.ServerName is empty for IP addresses, as no
// SNI is sent for them).
func (c *Client) forHost(base *tls.Config, host string) *tls.Config {
	cfg := base.Clone()
	cfg.ServerName = host
	if base.VerifyConnection != nil {
		roots := base.RootCAs
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return c.verifyServer(cs, host, roots) }
	}
	return cfg
}

// clientCertificate returns the credential's current chain as a TLS
// certificate, or an empty certificate (none presented) when it has none.
func clientCertificate(cred Credential) *tls.Certificate {
	chain := cred.CertificateChain()
	if len(chain) == 0 || chain[0] == nil {
		return &tls.Certificate{}
	}
	ders := make([][]byte, 0, len(chain))
	for _, crt := range chain {
		if crt != nil {
			ders = append(ders, crt.Raw)
		}
	}
	return &tls.Certificate{Certificate: ders, PrivateKey: cred, Leaf: chain[0]}
}

// rootPool returns a copy of extra (nil = the system pool, or an empty pool
// where the system has none) with the certificates of file added.
func rootPool(extra *x509.CertPool, file string) (*x509.CertPool, error) {
	var pool *x509.CertPool
	if extra != nil {
		pool = extra.Clone()
	} else if sys, err := x509.SystemCertPool(); err == nil && sys != nil {
		pool = sys
	} else {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ServerCertificate %q: %w (set it to a readable PEM file with the server's CA or certificate)", file, err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("ServerCertificate %q: no PEM certificate in the file (it must hold at least one CERTIFICATE block)", file)
	}
	return pool, nil
}

// verifyServer does what crypto/tls would: chain verification against roots
// with the peer's intermediates and the ServerAuth usage, then the hostname.
// If the hostname check fails and the leaf has no subjectAltName extension
// at all (see hasSAN), the Common Name is compared with host (exact, or one
// leftmost "*." label), as TLS stacks did before SANs were mandatory; that
// is accepted with a one-time warning. Errors are
// *tls.CertificateVerificationError wrapping the x509 error, as crypto/tls
// returns them.
func (c *Client) verifyServer(cs tls.ConnectionState, host string, roots *x509.CertPool) error {
	fail := func(err error) error {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	if len(cs.PeerCertificates) == 0 {
		return fail(errors.New("tls: server sent no certificate"))
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, crt := range cs.PeerCertificates[1:] {
		inter.AddCert(crt)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fail(err)
	}
	if host == "" {
		return fail(errors.New("tls: no server name to verify the certificate against (IP address through a proxy)"))
	}
	herr := leaf.VerifyHostname(host)
	if herr == nil {
		return nil
	}
	if !hasSAN(leaf) && legacyCNMatches(host, leaf.Subject.CommonName) {
		c.legacyCN.Do(func() {
			h := strings.ToLower(strings.TrimSuffix(host, "."))
			c.log.Warn("server certificate has no subjectAltName; accepted on its legacy Common Name",
				"server_name", h, "common_name", leaf.Subject.CommonName,
				"hint", fmt.Sprintf(`reissue it with a SAN: openssl req ... -addext "subjectAltName=DNS:%s", or for openssl x509 -req add -extfile with the line subjectAltName=DNS:%s`, h, h))
		})
		return nil
	}
	return fail(herr)
}

// oidSubjectAltName is the subjectAltName extension (RFC 5280, 4.2.1.6).
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// hasSAN reports whether the certificate carries a subjectAltName extension
// at all, whatever it holds. The parsed DNSNames, IPAddresses, URIs and
// EmailAddresses are not enough: a SAN with only other name types (a
// directoryName, an otherName) leaves them all empty, yet such a
// certificate is not a legacy one and its Common Name must not be trusted.
func hasSAN(crt *x509.Certificate) bool {
	for _, ext := range crt.Extensions {
		if ext.Id.Equal(oidSubjectAltName) {
			return true
		}
	}
	return false
}

// legacyCNMatches compares a DNS host with a Common Name case-insensitively:
// an exact match, or a "*." wildcard standing for exactly one leftmost label.
// IP addresses never match a Common Name.
func legacyCNMatches(host, cn string) bool {
	if net.ParseIP(host) != nil {
		return false
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	cn = strings.ToLower(strings.TrimSuffix(cn, "."))
	if host == "" || cn == "" {
		return false
	}
	if host == cn {
		return true
	}
	suffix, ok := strings.CutPrefix(cn, "*")
	if !ok || !strings.HasPrefix(suffix, ".") || len(suffix) < 2 || strings.Contains(suffix, "*") {
		return false
	}
	label, ok := strings.CutSuffix(host, suffix)
	return ok && label != "" && !strings.Contains(label, ".")
}

// newTransport returns the HTTP transport for cfg: proxy from the
// environment, HTTP/1.1 only (no HTTP/2 even when offered), and direct TLS
// connections verified against the dialled host (forHost).
func (c *Client) newTransport(cfg *tls.Config) *http.Transport {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		// HTTP/1.1 only: HTTP/2 is not attempted, and TLSNextProto is
		// non-nil and empty, so net/http never adds it to this transport.
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:          8,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		raw, err := tr.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// tr.TLSClientConfig is read here, after any tuning of it.
		conn := tls.Client(raw, c.forHost(tr.TLSClientConfig, host))
		hctx, cancel := context.WithTimeout(ctx, tr.TLSHandshakeTimeout)
		defer cancel()
		if err := conn.HandshakeContext(hctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return conn, nil
	}
	return tr
}
