package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// ---- test PKI -------------------------------------------------------------

// testCA is a throwaway ECDSA P-256 certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func newCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newTestKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leafSpec describes a certificate issued by a testCA.
type leafSpec struct {
	cn        string
	dns       []string
	ips       []net.IP
	serial    int64
	notBefore time.Time
	notAfter  time.Time
	usage     []x509.ExtKeyUsage
	extra     []pkix.Extension // written as-is (x509.Certificate.ExtraExtensions)
}

func (ca *testCA) issue(t testing.TB, s leafSpec, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	if s.serial == 0 {
		s.serial = 2
	}
	if s.notBefore.IsZero() {
		s.notBefore = time.Now().Add(-time.Hour)
	}
	if s.notAfter.IsZero() {
		s.notAfter = time.Now().Add(24 * time.Hour)
	}
	if s.usage == nil {
		s.usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(s.serial),
		Subject:         pkix.Name{CommonName: s.cn, Organization: []string{"Test Devices"}},
		DNSNames:        s.dns,
		IPAddresses:     s.ips,
		NotBefore:       s.notBefore,
		NotAfter:        s.notAfter,
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     s.usage,
		ExtraExtensions: s.extra,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

// serverCert returns a TLS server certificate (SAN or CN-only per spec).
func (ca *testCA) serverCert(t testing.TB, s leafSpec) tls.Certificate {
	t.Helper()
	key := newTestKey(t)
	cert := ca.issue(t, s, &key.PublicKey)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// directoryNameOnlySAN returns a subjectAltName extension (2.5.29.17) whose
// GeneralNames hold only a directoryName ([4] Name) for cn: a certificate
// with it has a SAN, but no DNS name, IP address, URI or email for Go to
// parse, and must never fall back to the legacy Common Name.
func directoryNameOnlySAN(t testing.TB, cn string) pkix.Extension {
	t.Helper()
	name, err := asn1.Marshal(pkix.Name{CommonName: cn}.ToRDNSequence())
	require.NoError(t, err)
	// Name is a CHOICE, so the [4] tag is explicit: it wraps the whole Name.
	dirName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}
	generalNames, err := asn1.Marshal([]asn1.RawValue{dirName})
	require.NoError(t, err)
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: generalNames}
}

// legacyServerCert returns a version-1 certificate with only a Common Name,
// as "openssl x509 -req" without extensions makes it (Mender's mTLS guide).
// x509.CreateCertificate always writes v3, so the TBSCertificate is built
// with encoding/asn1: no version field (v1) and no extensions. A local copy
// of what internal/pki/pkitest will offer as LegacyServerCert.
func (ca *testCA) legacyServerCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key := newTestKey(t)
	type validity struct{ NotBefore, NotAfter time.Time }
	type tbsCertificate struct {
		SerialNumber *big.Int
		Signature    pkix.AlgorithmIdentifier
		Issuer       asn1.RawValue
		Validity     validity
		Subject      asn1.RawValue
		PublicKey    asn1.RawValue
	}
	type certificate struct {
		TBS       asn1.RawValue
		Signature pkix.AlgorithmIdentifier
		Value     asn1.BitString
	}
	ecdsaWithSHA256 := pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}
	subject, err := asn1.Marshal(pkix.Name{CommonName: cn}.ToRDNSequence())
	require.NoError(t, err)
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	tbs, err := asn1.Marshal(tbsCertificate{
		SerialNumber: big.NewInt(0x1e9ac1),
		Signature:    ecdsaWithSHA256,
		Issuer:       asn1.RawValue{FullBytes: ca.cert.RawSubject},
		Validity:     validity{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)},
		Subject:      asn1.RawValue{FullBytes: subject},
		PublicKey:    asn1.RawValue{FullBytes: spki},
	})
	require.NoError(t, err)
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, ca.key, digest[:])
	require.NoError(t, err)
	der, err := asn1.Marshal(certificate{
		TBS:       asn1.RawValue{FullBytes: tbs},
		Signature: ecdsaWithSHA256,
		Value:     asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	require.Equal(t, 1, cert.Version, "the legacy fixture must be a version-1 certificate")
	require.Empty(t, cert.Extensions, "the legacy fixture must have no extensions (so no SAN)")
	require.NoError(t, cert.CheckSignatureFrom(ca.cert))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
}

// writeCAFile writes the CA certificate as PEM and returns the path.
func (ca *testCA) writeCAFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "server-ca.pem")
	require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600))
	return p
}

