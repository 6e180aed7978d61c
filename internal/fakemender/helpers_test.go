package fakemender_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// fakeClock is an injectable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newServer(t *testing.T, opts fakemender.Options) *fakemender.Server {
	t.Helper()
	s, err := fakemender.New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// req is one request to a handler.
type req struct {
	method, path string
	body         []byte
	hdr          map[string]string
}

// do runs r through h with a recorder. A body gets Content-Type
// application/json unless hdr sets one ("" removes it).
func do(t *testing.T, h http.Handler, r req) *httptest.ResponseRecorder {
	t.Helper()
	hr := httptest.NewRequestWithContext(t.Context(), r.method, r.path, bytes.NewReader(r.body))
	if len(r.body) > 0 {
		hr.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.hdr {
		if v == "" {
			hr.Header.Del(k)
		} else {
			hr.Header.Set(k, v)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, hr)
	return rec
}

func bearerHdr(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// errorMsg decodes a Mender error body.
func errorMsg(t *testing.T, rec *httptest.ResponseRecorder) menderapi.ErrorBody {
	t.Helper()
	var e menderapi.ErrorBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), "error body must be Mender JSON: %q", rec.Body.String())
	return e
}

// testDevice is a device with a key and an identity.
type testDevice struct {
	key   crypto.Signer
	ident string // id_data
}

func newKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	switch kind {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		return k
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		return k
	}
	t.Fatalf("unknown key kind %q", kind)
	return nil
}

func newDevice(t testing.TB, mac string) *testDevice {
	return &testDevice{key: newKey(t, "ed25519"), ident: `{"mac":"` + mac + `"}`}
}

// authReq builds a signed auth request exactly like a Mender 3.x client.
func (d *testDevice) authReq(t testing.TB) req {
	t.Helper()
	body, err := menderapi.BuildAuthRequest(d.ident, d.key.Public(), "")
	require.NoError(t, err)
	sig, err := menderapi.Sign(d.key, body)
	require.NoError(t, err)
	return req{method: "POST", path: menderapi.PathAuthRequests, body: body, hdr: map[string]string{menderapi.HeaderSignature: sig}}
}

func (d *testDevice) auth(t *testing.T, h http.Handler) *httptest.ResponseRecorder {
	t.Helper()
	return do(t, h, d.authReq(t))
}

// deviceByMAC finds the device with the given "mac" identity.
func deviceByMAC(t *testing.T, s *fakemender.Server, mac string) menderapi.Device {
	t.Helper()
	for _, d := range s.Devices() {
		if d.IdentityData["mac"] == mac {
			return d
		}
	}
	t.Fatalf("no device with mac %s", mac)
	return menderapi.Device{}
}

// acceptedDevice authenticates a new device, accepts it and returns it with
// its device id and token.
func acceptedDevice(t *testing.T, s *fakemender.Server, mac string) (*testDevice, string, string) {
	t.Helper()
	d := newDevice(t, mac)
	require.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "a new device is pending")
	id := deviceByMAC(t, s, mac).ID
	require.NoError(t, s.Accept(id))
	rec := d.auth(t, s)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	return d, id, rec.Body.String()
}

// login returns a management token for the default credentials.
func login(t *testing.T, h http.Handler) string {
	t.Helper()
	hr := httptest.NewRequestWithContext(t.Context(), "POST", menderapi.PathLogin, nil)
	hr.SetBasicAuth(fakemender.DefaultUser, fakemender.DefaultPassword)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, hr)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	return rec.Body.String()
}

// decodeJWT returns the decoded header and claims of a JWT as raw JSON.
func decodeJWT(t *testing.T, tok string) (hdr, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	for i, dst := range []*map[string]any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		require.NoError(t, err)
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		require.NoError(t, dec.Decode(dst))
	}
	return hdr, claims
}

// httpServer is a handler behind a real loopback listener.
type httpServer struct {
	*httptest.Server
	client *http.Client
}

func newHTTPServer(t *testing.T, h http.Handler) *httpServer {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c := srv.Client()
	c.Timeout = 30 * time.Second
	return &httpServer{Server: srv, client: c}
}

// send performs r and returns the status and body; it is safe to call from
// goroutines (it reports failures with assert, and -1 as the status).
func (s *httpServer) send(t *testing.T, r req) (int, string) {
	hr, err := http.NewRequestWithContext(t.Context(), r.method, s.URL+r.path, bytes.NewReader(r.body))
	if !assert.NoError(t, err) {
		return -1, ""
	}
	if len(r.body) > 0 {
		hr.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.hdr {
		hr.Header.Set(k, v)
	}
	resp, err := s.client.Do(hr)
	if !assert.NoError(t, err) {
		return -1, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	assert.NoError(t, err)
	return resp.StatusCode, string(b)
}
