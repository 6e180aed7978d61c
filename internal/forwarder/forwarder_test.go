package forwarder_test

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/forwarder"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// cred is a client certificate as client.Credential.
type cred struct {
	crypto.Signer
	chain []*x509.Certificate
}

func (c *cred) CertificateChain() []*x509.Certificate { return c.chain }

// upstream is an mTLS server (it requires a client certificate from ca)
// and a device client whose transport presents one.
type upstream struct {
	srv    *httptest.Server
	client *client.Client
	mu     sync.Mutex
	peers  []string // client certificate CNs seen, one per request
}

func newUpstream(t *testing.T, h http.Handler) *upstream {
	t.Helper()
	ca := pkitest.NewCA(t)
	u := &upstream{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.peers = append(u.peers, r.TLS.PeerCertificates[0].Subject.CommonName)
		u.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv.TLS = ca.MTLSServerConfig(t)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u.srv = srv
	leaf := ca.Client(t, "device-1", pki.ECDSAP256)
	c, err := client.New(client.Options{
		Servers:       []string{srv.URL},
		AuthKey:       leaf.Key,
		TLSCredential: &cred{Signer: leaf.Key, chain: []*x509.Certificate{leaf.Cert}},
		RootCAs:       ca.Pool(),
		Identity: func(context.Context) (menderapi.Attributes, error) {
			return menderapi.Attributes{"mac": {"00:11:22:33:44:55"}}, nil
		},
		DeviceType: "test",
	})
	require.NoError(t, err)
	u.client = c
	return u
}

func (u *upstream) seenPeers() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.peers...)
}

// start runs a forwarder to u's server with opts (Target filled in) for
// the test's lifetime.
func start(t *testing.T, u *upstream, opts forwarder.Options) *forwarder.Forwarder {
	t.Helper()
	if opts.Target == nil {
		opts.Target = func() forwarder.Target {
			return forwarder.Target{Servers: u.client.Servers(), Transport: u.client.Transport()}
		}
	}
	f, err := forwarder.Listen(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Error("forwarder did not stop within 5s")
		}
	})
	return f
}

func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

// Every path goes to the server with method, query, body and end-to-end
// headers (Authorization included) unchanged, over TLS with the device's
// client certificate; the answer comes back whole.
func TestForwardsOverMTLS(t *testing.T) {
	u := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s?%s auth=%q custom=%q host=%s body=%s",
			r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get("X-Custom"), r.Host, body))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "answer")
	}))
	f := start(t, u, forwarder.Options{})
	assert.True(t, strings.HasPrefix(f.URL(), "http://127.0.0.1:"), "URL %s must be on 127.0.0.1", f.URL())

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, f.URL()+"/api/devices/v1/inventory/device/attributes?a=1", strings.NewReader(`[{"name":"x"}]`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer tok-123")
	req.Header.Set("X-Custom", "kept")
	resp, body := do(t, req)
	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.Equal(t, "answer", body)
	host := strings.TrimPrefix(u.srv.URL, "https://")
	assert.Equal(t, `PUT /api/devices/v1/inventory/device/attributes?a=1 auth="Bearer tok-123" custom="kept" host=`+host+` body=[{"name":"x"}]`, resp.Header.Get("X-Seen"))
	assert.Equal(t, []string{"device-1"}, u.seenPeers(), "the server saw the device's client certificate")
}

// Target.Current picks the server of the session (failover).
func TestForwardsToCurrentServer(t *testing.T) {
	first := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "first") }))
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "second") }))
	t.Cleanup(second.Close)
	var mu sync.Mutex
	current := ""
	f := start(t, first, forwarder.Options{Target: func() forwarder.Target {
		mu.Lock()
		defer mu.Unlock()
		return forwarder.Target{Servers: []string{first.srv.URL, second.URL}, Current: current, Transport: first.client.Transport()}
	}})
	get := func() string {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+"/x", nil)
		_, body := do(t, req)
		return body
	}
	assert.Equal(t, "first", get(), "without a session: the first server")
	mu.Lock()
	current = second.URL
	mu.Unlock()
	assert.Equal(t, "second", get(), "the server that issued the token")
}

