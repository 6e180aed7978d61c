package ambassador

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/rlimit"
)

// serveReal serves e.amb with the http.Server built by Server, on a real
// TLS listener, and returns its base URL.
func serveReal(t *testing.T, e *env) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := e.amb.Server()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(e.amb.Listener(ln))
	}()
	t.Cleanup(func() {
		_ = srv.Close() // closes active connections too, so the upstream's handlers can finish
		<-done
	})
	return "https://" + ln.Addr().String()
}

// waitReady waits until the ambassador holds a management token.
func waitReady(t *testing.T, a *Ambassador) {
	t.Helper()
	require.Eventually(t, func() bool { code, _ := status(t, a); return code == http.StatusOK },
		5*time.Second, 10*time.Millisecond, "the ambassador must log in")
}

// rawTLSConfig is a client TLS configuration presenting d's certificate.
func (e *env) rawTLSConfig(d *device) *tls.Config {
	chain := tls.Certificate{Certificate: [][]byte{d.cert.Raw}, PrivateKey: d.key, Leaf: d.cert}
	return &tls.Config{RootCAs: e.serverCA.pool(), Certificates: []tls.Certificate{chain},
		MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
}

// authAt sends a valid auth request for d to the ambassador at base.
func (e *env) authAt(d *device, base, idData string) (answer, error) {
	e.t.Helper()
	body, sig := authBody(e.t, idData, d.key)
	req, err := http.NewRequestWithContext(e.t.Context(), http.MethodPost, base+menderapi.PathAuthRequests, bytes.NewReader(body))
	require.NoError(e.t, err)
	req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	req.Header.Set(menderapi.HeaderSignature, sig)
	return e.do(d, req)
}

const inventoryPath = "/api/devices/v1/inventory/device/attributes"

// stalledResult is what one stalled connection saw.
type stalledResult struct {
	status int   // 0 = no response
	err    error // nil = the ambassador closed the connection in time
}

// TestStalledBodiesDoNotStallTheFleet is the attack: 300 connections of ONE
// device certificate send the headers of an inventory PUT with
// Content-Length: 100000 and never the body. Before the fix every upstream
// connection (256) was pinned by a body that never came and every other
// device's request queued behind them without bound. Now the bodies are read
// under a deadline before an upstream connection is taken, one certificate
// has at most MaxInflightPerCert requests in flight, and each stalled
// connection is answered and closed shortly after the body deadline.
func TestStalledBodiesDoNotStallTheFleet(t *testing.T) {
	const (
		conns       = 300
		bodyTimeout = time.Second
		margin      = 3 * time.Second // handshakes and the race detector on 2 cores
	)
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) { o.BodyReadTimeout = bodyTimeout }})
	base := serveReal(t, e)
	addr := base[len("https://"):]
	waitReady(t, e.amb)
	attacker := e.newDevice(leafOpts{cn: "attacker"})
	cfg := e.rawTLSConfig(attacker)
	// Resumed sessions keep 300 handshakes cheap under the race detector;
	// the ambassador still checks the certificate on every request.
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	warm, err := e.do(&device{client: &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}},
		mustRequest(t, http.MethodGet, base+"/warm-up", nil))
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, warm.status)

	results := make([]stalledResult, conns)
	var (
		mu      sync.Mutex
		open    []net.Conn
		resumed int
		wg      sync.WaitGroup
		slots   = make(chan struct{}, 16) // concurrent handshakes
	)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			_ = c.Close()
		}
	})
	start := time.Now()
	for i := range conns {
		wg.Go(func() {
			slots <- struct{}{}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
			if err == nil {
				mu.Lock()
				if c.ConnectionState().DidResume {
					resumed++
				}
				open = append(open, c)
				mu.Unlock()
				_, err = fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer x\r\n"+
					"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n", inventoryPath, addr)
			}
			<-slots
			if err != nil {
				results[i] = stalledResult{err: fmt.Errorf("dial and send headers: %w", err)}
				return
			}
			// The connection must be answered and closed by the ambassador
			// within the body deadline plus a margin.
			_ = c.SetReadDeadline(time.Now().Add(bodyTimeout + margin))
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err == nil {
				results[i].status = resp.StatusCode
			}
			_, err = io.Copy(io.Discard, br)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				results[i].err = errors.New("still open after the body deadline and the margin")
			}
		})
	}
	require.Eventually(t, func() bool { return e.amb.Stats().Requests >= conns+1 }, // and the warm-up
		10*time.Second, 5*time.Millisecond, "all stalled requests reach the handler")
	mu.Lock()
	t.Logf("%d stalled requests in the handler after %v (%d resumed)", conns, time.Since(start).Round(time.Millisecond), resumed)
	mu.Unlock()
	time.Sleep(100 * time.Millisecond) // let them reach for upstream connections

	victim := e.newDevice(leafOpts{cn: "victim"})
	victim.client.Timeout = 2 * time.Second
	t0 := time.Now()
	a, err := e.authAt(victim, base, idFor("victim"))
	t.Logf("another device's auth request: %v after %v", errOrStatus(a, err), time.Since(t0).Round(time.Millisecond))
	if assert.NoError(t, err, "another device must not wait behind the stalled bodies") {
		assert.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	}

	wg.Wait()
	codes := map[int]int{}
	var stillOpen []error
	for i, r := range results {
		codes[r.status]++
		if r.err != nil {
			stillOpen = append(stillOpen, fmt.Errorf("conn %d: %w", i, r.err))
		}
	}
	t.Logf("stalled connections: status counts %v, %d not closed in time; all done after %v",
		codes, len(stillOpen), time.Since(start).Round(time.Millisecond))
	if !assert.Zero(t, len(stillOpen), "every stalled connection is closed by the ambassador") {
		t.Logf("first: %v", stillOpen[0])
	}
	assert.Equal(t, conns, codes[http.StatusRequestTimeout]+codes[http.StatusTooManyRequests],
		"each stalled request is answered: 408 with a slot, 429 beyond MaxInflightPerCert")
	st := e.amb.Stats()
	assert.Equal(t, uint64(codes[http.StatusRequestTimeout]), st.BodyTimeouts)
	assert.Equal(t, uint64(codes[http.StatusTooManyRequests]), st.InflightRefused)
	assert.Equal(t, 1, e.up.counts().device, "only the other device's auth request went upstream")
}

func mustRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	require.NoError(t, err)
	return req
}

func errOrStatus(a answer, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprint(a.status)
}

// holdPath is a device path that holdingTransport holds upstream.
const holdPath = "/api/devices/v1/hold"

// holdingTransport is an upstream served in memory by next, except that
// requests for holdPath are held until release is closed: each held request
// sends on held first.
type holdingTransport struct {
	next    http.RoundTripper
	held    chan struct{}
	release chan struct{}
}

func newHoldingTransport(up *fakeUpstream) *holdingTransport {
	return &holdingTransport{next: handlerTransport{h: up}, held: make(chan struct{}, 64), release: make(chan struct{})}
}

func (h *holdingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path != holdPath {
		if r.Body == nil { // an outgoing request may have none; a handler expects one
			r.Body = http.NoBody
		}
		return h.next.RoundTrip(r)
	}
	h.held <- struct{}{}
	select {
	case <-h.release:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(strings.NewReader("released")), ContentLength: 8, Request: r}, nil
}

// waitHeld waits until n requests are held.
func (h *holdingTransport) waitHeld(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.held:
		case <-time.After(5 * time.Second):
			t.Fatal("a request did not reach the upstream")
		}
	}
}

// requestAt sends GET base+path for d; with a body, a PUT.
func (e *env) requestAt(d *device, base, path string, body []byte) (answer, error) {
	e.t.Helper()
	method, rd := http.MethodGet, io.Reader(nil)
	if body != nil {
		method, rd = http.MethodPut, bytes.NewReader(body)
	}
	return e.do(d, mustRequest(e.t, method, base+path, rd))
}

// assertRetryAfter checks a Retry-After of a few seconds.
func assertRetryAfter(t *testing.T, a answer) {
	t.Helper()
	ra, err := strconv.Atoi(a.header.Get(menderapi.HeaderRetryAfter))
	require.NoError(t, err, "Retry-After in seconds: %q", a.header.Get(menderapi.HeaderRetryAfter))
	assert.GreaterOrEqual(t, ra, retryAfterMin)
	assert.LessOrEqual(t, ra, retryAfterMin+retryAfterJitter)
}

