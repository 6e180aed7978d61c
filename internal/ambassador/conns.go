package ambassador

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/rlimit"
)

// Defaults for the zero values of the connection bounds in [Options].
const (
	// DefaultHandshakesPerCPU times GOMAXPROCS is the zero value of
	// Options.MaxHandshakes. A slot is held for the whole handshake,
	// including the round trips in which the device computes its key share,
	// checks the server and signs, so a few slots per core leave the server
	// idle while devices think: measured with 10,000 devices started at once
	// on 2 cores (simulator serve --mtls and simulator run), 16 slots took
	// 42.8 s and reset 12,478 waiting connections, 128 took 32.2 s, 1,024
	// took 28.6 s with 3,222 resets. The bound still matters: a server-side
	// handshake costs about half a millisecond of CPU, so 512 per core keep
	// the time of one under a second, far inside a device's 10 s handshake
	// timeout, where an unbounded herd of tens of thousands shares the CPU
	// so thinly that none finishes in time and all the work is lost.
	DefaultHandshakesPerCPU = 512
	// DefaultHandshakeWait is the zero value of Options.HandshakeWait. A
	// device's own TLS handshake timeout is typically 10 s (Go's
	// http.Transport, the device agent, the fleet simulator), so a wait of
	// 8 s plus the handshake still fits in it. Waiting costs a descriptor
	// and a goroutine; a reset costs the device a retry with its backoff,
	// which in a herd is tens of seconds. Measured with 10,000 devices
	// started at once on 2 cores (make bench, BenchmarkStormVsCryptoBound):
	// a 2 s wait reset 24,473 connections and took 143.7 s to accept them all.
	DefaultHandshakeWait = 8 * time.Second
	// DefaultIdleTimeout is the zero value of Options.IdleTimeout. Devices
	// poll every few minutes to every half hour; keeping their connections
	// open in between would hold descriptors for nothing.
	DefaultIdleTimeout = 60 * time.Second
)

// connReserve returns how many descriptors the process keeps for other
// things than device connections when MaxConns is derived from the
// open-file limit: two per upstream connection (the ambassador's end and,
// with `simulator serve --mtls`, the in-process backend's end), plus 128
// for the listeners, status scrapes, the CA, blacklist and CRL files being
// reloaded, logs, stdio and the Go runtime's own descriptors (epoll, pipes).
func connReserve(upstreamMaxConns int) int { return 2*upstreamMaxConns + 128 }

// minMaxConns is the smallest MaxConns DeriveMaxConns returns, so a tiny
// open-file limit still leaves a usable server.
const minMaxConns = 16

// fallbackFileLimit is the open-file limit assumed where it cannot be read.
const fallbackFileLimit = 1024

// DeriveMaxConns returns the MaxConns used when Options.MaxConns is 0, for
// an open-file soft limit: the descriptors left after the reserve for
// upstream connections, listeners and files (2 x upstreamMaxConns + 128)
// are the budget up to the hard ceiling, and MaxConns is the budget less
// the ceiling's margin, so that connections past MaxConns can still be
// handshaken and told to retry before the process runs out of descriptors.
// The result is at least 16.
func DeriveMaxConns(softLimit uint64, upstreamMaxConns int) int {
	budget := int64(softLimit) - int64(connReserve(upstreamMaxConns))
	if softLimit > 1<<40 { // "unlimited" and absurd values
		budget = 1 << 40
	}
	n := budget - max(budget/9, 8) // so that n + n/8, the ceiling, is about the budget
	return int(max(n, minMaxConns))
}

// connCeiling returns the hard ceiling for maxConns: connections past it are
// reset before their handshake. The margin between the two is where
// connections are handshaken and answered 503.
func connCeiling(maxConns int) int { return maxConns + max(maxConns/8, 8) }

// Reasons of mtls_connection_refusals_total.
const (
	refusalConnLimit     = "conn_limit"
	refusalConnCeiling   = "conn_ceiling"
	refusalHandshakeWait = "handshake_wait"
)

func connRefusalReasons() []string {
	return []string{refusalConnLimit, refusalConnCeiling, refusalHandshakeWait}
}

// Backoff after a failed Accept (EMFILE, ENFILE, ECONNABORTED, ...): as
// net/http does, from 5 ms doubling to 1 s, so a listener out of
// descriptors does not spin.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// connLimits are the connection bounds of one Ambassador and their
// counters. Every Listener of the Ambassador shares them, as descriptors
// are a process-wide resource.
type connLimits struct {
	max, ceiling int64
	slots        chan struct{} // handshake slots
	wait         time.Duration // for a handshake slot
	filesSoft    uint64        // open-file limits read by New
	filesHard    uint64
	idle         time.Duration

	open        atomic.Int64 // device connections accepted and not closed
	handshaking atomic.Int64 // TLS handshakes in progress

	shed, overCeiling, handshakeWait, acceptErrors atomic.Uint64
}

