package ambassador

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Defaults for the zero values of the limits in [Options].
// DefaultUpstreamWaitTimeout is long enough for a burst to queue rather than
// fail: measured with 10,000 devices ramped over 20 s through the ambassador
// on 2 cores (make bench), 5 s turned 7,059 requests into 503s and took 51 s
// to accept them all without keep-alive; 20 s gave 0 errors in 33 s.
const (
	DefaultBodyReadTimeout     = 30 * time.Second
	DefaultUpstreamWaitTimeout = 20 * time.Second
	DefaultUpstreamMaxConns    = 256
	DefaultMaxInflightPerCert  = 8
)

// serverReadHeaderTimeout bounds a device's TLS handshake and the headers
// of each request; not configurable.
const serverReadHeaderTimeout = 10 * time.Second

// drainLimit bounds how much of a refused request body is read and dropped
// before the answer, so that a client still sending reads the answer instead
// of a connection reset.
const drainLimit = 4 << 20

// Retry-After of the 429 and 503 answers: retryAfterMin seconds plus up to
// retryAfterJitter more, so refused devices do not come back in step.
const (
	retryAfterMin    = 2
	retryAfterJitter = 4
)

// Reasons of mtls_limit_refusals_total.
const (
	limitInflightPerCert = "inflight_per_cert"
	limitUpstreamBusy    = "upstream_busy"
	limitBodyTimeout     = "body_timeout"
	limitBodyTooLarge    = "body_too_large"
)

func limitReasons() []string {
	return []string{limitInflightPerCert, limitUpstreamBusy, limitBodyTimeout, limitBodyTooLarge}
}

// errUpstreamBusy is the error of an upstream round trip that found no free
// upstream slot within UpstreamWaitTimeout; proxyError answers it with 503.
var errUpstreamBusy = errors.New("all upstream connections are busy")

// Server returns the device-facing http.Server: Handler, TLSConfig and
// ErrorLog of a, a 10 s ReadHeaderTimeout, Options.IdleTimeout, a
// ReadTimeout of ReadHeaderTimeout + BodyReadTimeout and the ConnContext
// that lets requests on connections accepted past MaxConns be answered 503.
// Serve it with srv.Serve(a.Listener(ln)), which enforces the connection and
// handshake bounds; srv.Serve(tls.NewListener(ln, srv.TLSConfig)) works but
// bounds nothing.
//
// The ReadTimeout is a backstop for bodies the handler leaves unread; the
// handler reads every body it uses under its own BodyReadTimeout deadline,
// and once a body is read the server lifts the read deadline, so a long
// answer is not cut. There is no WriteTimeout: it bounds the whole answer and
// would cut artifact downloads streamed through the ambassador to slow
// devices (websockets are hijacked and clear their deadlines).
func (a *Ambassador) Server() *http.Server {
	return &http.Server{
		Handler:           a.Handler(),
		TLSConfig:         a.TLSConfig(),
		ErrorLog:          a.ErrorLog(), // counts TLS handshake failures by reason
		ReadHeaderTimeout: serverReadHeaderTimeout,
		ReadTimeout:       serverReadHeaderTimeout + a.opts.BodyReadTimeout,
		IdleTimeout:       a.opts.IdleTimeout,
		ConnContext:       a.connContext,
	}
}

// bodyError is why a device's request body was refused.
type bodyError struct {
	status int
	msg    string
}

// hasBody reports whether r comes with a body to read.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// expectsContinue reports whether the client waits for 100 Continue before
// it sends the body; reading the body would ask for it.
func expectsContinue(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Expect"), "100-continue")
}

// readBody reads r's whole body, at most menderapi.MaxBodySize bytes, under
// a BodyReadTimeout read deadline, before anything goes upstream. It returns
// nil for a request without a body. A refused body is answered by the
// caller with the status of the bodyError: 413 when too large (what the
// client still sends is drained first, see drainBody), 408 when not received
// in time and 400 when unreadable (both with Connection: close).
func (a *Ambassador) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *bodyError) {
	if !hasBody(r) {
		return nil, nil
	}
	tooLarge := &bodyError{http.StatusRequestEntityTooLarge, "request body exceeds 1 MiB"}
	if r.ContentLength > menderapi.MaxBodySize {
		a.countBodyRefusal(limitBodyTooLarge)
		a.drainBody(w, r, false)
		return nil, tooLarge
	}
	a.setBodyDeadline(w)
	body, err := io.ReadAll(io.LimitReader(r.Body, menderapi.MaxBodySize+1))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		a.countBodyRefusal(limitBodyTimeout)
		w.Header().Set("Connection", "close")
		return nil, &bodyError{http.StatusRequestTimeout, "request body not received in time"}
	case err != nil:
		w.Header().Set("Connection", "close")
		return nil, &bodyError{http.StatusBadRequest, "cannot read request body"}
	case len(body) > menderapi.MaxBodySize:
		a.countBodyRefusal(limitBodyTooLarge)
		a.drainBody(w, r, true)
		return nil, tooLarge
	}
	return body, nil
}

func (a *Ambassador) countBodyRefusal(reason string) {
	a.metrics.limitRefusal(reason)
	if reason == limitBodyTimeout {
		a.stats.bodyTimeouts.Add(1)
	} else {
		a.stats.bodiesTooLarge.Add(1)
	}
}

