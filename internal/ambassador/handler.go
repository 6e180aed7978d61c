package ambassador

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Outcome labels of mtls_auth_requests_total.
const (
	outcomeForwarded        = "forwarded"
	outcomeTooLarge         = "too_large"
	outcomeBadRequest       = "bad_request"
	outcomeKeyMismatch      = "key_mismatch"
	outcomeBadSignature     = "bad_signature"
	outcomeIdentityMismatch = "identity_mismatch"
	outcomePreauthFailed    = "preauth_failed"
)

func authOutcomes() []string {
	return []string{outcomeForwarded, outcomeTooLarge, outcomeBadRequest, outcomeKeyMismatch,
		outcomeBadSignature, outcomeIdentityMismatch, outcomePreauthFailed}
}

// headerClientCert (RFC 9440) carries the verified leaf certificate
// upstream. Incoming Client-Cert* headers are always removed
// (dropSpoofableHeaders).
const headerClientCert = "Client-Cert"

const devicesPrefix = "/api/devices/"

// Handler returns the device-facing handler, to be served with TLSConfig.
// It answers every request with X-MEN-RequestID (the device's own id when it
// is sane, else a new one), refuses requests whose client certificate is
// revoked, expired or no longer trusted (403), proxies /api/devices/* to the
// upstream and answers anything else with 404. Paths with dot or empty
// segments are refused (400). Proxied requests carry the verified leaf
// certificate in the Client-Cert header (RFC 9440); a device's own
// Client-Cert headers are dropped. Websocket connections it upgrades are
// hijacked, so http.Server.Shutdown neither closes nor waits for them; Run
// closes them when it returns.
//
// Resource limits: a request body is read whole (at most 1 MiB, else 413;
// within BodyReadTimeout, else 408) before an upstream connection is taken;
// a certificate with MaxInflightPerCert requests in flight gets 429, and a
// request that finds no upstream connection free within UpstreamWaitTimeout
// gets 503, both with Retry-After. Serve it with [Ambassador.Server] and
// [Ambassador.Listener], which add the server-side timeouts and the
// connection bounds: requests on a connection accepted past MaxConns get 503
// with Retry-After and Connection: close.
func (a *Ambassador) Handler() http.Handler { return http.HandlerFunc(a.serveHTTP) }

func (a *Ambassador) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rid := r.Header.Get(menderapi.HeaderRequestID)
	if !saneRequestID(rid) {
		rid = newRequestID()
	}
	sw := &statusWriter{ResponseWriter: w}
	sw.Header().Set(menderapi.HeaderRequestID, rid)
	r.Header.Set(menderapi.HeaderRequestID, rid)
	log := a.log.With("request_id", rid)
	a.stats.requests.Add(1)

	var certs []*x509.Certificate
	var chains [][]*x509.Certificate
	if r.TLS != nil {
		certs, chains = r.TLS.PeerCertificates, r.TLS.VerifiedChains
	}
	defer func() {
		code := sw.code()
		a.metrics.request(code)
		level := slog.LevelDebug
		switch {
		case code >= 500:
			level = slog.LevelWarn
		case code >= 400:
			level = slog.LevelInfo
		}
		if log.Enabled(r.Context(), level) { // the arguments cost allocations, at every request
			serial := ""
			if len(certs) > 0 {
				serial = serialKey(certs[0].SerialNumber)
			}
			log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", code,
				"duration", time.Since(start), "remote", r.RemoteAddr, "serial", serial)
		}
	}()

	if shedding(r.Context()) { // the connection came past MaxConns
		a.conns.shed.Add(1)
		a.metrics.connRefusals.WithLabelValues(refusalConnLimit).Inc()
		a.drainBody(sw, r, false)
		sw.Header().Set("Connection", "close")
		a.rejectRetry(sw, http.StatusServiceUnavailable, "the ambassador holds its maximum of device connections; retry later", rid)
		return
	}
	if _, err := a.checkPeer(a.trust.Load(), certs, chains); err != nil {
		a.refuse(sw, r, http.StatusForbidden, err.Error(), rid)
		return
	}
	leaf := certs[0]
	releaseSlot, admitted := a.admitPerCert(sw, r, leaf, rid) // 429 beyond MaxInflightPerCert
	if !admitted {
		return
	}
	defer releaseSlot()

	p := r.URL.Path
	clean := path.Clean(p)
	if clean != p && clean+"/" != p {
		a.refuse(sw, r, http.StatusBadRequest, "invalid request path: dot segments and empty segments are refused", rid)
		return
	}
	if !strings.HasPrefix(clean, devicesPrefix) {
		a.refuse(sw, r, http.StatusNotFound, "not found: only "+devicesPrefix+"* is served", rid)
		return
	}
	ctx := context.WithValue(r.Context(), ctxRequestID, rid)
	ctx = context.WithValue(ctx, ctxLeaf, leaf)
	r = r.WithContext(ctx)
	fw := a.admitUpgrade(sw, r, clean, rid) // 400 for any upgrade but a websocket on deviceconnect
	if fw == nil {
		return
	}
	if clean == menderapi.PathAuthRequests {
		if r.Method != http.MethodPost {
			sw.Header().Set("Allow", http.MethodPost)
			a.refuse(sw, r, http.StatusMethodNotAllowed, "method not allowed: auth requests are POST", rid)
			return
		}
		a.serveAuth(sw, r, leaf, rid, log)
		return
	}
	if !a.bufferBody(sw, r, rid) { // the whole body before an upstream connection is taken
		return
	}
	a.forward(fw, r)
}