// deployments/next answers (v1 GET, v2 POST) get their source.uri on the
// server's host rewritten into a forwarder link that streams the artifact
// over mTLS, Range included; links to other hosts stay.
func TestRewritesArtifactLinks(t *testing.T) {
	artifact := strings.Repeat("0123456789", 1000)
	var nextURI string
	u := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case menderapi.PathNextV1, menderapi.PathNextV2:
			// Compressed when asked: the rewrite must still see the JSON.
			var out io.Writer = w
			if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				w.Header().Set("Content-Encoding", "gzip")
				gz := gzip.NewWriter(w)
				defer gz.Close()
				out = gz
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(out, `{"id":"dep-1","artifact":{"artifact_name":"release-2","device_types_compatible":["test"],"source":{"uri":%q,"expire":"2030-01-01T00:00:00Z"}},"extra":{"kept":true}}`, nextURI)
		case "/artifacts/a.mender":
			assert.Equal(t, "sig=abc&x=1", r.URL.RawQuery, "the presigned query goes along")
			http.ServeContent(w, r, "a.mender", time.Time{}, strings.NewReader(artifact))
		default:
			http.NotFound(w, r)
		}
	}))
	f := start(t, u, forwarder.Options{})

	next := func(method, path string) (*http.Response, menderapi.DeploymentInstructions, map[string]any) {
		req, err := http.NewRequestWithContext(t.Context(), method, f.URL()+path, strings.NewReader(`{}`))
		require.NoError(t, err)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, body := do(t, req)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Equal(t, fmt.Sprint(len(body)), resp.Header.Get("Content-Length"), "Content-Length fits the rewritten body")
		var d menderapi.DeploymentInstructions
		require.NoError(t, json.Unmarshal([]byte(body), &d))
		var raw map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &raw))
		return resp, d, raw
	}

	nextURI = u.srv.URL + "/artifacts/a.mender?sig=abc&x=1"
	for _, p := range []struct{ method, path string }{
		{http.MethodGet, menderapi.PathNextV1},
		{http.MethodPost, menderapi.PathNextV2},
	} {
		_, d, raw := next(p.method, p.path)
		assert.True(t, strings.HasPrefix(d.Artifact.Source.URI, f.URL()+"/download/"), "%s %s: link %s must go through the forwarder", p.method, p.path, d.Artifact.Source.URI)
		assert.Equal(t, "release-2", d.Artifact.ArtifactName)
		assert.NotNil(t, d.Artifact.Source.Expire, "other members of source stay")
		assert.Equal(t, map[string]any{"kept": true}, raw["extra"], "unknown members stay")

		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, d.Artifact.Source.URI, nil)
		resp, body := do(t, req)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, artifact, body)

		req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, d.Artifact.Source.URI, nil)
		req.Header.Set("Range", "bytes=9990-")
		resp, body = do(t, req)
		assert.Equal(t, http.StatusPartialContent, resp.StatusCode, "a resumed download")
		assert.Equal(t, "0123456789", body)
		assert.Equal(t, "bytes 9990-9999/10000", resp.Header.Get("Content-Range"))
	}

	nextURI = "https://s3.example.com/bucket/a.mender?X-Amz-Signature=abc"
	_, d, _ := next(http.MethodGet, menderapi.PathNextV1)
	assert.Equal(t, nextURI, d.Artifact.Source.URI, "a link to object storage stays as it is")
	for _, cn := range u.seenPeers() {
		assert.Equal(t, "device-1", cn)
	}
}

