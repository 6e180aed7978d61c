package ambassador

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// limitsStatus fetches the "limits" object of GET /status.
func limitsStatus(t *testing.T, a *Ambassador) limitsBody {
	t.Helper()
	rec := httptest.NewRecorder()
	a.StatusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	var b statusBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &b), "status body: %s", rec.Body)
	return b.Limits
}

// dialTLS opens a TLS connection to addr presenting d's certificate; the
// handshake is complete when it returns.
func (e *env) dialTLS(d *device, addr string) (*tls.Conn, error) {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(dialer, "tcp", addr, e.rawTLSConfig(d))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// getOn sends GET path on c and reads the answer.
func getOn(t *testing.T, c net.Conn, path string) *http.Response {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	req, err := http.NewRequest(http.MethodGet, "https://ambassador"+path, nil)
	require.NoError(t, err)
	require.NoError(t, req.Write(c))
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

// TestConnLimitShedsAndCeilingResets fills an ambassador with MaxConns 2:
// the third connection is handshaken but answered 503 with a jittered
// Retry-After and Connection: close; past the ceiling (2 + 8) a connection
// is reset before its handshake; once the connections close a new one is
// served normally again.
func TestConnLimitShedsAndCeilingResets(t *testing.T) {
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) {
		o.MaxConns, o.HandshakeWait = 2, 500*time.Millisecond
	}})
	require.Equal(t, int64(10), e.amb.conns.ceiling)
	base := serveReal(t, e)
	addr := base[len("https://"):]
	d := e.newDevice(leafOpts{cn: "dev"})

	var held []net.Conn
	closeAll := func() {
		for _, c := range held {
			_ = c.Close()
		}
		held = nil
	}
	t.Cleanup(closeAll)
	for range 2 { // idle connections within MaxConns
		c, err := e.dialTLS(d, addr)
		require.NoError(t, err)
		held = append(held, c)
	}
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).OpenConns == 2 }, 5*time.Second, 5*time.Millisecond)

	c3, err := e.dialTLS(d, addr)
	require.NoError(t, err, "a connection past MaxConns is still handshaken")
	resp := getOn(t, c3, nextPath)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.True(t, resp.Close, "Connection: close, so the device reconnects after its backoff")
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After must be seconds: %q", resp.Header.Get("Retry-After"))
	assert.GreaterOrEqual(t, ra, retryAfterMin)
	assert.LessOrEqual(t, ra, retryAfterMin+retryAfterJitter)
	assert.NotEmpty(t, resp.Header.Get("X-MEN-RequestID"))
	_ = c3.Close()
	assert.Zero(t, e.up.counts().device, "a refused request does not reach the upstream")

	lim := limitsStatus(t, e.amb)
	assert.Equal(t, uint64(1), lim.Refused.ConnLimit503)
	assert.Equal(t, int64(2), lim.MaxConns)
	assert.Equal(t, int64(10), lim.ConnCeiling)
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.connRefusals, refusalConnLimit))
	assert.Contains(t, metricsText(t, e.amb), `mtls_connection_refusals_total{reason="conn_limit"} 1`)
	assert.Equal(t, uint64(1), e.amb.Stats().ConnLimitRefused)

	// Fill up to the ceiling with handshaken, refused-to-be-served connections.
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).OpenConns == 2 }, 5*time.Second, 5*time.Millisecond,
		"the server closes the refused connection")
	for range 8 {
		c, err := e.dialTLS(d, addr)
		require.NoError(t, err)
		held = append(held, c)
	}
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).OpenConns == 10 }, 5*time.Second, 5*time.Millisecond)
	_, err = e.dialTLS(d, addr)
	require.Error(t, err, "past the ceiling the connection is reset before the handshake")
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).Refused.ConnCeilingClosed == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.LessOrEqual(t, limitsStatus(t, e.amb).OpenConns, int64(10), "never more than the ceiling open")
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.connRefusals, refusalConnCeiling))
	assert.Zero(t, e.amb.Stats().HandshakeFailures, "a reset before the handshake is no handshake failure")

	closeAll()
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).OpenConns == 0 }, 5*time.Second, 5*time.Millisecond,
		"every close is uncounted once")
	c, err := e.dialTLS(d, addr)
	require.NoError(t, err)
	held = append(held, c)
	resp = getOn(t, c, nextPath)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "below MaxConns again: served")
	assert.False(t, resp.Close)
	assert.Equal(t, uint64(1), limitsStatus(t, e.amb).Refused.ConnLimit503, "no new refusal")
}