// serveAuth checks an auth request against the client certificate,
// preauthorizes the device and forwards the original bytes.
func (a *Ambassador) serveAuth(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate, rid string, log *slog.Logger) {
	a.stats.authRequests.Add(1)
	fail := func(status int, outcome, msg string) {
		a.metrics.authOutcome(outcome)
		a.reject(w, status, msg, rid)
	}
	body, berr := a.readBody(w, r) // bounded in size and time, before anything goes upstream
	if berr != nil {
		outcome := outcomeBadRequest
		if berr.status == http.StatusRequestEntityTooLarge {
			outcome = outcomeTooLarge
		}
		fail(berr.status, outcome, berr.msg)
		return
	}
	req, err := menderapi.ParseAuthRequest(body)
	if err == nil {
		err = checkSinglePublicKeyPEM(req.PubKey)
	}
	if err != nil {
		fail(http.StatusBadRequest, outcomeBadRequest, err.Error())
		return
	}
	verifyKey := leaf.PublicKey
	if !menderapi.PublicKeysEqual(leaf.PublicKey, req.Key) {
		log.Info("auth request key differs from the certificate key", "cert_key", menderapi.Fingerprint(leaf.PublicKey),
			"request_key", menderapi.Fingerprint(req.Key), "allowed", a.opts.AllowSeparateAuthKey)
		if !a.opts.AllowSeparateAuthKey {
			fail(http.StatusBadRequest, outcomeKeyMismatch, errKeyMismatchMessage)
			return
		}
		verifyKey = req.Key // gateway 2.x behaviour: the request's own key signed it
	}
	if err := menderapi.Verify(verifyKey, body, r.Header.Get(menderapi.HeaderSignature)); err != nil {
		if errors.Is(err, menderapi.ErrMissingSignature) {
			fail(http.StatusBadRequest, outcomeBadSignature, menderapi.ErrMissingSignature.Error())
			return
		}
		fail(http.StatusUnauthorized, outcomeBadSignature, menderapi.ErrBadSignature.Error())
		return
	}
	if err := a.policy.check(req.Identity, leaf); err != nil {
		fail(http.StatusForbidden, outcomeIdentityMismatch, err.Error())
		return
	}
	cert := certKey(leaf)
	var newClaim bool
	if len(a.opts.BindIdentity) > 0 {
		if newClaim, err = a.certIDs.claim(cert, req.IdentityHash); err != nil {
			log.Info("certificate already speaks for another identity", "serial", serialKey(leaf.SerialNumber),
				"identity_hash", req.IdentityHash)
			fail(http.StatusForbidden, outcomeIdentityMismatch, err.Error()+
				"; each certificate may register one device (ambassador --bind-identity)")
			return
		}
	} else if wait, err := a.certIDs.admit(cert, req.IdentityHash, a.now()); err != nil {
		log.Info("certificate introduces too many identities", "serial", serialKey(leaf.SerialNumber), "retry_in", wait)
		w.Header().Set("Retry-After", strconv.Itoa(int(max(wait, time.Second).Round(time.Second)/time.Second)))
		fail(http.StatusTooManyRequests, outcomeIdentityMismatch, fmt.Sprintf("%v: at most %d new identities an hour",
			err, a.opts.NewIdentitiesPerHour))
		return
	}
	cached, err := a.preauthorize(r.Context(), req, rid, log)
	if err != nil {
		if newClaim {
			a.certIDs.release(cert, req.IdentityHash)
		}
		if errors.Is(err, errUpstreamBusy) {
			a.metrics.authOutcome(outcomePreauthFailed)
			a.rejectRetry(w, http.StatusServiceUnavailable, "server busy: no upstream connection free; retry later", rid)
			return
		}
		log.Warn("preauthorization failed; auth request not forwarded", "error", err)
		// The device learns only that it failed; the details (upstream
		// URLs, login problems) stay in the log under the request id.
		fail(http.StatusBadGateway, outcomePreauthFailed, deviceFacing(err))
		return
	}
	a.metrics.authOutcome(outcomeForwarded)
	at := &authAttempt{req: req, body: body, cached: cached, rid: rid, log: log}
	r = r.WithContext(context.WithValue(r.Context(), ctxAuthAttempt, at))
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	a.forward(w, r)
}

