package ambassador

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

const nextPath = menderapi.PathNextV1 + "?artifact_name=release-1&device_type=qemux86-64"

func idFor(cn string) string { return fmt.Sprintf(`{"mac":%q}`, cn) }

func TestAuthHappyPathPerKeyType(t *testing.T) {
	for _, kind := range []string{"rsa2048", "p256", "p384", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, envConfig{})
			d := e.newDevice(leafOpts{key: genKey(t, kind), cn: "dev-" + kind})
			body, sig := authBody(t, testIDData, d.key)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.srv.URL+menderapi.PathAuthRequests, bytes.NewReader(body))
			require.NoError(t, err)
			req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
			req.Header.Set(menderapi.HeaderSignature, sig)
			req.Header.Set(menderapi.HeaderRequestID, "device-req-1")
			req.Header.Set(headerClientCert, ":Zm9yZ2Vk:") // a device cannot forge this header

			a, err := e.do(d, req)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, a.status, "auth must succeed; body %s", a.body)
			assert.True(t, strings.HasPrefix(string(a.body), "device-token-"), "the upstream token is passed back: %s", a.body)
			assert.Equal(t, []string{"device-req-1"}, a.header.Values(menderapi.HeaderRequestID), "one request id, the device's own")

			got := e.up.lastAuth()
			assert.Equal(t, body, got.Body, "the forwarded bytes are the sent bytes")
			assert.Equal(t, int64(len(body)), got.ContentLength, "same Content-Length")
			assert.Equal(t, sig, got.Header.Get(menderapi.HeaderSignature))
			assert.Equal(t, "device-req-1", got.Header.Get(menderapi.HeaderRequestID))
			assert.Equal(t, e.upSrv.Listener.Addr().String(), got.Host, "Host is rewritten to the upstream")
			assert.Equal(t, "127.0.0.1", got.Header.Get("X-Forwarded-For"))
			assert.Equal(t, ":"+base64.StdEncoding.EncodeToString(d.cert.Raw)+":", got.Header.Get(headerClientCert),
				"Client-Cert carries the verified certificate, not the device's header")

			e.up.mu.Lock()
			require.Len(t, e.up.preauths, 1, "one preauthorization")
			pre, preAuth := e.up.preauths[0], e.up.preauthAuth[0]
			e.up.mu.Unlock()
			assert.Equal(t, map[string]any{"mac": "52:54:00:ab:cd:ef"}, pre.IdentityData, "identity_data is the decoded object")
			wantPEM, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
			require.NoError(t, err)
			assert.Equal(t, wantPEM, pre.PubKey, "pubkey is the request's pubkey")
			assert.True(t, strings.HasPrefix(preAuth, "Bearer ey"), "preauth uses the management JWT")

			a, err = e.get(d, nextPath)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, a.status)
			assert.Equal(t, menderapi.PathNextV1, e.up.lastDevice().Path)
			assert.Equal(t, int32(1), d.dials.Load(), "both requests share one kept-alive connection")
			assert.Equal(t, uint64(1), counterValue(e.amb.metrics.authRequests, outcomeForwarded))
		})
	}
}

// A device certificate without any extended key usage extension is what
// `openssl x509 -req` makes from the commands of Mender's mTLS guide; like
// crypto/x509 and Mender's ambassador, we accept it for client auth.
func TestCertificateWithoutEKUIsAccepted(t *testing.T) {
	e := newEnv(t, envConfig{})
	d := e.newDevice(leafOpts{cn: "openssl-style", noEKU: true})
	require.Empty(t, d.cert.ExtKeyUsage)
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	e.up.mu.Lock()
	defer e.up.mu.Unlock()
	assert.Len(t, e.up.preauths, 1)
}

func TestRequestIDReplacedWhenInsane(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	d := e.newDevice(leafOpts{cn: "dev"})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+nextPath, nil)
	require.NoError(t, err)
	req.Header.Set(menderapi.HeaderRequestID, "evil id\twith spaces and a very long tail ................................................")
	a, err := e.do(d, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	rid := a.header.Get(menderapi.HeaderRequestID)
	assert.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, rid)
	assert.Equal(t, rid, e.up.lastDevice().Header.Get(menderapi.HeaderRequestID), "upstream sees the same id")
}