// testCred is a Credential whose chain can be replaced at run time.
type testCred struct {
	crypto.Signer
	mu    sync.Mutex
	chain []*x509.Certificate
	calls int
}

func (c *testCred) CertificateChain() []*x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	return slices.Clone(c.chain)
}

func (c *testCred) set(chain ...*x509.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chain = chain
}

// ---- logging --------------------------------------------------------------

// logBuf collects text logs at debug level, safe for concurrent use.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuf) count(substr string) int { return strings.Count(l.String(), substr) }

func newLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// ---- a small in-test Mender backend --------------------------------------

// reply is one scripted answer of fakeServer.
type reply struct {
	status     int
	body       string
	header     map[string]string
	retryAfter time.Duration // > 0: Retry-After as an HTTP-date this far from now
	err        error         // memTransport only: fail the round trip with err
}

// seen is one request fakeServer received.
type seen struct {
	at     time.Time
	method string
	path   string
	query  string
	header http.Header
	body   []byte
	peer   *x509.Certificate
	proto  int
}

// fakeServer is a minimal Mender device API: it verifies auth requests with
// menderapi.VerifyAuthRequest, issues tokens "token-N" (plus tokenSuffix),
// requires the current token on device calls, and answers like open-source
// Mender by default (inventory 200, v2 next 404, v1 next 204, status and log
// 204). Scripted replies, keyed by "METHOD path", come after the signature
// and token checks and before the defaults.
type fakeServer struct {
	t           testing.TB
	mu          sync.Mutex
	script      map[string][]reply
	reqs        []seen
	tokens      int
	token       string
	tokenSuffix string
	authErrs    []error
}

// Route keys for scripts.
const (
	routeAuth   = "POST " + menderapi.PathAuthRequests
	routeInvPut = "PUT " + menderapi.PathInventoryAttributes
	routeInvPat = "PATCH " + menderapi.PathInventoryAttributes
	routeNextV2 = "POST " + menderapi.PathNextV2
	routeNextV1 = "GET " + menderapi.PathNextV1
)

func newFakeServer(t testing.TB) *fakeServer {
	return &fakeServer{t: t, script: map[string][]reply{}}
}

func (f *fakeServer) on(route string, rs ...reply) *fakeServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script[route] = append(f.script[route], rs...)
	return f
}

// next pops the scripted reply for route, if any.
func (f *fakeServer) next(route string) (reply, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := f.script[route]
	if len(q) == 0 {
		return reply{}, false
	}
	f.script[route] = q[1:]
	return q[0], true
}

// requests returns the recorded requests whose "METHOD path" is route (all
// when route is "").
func (f *fakeServer) requests(route string) []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seen
	for _, r := range f.reqs {
		if route == "" || r.method+" "+r.path == route {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeServer) currentToken() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := seen{at: time.Now(), method: r.Method, path: r.URL.Path, query: r.URL.RawQuery,
		header: r.Header.Clone(), body: body, proto: r.ProtoMajor}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		rec.peer = r.TLS.PeerCertificates[0]
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, rec)
	f.mu.Unlock()
	route := r.Method + " " + r.URL.Path

	if route == routeAuth {
		// Like deviceauth: the signature must verify over the raw body.
		if _, err := menderapi.VerifyAuthRequest(body, r.Header.Get(menderapi.HeaderSignature)); err != nil {
			f.mu.Lock()
			f.authErrs = append(f.authErrs, err)
			f.mu.Unlock()
			menderapi.WriteError(w, http.StatusUnauthorized, "signature verification failed", "req-sig")
			return
		}
	}
	if route != routeAuth {
		if tok := f.currentToken(); tok == "" || r.Header.Get("Authorization") != "Bearer "+tok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ManagementJWT"`)
			menderapi.WriteError(w, http.StatusUnauthorized, "unauthorized", "req-401")
			return
		}
	}
	if rp, ok := f.next(route); ok {
		f.write(w, rp)
		return
	}
	if route == routeAuth {
		f.mu.Lock()
		f.tokens++
		f.token = fmt.Sprintf("token-%d%s", f.tokens, f.tokenSuffix)
		tok := f.token
		f.mu.Unlock()
		w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJWT)
		_, _ = io.WriteString(w, tok)
		return
	}
	switch {
	case route == routeInvPut || route == routeInvPat:
		w.WriteHeader(http.StatusOK)
	case route == routeNextV2:
		menderapi.WriteError(w, http.StatusNotFound, "not found", "req-404")
	case route == routeNextV1:
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, menderapi.PathDeploymentsPrefix):
		w.WriteHeader(http.StatusNoContent)
	default:
		menderapi.WriteError(w, http.StatusNotFound, "no route", "req-x")
	}
}