// errKeyMismatchMessage tells the device owner how to fix a key mismatch.
const errKeyMismatchMessage = "public key does not match the client certificate: the auth request must be signed with " +
	"the certificate's key; set Security.AuthPrivateKey to the HttpsClient.Key file (or leave it unset)"

// checkSinglePublicKeyPEM refuses a pubkey that is anything but exactly one
// PEM block (already parsed as PUBLIC KEY) with nothing around it but white
// space and no PEM headers: the ambassador then preauthorizes exactly the
// key it verified, never text it did not look at.
func checkSinglePublicKeyPEM(s string) error {
	const bad = "invalid auth request: pubkey must be exactly one PEM \"PUBLIC KEY\" block"
	i := strings.Index(s, "-----BEGIN ")
	if i < 0 || strings.TrimSpace(s[:i]) != "" {
		return errors.New(bad + " (text before the block)")
	}
	blk, rest := pem.Decode([]byte(s[i:]))
	switch {
	case blk == nil || blk.Type != "PUBLIC KEY":
		return errors.New(bad)
	case len(blk.Headers) > 0:
		return errors.New(bad + " (no PEM headers)")
	case len(bytes.TrimSpace(rest)) > 0:
		return errors.New(bad + " (text or another block after it)")
	}
	return nil
}

// authAttempt is what the auth retry needs to know about a forwarded auth
// request.
type authAttempt struct {
	req    *menderapi.ParsedAuthRequest
	body   []byte
	cached bool // the preauthorization came from the cache
	rid    string
	log    *slog.Logger
}

// authRetryTransport forwards proxied requests. When an auth request whose
// preauthorization came from the cache is refused (401), the cached entry
// was stale (typically the device was decommissioned): it preauthorizes
// again and forwards the buffered body once more, so the device is
// accepted with no manual step. Any other 401 only drops the cache entry.
type authRetryTransport struct{ a *Ambassador }

func (t authRetryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.a.transport.RoundTrip(req)
	at, ok := req.Context().Value(ctxAuthAttempt).(*authAttempt)
	if err != nil || !ok || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	t.a.cache.forget(preauthCacheKey(at.req))
	if !at.cached {
		return resp, nil
	}
	// Keep the refusal, and free its upstream connection before the
	// preauthorization takes another.
	refusal, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(refusal))
	resp.ContentLength = int64(len(refusal))
	resp.Header.Del("Content-Length")
	ctx := req.Context()
	if perr := t.a.repreauthorize(ctx, at.req, at.rid, at.log); perr != nil {
		at.log.Info("auth refused after a cached preauthorization; not retrying", "error", perr)
		return resp, nil
	}
	again := req.Clone(ctx)
	again.Body = io.NopCloser(bytes.NewReader(at.body))
	again.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(at.body)), nil }
	again.ContentLength = int64(len(at.body))
	t.a.stats.authRetries.Add(1)
	return t.a.transport.RoundTrip(again)
}

func (a *Ambassador) forward(w http.ResponseWriter, r *http.Request) {
	a.stats.forwarded.Add(1)
	start := time.Now()
	a.proxy.ServeHTTP(w, r)
	a.metrics.upstreamDuration.Observe(time.Since(start).Seconds())
}

func (a *Ambassador) reject(w http.ResponseWriter, status int, msg, rid string) {
	a.stats.rejected.Add(1)
	writeError(w, status, msg, rid)
}