// TestAttackerGetsNothingUpstream is the negative matrix: every case must
// leave the upstream without any device request or preauthorization.
func TestAttackerGetsNothingUpstream(t *testing.T) {
	crlSerial := nextSerial()
	hour := time.Hour
	tests := []struct {
		name       string
		mutate     func(e *env, o *Options)
		run        func(t *testing.T, e *env) (answer, error)
		wantStatus int    // 0 = the TLS handshake must fail
		wantErr    string // part of the JSON error message
		wantReason string // mtls_handshake_failures_total reason for handshake failures
	}{
		{
			name: "no client certificate",
			run: func(t *testing.T, e *env) (answer, error) {
				return e.auth(e.deviceWith(nil, genKey(t, "p256")), testIDData)
			},
			wantReason: reasonNoCertificate,
		},
		{
			name: "certificate from another CA",
			run: func(t *testing.T, e *env) (answer, error) {
				cert, key := newTestCA(t, "Rogue CA").issue(t, leafOpts{cn: "rogue"})
				return e.auth(e.deviceWith(cert, key), testIDData)
			},
			wantReason: reasonUnknownAuthority,
		},
		{
			name: "expired certificate",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "old", notBefore: time.Now().Add(-48 * hour), notAfter: time.Now().Add(-hour)})
				return e.auth(d, testIDData)
			},
			wantReason: reasonNotValidNow,
		},
		{
			name: "certificate not yet valid",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "future", notBefore: time.Now().Add(hour), notAfter: time.Now().Add(48 * hour)})
				return e.auth(d, testIDData)
			},
			wantReason: reasonNotValidNow,
		},
		{
			name: "serial blacklisted while the ambassador runs",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "stolen"})
				writeFile(t, e.blacklist, []byte(d.cert.SerialNumber.Text(16)+"\n"))
				require.NoError(t, e.amb.Reload())
				return e.auth(d, testIDData)
			},
			wantReason: reasonRevoked,
		},
		{
			name: "revoked by CRL",
			mutate: func(e *env, o *Options) {
				o.CRLFiles = []string{writeFile(e.t, filepath.Join(e.dir, "ca.crl"), e.deviceCA.crlDER(e.t, crlSerial))}
			},
			run: func(t *testing.T, e *env) (answer, error) {
				return e.auth(e.newDevice(leafOpts{cn: "revoked", serial: crlSerial}), testIDData)
			},
			wantReason: reasonRevoked,
		},
		{
			name: "server-auth-only certificate",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "server", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				return e.auth(d, testIDData)
			},
			wantReason: reasonNotClientAuth,
		},
		{
			name: "auth request key differs from the certificate key",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				body, sig := authBody(t, testIDData, genKey(t, "p256")) // self-consistent, but not the cert key
				return e.post(d, body, sig)
			},
			wantStatus: http.StatusBadRequest,
			wantErr:    "public key does not match the client certificate",
		},
		{
			name: "signature by another key",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				body, _ := authBody(t, testIDData, d.key)
				sig, err := menderapi.Sign(genKey(t, "p256"), body)
				require.NoError(t, err)
				return e.post(d, body, sig)
			},
			wantStatus: http.StatusUnauthorized,
			wantErr:    "signature verification failed",
		},
		{
			name: "signature missing",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				body, _ := authBody(t, testIDData, d.key)
				return e.post(d, body, "")
			},
			wantStatus: http.StatusBadRequest,
			wantErr:    "missing request signature header",
		},
		{
			name: "2 MiB body",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				d.client.Transport.(*http.Transport).ExpectContinueTimeout = 5 * time.Second
				body := bytes.Repeat([]byte("a"), 2<<20)
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.srv.URL+menderapi.PathAuthRequests, bytes.NewReader(body))
				require.NoError(t, err)
				req.Header.Set("Expect", "100-continue") // the body is only sent if the ambassador asks for it
				sig, err := menderapi.Sign(d.key, body)
				require.NoError(t, err)
				req.Header.Set(menderapi.HeaderSignature, sig)
				return e.do(d, req)
			},
			wantStatus: http.StatusRequestEntityTooLarge,
			wantErr:    "exceeds 1 MiB",
		},
		{
			name: "malformed JSON",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				body := []byte(`{"id_data": "{\"mac\":\"x\"}", "pubkey": `)
				sig, err := menderapi.Sign(d.key, body)
				require.NoError(t, err)
				return e.post(d, body, sig)
			},
			wantStatus: http.StatusBadRequest,
			wantErr:    "invalid auth request",
		},
		{
			name: "identity does not match the bound certificate field",
			mutate: func(e *env, o *Options) {
				o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
			},
			run: func(t *testing.T, e *env) (answer, error) {
				return e.auth(e.newDevice(leafOpts{cn: "52:54:00:00:00:01"}), idFor("52:54:00:00:00:02"))
			},
			wantStatus: http.StatusForbidden,
			wantErr:    `identity attribute "mac" does not equal the certificate CN`,
		},
		{
			name: "dot segments to reach the management API",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPost,
					e.srv.URL+"/api/devices/../management/v2/devauth/devices", strings.NewReader("{}"))
				require.NoError(t, err)
				return e.do(d, req)
			},
			wantStatus: http.StatusBadRequest,
			wantErr:    "invalid request path",
		},
		{
			name: "auth path with another method",
			run: func(t *testing.T, e *env) (answer, error) {
				d := e.newDevice(leafOpts{cn: "dev"})
				body, sig := authBody(t, testIDData, genKey(t, "p256"))
				req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, e.srv.URL+menderapi.PathAuthRequests, bytes.NewReader(body))
				require.NoError(t, err)
				req.Header.Set(menderapi.HeaderSignature, sig)
				return e.do(d, req)
			},
			wantStatus: http.StatusMethodNotAllowed,
			wantErr:    "method not allowed",
		},
		{
			name: "management API path",
			run: func(t *testing.T, e *env) (answer, error) {
				return e.get(e.newDevice(leafOpts{cn: "dev"}), menderapi.PathDevauthDevices)
			},
			wantStatus: http.StatusNotFound,
			wantErr:    "not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envConfig{mutate: tt.mutate})
			before := e.up.counts()
			a, err := tt.run(t, e)
			after := e.up.counts()
			assert.Equal(t, before.device, after.device, "the upstream must receive no device request")
			assert.Equal(t, before.preauths, after.preauths, "no preauthorization may be made")
			if tt.wantStatus == 0 {
				require.Error(t, err, "the TLS handshake must fail (got status %d)", a.status)
				assert.Eventually(t, func() bool { return counterValue(e.amb.metrics.handshakeFailures, tt.wantReason) == 1 },
					5*time.Second, 5*time.Millisecond, "handshake failure counted with reason %q", tt.wantReason)
				return
			}
			require.NoError(t, err)
			assertJSONError(t, a, tt.wantStatus, tt.wantErr)
		})
	}
}

