package ambassador

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// fakeMenderEnv is an env whose upstream is the real fake backend
// (internal/fakemender) instead of the recording fakeUpstream, for tests
// that depend on deviceauth's state machine (pending, decommission, force).
type fakeMenderEnv struct {
	*env
	fm    *fakemender.Server
	fmSrv *httptest.Server
}

func newFakeMenderEnv(t *testing.T, mutate func(o *Options)) *fakeMenderEnv {
	t.Helper()
	fm, err := fakemender.New(fakemender.Options{User: testUser, Password: testPassword})
	require.NoError(t, err)
	fmSrv := httptest.NewServer(fm)
	t.Cleanup(fmSrv.Close)
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) {
		o.Upstream = mustURL(t, fmSrv.URL)
		if mutate != nil {
			mutate(o)
		}
	}})
	return &fakeMenderEnv{env: e, fm: fm, fmSrv: fmSrv}
}

// mgmt sends a management request without a body to the fake backend.
func (e *fakeMenderEnv) mgmt(method, path string) int {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.fmSrv.URL+path, nil)
	require.NoError(e.t, err)
	return e.mgmtDo(req)
}

func acceptedDevices(fm *fakemender.Server) []menderapi.Device {
	var out []menderapi.Device
	for _, d := range fm.Devices() {
		if d.Status == menderapi.DevStatusAccepted {
			out = append(out, d)
		}
	}
	return out
}

// Defect 3: with --bind-identity mac=CN one certificate registered 31
// devices by varying an unbound attribute and by sending the bound one as
// an array.
func TestBindingOneCertificateOneDevice(t *testing.T) {
	e := newFakeMenderEnv(t, func(o *Options) {
		o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
	})
	d := e.newDevice(leafOpts{cn: "dev1"})
	a, err := e.auth(d, `{"mac":"dev1"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "the bound identity itself is accepted; body %s", a.body)

	for i := range 30 {
		a, err := e.auth(d, fmt.Sprintf(`{"mac":"dev1","serial_no":"victim-%d"}`, i))
		require.NoError(t, err)
		if i == 0 {
			assertJSONError(t, a, http.StatusForbidden, `"serial_no"`)
		}
	}
	a, err = e.auth(d, `{"mac":["dev1"]}`)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, "single string")

	acc := acceptedDevices(e.fm)
	require.Len(t, acc, 1, "one certificate speaks for exactly one device; backend has %d devices", len(e.fm.Devices()))
	assert.Equal(t, map[string]any{"mac": "dev1"}, acc[0].IdentityData)
	assert.Len(t, e.fm.Devices(), 1, "nothing else was even created upstream")
}

// With --identity-keys an extra attribute is allowed, but the certificate
// still speaks for the first identity it was preauthorized with only.
func TestBindingIdentityKeysAndOneIdentityPerSerial(t *testing.T) {
	e := newFakeMenderEnv(t, func(o *Options) {
		o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
		o.IdentityKeys = []string{"serial_no"}
	})
	d := e.newDevice(leafOpts{cn: "dev1"})
	a, err := e.auth(d, `{"mac":"dev1","serial_no":"A1"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	a, err = e.auth(d, `{"mac":"dev1","serial_no":"A1"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "the same identity again is fine; body %s", a.body)

	a, err = e.auth(d, `{"mac":"dev1","serial_no":"victim"}`)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, "already speaks for another identity")
	a, err = e.auth(d, `{"mac":"dev1","other":"x"}`)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusForbidden, `"other"`)
	assert.Len(t, e.fm.Devices(), 1)

	// Another certificate with the same CN is another serial: it may claim
	// its own identity (the CA issued it), but not the first one's.
	d2 := e.newDevice(leafOpts{cn: "dev1"})
	a, err = e.auth(d2, `{"mac":"dev1","serial_no":"B2"}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "body %s", a.body)
}

// Defect 4: a cached preauthorization must not leave a decommissioned
// device pending forever.
func TestDecommissionedDeviceIsAcceptedAgain(t *testing.T) {
	e := newFakeMenderEnv(t, nil)
	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	devs := e.fm.Devices()
	require.Len(t, devs, 1)
	require.Equal(t, menderapi.DevStatusAccepted, devs[0].Status)

	require.Equal(t, http.StatusNoContent, e.mgmt(http.MethodDelete, "/api/management/v2/devauth/devices/"+devs[0].ID))
	require.Empty(t, e.fm.Devices())

	a, err = e.auth(d, testIDData)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "accepted again with no manual step; body %s", a.body)
	acc := acceptedDevices(e.fm)
	assert.Len(t, acc, 1)
	assert.Equal(t, uint64(1), e.amb.Stats().PreauthCacheHits, "the first re-auth was a cache hit")
}

// A rejected auth set is how an operator blocks a certificate holder: the
// re-preauthorization after a cached 401 must never force it back.
func TestRejectedDeviceStaysRejected(t *testing.T) {
	e := newFakeMenderEnv(t, nil)
	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.auth(d, testIDData)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	dev := e.fm.Devices()[0]
	path := fmt.Sprintf("/api/management/v2/devauth/devices/%s/auth/%s/status", dev.ID, dev.AuthSets[0].ID)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, e.fmSrv.URL+path,
		strings.NewReader(`{"status":"rejected"}`))
	require.NoError(t, err)
	status := e.mgmtDo(req)
	require.Equal(t, http.StatusNoContent, status)

	for range 2 {
		a, err = e.auth(d, testIDData)
		require.NoError(t, err)
		assert.Equal(t, http.StatusUnauthorized, a.status, "a rejected device stays rejected; body %s", a.body)
	}
	assert.Equal(t, menderapi.DevStatusRejected, e.fm.Devices()[0].Status)
}