// drainBody reads and drops what is left of r's body, up to drainLimit
// bytes, under the body read deadline, so that a client that writes its
// whole body before it reads gets the answer rather than a connection reset.
// started says readBody has read from the body already: the deadline is set
// and a 100 Continue sent. The answer is marked Connection: close unless the
// body ended. A client still waiting for 100 Continue is not asked for its
// body, and a declared body larger than drainLimit is not read at all.
func (a *Ambassador) drainBody(w http.ResponseWriter, r *http.Request, started bool) {
	if !hasBody(r) {
		return
	}
	if (!started && expectsContinue(r)) || r.ContentLength > drainLimit {
		w.Header().Set("Connection", "close")
		return
	}
	if !started {
		a.setBodyDeadline(w)
	}
	if _, err := io.CopyN(io.Discard, r.Body, drainLimit+1); !errors.Is(err, io.EOF) {
		w.Header().Set("Connection", "close")
	}
}

// setBodyDeadline puts a BodyReadTimeout deadline on reading the request
// body. Once the body has been read to its end the server lifts it. A
// writer without deadlines (httptest.ResponseRecorder) is left alone.
func (a *Ambassador) setBodyDeadline(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(a.opts.BodyReadTimeout))
}

// bufferBody reads the body of a request to forward (see readBody) and
// makes it the request's body, so that the upstream connection is taken only
// for a request that is complete. It answers a refused body itself and then
// returns false. A request without a body, such as a websocket upgrade, is
// left as it is.
func (a *Ambassador) bufferBody(w http.ResponseWriter, r *http.Request, rid string) bool {
	body, berr := a.readBody(w, r)
	if berr != nil {
		a.reject(w, berr.status, berr.msg, rid)
		return false
	}
	if body != nil {
		setBody(r, body)
	}
	return true
}

// setBody makes body the body of r, with a Content-Length.
func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
}

// refuse answers a request the ambassador will not serve, after draining
// the body the client may still be sending (see drainBody).
func (a *Ambassador) refuse(w http.ResponseWriter, r *http.Request, status int, msg, rid string) {
	a.drainBody(w, r, false)
	a.reject(w, status, msg, rid)
}

// rejectRetry answers status (429 or 503) with a jittered Retry-After and a
// JSON error.
func (a *Ambassador) rejectRetry(w http.ResponseWriter, status int, msg, rid string) {
	w.Header().Set(menderapi.HeaderRetryAfter, strconv.Itoa(retryAfterMin+rand.IntN(retryAfterJitter+1)))
	a.reject(w, status, msg, rid)
}

// certLimiter counts the requests in flight per client certificate.
type certLimiter struct {
	max int // < 0 = no limit
	mu  sync.Mutex
	n   map[string]int // certKey → requests in flight; no zero entries
}

func newCertLimiter(max int) *certLimiter {
	return &certLimiter{max: max, n: make(map[string]int)}
}

// acquire takes a slot for key; it reports false when key holds max
// already. Every successful acquire must be paired with a release.
func (l *certLimiter) acquire(key string) bool {
	if l.max < 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[key] >= l.max {
		return false
	}
	l.n[key]++
	return true
}

func (l *certLimiter) release(key string) {
	if l.max < 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[key] <= 1 {
		delete(l.n, key)
		return
	}
	l.n[key]--
}

// upstreamLimiter bounds the round trips in flight to the upstream, proxied
// and management ones alike. A round trip waits at most wait for a slot and
// then fails with errUpstreamBusy, so a burst queues for a bounded time
// instead of without end behind a full connection pool. A slot is held
// until the response body is closed, or released at once for a 101
// (the upgraded connection leaves the transport's pool).
type upstreamLimiter struct {
	next  http.RoundTripper
	slots chan struct{}
	wait  time.Duration
	busy  func() // called for each errUpstreamBusy
}

func newUpstreamLimiter(next http.RoundTripper, slots int, wait time.Duration, busy func()) *upstreamLimiter {
	return &upstreamLimiter{next: next, slots: make(chan struct{}, slots), wait: wait, busy: busy}
}

func (l *upstreamLimiter) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := l.acquire(r.Context()); err != nil {
		if r.Body != nil {
			_ = r.Body.Close() // RoundTrip closes the body, even on errors
		}
		return nil, err
	}
	handedOff := false
	defer func() {
		if !handedOff { // an error, a 101 or a panic below
			l.release()
		}
	}()
	resp, err := l.next.RoundTrip(r)
	if err != nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: sync.OnceFunc(l.release)}
	handedOff = true
	return resp, nil
}

func (l *upstreamLimiter) acquire(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		if l.busy != nil {
			l.busy()
		}
		return errUpstreamBusy
	}
}

func (l *upstreamLimiter) release() { <-l.slots }

// inUse returns the number of upstream slots taken.
func (l *upstreamLimiter) inUse() int { return len(l.slots) }

// releasingBody releases an upstream slot when the response body is closed.
type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

// noteUpstreamBusy counts a round trip that found no free upstream slot.
func (a *Ambassador) noteUpstreamBusy() {
	a.stats.upstreamBusy.Add(1)
	a.metrics.limitRefusal(limitUpstreamBusy)
}

// admitPerCert takes one of the MaxInflightPerCert slots of leaf's
// certificate for the request and returns the func that releases it. When
// the certificate holds all of them it answers 429 with Retry-After and
// returns false.
func (a *Ambassador) admitPerCert(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate, rid string) (release func(), ok bool) {
	key := certKey(leaf)
	if a.perCert.acquire(key) {
		return func() { a.perCert.release(key) }, true
	}
	a.stats.inflightRefused.Add(1)
	a.metrics.limitRefusal(limitInflightPerCert)
	a.drainBody(w, r, false)
	a.rejectRetry(w, http.StatusTooManyRequests, "too many requests in flight for this device certificate; retry later", rid)
	return nil, false
}
