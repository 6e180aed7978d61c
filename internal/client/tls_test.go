package client

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/retry"
)

const legacyWarning = "server certificate has no subjectAltName"

func TestServerVerification(t *testing.T) {
	ca := newCA(t, "Test Server CA")
	otherCA := newCA(t, "Untrusted CA")
	past := time.Now().Add(-48 * time.Hour)

	tests := []struct {
		name     string
		cert     func(t *testing.T) tls.Certificate
		host     string // host in the server URL; dialled to 127.0.0.1 when not an IP
		skip     bool   // SkipVerify
		caFile   bool   // trust the CA through ServerCertificate instead of RootCAs
		wantErr  any    // nil, or a pointer to the x509 error type expected
		wantText string // when set, a substring of the error (Go's own x509 text)
		wantWarn bool   // the legacy Common Name warning is logged
	}{
		{name: "SAN IP address", host: "127.0.0.1",
			cert: func(t *testing.T) tls.Certificate {
				return ca.serverCert(t, leafSpec{cn: "srv", ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
			}},
		{name: "SAN DNS name", host: "mender.local",
			cert: func(t *testing.T) tls.Certificate {
				return ca.serverCert(t, leafSpec{cn: "srv", dns: []string{"mender.local"}})
			}},
		{name: "SAN DNS name trusted via ServerCertificate file", host: "mender.local", caFile: true,
			cert: func(t *testing.T) tls.Certificate { return ca.serverCert(t, leafSpec{dns: []string{"mender.local"}}) }},
		{name: "legacy v1 CN-only cert accepted with a warning", host: "mender.local", wantWarn: true,
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "mender.local") }},
		{name: "legacy CN compared case-insensitively", host: "Mender.Local", wantWarn: true,
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "mender.LOCAL") }},
		{name: "legacy wildcard CN", host: "eu.mender.example", wantWarn: true,
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "*.mender.example") }},
		{name: "legacy wildcard CN covers one label only", host: "a.eu.mender.example", wantErr: &x509.HostnameError{},
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "*.mender.example") }},
		{name: "legacy CN mismatch refused", host: "mender.local", wantErr: &x509.HostnameError{},
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "other.local") }},
		{name: "legacy CN never matches an IP address", host: "127.0.0.1", wantErr: &x509.HostnameError{},
			cert: func(t *testing.T) tls.Certificate { return ca.legacyServerCert(t, "127.0.0.1") }},
		{name: "legacy cert from an untrusted CA refused even with CN match", host: "mender.local", wantErr: &x509.UnknownAuthorityError{},
			cert: func(t *testing.T) tls.Certificate { return otherCA.legacyServerCert(t, "mender.local") }},
		{name: "SAN with only a directoryName refused even when CN matches", host: "mender.local", wantErr: &x509.HostnameError{},
			wantText: "x509: certificate is not valid for any names, but wanted to match mender.local",
			cert: func(t *testing.T) tls.Certificate {
				c := ca.serverCert(t, leafSpec{cn: "mender.local", extra: []pkix.Extension{directoryNameOnlySAN(t, "mender.local")}})
				require.True(t, slices.ContainsFunc(c.Leaf.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) }),
					"the fixture has a subjectAltName extension")
				require.Empty(t, c.Leaf.DNSNames, "the fixture's SAN has no DNS name")
				require.Empty(t, c.Leaf.IPAddresses)
				require.Empty(t, c.Leaf.URIs)
				require.Empty(t, c.Leaf.EmailAddresses)
				return c
			}},
		{name: "SAN mismatch refused even when CN matches", host: "mender.local", wantErr: &x509.HostnameError{},
			cert: func(t *testing.T) tls.Certificate {
				return ca.serverCert(t, leafSpec{cn: "mender.local", dns: []string{"other.local"}})
			}},
		{name: "expired cert refused", host: "mender.local", wantErr: &x509.CertificateInvalidError{},
			cert: func(t *testing.T) tls.Certificate {
				return ca.serverCert(t, leafSpec{dns: []string{"mender.local"}, notBefore: past.Add(-time.Hour), notAfter: past})
			}},
		{name: "client-auth-only cert refused for a server", host: "mender.local", wantErr: &x509.CertificateInvalidError{},
			cert: func(t *testing.T) tls.Certificate {
				return ca.serverCert(t, leafSpec{dns: []string{"mender.local"}, usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			}},
		{name: "untrusted SAN cert refused", host: "mender.local", wantErr: &x509.UnknownAuthorityError{},
			cert: func(t *testing.T) tls.Certificate {
				return otherCA.serverCert(t, leafSpec{dns: []string{"mender.local"}})
			}},
		{name: "SkipVerify accepts anything", host: "mender.local", skip: true,
			cert: func(t *testing.T) tls.Certificate { return otherCA.legacyServerCert(t, "nobody") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t)
			srv := startTLSServer(t, f, tt.cert(t), nil)
			_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
			require.NoError(t, err)
			opts, logs := baseOptions(newTestKey(t), "https://"+net.JoinHostPort(tt.host, port))
			opts.SkipVerify = tt.skip
			if tt.caFile {
				opts.RootCAs = x509.NewCertPool() // empty: only the file can make it trusted
				opts.ServerCertificate = ca.writeCAFile(t)
			} else {
				opts.RootCAs = ca.pool
			}
			c, err := New(opts)
			require.NoError(t, err)
			dialTo(t, c, srv.Listener.Addr().String())

			err = c.Authenticate(t.Context())
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, "token-1", c.Token())
			} else {
				require.Error(t, err)
				assert.ErrorAs(t, err, tt.wantErr)
				if tt.wantText != "" {
					assert.Contains(t, err.Error(), tt.wantText)
				}
				var verr *tls.CertificateVerificationError
				assert.ErrorAs(t, err, &verr, "verification errors look like crypto/tls's")
				assert.Equal(t, retry.DecisionPermanent, retry.Classify(nil, err), "certificate errors must not be retried fast")
				assert.Empty(t, c.Token())
				assert.Empty(t, f.requests(""), "no request may reach a server that failed verification")
			}
			if tt.wantWarn {
				assert.Equal(t, 1, logs.count(legacyWarning))
				host := strings.ToLower(tt.host)
				assert.Contains(t, logs.String(), fmt.Sprintf(`subjectAltName=DNS:%s`, host), "the warning must say how to add a SAN")
				// A second handshake must not repeat the warning.
				closeIdle(c)
				require.NoError(t, c.Authenticate(t.Context()))
				assert.Equal(t, 1, logs.count(legacyWarning), "the legacy warning is logged once per client")
				assert.Len(t, f.requests(routeAuth), 2)
			} else {
				assert.Zero(t, logs.count(legacyWarning))
			}
			if tt.skip {
				assert.Contains(t, logs.String(), "TLS server verification is disabled")
			}
		})
	}
}