// rewrite routes a proxied request to the upstream: URL and Host of the
// upstream, X-Forwarded-*, the request id, and the verified client
// certificate in Client-Cert (RFC 9440) instead of anything the device sent.
func (a *Ambassador) rewrite(pr *httputil.ProxyRequest) {
	dropSpoofableHeaders(pr.Out.Header)
	pr.SetURL(a.opts.Upstream)
	pr.SetXForwarded()
	ctx := pr.In.Context()
	pr.Out.Header.Set(menderapi.HeaderRequestID, requestIDFrom(ctx))
	if leaf, ok := ctx.Value(ctxLeaf).(*x509.Certificate); ok {
		pr.Out.Header.Set(headerClientCert, ":"+base64.StdEncoding.EncodeToString(leaf.Raw)+":")
	}
}

// dropSpoofableHeaders removes every header a device could use to pose as
// the ambassador or as another client to the upstream: names that, lowered
// and with '_' read as '-' (as some proxies and CGI-style upstreams read
// them), are client-cert*, x-forwarded-*, forwarded, x-real-ip or
// true-client-ip.
func dropSpoofableHeaders(h http.Header) {
	for k := range h {
		n := strings.ReplaceAll(strings.ToLower(k), "_", "-")
		switch {
		case strings.HasPrefix(n, "client-cert"), strings.HasPrefix(n, "x-forwarded-"),
			n == "forwarded", n == "x-real-ip", n == "true-client-ip":
			delete(h, k)
		}
	}
}

// modifyResponse records that the upstream answered and keeps one request
// id on the response.
func (a *Ambassador) modifyResponse(resp *http.Response) error {
	a.setUpstreamErr(nil)
	resp.Header.Del(menderapi.HeaderRequestID) // the handler already set ours
	return nil
}

// proxyError answers 502 with a JSON error when the upstream cannot be reached.
func (a *Ambassador) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rid := requestIDFrom(r.Context())
	if r.Context().Err() != nil {
		a.log.Debug("device went away before the upstream answered", "request_id", rid, "error", err)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	if errors.Is(err, errUpstreamBusy) { // the ambassador's own limit, not an upstream failure
		a.log.Debug("no upstream connection free in time", "request_id", rid, "wait", a.opts.UpstreamWaitTimeout) // the 503 is logged as the request
		a.rejectRetry(w, http.StatusServiceUnavailable, "server busy: no upstream connection free; retry later", rid)
		return
	}
	a.setUpstreamErr(err)
	a.log.Warn("upstream unavailable", "request_id", rid, "error", err)
	writeError(w, http.StatusBadGateway, "upstream unavailable", rid) // details only in the log
}

// statusWriter records the status code for metrics and logs. Unwrap lets
// http.ResponseController reach Flush and Hijack of the underlying writer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && (code == http.StatusSwitchingProtocols || code >= 200) {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) code() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

// deviceFacing names the class of a preauthorization failure for the device
// without the details (upstream URLs, login problems): those are logged
// under the same request id.
func deviceFacing(err error) string {
	for _, e := range []error{ErrLoginRejected, ErrLoginFailed, ErrUpstreamUnavailable, ErrPreauthFailed} {
		if errors.Is(err, e) {
			return e.Error() + " (details in the ambassador log)"
		}
	}
	return "preauthorization failed (details in the ambassador log)"
}

// copyBufferSize is the size of the buffers the proxy copies response
// bodies through: httputil.ReverseProxy's own default.
const copyBufferSize = 32 << 10

// copyBuffers lends the proxy its copy buffers. Without a pool,
// httputil.ReverseProxy allocates a fresh 32 KiB buffer for every proxied
// response: for a poll answered in a few hundred bytes that was over half
// of all the bytes a proxied request allocated, and what drove the
// garbage collector.
type copyBuffers struct {
	p          sync.Pool
	lent, made atomic.Int64 // buffers handed out, and of those newly made
}

// Get returns a buffer of copyBufferSize bytes.
func (b *copyBuffers) Get() []byte {
	b.lent.Add(1)
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	b.made.Add(1)
	return make([]byte, copyBufferSize)
}

// Put takes back a buffer Get returned.
func (b *copyBuffers) Put(buf []byte) {
	if cap(buf) >= copyBufferSize {
		buf = buf[:copyBufferSize]
		b.p.Put(&buf)
	}
}