// mgmtDo sends req to the fake backend with a fresh management token.
func (e *fakeMenderEnv) mgmtDo(req *http.Request) int {
	e.t.Helper()
	login, err := http.NewRequestWithContext(e.t.Context(), http.MethodPost, e.fmSrv.URL+menderapi.PathLogin, nil)
	require.NoError(e.t, err)
	login.SetBasicAuth(testUser, testPassword)
	resp, err := http.DefaultClient.Do(login)
	require.NoError(e.t, err)
	var tok bytes.Buffer
	_, _ = tok.ReadFrom(resp.Body)
	resp.Body.Close()
	require.Equal(e.t, http.StatusOK, resp.StatusCode, "management login")
	req.Header.Set("Authorization", "Bearer "+tok.String())
	req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// Hardening: preauthorization carries the normalised key, and a pubkey
// that is not exactly one PUBLIC KEY PEM block is refused before anything
// goes upstream.
func TestPubKeyNormalisedAndStrict(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	d := e.newDevice(leafOpts{cn: "dev"})
	norm, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
	require.NoError(t, err)

	send := func(pubkey string) answer {
		t.Helper()
		body, err := json.Marshal(menderapi.AuthRequest{IDData: testIDData, PubKey: pubkey})
		require.NoError(t, err)
		sig, err := menderapi.Sign(d.key, body)
		require.NoError(t, err)
		a, err := e.post(d, body, sig)
		require.NoError(t, err)
		return a
	}

	// Same key, re-wrapped with CRLF line ends: valid PEM, not our text.
	crlf := strings.ReplaceAll(norm, "\n", "\r\n")
	a := send(crlf)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	e.up.mu.Lock()
	got := e.up.preauths[len(e.up.preauths)-1].PubKey
	e.up.mu.Unlock()
	assert.Equal(t, norm, got, "preauthorization sends the normalised PEM, not the device's text")

	before := e.up.counts()
	for name, pk := range map[string]string{
		"two blocks":      norm + norm,
		"trailing text":   norm + "garbage\n",
		"leading text":    "hello\n" + norm,
		"RSA PUBLIC KEY":  strings.ReplaceAll(norm, "PUBLIC KEY", "RSA PUBLIC KEY"),
		"private key pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
	} {
		t.Run(name, func(t *testing.T) {
			assertJSONError(t, send(pk), http.StatusBadRequest, "key")
		})
	}
	assert.Equal(t, before, e.up.counts(), "nothing went upstream")
}

// Hardening: spoofable forwarding and client-certificate headers are
// dropped in every spelling before ours are set.
func TestHeaderHygiene(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	d := e.newDevice(leafOpts{cn: "dev"})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+"/api/devices/v1/deployments/device/deployments/next", nil)
	require.NoError(t, err)
	evil := map[string]string{
		"Client-Cert": ":AAAA:", "client_cert": ":AAAA:", "Client-Cert-Chain": ":AAAA:", "CLIENT_CERT_CHAIN": "x",
		"Client-Cert-Whatever": "x", "X-Forwarded-For": "6.6.6.6", "x_forwarded_for": "6.6.6.6",
		"X_Forwarded_Host": "evil", "X-Forwarded-Proto": "http", "Forwarded": "for=6.6.6.6",
		"X-Real-IP": "6.6.6.6", "x_real_ip": "6.6.6.6", "True-Client-IP": "6.6.6.6", "TRUE_CLIENT_IP": "6.6.6.6",
	}
	for k, v := range evil {
		req.Header[k] = []string{v} // exact spelling, not canonicalised
	}
	req.Header.Set("X-Custom", "kept")
	a, err := e.do(d, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	got := e.up.lastDevice().Header
	for k := range got {
		n := strings.ReplaceAll(strings.ToLower(k), "_", "-")
		if strings.HasPrefix(n, "client-cert") || strings.HasPrefix(n, "x-forwarded-") {
			for _, v := range got[k] {
				assert.NotContains(t, []string{":AAAA:", "x", "6.6.6.6", "evil", "http"}, v, "header %s=%s reached upstream", k, v)
			}
			continue
		}
		assert.NotContains(t, []string{"forwarded", "x-real-ip", "true-client-ip"}, n, "header %s reached upstream", k)
	}
	assert.Equal(t, "127.0.0.1", got.Get("X-Forwarded-For"), "ours, from the connection")
	assert.Equal(t, ":"+base64.StdEncoding.EncodeToString(d.cert.Raw)+":", got.Get("Client-Cert"), "ours, the verified leaf")
	assert.Empty(t, got.Values("Client-Cert-Chain"))
	assert.Equal(t, "kept", got.Get("X-Custom"))
}

// Hardening: --allow-separate-auth-key (Mender gateway 2.x behaviour) and
// the strict default's message.
func TestSeparateAuthKey(t *testing.T) {
	other := genKey(t, "p256")
	t.Run("strict default names the fix", func(t *testing.T) {
		e := newEnv(t, envConfig{noRun: true})
		d := e.newDevice(leafOpts{cn: "dev"})
		body, sig := authBody(t, testIDData, other)
		a, err := e.post(d, body, sig)
		require.NoError(t, err)
		assertJSONError(t, a, http.StatusBadRequest, "Security.AuthPrivateKey")
		assert.Zero(t, e.up.counts().device)
	})
	t.Run("allowed when configured", func(t *testing.T) {
		e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) { o.AllowSeparateAuthKey = true }})
		d := e.newDevice(leafOpts{cn: "dev"})
		body, sig := authBody(t, testIDData, other)
		a, err := e.post(d, body, sig)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, a.status, "body %s", a.body)
		e.up.mu.Lock()
		pk := e.up.preauths[len(e.up.preauths)-1].PubKey
		e.up.mu.Unlock()
		want, err := menderapi.MarshalPublicKeyPEM(other.Public())
		require.NoError(t, err)
		assert.Equal(t, want, pk, "the auth key is preauthorized")

		// The signature must still be made by the key in the request.
		body2, _ := authBody(t, testIDData, other)
		_, badSig := authBody(t, testIDData, d.key)
		before := e.up.counts()
		a, err = e.post(d, body2, badSig)
		require.NoError(t, err)
		assertJSONError(t, a, http.StatusUnauthorized, "signature")
		assert.Equal(t, before, e.up.counts())
	})
	t.Run("binding still applies", func(t *testing.T) {
		e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) {
			o.AllowSeparateAuthKey = true
			o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
		}})
		d := e.newDevice(leafOpts{cn: "dev"})
		body, sig := authBody(t, `{"mac":"someone-else"}`, other)
		a, err := e.post(d, body, sig)
		require.NoError(t, err)
		assertJSONError(t, a, http.StatusForbidden, `"mac"`)
	})
}