func newConnLimits(o Options) *connLimits {
	soft, hard := uint64(fallbackFileLimit), uint64(fallbackFileLimit)
	if files, err := rlimit.CurrentFiles(); err == nil {
		soft, hard = files.Soft, files.Hard
	}
	maxConns := o.MaxConns
	if maxConns == 0 {
		maxConns = DeriveMaxConns(soft, o.UpstreamMaxConns)
	}
	return &connLimits{
		max:       int64(maxConns),
		ceiling:   int64(connCeiling(maxConns)),
		slots:     make(chan struct{}, o.MaxHandshakes),
		wait:      o.HandshakeWait,
		filesSoft: soft,
		filesHard: hard,
		idle:      o.IdleTimeout,
	}
}

// acquire takes a handshake slot, waiting at most l.wait. It reports false
// when none came free in time or ctx ended.
func (l *connLimits) acquire(ctx context.Context) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (l *connLimits) release() { <-l.slots }

// Listener wraps ln, a plain TCP listener, into the TLS listener devices
// connect to; serve it with the http.Server from [Ambassador.Server]:
//
//	srv := a.Server()
//	err := srv.Serve(a.Listener(ln))
//
// It accepts in its own goroutine and performs each TLS handshake, under
// the deadline of the server's ReadHeaderTimeout (10 s), in a goroutine of
// the connection, so a slow or silent client never holds up Accept; Accept
// returns handshaken connections only. It enforces Options.MaxConns (past
// it connections are handshaken and their requests answered 503), the hard
// ceiling (past it connections are reset before the handshake) and
// Options.MaxHandshakes with HandshakeWait. Accept errors such as EMFILE
// are counted, logged at most once per 10 s and retried after a backoff
// from 5 ms to 1 s; other errors end Accept. Close stops accepting, aborts
// the handshakes in progress and returns after their goroutines exit;
// connections already returned by Accept stay open.
func (a *Ambassador) Listener(ln net.Listener) net.Listener {
	ctx, cancel := context.WithCancel(context.Background()) // the listener's lifetime; Close cancels it
	l := &limitListener{
		inner:      ln,
		a:          a,
		lim:        a.conns,
		ctx:        ctx,
		cancel:     cancel,
		conns:      make(chan net.Conn),
		acceptDone: make(chan struct{}),
	}
	tlsCfg := a.TLSConfig()
	l.handshake = func(ctx context.Context, c net.Conn) (net.Conn, error) {
		tc := tls.Server(c, tlsCfg)
		return tc, tc.HandshakeContext(ctx)
	}
	return l
}

// limitListener is the listener returned by [Ambassador.Listener].
type limitListener struct {
	inner net.Listener
	a     *Ambassador
	lim   *connLimits
	// handshake turns an accepted connection into the one Accept returns;
	// a TLS server handshake, replaced by tests of the accept loop.
	handshake func(ctx context.Context, c net.Conn) (net.Conn, error)

	ctx    context.Context
	cancel context.CancelFunc
	conns  chan net.Conn // handshaken connections for Accept

	startOnce  sync.Once
	acceptDone chan struct{} // closed when the accept loop returns
	acceptErr  error         // why it returned; written before acceptDone is closed

	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup // the accept loop and the handshake goroutines
}

// Accept returns the next handshaken device connection.
func (l *limitListener) Accept() (net.Conn, error) {
	l.startOnce.Do(func() { l.wg.Go(l.acceptLoop) })
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.acceptDone:
		return nil, l.acceptErr
	}
}

// Close closes the inner listener, aborts the handshakes in progress and
// waits for the goroutines of the listener. It is idempotent.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.closeErr = l.inner.Close()
		l.startOnce.Do(func() { // never started: Accept must not start it now
			l.acceptErr = net.ErrClosed
			close(l.acceptDone)
		})
	})
	l.wg.Wait()
	return l.closeErr
}

// Addr returns the inner listener's address.
func (l *limitListener) Addr() net.Addr { return l.inner.Addr() }

