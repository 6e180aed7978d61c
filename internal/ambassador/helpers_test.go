package ambassador

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

const (
	testUser     = "admin@example.com"
	testPassword = "s3cret-pa55word"
)

// genKey returns a fresh private key of the given kind.
func genKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	require.NoError(t, err)
	return k
}

// nextSerial returns a random positive 64-bit serial.
func nextSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	return n.Add(n, big.NewInt(1))
}

// testCA is a throwaway CA built with crypto/x509.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key := genKey(t, "p256")
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

type leafOpts struct {
	key       crypto.Signer // nil = new P-256
	cn        string
	ou        []string
	dns       []string
	ips       []net.IP
	notBefore time.Time // zero = an hour ago
	notAfter  time.Time // zero = in a day
	eku       []x509.ExtKeyUsage
	noEKU     bool // no EKU extension at all
	serial    *big.Int
}

// issue signs a leaf certificate; the default EKU is client auth.
func (ca *testCA) issue(t testing.TB, o leafOpts) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	if o.key == nil {
		o.key = genKey(t, "p256")
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(24 * time.Hour)
	}
	if o.eku == nil && !o.noEKU {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if o.serial == nil {
		o.serial = nextSerial()
	}
	tmpl := &x509.Certificate{
		SerialNumber: o.serial,
		Subject:      pkix.Name{CommonName: o.cn, OrganizationalUnit: o.ou},
		DNSNames:     o.dns,
		IPAddresses:  o.ips,
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.eku,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, o.key.Public(), ca.key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, o.key
}

// crlDER returns a CRL of ca revoking serials.
func (ca *testCA) crlDER(t testing.TB, serials ...*big.Int) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    nextSerial(),
		ThisUpdate:                time.Now().Add(-time.Minute),
		NextUpdate:                time.Now().Add(time.Hour),
		RevokedCertificateEntries: entries,
	}, ca.cert, ca.key)
	require.NoError(t, err)
	return der
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return path
}

// writeServerCert writes a server certificate for 127.0.0.1 issued by ca.
func writeServerCert(t testing.TB, ca *testCA, dir string) (certFile, keyFile string) {
	t.Helper()
	cert, key := ca.issue(t, leafOpts{cn: "ambassador", dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1)}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certFile = writeFile(t, filepath.Join(dir, "server.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	keyFile = writeFile(t, filepath.Join(dir, "server.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return certFile, keyFile
}

// recorded is one request the fake upstream received.
type recorded struct {
	Method, Path, Host string
	Header             http.Header
	Body               []byte
	ContentLength      int64
}

// fakeUpstream plays the minimal Mender management and device API and
// records everything it receives.
type fakeUpstream struct {
	mu sync.Mutex
	// behaviour
	loginStatus    int           // 0 = 200 with a JWT
	tokenTTL       time.Duration // 0 = 1h
	preauthStatus  int           // 0 = 201 for new devices, 409 for known ones
	authStatusOnce int           // answer the next auth request with this status, then reset
	// state
	tokens        map[string]bool // issued and not revoked
	preauthorized map[string]bool // identity hash + "/" + normalized key
	tokenSeq      int
	// records
	loginTimes  []time.Time
	preauths    []menderapi.PreauthRequest
	preauthAuth []string
	auths       []recorded
	device      []recorded // every /api/devices/* request, auth included
}

func newFakeUpstream() *fakeUpstream {
	return &fakeUpstream{tokens: map[string]bool{}, preauthorized: map[string]bool{}}
}

func (f *fakeUpstream) set(fn func(f *fakeUpstream)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

type upstreamCounts struct{ logins, preauths, auths, device int }

func (f *fakeUpstream) counts() upstreamCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return upstreamCounts{len(f.loginTimes), len(f.preauths), len(f.auths), len(f.device)}
}

func (f *fakeUpstream) lastAuth() recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auths[len(f.auths)-1]
}

func (f *fakeUpstream) lastDevice() recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.device[len(f.device)-1]
}

func (f *fakeUpstream) revokeTokens() {
	f.set(func(f *fakeUpstream) { clear(f.tokens) })
}