func TestInflightPerCertLimit(t *testing.T) {
	var ht *holdingTransport
	e := newEnv(t, envConfig{mutate: func(e *env, o *Options) {
		ht = newHoldingTransport(e.up)
		o.Transport = ht
		o.MaxInflightPerCert = 2
	}})
	base := serveReal(t, e)
	waitReady(t, e.amb)
	busy := e.newDevice(leafOpts{cn: "busy"})
	other := e.newDevice(leafOpts{cn: "other"})

	held := make(chan answer, 2)
	for range 2 {
		go func() {
			a, err := e.requestAt(busy, base, holdPath, nil)
			assert.NoError(t, err)
			held <- a
		}()
	}
	ht.waitHeld(t, 2)

	dialsBefore := busy.dials.Load()
	a, err := e.requestAt(busy, base, inventoryPath, bytes.Repeat([]byte("x"), 10<<10))
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusTooManyRequests, "too many requests in flight")
	assertRetryAfter(t, a)
	assert.Empty(t, a.header.Get("Connection"), "the refused body was drained: the connection stays usable")
	assert.Equal(t, dialsBefore+1, busy.dials.Load(), "one new connection for the refused request")

	a, err = e.requestAt(other, base, nextPath, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "another certificate is not limited: %s", a.body)

	close(ht.release)
	for range 2 {
		assert.Equal(t, http.StatusOK, (<-held).status)
	}
	a, err = e.requestAt(busy, base, nextPath, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "the slots are released: %s", a.body)

	assert.Equal(t, uint64(1), e.amb.Stats().InflightRefused)
	assert.Contains(t, metricsText(t, e.amb), `mtls_limit_refusals_total{limit="inflight_per_cert"} 1`)
}

func TestUpstreamWaitBounded(t *testing.T) {
	const wait = 200 * time.Millisecond
	var ht *holdingTransport
	e := newEnv(t, envConfig{mutate: func(e *env, o *Options) {
		ht = newHoldingTransport(e.up)
		o.Transport = ht
		o.UpstreamMaxConns = 1
		o.UpstreamWaitTimeout = wait
	}})
	base := serveReal(t, e)
	waitReady(t, e.amb)
	first := e.newDevice(leafOpts{cn: "first"})
	second := e.newDevice(leafOpts{cn: "second"})

	held := make(chan answer, 1)
	go func() {
		a, err := e.requestAt(first, base, holdPath, nil)
		assert.NoError(t, err)
		held <- a
	}()
	ht.waitHeld(t, 1) // the only upstream slot is taken

	t0 := time.Now()
	a, err := e.requestAt(second, base, nextPath, nil)
	took := time.Since(t0)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusServiceUnavailable, "server busy")
	assertRetryAfter(t, a)
	assert.GreaterOrEqual(t, took, wait, "it waited for a slot")
	assert.Less(t, took, wait+2*time.Second, "the wait is bounded")
	code, _ := status(t, e.amb)
	assert.Equal(t, http.StatusOK, code, "a busy ambassador is not an unavailable upstream")

	// An auth request needs a preauthorization call, which waits for the
	// same pool: the device gets the same 503, not a 502 "upstream down".
	body, sig := authBody(t, testIDData, second.key)
	req := mustRequest(t, http.MethodPost, base+menderapi.PathAuthRequests, bytes.NewReader(body))
	req.Header.Set(menderapi.HeaderSignature, sig)
	a, err = e.do(second, req)
	require.NoError(t, err)
	assertJSONError(t, a, http.StatusServiceUnavailable, "server busy")
	assertRetryAfter(t, a)
	code, _ = status(t, e.amb)
	assert.Equal(t, http.StatusOK, code, "still ready: the upstream is not down")

	close(ht.release)
	assert.Equal(t, http.StatusOK, (<-held).status)
	a, err = e.requestAt(second, base, nextPath, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, "the slot is released with the response body: %s", a.body)

	assert.Equal(t, uint64(2), e.amb.Stats().UpstreamBusy)
	assert.Contains(t, metricsText(t, e.amb), `mtls_limit_refusals_total{limit="upstream_busy"} 2`)
}

