package ambassador

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/memconn"
)

// memLink is the in-process link of a test: the upstream's handler served
// on a memconn listener, and the dials the ambassador made to it.
type memLink struct {
	ln         *memconn.Listener
	dials      atomic.Int32
	noDeadline atomic.Int32 // dials whose context had no deadline
}

func (m *memLink) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	m.dials.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		m.noDeadline.Add(1)
	}
	return m.ln.DialContext(ctx, network, addr)
}

// newMemLinkEnv is newWSEnv with the upstream reached through
// UpstreamDialContext over memconn, at scheme://backend.internal. With
// https the upstream serves a certificate for backend.internal from the
// env's server CA, given as UpstreamCAFile.
func newMemLinkEnv(t *testing.T, scheme string) (*env, *wsUpstream, *memLink) {
	t.Helper()
	ws := &wsUpstream{}
	link := &memLink{ln: memconn.Listen("backend.internal")}
	e := newEnv(t, envConfig{mutate: func(e *env, o *Options) {
		ws.up = e.up
		srv := &http.Server{Handler: ws, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
		var ln net.Listener = link.ln
		if scheme == "https" {
			cert, key := e.serverCA.issue(t, leafOpts{cn: "backend", dns: []string{"backend.internal"},
				eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12,
				Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}})
			o.UpstreamCAFile = writeFile(t, filepath.Join(e.dir, "upstream-ca.pem"), e.serverCA.pem())
		}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		o.Upstream = &url.URL{Scheme: scheme, Host: "backend.internal"}
		o.UpstreamDialContext = link.dial
	}})
	return e, ws, link
}

// Device requests and the management calls reach an upstream served in
// the same process over memconn, with plain HTTP or TLS on the link, and
// the upstream sees the same forwarding headers as over TCP: the device's
// scheme and the ambassador's host, which Mender uses for the links it
// hands out.
func TestInMemoryUpstream(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			e, _, link := newMemLinkEnv(t, scheme)
			d := e.newDevice(leafOpts{cn: "dev"})
			a, err := e.auth(d, testIDData)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, a.status, "auth through the in-memory link; body %s", a.body)
			a, err = e.get(d, nextPath)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, a.status, "poll through the in-memory link; body %s", a.body)
			assert.Equal(t, "ok", string(a.body))

			c := e.up.counts()
			assert.Equal(t, 1, c.logins, "the management login used the link")
			assert.Equal(t, 1, c.preauths, "the preauthorization used the link")
			assert.Equal(t, 2, c.device)
			assert.Positive(t, link.dials.Load(), "the upstream was dialed with UpstreamDialContext")
			assert.Zero(t, link.noDeadline.Load(), "every dial is bounded in time")

			got := e.up.lastDevice()
			assert.Equal(t, "backend.internal", got.Host, "the Host header names the upstream")
			assert.Equal(t, "https", got.Header.Get("X-Forwarded-Proto"), "the device's scheme, whatever the link speaks")
			assert.Equal(t, e.srv.Listener.Addr().String(), got.Header.Get("X-Forwarded-Host"), "the ambassador's host")
			assert.NotEmpty(t, got.Header.Get(headerClientCert))

			code, st := status(t, e.amb)
			assert.Equal(t, http.StatusOK, code, "ready: %+v", st)
		})
	}
}

// The deviceconnect websocket works through the in-memory link, and the
// upstream's end is closed when the device goes away.
func TestWebsocketUpgradeOverInMemoryUpstream(t *testing.T) {
	e, ws, _ := newMemLinkEnv(t, "http")
	checkWebsocketTunnel(t, e, ws)
}

// A link that cannot be dialed is an unavailable upstream: 502 to the
// device and the reason in /status.
func TestInMemoryUpstreamGone(t *testing.T) {
	e, _, link := newMemLinkEnv(t, "http")
	d := e.newDevice(leafOpts{cn: "dev"})
	require.Eventually(t, func() bool { code, _ := status(t, e.amb); return code == http.StatusOK }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, link.ln.Close())
	e.amb.transport.(*upstreamLimiter).next.(*http.Transport).CloseIdleConnections()
	a, err := e.get(d, nextPath)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusBadGateway, "")
	code, st := status(t, e.amb)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, st.Reason, memconn.ErrListenerClosed.Error())
}

func TestUpstreamDialContextOptions(t *testing.T) {
	dial := func(context.Context, string, string) (net.Conn, error) { return nil, net.ErrClosed }
	t.Run("not with Transport", func(t *testing.T) {
		dir := t.TempDir()
		ca := newTestCA(t, "Device CA")
		certFile, keyFile := writeServerCert(t, ca, dir)
		_, err := New(Options{
			Upstream: mustURL(t, "http://backend.internal"), User: testUser, Password: testPassword,
			ServerCertFile: certFile, ServerKeyFile: keyFile,
			ClientCAFiles:       []string{writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem())},
			Transport:           http.DefaultTransport,
			UpstreamDialContext: dial,
		})
		require.ErrorIs(t, err, ErrInvalidOptions)
		assert.ErrorContains(t, err, "UpstreamDialContext and Transport are both set")
	})
	t.Run("the built-in transport dials with it and uses no proxy", func(t *testing.T) {
		tr, err := newUpstreamTransport(Options{UpstreamDialContext: dial, UpstreamMaxConns: 7})
		require.NoError(t, err)
		assert.Nil(t, tr.Proxy, "HTTP_PROXY must not divert the in-process link")
		_, err = tr.DialContext(t.Context(), "tcp", "backend.internal:80")
		assert.ErrorIs(t, err, net.ErrClosed, "the dial is UpstreamDialContext's")
		assert.Equal(t, 7, tr.MaxConnsPerHost, "the pool bound stays")

		tcp, err := newUpstreamTransport(Options{UpstreamMaxConns: 7})
		require.NoError(t, err)
		assert.NotNil(t, tcp.Proxy, "without it the environment's proxy applies as before")
	})
}