func (f *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == menderapi.PathLogin && r.Method == http.MethodPost:
		f.loginTimes = append(f.loginTimes, time.Now())
		user, pass, ok := r.BasicAuth()
		if !ok || user != testUser || pass != testPassword {
			menderapi.WriteError(w, http.StatusUnauthorized, "unauthorized", "")
			return
		}
		if f.loginStatus != 0 {
			menderapi.WriteError(w, f.loginStatus, "login backend broken", "")
			return
		}
		ttl := f.tokenTTL
		if ttl == 0 {
			ttl = time.Hour
		}
		f.tokenSeq++
		tok := fakeJWT(time.Now().Add(ttl), f.tokenSeq)
		f.tokens[tok] = true
		w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJWT)
		_, _ = io.WriteString(w, tok)
	case r.URL.Path == menderapi.PathDevauthDevices && r.Method == http.MethodPost:
		auth := r.Header.Get("Authorization")
		f.preauthAuth = append(f.preauthAuth, auth)
		var req menderapi.PreauthRequest
		_ = json.Unmarshal(body, &req)
		f.preauths = append(f.preauths, req)
		if !f.tokens[strings.TrimPrefix(auth, "Bearer ")] {
			menderapi.WriteError(w, http.StatusUnauthorized, "token expired", "")
			return
		}
		if f.preauthStatus != 0 {
			menderapi.WriteError(w, f.preauthStatus, "preauth broken", "")
			return
		}
		key, err := menderapi.ParsePublicKeyPEM(req.PubKey)
		if err != nil || len(req.IdentityData) == 0 {
			menderapi.WriteError(w, http.StatusBadRequest, "bad preauth", "")
			return
		}
		norm, _ := menderapi.MarshalPublicKeyPEM(key)
		_, hash := menderapi.CanonicalIdentityObject(req.IdentityData)
		if f.preauthorized[hash+"/"+norm] {
			w.WriteHeader(http.StatusConflict)
			return
		}
		f.preauthorized[hash+"/"+norm] = true
		w.WriteHeader(http.StatusCreated)
	case strings.HasPrefix(r.URL.Path, "/api/devices/"):
		rec := recorded{Method: r.Method, Path: r.URL.Path, Host: r.Host, Header: r.Header.Clone(), Body: body,
			ContentLength: r.ContentLength}
		f.device = append(f.device, rec)
		if r.URL.Path != menderapi.PathAuthRequests {
			_, _ = io.WriteString(w, "ok")
			return
		}
		f.auths = append(f.auths, rec)
		if s := f.authStatusOnce; s != 0 {
			f.authStatusOnce = 0
			menderapi.WriteError(w, s, "dev auth: unauthorized", "")
			return
		}
		req, err := menderapi.VerifyAuthRequest(body, r.Header.Get(menderapi.HeaderSignature))
		if err != nil {
			menderapi.WriteError(w, http.StatusUnauthorized, err.Error(), "")
			return
		}
		if !f.preauthorized[req.IdentityHash+"/"+req.NormalizedPubKey] {
			menderapi.WriteError(w, http.StatusUnauthorized, "dev auth: unauthorized", "")
			return
		}
		w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJWT)
		_, _ = io.WriteString(w, "device-token-"+req.IdentityHash[:8])
	default:
		menderapi.WriteError(w, http.StatusNotFound, "not found", "")
	}
}

// fakeJWT is an unsigned-looking JWT carrying exp.
func fakeJWT(exp time.Time, seq int) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p := enc.EncodeToString(fmt.Appendf(nil, `{"iss":"mender.useradm","exp":%d,"jti":"%d"}`, exp.Unix(), seq))
	return h + "." + p + ".c2ln"
}

// handlerTransport serves requests with an in-memory http.Handler.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// env is a running ambassador on real TLS in front of a fake upstream.
type env struct {
	t         *testing.T
	dir       string
	up        *fakeUpstream
	upSrv     *httptest.Server
	deviceCA  *testCA
	serverCA  *testCA
	opts      Options
	amb       *Ambassador
	srv       *httptest.Server
	blacklist string
}

type envConfig struct {
	upstreamTLS bool
	noRun       bool
	mutate      func(e *env, o *Options)
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), up: newFakeUpstream(), deviceCA: newTestCA(t, "Device CA"),
		serverCA: newTestCA(t, "Server CA")}
	e.upSrv = httptest.NewUnstartedServer(e.up)
	e.upSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-upstream test makes it log handshake errors
	if cfg.upstreamTLS {
		e.upSrv.StartTLS()
	} else {
		e.upSrv.Start()
	}
	t.Cleanup(e.upSrv.Close)
	u, err := url.Parse(e.upSrv.URL)
	require.NoError(t, err)
	certFile, keyFile := writeServerCert(t, e.serverCA, e.dir)
	e.blacklist = writeFile(t, filepath.Join(e.dir, "blacklist.txt"), nil)
	e.opts = Options{
		Upstream:       u,
		User:           testUser,
		Password:       testPassword,
		ServerCertFile: certFile,
		ServerKeyFile:  keyFile,
		ClientCAFiles:  []string{writeFile(t, filepath.Join(e.dir, "device-ca.pem"), e.deviceCA.pem())},
		BlacklistFile:  e.blacklist,
		ReloadInterval: time.Hour, // tests call Reload unless they test polling
	}
	if cfg.mutate != nil {
		cfg.mutate(e, &e.opts)
	}
	e.amb, err = New(e.opts)
	require.NoError(t, err)
	e.srv = httptest.NewUnstartedServer(e.amb.Handler())
	e.srv.TLS = e.amb.TLSConfig()
	e.srv.Config.ErrorLog = e.amb.ErrorLog()
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	if !cfg.noRun {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- e.amb.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				assert.NoError(t, err, "Run must return nil on cancellation")
			case <-time.After(10 * time.Second):
				t.Error("Run did not return within 10s of cancellation")
			}
		})
	}
	return e
}