// TestOversizedChunkedBody sends a 2 MiB body without Content-Length, which
// the ambassador must cut at 1 MiB + 1 byte.
func TestOversizedChunkedBody(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	cert, _ := e.deviceCA.issue(t, leafOpts{cn: "dev"})
	r := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, io.MultiReader(bytes.NewReader(make([]byte, 2<<20))))
	r.ContentLength = -1
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	rec := httptest.NewRecorder()
	e.amb.Handler().ServeHTTP(rec, r)
	assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
	assert.Zero(t, e.up.counts().device, "nothing forwarded")
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.authRequests, outcomeTooLarge))
}

func TestBlacklistedWhileConnected(t *testing.T) {
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) { o.ReloadInterval = 10 * time.Millisecond }})
	victim := e.newDevice(leafOpts{cn: "victim"})
	bystander := e.newDevice(leafOpts{cn: "bystander"})
	for _, d := range []*device{victim, bystander} {
		a, err := e.auth(d, idFor(d.cert.Subject.CommonName))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	}

	reloads := e.amb.Stats().Reloads
	line := "0x00" + strings.ToUpper(victim.cert.SerialNumber.Text(16))
	writeFile(t, e.blacklist, []byte("# stolen devices\n\n"+line+"\n"))
	require.Eventually(t, func() bool { return e.amb.Stats().Reloads > reloads }, 5*time.Second, 5*time.Millisecond,
		"the reload loop notices the changed blacklist")

	before := e.up.counts()
	a, err := e.get(victim, nextPath)
	require.NoError(t, err, "the kept-alive connection stays open")
	assertJSONError(t, a, http.StatusForbidden, "revoked")
	a, err = e.auth(victim, idFor("victim"))
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, "revoked")
	assert.Equal(t, int32(1), victim.dials.Load(), "the rejections were answered on the kept-alive connection")
	assert.Equal(t, before, e.up.counts(), "nothing from the blacklisted device reached the upstream")

	a, err = e.get(bystander, nextPath)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "other devices keep working")
	assert.Equal(t, int32(1), bystander.dials.Load(), "the reload did not drop the bystander's connection")

	_, err = e.get(e.deviceWith(victim.cert, victim.key), nextPath)
	require.Error(t, err, "a new connection with the blacklisted certificate fails the handshake")
	assert.Equal(t, before.device+1, e.up.counts().device, "only the bystander's request was forwarded")
}