// TestBodyBufferedBeforeForwarding: a chunked body is read whole and
// forwarded with its Content-Length; a GET keeps having no body.
func TestBodyBufferedBeforeForwarding(t *testing.T) {
	e := newEnv(t, envConfig{})
	d := e.newDevice(leafOpts{cn: "dev"})
	body := bytes.Repeat([]byte("0123456789"), 1024)
	req := mustRequest(t, http.MethodPut, e.srv.URL+inventoryPath, io.MultiReader(bytes.NewReader(body))) // no length: chunked
	a, err := e.do(d, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	got := e.up.lastDevice()
	assert.Equal(t, body, got.Body)
	assert.Equal(t, int64(len(body)), got.ContentLength, "forwarded with a Content-Length")

	a, err = e.get(d, nextPath)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status)
	got = e.up.lastDevice()
	assert.Empty(t, got.Body)
	assert.Zero(t, got.ContentLength)
}

// TestOversizedBodyGetsItsAnswer: a device that sends 2 MiB reads the 413
// JSON answer rather than a connection reset, whether it declares the
// length or sends chunks, and whether its client reads while it writes
// (net/http) or only once it has written everything.
func TestOversizedBodyGetsItsAnswer(t *testing.T) {
	e := newEnv(t, envConfig{})
	base := serveReal(t, e)
	d := e.newDevice(leafOpts{cn: "dev"})
	body := bytes.Repeat([]byte("a"), 2<<20)
	for _, path := range []string{menderapi.PathAuthRequests, inventoryPath} {
		method := http.MethodPut
		if path == menderapi.PathAuthRequests {
			method = http.MethodPost
		}
		for _, chunked := range []bool{false, true} {
			name := fmt.Sprintf("%s %s chunked=%v", method, path, chunked)
			t.Run(name+" net/http", func(t *testing.T) {
				var rd io.Reader = bytes.NewReader(body)
				if chunked {
					rd = io.MultiReader(rd) // unknown length: sent chunked
				}
				a, err := e.do(d, mustRequest(t, method, base+path, rd))
				require.NoError(t, err, "the client must read the answer")
				assertJSONError(t, a, http.StatusRequestEntityTooLarge, "exceeds 1 MiB")
			})
			t.Run(name+" write then read", func(t *testing.T) {
				a, err := e.writeThenRead(d, base, method, path, body, chunked)
				require.NoError(t, err, "the client must be able to send its body and read the answer")
				assertJSONError(t, a, http.StatusRequestEntityTooLarge, "exceeds 1 MiB")
			})
		}
	}
	assert.Zero(t, e.up.counts().device, "nothing was forwarded")
}