// Hardening: without binding, one certificate may introduce only a few
// new identities an hour.
func TestNewIdentitiesPerCertificateAreRateLimited(t *testing.T) {
	clock := &testClock{t: time.Now()}
	e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) {
		o.Now = clock.now
		o.NewIdentitiesPerHour = 3
	}})
	e.up.set(func(f *fakeUpstream) { f.tokenTTL = 24 * time.Hour }) // the fake clock moves an hour
	d := e.newDevice(leafOpts{cn: "dev"})
	for i := range 3 {
		a, err := e.auth(d, fmt.Sprintf(`{"mac":"m%d"}`, i))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, "identity %d; body %s", i, a.body)
	}
	a, err := e.auth(d, `{"mac":"m0"}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "a known identity is not new")
	before := e.up.counts()
	a, err = e.auth(d, `{"mac":"m3"}`)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusTooManyRequests, "new identities")
	assert.NotEmpty(t, a.header.Get("Retry-After"))
	assert.Equal(t, before, e.up.counts(), "nothing upstream")

	other := e.newDevice(leafOpts{cn: "other"})
	a, err = e.auth(other, `{"mac":"o1"}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "the limit is per certificate")

	clock.advance(61 * time.Minute)
	a, err = e.auth(d, `{"mac":"m3"}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "a new hour, a new allowance; body %s", a.body)
}