func TestReloadAppliesToNewHandshakesAndKeepsStateOnBrokenFiles(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	caFile := e.opts.ClientCAFiles[0]
	oldDev := e.newDevice(leafOpts{cn: "old-ca-device"})
	a, err := e.get(oldDev, nextPath)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)

	newCA := newTestCA(t, "Second device CA")
	cert, key := newCA.issue(t, leafOpts{cn: "new-ca-device"})
	newDev := e.deviceWith(cert, key)
	_, err = e.get(newDev, nextPath)
	require.Error(t, err, "the second CA is not trusted yet")

	writeFile(t, caFile, newCA.pem()) // replaces the old CA
	require.NoError(t, e.amb.Reload())
	newDev = e.deviceWith(cert, key)
	a, err = e.get(newDev, nextPath)
	require.NoError(t, err, "the reloaded bundle applies to the next handshake")
	assert.Equal(t, http.StatusOK, a.status)
	a, err = e.get(oldDev, nextPath)
	require.NoError(t, err, "the old connection is not dropped")
	assertJSONError(t, a, http.StatusForbidden, "not issued by a trusted CA")

	// Broken files keep the previous state and name the file.
	writeFile(t, caFile, []byte("not a certificate"))
	writeFile(t, e.blacklist, []byte(cert.SerialNumber.Text(16)+"\n"))
	err = e.amb.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), caFile)
	_, err = e.get(e.deviceWith(cert, key), nextPath)
	assert.Error(t, err, "the blacklist part of the reload applied although the CA file is broken")

	writeFile(t, e.blacklist, []byte("zz-not-hex\n"))
	err = e.amb.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), e.blacklist)
	assert.Contains(t, err.Error(), "line 1")
	_, err = e.get(e.deviceWith(cert, key), nextPath)
	assert.Error(t, err, "a broken blacklist keeps the previous blacklist")

	writeFile(t, e.blacklist, nil)
	writeFile(t, caFile, newCA.pem())
	require.NoError(t, e.amb.Reload())
	a, err = e.get(e.deviceWith(cert, key), nextPath)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "fixed files apply again")
	assert.Equal(t, uint64(2), e.amb.Stats().ReloadFailures, "two failed reloads counted")
}

func TestCRLReload(t *testing.T) {
	var crlFile string
	e := newEnv(t, envConfig{noRun: true, mutate: func(e *env, o *Options) {
		crlFile = writeFile(e.t, filepath.Join(e.dir, "ca.crl"),
			pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: e.deviceCA.crlDER(e.t)}))
		o.CRLFiles = []string{crlFile}
	}})
	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.get(d, nextPath)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)

	writeFile(t, crlFile, e.deviceCA.crlDER(t, d.cert.SerialNumber)) // DER this time
	require.NoError(t, e.amb.Reload())
	a, err = e.get(d, nextPath)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, "listed in a CRL")

	writeFile(t, crlFile, newTestCA(t, "Other CA").crlDER(t))
	err = e.amb.Reload()
	require.Error(t, err, "a CRL from a CA outside the bundle is refused")
	assert.Contains(t, err.Error(), "not signed by any client CA")
	a, err = e.get(d, nextPath)
	require.NoError(t, err)
	assert.Equal(t, http.StatusForbidden, a.status, "the previous CRL stays in force")
}

