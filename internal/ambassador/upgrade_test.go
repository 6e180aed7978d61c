package ambassador

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// deviceConnectPath is Mender's deviceconnect websocket endpoint for devices.
const deviceConnectPath = "/api/devices/v1/deviceconnect/connect"

// wsUpstream is the fake Mender upstream of an env with a websocket
// endpoint: a GET of deviceConnectPath with Upgrade: websocket is answered
// with 101 and every byte is echoed on the hijacked connection; anything
// else goes to the fakeUpstream. It counts the requests that reach it with
// an Upgrade header.
type wsUpstream struct {
	up       *fakeUpstream
	upgrades atomic.Int32
	// hold, when set, is received from before the 101 is sent.
	hold chan struct{}
	// unasked answers 101 on the deviceconnect path even to a request
	// that asked for no upgrade.
	unasked atomic.Bool
}

func (u *wsUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "" {
		u.upgrades.Add(1)
	}
	asked := strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
	if r.Method != http.MethodGet || r.URL.Path != deviceConnectPath || !(asked || u.unasked.Load()) {
		u.up.ServeHTTP(w, r)
		return
	}
	if u.hold != nil {
		<-u.hold
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	if asked {
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	} else { // a 101 naming no protocol, which ReverseProxy matches with a request naming none
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
	}
	if brw.Flush() != nil {
		return
	}
	_, _ = io.Copy(conn, brw.Reader) // echo until the ambassador closes its side
}

// newWSEnv is newEnv with a wsUpstream in front of the fakeUpstream.
func newWSEnv(t *testing.T, cfg envConfig) (*env, *wsUpstream) {
	t.Helper()
	ws := &wsUpstream{}
	mutate := cfg.mutate
	cfg.mutate = func(e *env, o *Options) {
		ws.up = e.up
		srv := httptest.NewServer(ws)
		t.Cleanup(srv.Close)
		u, err := url.Parse(srv.URL)
		require.NoError(t, err)
		o.Upstream = u
		if mutate != nil {
			mutate(e, o)
		}
	}
	return newEnv(t, cfg), ws
}

// rawConn is a device's HTTP/1.1 connection to the ambassador, spoken by
// hand so that the test keeps the connection after a 101.
type rawConn struct {
	t    *testing.T
	conn *tls.Conn
	br   *bufio.Reader
}

// dialRaw opens a TLS connection to the ambassador with d's certificate.
func (e *env) dialRaw(d *device) *rawConn {
	e.t.Helper()
	return e.dialRawTo(e.srv, d)
}

// dialRawTo is dialRaw to another server of the env's ambassador.
func (e *env) dialRawTo(srv *httptest.Server, d *device) *rawConn {
	e.t.Helper()
	cfg := d.client.Transport.(*http.Transport).TLSClientConfig.Clone()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", srv.Listener.Addr().String(), cfg)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = conn.Close() })
	return &rawConn{t: e.t, conn: conn, br: bufio.NewReader(conn)}
}

// do sends one request with the given header lines and reads the answer;
// the body of anything but a 101 is read into the answer.
func (c *rawConn) do(method, path string, header ...string) answer {
	c.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: ambassador.test\r\n", method, path)
	for _, h := range header {
		b.WriteString(h + "\r\n")
	}
	if method == http.MethodPost {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	require.NoError(c.t, c.conn.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := io.WriteString(c.conn, b.String())
	require.NoError(c.t, err)
	resp, err := http.ReadResponse(c.br, nil)
	require.NoError(c.t, err, "the ambassador answers %s %s", method, path)
	a := answer{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		a.body, err = io.ReadAll(resp.Body)
		require.NoError(c.t, err)
	}
	require.NoError(c.t, c.conn.SetDeadline(time.Time{}))
	return a
}

// upgrade asks for a websocket on the deviceconnect path and requires 101.
func (c *rawConn) upgrade() {
	c.t.Helper()
	a := c.do(http.MethodGet, deviceConnectPath, "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
	require.Equal(c.t, http.StatusSwitchingProtocols, a.status, "websocket upgrade on %s; body %s", deviceConnectPath, a.body)
}

// echo sends msg through the tunnel and returns what comes back, or the
// read error.
func (c *rawConn) echo(msg string) (string, error) {
	c.t.Helper()
	require.NoError(c.t, c.conn.SetDeadline(time.Now().Add(2*time.Second)))
	defer func() { _ = c.conn.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c.conn, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c.br, buf)
	return string(buf), err
}

// requireClosed requires the ambassador to close the tunnel within d: a
// read returns EOF or a connection error, not a timeout.
func (c *rawConn) requireClosed(d time.Duration, why string) {
	c.t.Helper()
	require.NoError(c.t, c.conn.SetReadDeadline(time.Now().Add(d)))
	_, err := c.br.ReadByte()
	require.Error(c.t, err, "%s: the tunnel must be closed, yet it carried data", why)
	var ne net.Error
	require.False(c.t, errors.As(err, &ne) && ne.Timeout(), "%s: the tunnel must be closed within %s, yet it is still open", why, d)
}

func TestWebsocketUpgradeIsProxied(t *testing.T) {
	e, ws := newWSEnv(t, envConfig{})
	checkWebsocketTunnel(t, e, ws)
}

// checkWebsocketTunnel upgrades a device connection through e to ws, checks
// that the tunnel carries frames both ways beside plain requests, and that
// the device's close ends it.
func checkWebsocketTunnel(t *testing.T, e *env, ws *wsUpstream) {
	t.Helper()
	d := e.newDevice(leafOpts{cn: "dev"})
	c := e.dialRaw(d)
	c.upgrade()
	for _, msg := range []string{"hello", "deviceconnect frame 2"} {
		got, err := c.echo(msg)
		require.NoError(t, err)
		assert.Equal(t, msg, got, "the tunnel is byte-transparent")
	}
	assert.Equal(t, int32(1), ws.upgrades.Load(), "the upgrade reached the upstream")
	assert.Equal(t, uint64(1), e.amb.Stats().Upgrades)

	a, err := e.get(d, nextPath)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "plain requests still work beside the tunnel; body %s", a.body)

	require.NoError(t, c.conn.Close())
	require.Eventually(t, func() bool { return counterValue(e.amb.metrics.requests, "101") == 1 }, 5*time.Second, 5*time.Millisecond,
		"the upgrade is counted as 101 once the device closes the tunnel")
	assert.Zero(t, e.amb.Stats().UpgradesClosed, "a tunnel the device closed is not counted as closed by the ambassador")
}

// TestUpgradedConnectionOutlivesServerTimeouts: the deadlines that
// http.Server's ReadTimeout and WriteTimeout put on the connection for the
// upgrade request do not cut the websocket.
func TestUpgradedConnectionOutlivesServerTimeouts(t *testing.T) {
	e, _ := newWSEnv(t, envConfig{noRun: true})
	const timeout = 300 * time.Millisecond
	srv := httptest.NewUnstartedServer(e.amb.Handler())
	srv.TLS = e.amb.TLSConfig()
	srv.Config.ErrorLog = e.amb.ErrorLog()
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = timeout, timeout
	srv.StartTLS()
	t.Cleanup(srv.Close)

	c := e.dialRawTo(srv, e.newDevice(leafOpts{cn: "dev"}))
	c.upgrade()
	<-time.After(2 * timeout) // both server deadlines have passed
	got, err := c.echo("after the server's timeouts")
	require.NoError(t, err, "the tunnel must outlive ReadTimeout and WriteTimeout")
	assert.Equal(t, "after the server's timeouts", got)
}

// TestUpgradedConnectionsClosedWhenRunReturns: http.Server.Shutdown does not
// see hijacked connections, so Run closes them when it returns.
func TestUpgradedConnectionsClosedWhenRunReturns(t *testing.T) {
	e, _ := newWSEnv(t, envConfig{noRun: true})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.amb.Run(ctx) }()
	c := e.dialRaw(e.newDevice(leafOpts{cn: "dev"}))
	c.upgrade()
	got, err := c.echo("ping")
	require.NoError(t, err)
	require.Equal(t, "ping", got)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancellation")
	}
	c.requireClosed(2*time.Second, "after Run returned")
	assert.Zero(t, e.amb.Stats().UpgradesClosed, "a shutdown is not a revocation")
}

// TestUpgradedConnectionClosedOnRevocation: a tunnel opened before the
// certificate is revoked or loses its CA is closed by the reload that
// applies it; other tunnels stay open.
func TestUpgradedConnectionClosedOnRevocation(t *testing.T) {
	secondCA := newTestCA(t, "Second device CA")
	tests := []struct {
		name       string
		wantReason string
		mutate     func(e *env, o *Options)
		victim     func(e *env) *device
		revoke     func(t *testing.T, e *env, victim *device)
	}{
		{
			name:       "blacklisted",
			wantReason: reasonRevoked,
			victim:     func(e *env) *device { return e.newDevice(leafOpts{cn: "victim"}) },
			revoke: func(t *testing.T, e *env, victim *device) {
				writeFile(t, e.blacklist, []byte(victim.cert.SerialNumber.Text(16)+"\n"))
			},
		},
		{
			name:       "revoked by CRL",
			wantReason: reasonRevoked,
			mutate: func(e *env, o *Options) {
				o.CRLFiles = []string{writeFile(e.t, filepath.Join(e.dir, "ca.crl"),
					pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: e.deviceCA.crlDER(e.t)}))}
			},
			victim: func(e *env) *device { return e.newDevice(leafOpts{cn: "victim"}) },
			revoke: func(t *testing.T, e *env, victim *device) {
				writeFile(t, e.opts.CRLFiles[0], e.deviceCA.crlDER(t, victim.cert.SerialNumber))
			},
		},
		{
			name:       "CA removed from the bundle",
			wantReason: reasonUnknownAuthority,
			mutate: func(e *env, o *Options) {
				o.ClientCAFiles = append(o.ClientCAFiles, writeFile(e.t, filepath.Join(e.dir, "second-ca.pem"), secondCA.pem()))
			},
			victim: func(e *env) *device {
				cert, key := secondCA.issue(e.t, leafOpts{cn: "victim"})
				return e.deviceWith(cert, key)
			},
			revoke: func(t *testing.T, e *env, _ *device) {
				writeFile(t, e.opts.ClientCAFiles[1], e.deviceCA.pem())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec logRecorder
			e, _ := newWSEnv(t, envConfig{mutate: func(e *env, o *Options) {
				o.Logger = rec.logger()
				if tt.mutate != nil {
					tt.mutate(e, o)
				}
			}})
			victim := tt.victim(e)
			bystander := e.newDevice(leafOpts{cn: "bystander"})
			vc, bc := e.dialRaw(victim), e.dialRaw(bystander)
			vc.upgrade()
			bc.upgrade()
			got, err := vc.echo("before")
			require.NoError(t, err)
			require.Equal(t, "before", got)

			tt.revoke(t, e, victim)
			require.NoError(t, e.amb.Reload())
			vc.requireClosed(2*time.Second, "after the reload")

			got, err = bc.echo("still here")
			require.NoError(t, err, "the bystander's tunnel stays open")
			assert.Equal(t, "still here", got)

			assert.Equal(t, uint64(1), e.amb.Stats().UpgradesClosed)
			assert.Equal(t, uint64(1), counterValue(e.amb.metrics.upgradesClosed, tt.wantReason))
			lines := rec.lines(t, slog.LevelInfo, "upgraded connection closed")
			require.Len(t, lines, 1, "one info line for the closed tunnel")
			assert.Equal(t, serialKey(victim.cert.SerialNumber), lines[0]["serial"])
			assert.Equal(t, tt.wantReason, lines[0]["reason"])
		})
	}
}