// TestHandshakeWaitClosesBeforeHandshake holds the only handshake slot with
// a client that never sends a ClientHello; a second client that waits
// longer than HandshakeWait is closed before its handshake, while the
// silent one is cut at the handshake deadline and the slot serves the next.
func TestHandshakeWaitClosesBeforeHandshake(t *testing.T) {
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) {
		o.MaxHandshakes, o.HandshakeWait = 1, 100*time.Millisecond
	}})
	e.amb.handshakeTimeout = time.Second
	base := serveReal(t, e)
	addr := base[len("https://"):]
	d := e.newDevice(leafOpts{cn: "dev"})

	silent, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = silent.Close() })
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).HandshakesInProgress == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, limitsStatus(t, e.amb).MaxHandshakes)

	start := time.Now()
	_, err = e.dialTLS(d, addr)
	require.Error(t, err, "no handshake slot within HandshakeWait: closed before the handshake")
	assert.Less(t, time.Since(start), 900*time.Millisecond, "closed after HandshakeWait, not at the silent client's deadline")
	require.Eventually(t, func() bool { return limitsStatus(t, e.amb).Refused.HandshakeWaitClosed == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, uint64(1), counterValue(e.amb.metrics.connRefusals, refusalHandshakeWait))
	assert.Equal(t, uint64(1), e.amb.Stats().HandshakeWaitClosed)

	// The silent client is cut at the handshake deadline (1 s here).
	require.NoError(t, silent.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = silent.Read(make([]byte, 1))
	require.Error(t, err)
	assert.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server must close the silent connection: %v", err)

	c, err := e.dialTLS(d, addr)
	require.NoError(t, err, "the slot is free again")
	t.Cleanup(func() { _ = c.Close() })
	assert.Equal(t, http.StatusOK, getOn(t, c, nextPath).StatusCode)
}

// TestIdleTimeoutClosesKeptAliveConnection checks that the server closes
// an idle kept-alive device connection after IdleTimeout.
func TestIdleTimeoutClosesKeptAliveConnection(t *testing.T) {
	const idle = 200 * time.Millisecond
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) { o.IdleTimeout = idle }})
	base := serveReal(t, e)
	c, err := e.dialTLS(e.newDevice(leafOpts{cn: "dev"}), base[len("https://"):])
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	resp := getOn(t, c, nextPath)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.False(t, resp.Close, "kept alive")
	assert.Equal(t, 0.2, limitsStatus(t, e.amb).IdleTimeoutS)

	start := time.Now()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	assert.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server must close the idle connection: %v", err)
	assert.GreaterOrEqual(t, time.Since(start), idle/2)
	assert.Less(t, time.Since(start), 3*time.Second)
}

// fakeListener hands out scripted accept errors, then the connections sent
// on conns, until it is closed.
type fakeListener struct {
	mu     sync.Mutex
	errs   []error
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newFakeListener(errs ...error) *fakeListener {
	return &fakeListener{errs: errs, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}

func (f *fakeListener) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// plainListener is a.Listener(inner) with the TLS handshake replaced by
// handshake (nil = none).
func plainListener(a *Ambassador, inner net.Listener, handshake func(ctx context.Context, c net.Conn) (net.Conn, error)) *limitListener {
	l := a.Listener(inner).(*limitListener)
	if handshake == nil {
		handshake = func(_ context.Context, c net.Conn) (net.Conn, error) { return c, nil }
	}
	l.handshake = handshake
	return l
}

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.EMFILE)}
}

// acceptAfter serves errs from a fake inner listener, then one
// connection, and returns how long a's Listener took to accept it. Run it
// inside a synctest bubble: the time is the bubble's.
func acceptAfter(t *testing.T, a *Ambassador, errs ...error) time.Duration {
	t.Helper()
	inner := newFakeListener(errs...)
	l := plainListener(a, inner, nil)
	defer l.Close()
	client, server := net.Pipe()
	defer client.Close()
	go func() { inner.conns <- server }()
	start := time.Now()
	c, err := l.Accept()
	require.NoError(t, err)
	defer c.Close()
	return time.Since(start)
}

func TestListenerBacksOffOnAcceptErrors(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	synctest.Test(t, func(t *testing.T) {
		took := acceptAfter(t, a, emfile(), emfile(), emfile(), emfile(), emfile(),
			&net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.ECONNABORTED)})
		// 5, 10, 20, 40, 80 and 160 ms: doubling from 5 ms, never a spin.
		assert.Equal(t, 315*time.Millisecond, took)
		assert.Equal(t, uint64(6), a.Stats().AcceptErrors)
		assert.Equal(t, 6.0, testutil.ToFloat64(a.metrics.acceptErrors))
		assert.Equal(t, uint64(6), limitsStatus(t, a).Refused.AcceptErrors)
	})
}

func TestListenerBackoffIsCapped(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	synctest.Test(t, func(t *testing.T) {
		errs := make([]error, 12)
		for i := range errs {
			errs[i] = emfile()
		}
		// 5 ms .. 640 ms (8 errors), then 1 s four times.
		assert.Equal(t, 1275*time.Millisecond+4*time.Second, acceptAfter(t, a, errs...))
	})
}