func TestPreauthOutcomes(t *testing.T) {
	tests := []struct {
		name          string
		preauthStatus int
		knownDevice   bool
		wantStatus    int
		wantForwarded bool
	}{
		{name: "201 continues", wantStatus: http.StatusOK, wantForwarded: true},
		{name: "409 continues", knownDevice: true, wantStatus: http.StatusOK, wantForwarded: true},
		{name: "500 stops", preauthStatus: http.StatusInternalServerError, wantStatus: http.StatusBadGateway},
		{name: "400 stops", preauthStatus: http.StatusBadRequest, wantStatus: http.StatusBadGateway},
		{name: "403 stops", preauthStatus: http.StatusForbidden, wantStatus: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envConfig{noRun: true})
			d := e.newDevice(leafOpts{cn: "dev"})
			if tt.knownDevice {
				norm, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
				require.NoError(t, err)
				_, _, hash, err := menderapi.CanonicalIdentity(testIDData)
				require.NoError(t, err)
				e.up.set(func(f *fakeUpstream) { f.preauthorized[hash+"/"+norm] = true })
			}
			e.up.set(func(f *fakeUpstream) { f.preauthStatus = tt.preauthStatus })
			a, err := e.auth(d, testIDData)
			require.NoError(t, err)
			assert.Equal(t, 1, e.up.counts().preauths)
			if !tt.wantForwarded {
				assertJSONError(t, a, tt.wantStatus, "preauthorization failed")
				assert.Zero(t, e.up.counts().auths, "nothing forwarded after a failed preauthorization")
				assert.Equal(t, uint64(1), counterValue(e.amb.metrics.authRequests, outcomePreauthFailed))
				return
			}
			assert.Equal(t, tt.wantStatus, a.status, "body %s", a.body)
			assert.Equal(t, 1, e.up.counts().auths)
		})
	}
}

func TestPreauthCache(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) {
		o.Now = clock
		o.PreauthCacheTTL = 10 * time.Minute
	}})
	d := e.newDevice(leafOpts{cn: "dev"})
	auth := func() {
		t.Helper()
		a, err := e.auth(d, testIDData)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	}

	auth()
	auth()
	assert.Equal(t, 1, e.up.counts().preauths, "the second auth of the same device skips preauthorization")
	assert.Equal(t, 2, e.up.counts().auths)
	assert.Equal(t, uint64(1), e.amb.Stats().PreauthCacheHits)

	other := e.newDevice(leafOpts{cn: "other"}) // same identity, other key: a different auth set
	a, err := e.auth(other, testIDData)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status)
	assert.Equal(t, 2, e.up.counts().preauths, "another key is preauthorized separately")

	advance(11 * time.Minute)
	auth()
	assert.Equal(t, 3, e.up.counts().preauths, "after the TTL the device is preauthorized again")

	e.up.set(func(f *fakeUpstream) { f.authStatusOnce = http.StatusUnauthorized })
	a, err = e.auth(d, testIDData)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, a.status, "the upstream's refusal is passed through")
	assert.Equal(t, 4, e.up.counts().preauths, "a refused auth that was a cache hit preauthorizes again at once")
	assert.Zero(t, e.amb.Stats().AuthRetries, "the fake's 409 carries no device, so the 401 is passed on, not retried")
	auth()
	assert.Equal(t, 5, e.up.counts().preauths, "a refused auth forgets the cached preauthorization")
}

func TestUpstreamDown(t *testing.T) {
	e := newEnv(t, envConfig{})
	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	code, _ := status(t, e.amb)
	require.Equal(t, http.StatusOK, code, "ready while the upstream answers")

	e.upSrv.Close()
	a, err = e.get(d, nextPath)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusBadGateway, "upstream unavailable")
	assert.NotContains(t, string(a.body), e.upSrv.Listener.Addr().String(), "no upstream address leaks to devices")

	a, err = e.auth(e.newDevice(leafOpts{cn: "new"}), idFor("new"))
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusBadGateway, "upstream unavailable")
	assert.NotContains(t, string(a.body), e.upSrv.Listener.Addr().String(), "no upstream address leaks to devices")
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.authRequests, outcomePreauthFailed))

	code, body := status(t, e.amb)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "not_ready", body.Status)
	assert.Contains(t, body.Reason, "upstream unavailable")
}