func (l *limitListener) acceptLoop() {
	defer close(l.acceptDone)
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err == nil {
			delay = 0
			l.admit(c)
			continue
		}
		if l.ctx.Err() != nil || !temporaryAcceptError(err) {
			l.acceptErr = err
			return
		}
		delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
		l.lim.acceptErrors.Add(1)
		l.a.metrics.acceptErrors.Inc()
		l.a.logLimited(l.a.log.Warn, "accept", "accept failed; backing off", "error", err, "retry_in", delay,
			"open_conns", l.lim.open.Load())
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.ctx.Done():
			t.Stop()
			l.acceptErr = net.ErrClosed
			return
		}
	}
}

// temporaryAcceptError reports whether Accept may succeed later: out of
// descriptors or memory, or a connection aborted before it was accepted.
func temporaryAcceptError(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED,
		syscall.ECONNRESET, syscall.ENOBUFS, syscall.ENOMEM, syscall.EAGAIN, syscall.EINTR} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// admit counts a freshly accepted connection and resets it past the
// ceiling; otherwise its handshake runs in a goroutine of its own.
func (l *limitListener) admit(raw net.Conn) {
	n := l.lim.open.Add(1)
	c := &trackedConn{Conn: raw, lim: l.lim, shed: n > l.lim.max}
	if n > l.lim.ceiling {
		// Closed (and uncounted) before the refusal is counted, so that
		// whoever sees the refusal sees the open count back under the
		// ceiling.
		remote := raw.RemoteAddr().String()
		resetClose(c)
		l.lim.overCeiling.Add(1)
		l.a.metrics.connRefusals.WithLabelValues(refusalConnCeiling).Inc()
		l.a.logLimited(l.a.log.Warn, "conn_ceiling", "connection reset before the handshake: at the connection ceiling",
			"ceiling", l.lim.ceiling, "remote", remote)
		return
	}
	l.wg.Go(func() { l.handshakeAndHandOff(c) })
}

func (l *limitListener) handshakeAndHandOff(c *trackedConn) {
	if !l.lim.acquire(l.ctx) {
		if l.ctx.Err() == nil {
			l.lim.handshakeWait.Add(1)
			l.a.metrics.connRefusals.WithLabelValues(refusalHandshakeWait).Inc()
			l.a.logLimited(l.a.log.Warn, "handshake_wait", "connection closed before the handshake: no handshake slot in time",
				"max_handshakes", cap(l.lim.slots), "wait", l.lim.wait, "remote", c.RemoteAddr().String())
		}
		resetClose(c)
		return
	}
	l.lim.handshaking.Add(1)
	_ = c.SetDeadline(time.Now().Add(l.a.handshakeTimeout))
	tc, err := l.handshake(l.ctx, c)
	l.lim.handshaking.Add(-1)
	l.lim.release()
	if err != nil {
		if l.ctx.Err() == nil {
			l.logHandshakeError(c, err)
		}
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	select {
	case l.conns <- tc:
	case <-l.ctx.Done():
		_ = tc.Close()
	}
}

// logHandshakeError reports a failed handshake as http.Server does, through
// ErrorLog, which counts it by reason. A client that spoke plain HTTP gets
// the 400 answer http.Server would give it.
func (l *limitListener) logHandshakeError(c net.Conn, err error) {
	reason := err.Error()
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
		_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		reason = "client sent an HTTP request to an HTTPS server"
	}
	_, _ = fmt.Fprintf(errorLogWriter{a: l.a}, "http: TLS handshake error from %s: %s", c.RemoteAddr(), reason)
}

// looksLikeHTTP reports whether the first five bytes of a connection are
// the start of a plain HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// resetClose closes c with an RST (SO_LINGER 0): the client sees a reset at
// once, and the server keeps no TIME_WAIT state for it.
func resetClose(c *trackedConn) {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// trackedConn is a device connection counted in connLimits.open until it
// is closed.
type trackedConn struct {
	net.Conn
	lim       *connLimits
	shed      bool // accepted past MaxConns: every request is answered 503
	closeOnce sync.Once
}

// Close closes the connection; the first call uncounts it.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.lim.open.Add(-1) })
	return err
}

// ctxShedKey marks the context of a connection accepted past MaxConns.
type ctxShedKey struct{}

// connContext is http.Server.ConnContext: it marks the connections that
// the Listener accepted past MaxConns.
func (a *Ambassador) connContext(ctx context.Context, c net.Conn) context.Context {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return ctx
	}
	if t, ok := tc.NetConn().(*trackedConn); ok && t.shed {
		return context.WithValue(ctx, ctxShedKey{}, true)
	}
	return ctx
}

// shedding reports whether the request came on a connection accepted past
// MaxConns.
func shedding(ctx context.Context) bool {
	b, _ := ctx.Value(ctxShedKey{}).(bool)
	return b
}