// device is a client holding a certificate, with a dial counter to tell
// kept-alive connections from new ones.
type device struct {
	cert   *x509.Certificate
	key    crypto.Signer
	client *http.Client
	dials  *atomic.Int32
}

// newDevice issues a client cert from the env's device CA with o.
func (e *env) newDevice(o leafOpts) *device {
	e.t.Helper()
	cert, key := e.deviceCA.issue(e.t, o)
	return e.deviceWith(cert, key)
}

// deviceWith makes a client that presents cert (nil = no certificate).
func (e *env) deviceWith(cert *x509.Certificate, key crypto.Signer) *device {
	d := &device{cert: cert, key: key, dials: new(atomic.Int32)}
	tlsCfg := &tls.Config{RootCAs: e.serverCA.pool(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Always present the certificate, even when the server's list of
		// acceptable CAs does not name its issuer, as an attacker would.
		chain := &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return chain, nil }
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: tlsCfg,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d.dials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		},
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	d.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return d
}

const testIDData = `{"mac":"52:54:00:ab:cd:ef"}`

// authBody builds and signs an auth request for d's key.
func authBody(t testing.TB, idData string, key crypto.Signer) ([]byte, string) {
	t.Helper()
	body, err := menderapi.BuildAuthRequest(idData, key.Public(), "")
	require.NoError(t, err)
	sig, err := menderapi.Sign(key, body)
	require.NoError(t, err)
	return body, sig
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// post sends an auth request with the given body and signature.
func (e *env) post(d *device, body []byte, sig string) (answer, error) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), http.MethodPost, e.srv.URL+menderapi.PathAuthRequests, bytes.NewReader(body))
	require.NoError(e.t, err)
	req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	if sig != "" {
		req.Header.Set(menderapi.HeaderSignature, sig)
	}
	return e.do(d, req)
}

func (e *env) get(d *device, path string) (answer, error) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), http.MethodGet, e.srv.URL+path, nil)
	require.NoError(e.t, err)
	return e.do(d, req)
}

func (e *env) do(d *device, req *http.Request) (answer, error) {
	resp, err := d.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// auth signs and sends a valid auth request for d.
func (e *env) auth(d *device, idData string) (answer, error) {
	body, sig := authBody(e.t, idData, d.key)
	return e.post(d, body, sig)
}

// assertJSONError checks a Mender JSON error answer with a request id.
func assertJSONError(t *testing.T, a answer, status int, contains string) {
	t.Helper()
	assert.Equal(t, status, a.status, "status; body %s", a.body)
	assert.Equal(t, menderapi.ContentTypeJSON, a.header.Get(menderapi.HeaderContentType))
	var eb menderapi.ErrorBody
	require.NoError(t, json.Unmarshal(a.body, &eb), "error body must be JSON: %s", a.body)
	assert.Contains(t, eb.Error, contains)
	assert.NotEmpty(t, eb.RequestID)
	assert.Equal(t, eb.RequestID, a.header.Get(menderapi.HeaderRequestID), "request id in body and header")
}

// status fetches GET /status from the StatusHandler.
func status(t *testing.T, a *Ambassador) (int, statusBody) {
	t.Helper()
	rec := httptest.NewRecorder()
	a.StatusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	var b statusBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &b))
	return rec.Code, b
}

func metricsText(t *testing.T, a *Ambassador) string {
	t.Helper()
	rec := httptest.NewRecorder()
	a.StatusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// newOfflineAmbassador builds an Ambassador whose upstream is up, served in
// memory (no network), for handler-level and synctest tests. It does not
// start Run.
func newOfflineAmbassador(t testing.TB, up *fakeUpstream, mutate func(o *Options)) *Ambassador {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, "Device CA")
	certFile, keyFile := writeServerCert(t, ca, dir)
	o := Options{
		Upstream:       mustURL(t, "http://mender.invalid"),
		User:           testUser,
		Password:       testPassword,
		ServerCertFile: certFile,
		ServerKeyFile:  keyFile,
		ClientCAFiles:  []string{writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem())},
		Transport:      handlerTransport{h: up},
		ReloadInterval: time.Hour, // long fake sleeps in synctest would otherwise stat the files a million times
	}
	if mutate != nil {
		mutate(&o)
	}
	a, err := New(o)
	require.NoError(t, err)
	return a
}

// counterValue returns the value of the series of c with the label value v.
func counterValue(c *prometheus.CounterVec, v string) uint64 {
	return uint64(testutil.ToFloat64(c.WithLabelValues(v)))
}