func TestManagementTokenRefusedRelogsOnce(t *testing.T) {
	e := newEnv(t, envConfig{})
	require.Eventually(t, func() bool { c, _ := status(t, e.amb); return c == http.StatusOK }, 5*time.Second, 5*time.Millisecond)
	e.up.revokeTokens() // the management token is now refused with 401

	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "the device request does not fail; body %s", a.body)
	c := e.up.counts()
	assert.Equal(t, 2, c.logins, "one re-login")
	assert.Equal(t, 2, c.preauths, "the preauthorization was retried once")
	e.up.mu.Lock()
	assert.NotEqual(t, e.up.preauthAuth[0], e.up.preauthAuth[1], "the retry used the new token")
	e.up.mu.Unlock()
}

func TestUpstreamTLSWithCAFile(t *testing.T) {
	tests := []struct {
		name       string
		withCA     bool
		wantStatus int
	}{
		{name: "trusted with UpstreamCAFile", withCA: true, wantStatus: http.StatusOK},
		{name: "untrusted without it", wantStatus: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envConfig{upstreamTLS: true, noRun: true, mutate: func(e *env, o *Options) {
				if tt.withCA {
					o.UpstreamCAFile = writeFile(e.t, filepath.Join(e.dir, "upstream-ca.pem"),
						pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.upSrv.Certificate().Raw}))
				}
			}})
			a, err := e.auth(e.newDevice(leafOpts{cn: "dev"}), testIDData)
			require.NoError(t, err)
			assert.Equal(t, tt.wantStatus, a.status, "body %s", a.body)
		})
	}
}

func TestStatusAndMetricsAfterTraffic(t *testing.T) {
	e := newEnv(t, envConfig{})
	require.Eventually(t, func() bool { c, _ := status(t, e.amb); return c == http.StatusOK }, 5*time.Second, 5*time.Millisecond)
	_, body := status(t, e.amb)
	assert.Equal(t, "ready", body.Status)
	assert.Empty(t, body.Reason)

	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	_, err = e.get(e.deviceWith(nil, nil), nextPath)
	require.Error(t, err)
	require.Eventually(t, func() bool { return e.amb.Stats().HandshakeFailures == 1 }, 5*time.Second, 5*time.Millisecond)
	// The request and upstream metrics are updated when the handler
	// returns, which can be after the device has read the whole response.
	var text string
	require.Eventually(t, func() bool {
		text = metricsText(t, e.amb)
		return strings.Contains(text, "mtls_upstream_duration_seconds_count 1") && strings.Contains(text, `mtls_requests_total{code="200"} 1`)
	}, 5*time.Second, 5*time.Millisecond, "the auth request is counted once its handler returns")
	for _, want := range []string{
		"# TYPE mtls_handshake_failures_total counter",
		`mtls_handshake_failures_total{reason="no_certificate"} 1`,
		`mtls_auth_requests_total{outcome="forwarded"} 1`,
		`mtls_auth_requests_total{outcome="bad_signature"} 0`,
		`mtls_requests_total{code="200"} 1`,
		"# TYPE mtls_preauth_duration_seconds histogram",
		`mtls_preauth_duration_seconds_bucket{le="+Inf"} 1`,
		"mtls_preauth_duration_seconds_count 1",
		`mtls_upstream_duration_seconds_bucket{le="+Inf"} 1`,
		"mtls_upstream_duration_seconds_count 1",
	} {
		assert.Contains(t, text, want)
	}
	rec := httptest.NewRecorder()
	e.amb.StatusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/other", nil))
	assert.Equal(t, http.StatusNotFound, rec.Code)
}