// TestHasSAN: only a certificate without the subjectAltName extension is a
// legacy one, whatever names Go managed to parse out of the extension.
func TestHasSAN(t *testing.T) {
	ca := newCA(t, "CA")
	assert.False(t, hasSAN(ca.legacyServerCert(t, "mender.local").Leaf), "v1 certificate without extensions")
	assert.False(t, hasSAN(ca.serverCert(t, leafSpec{cn: "mender.local"}).Leaf), "v3 certificate without a SAN extension")
	assert.True(t, hasSAN(ca.serverCert(t, leafSpec{dns: []string{"mender.local"}}).Leaf), "DNS name")
	assert.True(t, hasSAN(ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(10, 0, 0, 1)}}).Leaf), "IP address")
	assert.True(t, hasSAN(ca.serverCert(t, leafSpec{cn: "mender.local",
		extra: []pkix.Extension{directoryNameOnlySAN(t, "mender.local")}}).Leaf), "directoryName only")
}

func TestLegacyCNMatches(t *testing.T) {
	tests := []struct {
		host, cn string
		want     bool
	}{
		{"mender.local", "mender.local", true},
		{"mender.local.", "MENDER.local", true},
		{"a.example.com", "*.example.com", true},
		{"example.com", "*.example.com", false},
		{"a.b.example.com", "*.example.com", false},
		{"a.example.com", "a.*.com", false},
		{"a.example.com", "*a.example.com", false},
		{"x", "*.", false},
		{"x.", "*", false},
		{"mender.local", "", false},
		{"", "mender.local", false},
		{"127.0.0.1", "127.0.0.1", false},
		{"::1", "::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.host+" vs "+tt.cn, func(t *testing.T) {
			assert.Equal(t, tt.want, legacyCNMatches(tt.host, tt.cn))
		})
	}
}

func TestServerCertificateFileErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a certificate\n"), 0o600))
	tests := []struct {
		name string
		file string
		want string
	}{
		{"missing file", filepath.Join(dir, "missing.pem"), "no such file"},
		{"no PEM certificate", garbage, "no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, _ := baseOptions(newTestKey(t), "https://mender.local")
			opts.ServerCertificate = tt.file
			_, err := New(opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "ServerCertificate")
			assert.Contains(t, err.Error(), tt.file, "the error must name the file")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// TestClientCertificateReadPerHandshake checks that a replaced client
// certificate is presented on the next TLS handshake without a new Client.
func TestClientCertificateReadPerHandshake(t *testing.T) {
	serverCA, deviceCA := newCA(t, "Server CA"), newCA(t, "Device CA")
	f := newFakeServer(t)
	srv := startTLSServer(t, f, serverCA.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), deviceCA.pool)

	key := newTestKey(t)
	clientSpec := func(serial int64) leafSpec {
		return leafSpec{cn: "device-1", serial: serial, usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	cred := &testCred{Signer: key}
	cred.set(deviceCA.issue(t, clientSpec(100), &key.PublicKey), deviceCA.cert)

	opts, _ := baseOptions(key, srv.URL)
	opts.RootCAs = serverCA.pool
	opts.TLSCredential = cred
	c, err := New(opts)
	require.NoError(t, err)

	require.NoError(t, c.Authenticate(t.Context()))
	cred.set(deviceCA.issue(t, clientSpec(200), &key.PublicKey))
	require.NoError(t, c.SendInventory(t.Context()), "an open connection keeps its handshake")
	closeIdle(c)
	require.NoError(t, c.Authenticate(t.Context()))

	var serials []int64
	for _, r := range f.requests("") {
		require.NotNil(t, r.peer, "the server requires a client certificate")
		serials = append(serials, r.peer.SerialNumber.Int64())
	}
	assert.Equal(t, []int64{100, 100, 200}, serials, "the new certificate must be used on the next handshake")

	// Without any certificate the mTLS server refuses the handshake.
	cred.set()
	closeIdle(c)
	err = c.Authenticate(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNoServer, "a refused handshake is a transport failure")
}

// The device speaks HTTP/1.1 only, as Mender's clients do, even to a server
// that offers HTTP/2: the agent is built without net/http's HTTP/2
// (nethttpomithttp2), and nothing may depend on it.
func TestHTTP1OnlyWhenHTTP2Offered(t *testing.T) {
	ca := newCA(t, "Server CA")
	f := newFakeServer(t)
	srv := httptest.NewUnstartedServer(f)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})}}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	opts, _ := baseOptions(newTestKey(t), srv.URL)
	opts.RootCAs = ca.pool
	c, err := New(opts)
	require.NoError(t, err)
	require.NoError(t, c.SendInventory(t.Context()))
	reqs := f.requests("")
	require.Len(t, reqs, 2)
	for _, r := range reqs {
		assert.Equal(t, 1, r.proto, "%s %s must use HTTP/1.1 although the server offers HTTP/2", r.method, r.path)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	require.True(t, ok, "the default transport is an *http.Transport")
	assert.False(t, tr.ForceAttemptHTTP2, "HTTP/2 must not be attempted")
	assert.Equal(t, []string{"http/1.1"}, tr.TLSClientConfig.NextProtos, "ALPN offers HTTP/1.1 only (also through a proxy)")
}