// writeThenRead is a client that writes its whole request before it reads
// the answer, on a connection of its own. Its socket send buffer is small,
// as the path to a device over a real network holds far less than loopback
// buffers do: the ambassador must take the body for the client to finish.
func (e *env) writeThenRead(d *device, base, method, path string, body []byte, chunked bool) (answer, error) {
	addr := strings.TrimPrefix(base, "https://")
	tcp, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return answer{}, err
	}
	if err := tcp.(*net.TCPConn).SetWriteBuffer(32 << 10); err != nil {
		tcp.Close()
		return answer{}, err
	}
	cfg := e.rawTLSConfig(d)
	cfg.ServerName = "127.0.0.1"
	c := tls.Client(tcp, cfg)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	bw := bufio.NewWriter(c)
	fmt.Fprintf(bw, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", method, path, addr)
	if chunked {
		fmt.Fprintf(bw, "Transfer-Encoding: chunked\r\n\r\n")
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 64<<10)
			fmt.Fprintf(bw, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		fmt.Fprintf(bw, "0\r\n\r\n")
	} else {
		fmt.Fprintf(bw, "Content-Length: %d\r\n\r\n", len(body))
		_, _ = bw.Write(body)
	}
	if err := bw.Flush(); err != nil {
		return answer{}, fmt.Errorf("write the request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return answer{}, fmt.Errorf("read the answer: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}, err
}

func TestLimitOptions(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	assert.Equal(t, DefaultBodyReadTimeout, a.opts.BodyReadTimeout)
	assert.Equal(t, DefaultUpstreamWaitTimeout, a.opts.UpstreamWaitTimeout)
	assert.Equal(t, DefaultUpstreamMaxConns, a.opts.UpstreamMaxConns)
	assert.Equal(t, DefaultUpstreamMaxConns, cap(a.limiter.slots))
	assert.Equal(t, DefaultMaxInflightPerCert, a.perCert.max)

	srv := a.Server()
	assert.NotNil(t, srv.Handler)
	assert.NotNil(t, srv.TLSConfig)
	assert.NotNil(t, srv.ErrorLog)
	assert.Equal(t, serverReadHeaderTimeout, srv.ReadHeaderTimeout)
	assert.Equal(t, serverReadHeaderTimeout+DefaultBodyReadTimeout, srv.ReadTimeout)
	assert.Equal(t, DefaultIdleTimeout, srv.IdleTimeout)
	assert.NotNil(t, srv.ConnContext, "requests on connections past MaxConns are told apart by ConnContext")
	assert.Equal(t, DefaultHandshakesPerCPU*runtime.GOMAXPROCS(0), cap(a.conns.slots))
	assert.Equal(t, DefaultHandshakeWait, a.conns.wait)
	files, err := rlimit.CurrentFiles()
	require.NoError(t, err)
	assert.Equal(t, int64(DeriveMaxConns(files.Soft, DefaultUpstreamMaxConns)), a.conns.max, "MaxConns 0 is derived from the soft limit")
	assert.Equal(t, int64(connCeiling(int(a.conns.max))), a.conns.ceiling)

	custom := newOfflineAmbassador(t, newFakeUpstream(), func(o *Options) {
		o.MaxConns, o.MaxHandshakes, o.HandshakeWait, o.IdleTimeout = 100, 3, time.Second, 5*time.Second
	})
	assert.Equal(t, int64(100), custom.conns.max)
	assert.Equal(t, int64(112), custom.conns.ceiling, "an eighth more")
	assert.Equal(t, 3, cap(custom.conns.slots))
	assert.Equal(t, time.Second, custom.conns.wait)
	assert.Equal(t, 5*time.Second, custom.Server().IdleTimeout)
	assert.Zero(t, srv.WriteTimeout, "a WriteTimeout would cut long downloads")

	unlimited := newOfflineAmbassador(t, newFakeUpstream(), func(o *Options) { o.MaxInflightPerCert = -1 })
	for range 100 {
		require.True(t, unlimited.perCert.acquire("k"), "a negative MaxInflightPerCert is no limit")
	}

	for name, mutate := range map[string]func(o *Options){
		"BodyReadTimeout":     func(o *Options) { o.BodyReadTimeout = -time.Second },
		"UpstreamWaitTimeout": func(o *Options) { o.UpstreamWaitTimeout = -time.Second },
		"UpstreamMaxConns":    func(o *Options) { o.UpstreamMaxConns = -1 },
		"MaxConns":            func(o *Options) { o.MaxConns = -1 },
		"MaxHandshakes":       func(o *Options) { o.MaxHandshakes = -1 },
		"HandshakeWait":       func(o *Options) { o.HandshakeWait = -time.Second },
		"IdleTimeout":         func(o *Options) { o.IdleTimeout = -time.Second },
	} {
		t.Run(name, func(t *testing.T) {
			o := Options{Upstream: mustURL(t, "http://mender.invalid"), User: "u", Password: "p",
				ServerCertFile: "s.crt", ServerKeyFile: "s.key", ClientCAFiles: []string{"ca.pem"}}
			mutate(&o)
			_, err := New(o)
			require.ErrorIs(t, err, ErrInvalidOptions)
			assert.Contains(t, err.Error(), name)
		})
	}
}

func TestCertLimiter(t *testing.T) {
	l := newCertLimiter(2)
	assert.True(t, l.acquire("a"))
	assert.True(t, l.acquire("a"))
	assert.False(t, l.acquire("a"), "a third request of one certificate")
	assert.True(t, l.acquire("b"), "another certificate has its own slots")
	l.release("a")
	assert.True(t, l.acquire("a"))
	for _, k := range []string{"a", "a", "b"} {
		l.release(k)
	}
	assert.Empty(t, l.n, "no entry is kept for a certificate with nothing in flight")
}
