package ambassador

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"path"
	"strings"
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

// Client-Cert (RFC 9440) carries the verified leaf certificate upstream.
// Incoming copies of these headers are always removed.
const (
	headerClientCert      = "Client-Cert"
	headerClientCertChain = "Client-Cert-Chain"
)

const devicesPrefix = "/api/devices/"

// Handler returns the device-facing handler, to be served with TLSConfig.
// It answers every request with X-MEN-RequestID (the device's own id when it
// is sane, else a new one), refuses requests whose client certificate is
// revoked, expired or no longer trusted (403), proxies /api/devices/* to the
// upstream and answers anything else with 404. Paths with dot or empty
// segments are refused (400). Proxied requests carry the verified leaf
// certificate in the Client-Cert header (RFC 9440); a device's own
// Client-Cert headers are dropped. It holds no per-connection state, so
// http.Server.Shutdown drains it normally.
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
	serial := ""
	if len(certs) > 0 {
		serial = serialKey(certs[0].SerialNumber)
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
		log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", code,
			"duration", time.Since(start), "remote", r.RemoteAddr, "serial", serial)
	}()

	if _, err := a.checkPeer(a.trust.Load(), certs, chains); err != nil {
		a.reject(sw, http.StatusForbidden, err.Error(), rid)
		return
	}
	leaf := certs[0]

	p := r.URL.Path
	clean := path.Clean(p)
	if clean != p && clean+"/" != p {
		a.reject(sw, http.StatusBadRequest, "invalid request path: dot segments and empty segments are refused", rid)
		return
	}
	if !strings.HasPrefix(clean, devicesPrefix) {
		a.reject(sw, http.StatusNotFound, "not found: only "+devicesPrefix+"* is served", rid)
		return
	}
	ctx := context.WithValue(r.Context(), ctxRequestID, rid)
	ctx = context.WithValue(ctx, ctxLeaf, leaf)
	r = r.WithContext(ctx)
	if clean == menderapi.PathAuthRequests {
		if r.Method != http.MethodPost {
			sw.Header().Set("Allow", http.MethodPost)
			a.reject(sw, http.StatusMethodNotAllowed, "method not allowed: auth requests are POST", rid)
			return
		}
		a.serveAuth(sw, r, leaf, rid, log)
		return
	}
	a.forward(sw, r)
}

// serveAuth checks an auth request against the client certificate,
// preauthorizes the device and forwards the original bytes.
func (a *Ambassador) serveAuth(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate, rid string, log *slog.Logger) {
	a.stats.authRequests.Add(1)
	fail := func(status int, outcome, msg string) {
		a.metrics.authOutcome(outcome)
		a.reject(w, status, msg, rid)
	}
	if r.ContentLength > menderapi.MaxBodySize {
		fail(http.StatusRequestEntityTooLarge, outcomeTooLarge, "request body exceeds 1 MiB")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, menderapi.MaxBodySize+1))
	if err != nil {
		fail(http.StatusBadRequest, outcomeBadRequest, "cannot read request body")
		return
	}
	if len(body) > menderapi.MaxBodySize {
		fail(http.StatusRequestEntityTooLarge, outcomeTooLarge, "request body exceeds 1 MiB")
		return
	}
	req, err := menderapi.ParseAuthRequest(body)
	if err != nil {
		fail(http.StatusBadRequest, outcomeBadRequest, err.Error())
		return
	}
	if !menderapi.PublicKeysEqual(leaf.PublicKey, req.Key) {
		log.Info("auth request key differs from the certificate key", "cert_key", menderapi.Fingerprint(leaf.PublicKey),
			"request_key", menderapi.Fingerprint(req.Key))
		fail(http.StatusBadRequest, outcomeKeyMismatch, "public key does not match the client certificate")
		return
	}
	if err := menderapi.Verify(leaf.PublicKey, body, r.Header.Get(menderapi.HeaderSignature)); err != nil {
		if errors.Is(err, menderapi.ErrMissingSignature) {
			fail(http.StatusBadRequest, outcomeBadSignature, menderapi.ErrMissingSignature.Error())
			return
		}
		fail(http.StatusUnauthorized, outcomeBadSignature, menderapi.ErrBadSignature.Error())
		return
	}
	for _, b := range a.opts.BindIdentity {
		if err := b.check(req.Identity, leaf); err != nil {
			fail(http.StatusForbidden, outcomeIdentityMismatch, err.Error())
			return
		}
	}
	if err := a.preauthorize(r.Context(), req, rid, log); err != nil {
		log.Warn("preauthorization failed; auth request not forwarded", "error", err)
		// The device learns only that it failed; the details (upstream
		// URLs, login problems) stay in the log under the request id.
		fail(http.StatusBadGateway, outcomePreauthFailed, deviceFacing(err))
		return
	}
	a.metrics.authOutcome(outcomeForwarded)
	r = r.WithContext(context.WithValue(r.Context(), ctxPreauthKey, preauthCacheKey(req)))
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	a.forward(w, r)
}

func (a *Ambassador) forward(w http.ResponseWriter, r *http.Request) {
	a.stats.forwarded.Add(1)
	start := time.Now()
	a.proxy.ServeHTTP(w, r)
	a.metrics.upstreamDuration.observe(time.Since(start).Seconds())
}

func (a *Ambassador) reject(w http.ResponseWriter, status int, msg, rid string) {
	a.stats.rejected.Add(1)
	writeError(w, status, msg, rid)
}

// rewrite routes a proxied request to the upstream: URL and Host of the
// upstream, X-Forwarded-*, the request id, and the verified client
// certificate in Client-Cert (RFC 9440) instead of anything the device sent.
func (a *Ambassador) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(a.opts.Upstream)
	pr.SetXForwarded()
	ctx := pr.In.Context()
	pr.Out.Header.Set(menderapi.HeaderRequestID, requestIDFrom(ctx))
	pr.Out.Header.Del(headerClientCert)
	pr.Out.Header.Del(headerClientCertChain)
	if leaf, ok := ctx.Value(ctxLeaf).(*x509.Certificate); ok {
		pr.Out.Header.Set(headerClientCert, ":"+base64.StdEncoding.EncodeToString(leaf.Raw)+":")
	}
}

// modifyResponse records that the upstream answered, keeps one request id on
// the response, and forgets a cached preauthorization when the upstream
// refuses the auth request (for example a device decommissioned and
// re-created as pending), so the next attempt preauthorizes again.
func (a *Ambassador) modifyResponse(resp *http.Response) error {
	a.setUpstreamErr(nil)
	resp.Header.Del(menderapi.HeaderRequestID) // the handler already set ours
	if key, ok := resp.Request.Context().Value(ctxPreauthKey).(string); ok && resp.StatusCode == http.StatusUnauthorized {
		a.cache.forget(key)
	}
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