// TestUpgradeRevokedWhileTheUpstreamAnswers: a reload that revokes the
// certificate between the request's check and the upstream's 101 finds no
// tunnel to close yet; the hijack checks again and closes it.
func TestUpgradeRevokedWhileTheUpstreamAnswers(t *testing.T) {
	e, ws := newWSEnv(t, envConfig{noRun: true})
	ws.hold = make(chan struct{})
	d := e.newDevice(leafOpts{cn: "victim"})
	c := e.dialRaw(d)
	answered := make(chan error, 1)
	go func() {
		_, err := io.WriteString(c.conn, "GET "+deviceConnectPath+" HTTP/1.1\r\nHost: ambassador.test\r\n"+
			"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if err == nil {
			_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			var resp *http.Response
			if resp, err = http.ReadResponse(c.br, nil); err == nil {
				err = fmt.Errorf("got %s, want the connection closed", resp.Status)
			}
		}
		answered <- err
	}()
	require.Eventually(t, func() bool { return ws.upgrades.Load() == 1 }, 5*time.Second, 5*time.Millisecond,
		"the upgrade request reaches the upstream")

	writeFile(t, e.blacklist, []byte(d.cert.SerialNumber.Text(16)+"\n"))
	require.NoError(t, e.amb.Reload())
	close(ws.hold)

	err := <-answered
	require.Error(t, err)
	var ne net.Error
	assert.False(t, errors.As(err, &ne) && ne.Timeout(), "the connection is closed, not left hanging: %v", err)
	assert.NotContains(t, err.Error(), "got ", "no 101 reaches the device")
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.upgradesClosed, reasonRevoked))
	assert.Zero(t, e.amb.Stats().Upgrades, "no tunnel was opened")
}