func TestListenerPermanentErrorEndsAccept(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	boom := errors.New("listener broken")
	l := plainListener(a, newFakeListener(boom), nil)
	_, err := l.Accept()
	require.ErrorIs(t, err, boom)
	require.NoError(t, l.Close())
	_, err = l.Accept()
	require.ErrorIs(t, err, boom, "Accept keeps reporting why it stopped")
	assert.Zero(t, a.Stats().AcceptErrors)
}

func TestListenerNeverHandsOutMoreThanTheCeiling(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), func(o *Options) { o.MaxConns = 2 })
	synctest.Test(t, func(t *testing.T) {
		inner := newFakeListener()
		l := plainListener(a, inner, nil)
		const offered = 15
		clients := make([]net.Conn, offered)
		go func() {
			for i := range offered {
				c, s := net.Pipe()
				clients[i] = c
				inner.conns <- s
			}
		}()
		var got []net.Conn
		for range 10 {
			c, err := l.Accept()
			require.NoError(t, err)
			got = append(got, c)
		}
		synctest.Wait() // the other 5 are accepted and reset
		assert.Equal(t, int64(10), a.conns.open.Load(), "open connections stop at the ceiling")
		assert.Equal(t, uint64(5), a.Stats().ConnCeilingClosed)
		shed := 0
		for _, c := range got { // handshakes run concurrently: Accept's order is not the accept order
			if c.(*trackedConn).shed {
				shed++
			}
		}
		assert.Equal(t, 8, shed, "the 8 accepted past MaxConns 2 have their requests refused")
		for _, c := range clients[10:] {
			_, err := c.Read(make([]byte, 1))
			assert.ErrorIs(t, err, io.EOF, "closed before any handshake")
		}

		// Closing one (twice: uncounted once) makes room for exactly one more.
		var normal int
		for i, c := range got {
			if !c.(*trackedConn).shed {
				normal = i
			}
		}
		require.NoError(t, got[normal].Close())
		_ = got[normal].Close()
		assert.Equal(t, int64(9), a.conns.open.Load())
		next, server := net.Pipe()
		defer next.Close()
		go func() { inner.conns <- server }()
		c, err := l.Accept()
		require.NoError(t, err)
		assert.True(t, c.(*trackedConn).shed, "9 are still open: past MaxConns")
		assert.Equal(t, int64(10), a.conns.open.Load())

		require.NoError(t, l.Close())
		for _, c := range append(got, c) {
			_ = c.Close() // got[normal] again: a no-op
		}
		for _, c := range clients {
			_ = c.Close()
		}
		assert.Zero(t, a.conns.open.Load())
	})
}

// TestListenerCloseAbortsHandshakes checks that Close stops handshakes in
// progress and waits for their goroutines (synctest fails on a leak).
func TestListenerCloseAbortsHandshakes(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	synctest.Test(t, func(t *testing.T) {
		inner := newFakeListener()
		l := plainListener(a, inner, func(ctx context.Context, c net.Conn) (net.Conn, error) {
			<-ctx.Done() // a client that never finishes its handshake
			return nil, ctx.Err()
		})
		accepted := make(chan error, 1)
		go func() { _, err := l.Accept(); accepted <- err }()
		client, server := net.Pipe()
		defer client.Close()
		inner.conns <- server
		synctest.Wait()
		assert.Equal(t, int64(1), a.conns.handshaking.Load())
		require.NoError(t, l.Close())
		assert.ErrorIs(t, <-accepted, net.ErrClosed)
		assert.Zero(t, a.conns.handshaking.Load())
		assert.Zero(t, a.conns.open.Load(), "the aborted connection is closed")
		assert.Zero(t, a.Stats().HandshakeFailures, "an abort at shutdown is no handshake failure")
	})
}

func TestDeriveMaxConns(t *testing.T) {
	tests := []struct {
		soft     uint64
		upstream int
		want     int
	}{
		{soft: 20000, upstream: 256, want: 17209},
		{soft: 1024, upstream: 256, want: 342},
		{soft: 100, upstream: 256, want: minMaxConns},
		{soft: 1 << 62, upstream: 256, want: (1 << 40) - (1<<40)/9},
	}
	for _, tt := range tests {
		got := DeriveMaxConns(tt.soft, tt.upstream)
		assert.Equal(t, tt.want, got, "DeriveMaxConns(%d, %d)", tt.soft, tt.upstream)
		if tt.want > minMaxConns && tt.soft < 1<<40 {
			assert.LessOrEqual(t, connCeiling(got), int(tt.soft)-connReserve(tt.upstream),
				"the ceiling stays within the descriptors left after the reserve")
		}
	}
}