func (f *fakeServer) write(w http.ResponseWriter, rp reply) {
	for k, v := range rp.header {
		w.Header().Set(k, v)
	}
	if rp.retryAfter > 0 {
		w.Header().Set(menderapi.HeaderRetryAfter, time.Now().Add(rp.retryAfter).UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(rp.status)
	_, _ = io.WriteString(w, rp.body)
}

// memTransport is an in-memory http.RoundTripper that calls handlers
// directly (by URL host), so synctest's fake clock drives the client. A
// scripted reply with err set fails the round trip; hosts in down fail with
// a connection error.
type memTransport struct {
	mu    sync.Mutex
	hosts map[string]*fakeServer
	down  map[string]bool
}

func newMemTransport(hosts map[string]*fakeServer) *memTransport {
	return &memTransport{hosts: hosts, down: map[string]bool{}}
}

func (m *memTransport) setDown(host string, down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down[host] = down
}

func (m *memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	m.mu.Lock()
	f, down := m.hosts[r.URL.Host], m.down[r.URL.Host]
	m.mu.Unlock()
	if down || f == nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("connect: connection refused")}
	}
	route := r.Method + " " + r.URL.Path
	f.mu.Lock()
	q := f.script[route]
	var failWith error
	if len(q) > 0 && q[0].err != nil {
		failWith = q[0].err
		f.script[route] = q[1:]
		f.reqs = append(f.reqs, seen{at: time.Now(), method: r.Method, path: r.URL.Path})
	}
	f.mu.Unlock()
	if failWith != nil {
		return nil, failWith
	}
	sr := r.Clone(r.Context()) // a RoundTripper must not modify r
	if sr.Body == nil {        // a server request always has a body
		sr.Body = http.NoBody
	}
	rec := httptest.NewRecorder()
	f.ServeHTTP(rec, sr)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// ---- client options -------------------------------------------------------

var testIdentity = menderapi.Attributes{"mac": {"52:54:00:ab:cd:ef"}}

func staticIdentity(a menderapi.Attributes) func(context.Context) (menderapi.Attributes, error) {
	return func(context.Context) (menderapi.Attributes, error) { return a, nil }
}

func constRand(v float64) func() float64 { return func() float64 { return v } }

// baseOptions returns valid options for key and servers with a debug logger.
func baseOptions(key crypto.Signer, servers ...string) (Options, *logBuf) {
	log, lb := newLogger()
	return Options{
		Servers:       servers,
		AuthKey:       key,
		Identity:      staticIdentity(testIdentity),
		DeviceType:    "qemux86-64",
		ArtifactName:  "release-1",
		ClientVersion: "0.1.0",
		Logger:        log,
		Rand:          constRand(0.5),
	}, lb
}

// memClient returns a client talking to f through an in-memory transport
// at https://mender.test.
func memClient(t testing.TB, f *fakeServer, mutate func(*Options)) (*Client, *logBuf) {
	t.Helper()
	opts, lb := baseOptions(newTestKey(t), "https://mender.test")
	opts.HTTPClient = &http.Client{Transport: newMemTransport(map[string]*fakeServer{"mender.test": f})}
	if mutate != nil {
		mutate(&opts)
	}
	c, err := New(opts)
	require.NoError(t, err)
	return c, lb
}

// startTLSServer serves h over TLS on 127.0.0.1 with cert; clientCAs non-nil
// requires and verifies a client certificate.
func startTLSServer(t testing.TB, h http.Handler, cert tls.Certificate, clientCAs *x509.CertPool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		srv.TLS.ClientCAs = clientCAs
	}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// dialTo makes the client's own transport connect every request to addr
// (so a URL can name "mender.local" while the server listens on 127.0.0.1),
// bypassing any proxy from the environment.
func dialTo(t testing.TB, c *Client, addr string) {
	t.Helper()
	tr, ok := c.hc.Transport.(*http.Transport)
	require.True(t, ok, "client must use its own *http.Transport")
	tr.Proxy = nil
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
}

func closeIdle(c *Client) { c.hc.CloseIdleConnections() }