// A websocket upgrade (deviceconnect) is spliced through the forwarder and
// the device's TLS transport, both ways.
func TestWebsocketUpgrade(t *testing.T) {
	u := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	f := start(t, u, forwarder.Options{IdleTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.URL(), "http")+"/api/devices/v1/deviceconnect/connect",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer tok"}}})
	require.NoError(t, err)
	defer c.CloseNow()
	assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	for i := range 3 {
		msg := fmt.Sprintf("ping-%d", i)
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte(msg)))
		_, got, err := c.Read(ctx)
		require.NoError(t, err)
		assert.Equal(t, "echo:"+msg, string(got))
		if i == 1 {
			time.Sleep(400 * time.Millisecond) // idle longer than IdleTimeout: an upgraded connection stays
		}
	}
	assert.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	assert.Equal(t, []string{"device-1"}, u.seenPeers())
}

// The forwarder is no general proxy: absolute-form requests for other hosts,
// foreign Host names and download links to other hosts are refused with 403
// and never reach anyone.
func TestRefusesOtherHosts(t *testing.T) {
	u := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "reached") }))
	f := start(t, u, forwarder.Options{})
	addr := strings.TrimPrefix(f.URL(), "http://")

	raw := func(request string) (int, string) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(5*time.Second)))
		_, err = io.WriteString(conn, request)
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	status, body := raw("GET http://example.com/secret HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
	assert.Equal(t, http.StatusForbidden, status, "absolute-form request for another host")
	assert.Contains(t, body, "not a general proxy")
	status, _ = raw("GET /x HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
	assert.Equal(t, http.StatusForbidden, status, "a foreign Host (DNS rebinding)")
	status, body = raw("GET http://" + addr + "/x HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n\r\n")
	assert.Equal(t, http.StatusOK, status, "absolute-form naming the forwarder itself is fine")
	assert.Equal(t, "reached", body)

	for _, link := range []string{
		"/download/" + b64("https://s3.example.com/a.mender"),
		"/download/" + b64("http://"+strings.TrimPrefix(u.srv.URL, "https://")+"/a.mender"), // same host, other scheme
		"/download/!!!notbase64",
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+link, nil)
		resp, body := do(t, req)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s: %s", link, body)
	}
	assert.Equal(t, []string{"device-1"}, u.seenPeers(), "only the allowed request reached the server")

	_, err := forwarder.Listen(forwarder.Options{Addr: "0.0.0.0:0", Target: func() forwarder.Target { return forwarder.Target{} }})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a loopback address")
	_, err = forwarder.Listen(forwarder.Options{})
	assert.ErrorContains(t, err, "Target is nil")
}

// Time is bounded: no answer within HeaderTimeout gives 504, a transfer
// that stalls is cut after IdleTimeout, and a slow transfer that keeps
// moving runs to its end however long it takes.
func TestBoundsTime(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	u := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/silent":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/stall":
			w.Header().Set("Content-Length", "1000000")
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/slow":
			for range 20 {
				w.Write([]byte("chunk"))
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		}
	}))
	// Generous limits: a loaded machine (the race detector, two cores) must
	// not fail the steady transfer.
	f := start(t, u, forwarder.Options{HeaderTimeout: time.Second, IdleTimeout: 600 * time.Millisecond})

	begin := time.Now()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+"/silent", nil)
	resp, body := do(t, req)
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	assert.Contains(t, body, "no answer within 1s")
	assert.Less(t, time.Since(begin), 3*time.Second)

	begin = time.Now()
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+"/stall", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assert.Error(t, err, "a stalled transfer ends with an error, not a short success")
	assert.Equal(t, int64(1000), n)
	assert.Less(t, time.Since(begin), 3*time.Second)

	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+"/slow", nil)
	resp, body = do(t, req)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, strings.Repeat("chunk", 20), body, "2s of steady progress outlives the 600ms idle limit")
}

// An unreachable server gives 502 with the reason.
func TestUpstreamDown(t *testing.T) {
	u := newUpstream(t, http.NotFoundHandler())
	down := "https://127.0.0.1:1"
	f := start(t, u, forwarder.Options{Target: func() forwarder.Target {
		return forwarder.Target{Servers: []string{down}, Transport: u.client.Transport()}
	}})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.URL()+"/x", nil)
	resp, body := do(t, req)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	assert.Contains(t, body, "upstream request failed")
}

// b64 encodes a download link as the forwarder does.
func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