// TestUpgradedConnectionClosedAtCertificateExpiry: a tunnel does not
// outlive the certificate that opened it.
func TestUpgradedConnectionClosedAtCertificateExpiry(t *testing.T) {
	e, _ := newWSEnv(t, envConfig{})
	notAfter := time.Now().Add(2 * time.Second) // x509 keeps whole seconds: 1-2 s from now
	d := e.newDevice(leafOpts{cn: "short-lived", notAfter: notAfter})
	c := e.dialRaw(d)
	c.upgrade()
	got, err := c.echo("alive")
	require.NoError(t, err)
	require.Equal(t, "alive", got)

	c.requireClosed(4*time.Second, "after the certificate expired")
	assert.False(t, time.Now().Before(d.cert.NotAfter), "closed at expiry (%s), not before", d.cert.NotAfter)
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.upgradesClosed, reasonNotValidNow))
}

// TestUpgradeRefused: only a websocket upgrade of GET deviceconnect is
// proxied; any other upgrade attempt gets 400 and reaches nothing upstream.
func TestUpgradeRefused(t *testing.T) {
	tests := []struct {
		name, method, path string
		header             []string
	}{
		{"h2c on inventory", http.MethodGet, menderapi.PathInventoryAttributes,
			[]string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"}},
		{"h2c on deviceconnect", http.MethodGet, deviceConnectPath,
			[]string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"}},
		{"websocket on another device path", http.MethodGet, menderapi.PathNextV1,
			[]string{"Connection: Upgrade", "Upgrade: websocket"}},
		{"websocket on the auth path", http.MethodPost, menderapi.PathAuthRequests,
			[]string{"Connection: Upgrade", "Upgrade: websocket"}},
		{"websocket with POST", http.MethodPost, deviceConnectPath,
			[]string{"Connection: Upgrade", "Upgrade: websocket"}},
		{"websocket offered with another protocol", http.MethodGet, deviceConnectPath,
			[]string{"Connection: Upgrade", "Upgrade: websocket, h2c"}},
		{"websocket in a second Upgrade line", http.MethodGet, deviceConnectPath,
			[]string{"Connection: Upgrade", "Upgrade: h2c", "Upgrade: websocket"}},
		{"other protocol", http.MethodGet, deviceConnectPath,
			[]string{"Connection: keep-alive, upgrade", "Upgrade: TLS/1.2"}},
		{"Upgrade header without Connection", http.MethodGet, menderapi.PathInventoryAttributes,
			[]string{"Upgrade: websocket"}},
		{"Connection upgrade without Upgrade header", http.MethodGet, deviceConnectPath,
			[]string{"Connection: Upgrade"}},
	}
	e, ws := newWSEnv(t, envConfig{noRun: true}) // no login in the background: the counts stay still
	d := e.newDevice(leafOpts{cn: "dev"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, upgradesBefore := e.up.counts(), ws.upgrades.Load()
			a := e.dialRaw(d).do(tt.method, tt.path, tt.header...)
			assert.Equal(t, before, e.up.counts(), "nothing reached the upstream")
			assert.Equal(t, upgradesBefore, ws.upgrades.Load(), "no upgrade reached the upstream")
			assertJSONError(t, a, http.StatusBadRequest, "upgrade")
		})
	}

	assert.Equal(t, uint64(len(tests)), e.amb.Stats().UpgradesRefused)

	a, err := e.get(d, menderapi.PathInventoryAttributes)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "a plain request still works; body %s", a.body)
}

// An upstream that switches protocols on a request that asked for no
// upgrade does not get an unregistered tunnel to the device. (A guard:
// ReverseProxy already refuses this; the test keeps it that way.)
func TestUnaskedSwitchingProtocolsIsRefused(t *testing.T) {
	e, ws := newWSEnv(t, envConfig{})
	ws.unasked.Store(true)
	d := e.newDevice(leafOpts{cn: "dev"})
	a, err := e.get(d, deviceConnectPath)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusBadGateway, "upstream")
	assert.Zero(t, e.amb.Stats().Upgrades, "no tunnel")
}