func TestNewErrorsNameTheProblem(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "CA")
	certFile, keyFile := writeServerCert(t, ca, dir)
	caFile := writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem())
	garbage := writeFile(t, filepath.Join(dir, "garbage.pem"), []byte("hello"))
	keyAsCA := keyFile
	badList := writeFile(t, filepath.Join(dir, "blacklist"), []byte("01\nnot hex\n"))
	foreignCRL := writeFile(t, filepath.Join(dir, "foreign.crl"), newTestCA(t, "Other").crlDER(t))
	u := mustURL(t, "http://127.0.0.1:1")
	valid := func() Options {
		return Options{Upstream: u, User: testUser, Password: testPassword, ServerCertFile: certFile,
			ServerKeyFile: keyFile, ClientCAFiles: []string{caFile}}
	}
	tests := []struct {
		name    string
		mutate  func(o *Options)
		want    []string
		options bool // errors.Is ErrInvalidOptions
	}{
		{name: "no upstream", mutate: func(o *Options) { o.Upstream = nil }, want: []string{"Upstream is required"}, options: true},
		{name: "ftp upstream", mutate: func(o *Options) { o.Upstream = mustURL(t, "ftp://x") }, want: []string{"scheme"}, options: true},
		{name: "no password", mutate: func(o *Options) { o.Password = "" }, want: []string{"Password"}, options: true},
		{name: "no CA", mutate: func(o *Options) { o.ClientCAFiles = nil }, want: []string{"ClientCAFiles"}, options: true},
		{name: "TLS 1.1", mutate: func(o *Options) { o.MinTLSVersion = 0x0302 }, want: []string{"MinTLSVersion"}, options: true},
		{name: "bad binding", mutate: func(o *Options) { o.BindIdentity = []Binding{{Attr: "mac", Field: "email"}} }, want: []string{"BindIdentity[0]"}, options: true},
		{name: "missing CA file", mutate: func(o *Options) { o.ClientCAFiles = []string{filepath.Join(dir, "nope.pem")} }, want: []string{"nope.pem"}},
		{name: "garbage CA file", mutate: func(o *Options) { o.ClientCAFiles = []string{garbage} }, want: []string{garbage, "no certificate"}},
		{name: "key in CA file", mutate: func(o *Options) { o.ClientCAFiles = []string{keyAsCA} }, want: []string{keyAsCA, "PRIVATE KEY"}},
		{name: "bad blacklist", mutate: func(o *Options) { o.BlacklistFile = badList }, want: []string{badList, "line 2"}},
		{name: "foreign CRL", mutate: func(o *Options) { o.CRLFiles = []string{foreignCRL} }, want: []string{foreignCRL, "not signed by any client CA"}},
		{name: "missing server key", mutate: func(o *Options) { o.ServerKeyFile = filepath.Join(dir, "none.key") }, want: []string{"none.key"}},
		{name: "missing upstream CA", mutate: func(o *Options) { o.UpstreamCAFile = filepath.Join(dir, "up.pem") }, want: []string{"up.pem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.mutate(&o)
			a, err := New(o)
			require.Error(t, err)
			assert.Nil(t, a)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Equal(t, tt.options, errors.Is(err, ErrInvalidOptions))
		})
	}
	a, err := New(valid())
	require.NoError(t, err, "the valid options are accepted")
	assert.NotNil(t, a)
}

func TestRunTwiceConcurrently(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.Eventually(t, func() bool { return e.amb.running.Load() }, 5*time.Second, 5*time.Millisecond)
	assert.ErrorIs(t, e.amb.Run(ctx), ErrAlreadyRunning)
}

func TestSerialBindings(t *testing.T) {
	serial := big.NewInt(0xABCDEF)
	e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) {
		o.BindIdentity = []Binding{{Attr: "serial_no", Field: "serial"}, {Attr: "host", Field: "san-dns"}}
	}})
	d := e.newDevice(leafOpts{cn: "dev", serial: serial, dns: []string{"dev-1.example.com"}})
	a, err := e.auth(d, `{"serial_no":"00:AB:CD:EF","host":"DEV-1.example.com"}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	a, err = e.auth(d, `{"serial_no":"abcdef","host":"dev-2.example.com"}`)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, `identity attribute "host"`)
}
