package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDiagnoseRealHandshakes runs the real TLS stack against servers that
// refuse the device, or that the device must refuse, and checks what
// Diagnose makes of the error of Probe and of Authenticate.
func TestDiagnoseRealHandshakes(t *testing.T) {
	serverCA, deviceCA, otherCA := newCA(t, "Server CA"), newCA(t, "Device CA"), newCA(t, "Other CA")
	localhost := []net.IP{net.IPv4(127, 0, 0, 1)}
	clientCert := func(ca *testCA, key *ecdsa.PrivateKey, notAfter time.Time) []*x509.Certificate {
		return []*x509.Certificate{ca.issue(t, leafSpec{cn: "device-1", notAfter: notAfter, notBefore: notAfter.Add(-48 * time.Hour),
			usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, key.Public())}
	}
	tomorrow, yesterday := time.Now().Add(24*time.Hour), time.Now().Add(-24*time.Hour)
	revoke := func(cs tls.ConnectionState) error {
		return errors.New("client certificate revoked") // what the ambassador's VerifyConnection does
	}

	tests := []struct {
		name      string
		server    func(t *testing.T) *httptest.Server
		host      string // host of the server URL, dialled to the server; "" = 127.0.0.1
		scheme    string // "" = https
		chain     func(key *ecdsa.PrivateKey) []*x509.Certificate
		wantStep  Step
		wantIn    []string // substrings of Problem + Fix
		wantNotIn []string
	}{
		{name: "client certificate from an unknown CA",
			server:   mtlsServer(serverCA, deviceCA, localhost, nil, 0),
			chain:    func(k *ecdsa.PrivateKey) []*x509.Certificate { return clientCert(otherCA, k, tomorrow) },
			wantStep: StepTLS, wantIn: []string{"the server refused this device's certificate", `"unknown certificate authority"`,
				"not signed by a CA the server (the mTLS ambassador) trusts", "issue the device a new certificate"},
			wantNotIn: []string{"unreachable"}},
		{name: "client certificate revoked (refused in VerifyConnection)",
			server:   mtlsServer(serverCA, deviceCA, localhost, revoke, 0),
			chain:    func(k *ecdsa.PrivateKey) []*x509.Certificate { return clientCert(deviceCA, k, tomorrow) },
			wantStep: StepTLS, wantIn: []string{"the server refused this device's certificate", `"bad certificate"`,
				"not signed by a CA the server (the mTLS ambassador) trusts, it is revoked, or it has expired"},
			wantNotIn: []string{"unreachable"}},
		{name: "client certificate expired at the server",
			server:   mtlsServer(serverCA, deviceCA, localhost, nil, 0),
			chain:    func(k *ecdsa.PrivateKey) []*x509.Certificate { return clientCert(deviceCA, k, yesterday) },
			wantStep: StepTLS, wantIn: []string{"the server refused this device's certificate", "expired"}},
		{name: "client certificate refused over TLS 1.2",
			server:   mtlsServer(serverCA, deviceCA, localhost, nil, tls.VersionTLS12),
			chain:    func(k *ecdsa.PrivateKey) []*x509.Certificate { return clientCert(otherCA, k, tomorrow) },
			wantStep: StepTLS, wantIn: []string{"the server refused this device's certificate"}},
		{name: "no client certificate",
			server:   mtlsServer(serverCA, deviceCA, localhost, nil, 0),
			chain:    func(*ecdsa.PrivateKey) []*x509.Certificate { return nil },
			wantStep: StepTLS, wantIn: []string{"requires a client certificate", "HttpsClient.Certificate"}},
		{name: "server name not in the certificate",
			server:   tlsServer(serverCA.serverCert(t, leafSpec{cn: "srv", dns: []string{"a.example", "b.example"}})),
			host:     "mender.local",
			wantStep: StepTLS, wantIn: []string{`not valid for "mender.local"`,
				"ServerURL must use a name in the server certificate: a.example, b.example", "subjectAltName=DNS:mender.local"}},
		{name: "CN-only certificate reached by IP",
			server:   tlsServer(serverCA.legacyServerCert(t, "mender.local")),
			wantStep: StepTLS, wantIn: []string{"this certificate has no IP SANs", "use the host name in its CN (mender.local)"}},
		{name: "DNS-only certificate reached by IP",
			server:   tlsServer(serverCA.serverCert(t, leafSpec{cn: "srv", dns: []string{"mender.local"}})),
			wantStep: StepTLS, wantIn: []string{"this certificate has no IP SANs", "ServerURL must use a name in the server certificate: mender.local"}},
		{name: "untrusted server",
			server:   tlsServer(otherCA.serverCert(t, leafSpec{ips: localhost})),
			wantStep: StepTLS, wantIn: []string{"not trusted", "set ServerCertificate"}},
		{name: "https:// to a plain HTTP port",
			server: func(t *testing.T) *httptest.Server {
				srv := httptest.NewServer(http.NotFoundHandler())
				t.Cleanup(srv.Close)
				return srv
			},
			wantStep: StepTLS, wantIn: []string{"plain HTTP", "use the server's https port"}},
		{name: "http:// to a TLS port",
			server:   tlsServer(serverCA.serverCert(t, leafSpec{ips: localhost})),
			scheme:   "http",
			wantStep: StepTLS, wantIn: []string{"ServerURL uses http:// but the server speaks TLS", "use https://"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.server(t)
			_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
			require.NoError(t, err)
			host, scheme := tt.host, tt.scheme
			if host == "" {
				host = "127.0.0.1"
			}
			if scheme == "" {
				scheme = "https"
			}
			key := newTestKey(t)
			opts, _ := baseOptions(key, scheme+"://"+net.JoinHostPort(host, port))
			opts.RootCAs = serverCA.pool
			if tt.chain != nil {
				cred := &testCred{Signer: key}
				cred.set(tt.chain(key)...)
				opts.TLSCredential = cred
			}
			c, err := New(opts)
			require.NoError(t, err)
			dialTo(t, c, srv.Listener.Addr().String())

			_, perr := c.Probe(t.Context(), opts.Servers[0])
			require.Error(t, perr, "the probe must fail")
			closeIdle(c)
			aerr := c.Authenticate(t.Context())
			require.Error(t, aerr, "authentication must fail")
			for name, err := range map[string]error{"probe": perr, "authenticate": aerr} {
				d := Diagnose(err)
				text := d.String()
				if name == "authenticate" && scheme == "http" {
					// A Go TLS server answers a plain POST with 400 and
					// closes; the client may see the reset first.
					assert.Contains(t, text, "use https://", "%v", err)
					continue
				}
				assert.Equal(t, tt.wantStep, d.Step, "%s: %v -> %s", name, err, text)
				for _, s := range tt.wantIn {
					assert.Contains(t, text, s, "%s: %v", name, err)
				}
				for _, s := range tt.wantNotIn {
					assert.NotContains(t, text, s, "%s: %v", name, err)
				}
				assert.Equal(t, text, hint(err), "the daemon's hint is the same diagnosis")
			}
		})
	}
}

// mtlsServer returns a server constructor for an mTLS server that trusts
// clientCA, optionally with an extra VerifyConnection and a maximum version.
func mtlsServer(serverCA, clientCA *testCA, ips []net.IP, verify func(tls.ConnectionState) error, maxVersion uint16) func(t *testing.T) *httptest.Server {
	return func(t *testing.T) *httptest.Server {
		srv := httptest.NewUnstartedServer(newFakeServer(t))
		srv.TLS = &tls.Config{
			Certificates:     []tls.Certificate{serverCA.serverCert(t, leafSpec{ips: ips})},
			ClientAuth:       tls.RequireAndVerifyClientCert,
			ClientCAs:        clientCA.pool,
			VerifyConnection: verify,
			MaxVersion:       maxVersion,
		}
		srv.Config.ErrorLog = discardLog()
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
}

// tlsServer returns a server constructor for a TLS server with cert.
func tlsServer(cert tls.Certificate) func(t *testing.T) *httptest.Server {
	return func(t *testing.T) *httptest.Server {
		srv := startTLSServer(t, newFakeServer(t), cert, nil)
		srv.Config.ErrorLog = discardLog()
		return srv
	}
}

// TestDiagnose covers the errors that need no server, and the words the
// daemon's hints have always had.
func TestDiagnose(t *testing.T) {
	remote := func(code uint8) error {
		return fmt.Errorf("auth: Post \"https://mender.local/\": %w", &net.OpError{Op: "remote error", Err: tls.AlertError(code)})
	}
	verify := func(err error) error {
		return fmt.Errorf("auth: Post \"https://mender.local/\": %w", &tls.CertificateVerificationError{Err: err})
	}
	tests := []struct {
		name     string
		err      error
		wantStep Step
		want     []string
	}{
		{"pending", &APIError{Op: OpAuth, StatusCode: 401}, StepRequest, []string{"not accepted", "preauthorize"}},
		{"hostname mismatch wrapped in a verification error", verify(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "mender.local"}),
			StepTLS, []string{"names no host", "subjectAltName=DNS:mender.local"}},
		{"IP without any name", x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.1.2.3"}, StepTLS, []string{"no IP SANs", "subjectAltName=IP:10.1.2.3"}},
		{"IP not among the IP SANs", x509.HostnameError{Certificate: &x509.Certificate{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, Host: "10.1.2.3"},
			StepTLS, []string{"not valid for 10.1.2.3", "ServerURL must use a name in the server certificate: 10.0.0.1"}},
		{"many names are cut", x509.HostnameError{Certificate: &x509.Certificate{DNSNames: strings.Fields("a b c d e f g h i j")}, Host: "z"},
			StepTLS, []string{"a, b, c, d, e, f, g, h, and 2 more"}},
		{"unknown authority", verify(x509.UnknownAuthorityError{}), StepTLS, []string{"not trusted", "set ServerCertificate"}},
		{"expired server certificate", verify(x509.CertificateInvalidError{Reason: x509.Expired}), StepTLS, []string{"device clock"}},
		{"wrong key usage", verify(x509.CertificateInvalidError{Reason: x509.IncompatibleUsage}), StepTLS, []string{"key usage"}},
		{"other verification failure", verify(errors.New("tls: server sent no certificate")), StepTLS, []string{"could not be verified", "ServerCertificate"}},
		{"alert unknown CA", remote(48), StepTLS, []string{"refused this device's certificate", "not signed by a CA"}},
		{"alert revoked", remote(44), StepTLS, []string{"refused this device's certificate", "it is revoked"}},
		{"alert expired", remote(45), StepTLS, []string{"refused this device's certificate", "expired"}},
		{"alert bad certificate", remote(42), StepTLS, []string{"refused this device's certificate", "revoked, or it has expired"}},
		{"alert certificate required", remote(116), StepTLS, []string{"sent none"}},
		{"alert handshake failure", remote(40), StepTLS, []string{"refused the TLS handshake", "TLS 1.2"}},
		{"alert unrecognized name", remote(112), StepTLS, []string{"does not serve the host name"}},
		{"other alert", remote(80), StepTLS, []string{`alert "internal error"`, "server's log"}},
		{"alert from a TLS server to plain HTTP", errors.New(`auth: Post "http://m:443/": net/http: HTTP/1.x transport connection broken: malformed HTTP response "\x15\x03\x01\x00\x02\x02P"`),
			StepTLS, []string{"ServerURL uses http://", "use https://"}},
		{"nginx answer to plain HTTP", &APIError{Op: OpAuth, StatusCode: 400, Message: "400 The plain HTTP request was sent to HTTPS port"},
			StepTLS, []string{"use https://"}},
		{"DNS", fmt.Errorf("auth: %w", &net.DNSError{Name: "mender.nowhere", Err: "no such host", IsNotFound: true}), StepConnect, []string{`"mender.nowhere" does not resolve`}},
		{"connection refused", fmt.Errorf("%w: %w", ErrNoServer, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}),
			StepConnect, []string{"unreachable", "connection refused"}},
		{"proxy refused", &net.OpError{Op: "proxyconnect", Net: "tcp", Err: errors.New("boom")}, StepConnect, []string{"the proxy"}},
		{"timeout", fmt.Errorf("auth: %w", context.DeadlineExceeded), StepConnect, []string{"did not answer in time"}},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, StepConnect, []string{"connection to the server broke"}},
		{"redirect", &APIError{Op: OpNext, StatusCode: 307, Location: "http://m/x"}, StepRequest, []string{"set ServerURL to the https address"}},
		{"not found", &APIError{Op: OpNext, StatusCode: 404}, StepRequest, []string{"check the server URL"}},
		{"conflict", &APIError{Op: OpNext, StatusCode: 409}, StepRequest, []string{"mid-deployment"}},
		{"bad request", &APIError{Op: OpInventory, StatusCode: 400}, StepRequest, []string{"malformed"}},
		{"auth forbidden", &APIError{Op: OpAuth, StatusCode: 403, RequestID: "r1"}, StepRequest, []string{"certificate's key", `request_id "r1"`}},
		{"other status", &APIError{Op: OpInventory, StatusCode: 403, RequestID: "r9"}, StepRequest, []string{`request_id "r9"`}},
		{"unknown", errors.New("other"), StepRequest, []string{"configuration"}},
		{"joined: the recognised one wins", errors.Join(errors.New("other"), remote(48)), StepTLS, []string{"refused this device's certificate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Diagnose(tt.err)
			assert.Equal(t, tt.wantStep, d.Step)
			assert.NotEmpty(t, d.Fix, "there is always a fix")
			for _, s := range tt.want {
				assert.Contains(t, d.String(), s)
			}
			assert.NotContains(t, d.String(), "\n", "one line")
		})
	}
	assert.Equal(t, Diagnosis{}, Diagnose(nil))
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// The daemon's retry line for a refused client certificate carries the
// diagnosis, not only the raw TLS error.
func TestRetryLogCarriesDiagnosis(t *testing.T) {
	serverCA, deviceCA, otherCA := newCA(t, "Server CA"), newCA(t, "Device CA"), newCA(t, "Other CA")
	srv := mtlsServer(serverCA, deviceCA, []net.IP{net.IPv4(127, 0, 0, 1)}, nil, 0)(t)
	key := newTestKey(t)
	opts, lb := baseOptions(key, srv.URL)
	opts.RootCAs = serverCA.pool
	cred := &testCred{Signer: key}
	cred.set(otherCA.issue(t, leafSpec{cn: "device-1", usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, key.Public()))
	opts.TLSCredential = cred
	c, err := New(opts)
	require.NoError(t, err)
	_, err = c.Probe(t.Context(), opts.Servers[0])
	require.Error(t, err)
	attempt := 0
	c.nextWait(schedule{name: "auth", interval: time.Minute}, err, &attempt)
	assert.Contains(t, lb.String(), "request failed, will retry")
	assert.Contains(t, lb.String(), "the server refused this device's certificate", "the retry line says why")
}
