// Package ambassador is a test mTLS edge proxy ("ambassador") that stands in
// front of a Mender server, like Mender's mtls-ambassador, and fixes what its
// public proof of concept lacks.
//
// Every device must present a client certificate that chains to the device
// CA bundle, carries the client-auth extended key usage and is neither
// blacklisted (Mender's MTLS_BLACKLIST_PATH serial list) nor revoked by a
// CRL. The revocation checks run at the handshake and again on every request,
// so a serial blacklisted while a kept-alive connection is open gets nothing
// through. CA bundle, blacklist and CRLs are reloaded when their files change
// or when [Ambassador.Reload] is called, without dropping connections.
//
// Only /api/devices/* is proxied, with [httputil.ReverseProxy] (the Host
// header is rewritten to the upstream). On an auth request the ambassador
// checks that the request's public key is the certificate's key (parsed keys,
// not PEM text), verifies X-MEN-Signature with the certificate's key,
// optionally binds identity attributes to certificate fields, preauthorizes
// the device with the management API (201 and 409 both continue; results are
// cached) and forwards the original bytes unchanged. The management token is
// obtained in the background, refreshed before it expires and on 401, and
// never logged. Errors are Mender JSON errors with request ids;
// [Ambassador.StatusHandler] serves readiness and Prometheus metrics.
package ambassador

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Defaults for the zero values of [Options].
const (
	DefaultReloadInterval  = 2 * time.Second
	DefaultRequestTimeout  = 60 * time.Second
	DefaultPreauthCacheTTL = time.Hour
)

// Upstream transport timeouts that are not configurable.
const (
	upstreamDialTimeout         = 10 * time.Second
	upstreamTLSHandshakeTimeout = 10 * time.Second
)

// Errors a caller can branch on with errors.Is.
var (
	// ErrInvalidOptions wraps every problem New finds in Options.
	ErrInvalidOptions = errors.New("invalid ambassador options")
	// ErrAlreadyRunning is returned by Run when another Run is active.
	ErrAlreadyRunning = errors.New("ambassador is already running")
)

// Options configures an [Ambassador]. Only Upstream, User, Password,
// ServerCertFile, ServerKeyFile and ClientCAFiles are required.
type Options struct {
	// Upstream is the Mender server base URL (http or https, optionally with
	// a path prefix). Required.
	Upstream *url.URL
	// UpstreamCAFile is a PEM file of extra CAs trusted for the upstream's
	// TLS certificate, in addition to the system roots. "" = system roots only.
	UpstreamCAFile string
	// UpstreamInsecureSkipVerify turns off upstream certificate verification
	// (logged at warn level by New). For tests only.
	UpstreamInsecureSkipVerify bool
	// User and Password are the management user's credentials, sent with
	// HTTP Basic auth to the login endpoint to obtain a management JWT.
	// Required. The password is never logged.
	User, Password string
	// ServerCertFile and ServerKeyFile are the ambassador's own TLS
	// certificate (PEM chain, leaf first) and private key (PEM). Required.
	ServerCertFile, ServerKeyFile string
	// ClientCAFiles are the device CA bundle files; each may hold several
	// PEM certificates (or one DER certificate). At least one is required.
	ClientCAFiles []string
	// BlacklistFile lists revoked client certificate serials, one hex serial
	// a line (Mender's MTLS_BLACKLIST_PATH format): case-insensitive, blank
	// lines and lines starting with '#' ignored, leading zeros, a "0x" prefix
	// and ':' separators tolerated. "" = no blacklist.
	BlacklistFile string
	// CRLFiles are PEM or DER certificate revocation lists; each must be
	// signed by one of the client CAs. nil = no CRLs.
	CRLFiles []string
	// MinTLSVersion is the lowest TLS version accepted from devices:
	// tls.VersionTLS12 or tls.VersionTLS13. 0 = TLS 1.2.
	MinTLSVersion uint16
	// BindIdentity lists identity attributes that must equal a certificate
	// field on auth requests. nil = identity data is not checked.
	BindIdentity []Binding
	// ReloadInterval is how often the CA, blacklist and CRL files are
	// stat'ed for changes (mtime or size). 0 = DefaultReloadInterval.
	ReloadInterval time.Duration
	// RequestTimeout bounds each management call (login, preauthorization)
	// and the wait for the response headers of each proxied request; a
	// streamed response body is not cut. 0 = DefaultRequestTimeout.
	RequestTimeout time.Duration
	// PreauthCacheTTL is how long a successful preauthorization of an
	// (identity, key) pair is remembered, so re-authentication of the same
	// device skips the preauthorization call. 0 = DefaultPreauthCacheTTL.
	PreauthCacheTTL time.Duration
	// Transport carries proxied and management requests to the upstream.
	// nil = an http.Transport built from the Upstream* fields with dial,
	// TLS handshake and response header timeouts.
	Transport http.RoundTripper
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock used for certificate validity and token expiry.
	// nil = time.Now.
	Now func() time.Time
}

// Ambassador is the mTLS edge proxy. Create it with [New]; its methods are
// safe for concurrent use.
type Ambassador struct {
	opts       Options
	log        *slog.Logger
	now        func() time.Time
	minVersion uint16
	serverCert tls.Certificate
	transport  http.RoundTripper
	mgmtClient *http.Client
	proxy      *httputil.ReverseProxy

	trust    atomic.Pointer[trustState]
	reloadMu sync.Mutex
	stamps   []fileStamp // guarded by reloadMu

	mgmtMu       sync.Mutex // guards mgmt
	mgmt         mgmtState
	loginMu      sync.Mutex // serialises logins
	tokenChanged chan struct{}

	upstreamMu  sync.Mutex // guards upstreamErr
	upstreamErr error      // last transport error talking to the upstream; nil after any answer

	cache   *preauthCache
	metrics *ambMetrics
	stats   stats
	running atomic.Bool
}

// New validates opts, loads the server certificate, the client CA bundle,
// the blacklist and the CRLs, and returns a ready Ambassador. Errors name the
// offending option or file. New does not contact the upstream; Run does.
func New(opts Options) (*Ambassador, error) {
	if err := validateOptions(&opts); err != nil {
		return nil, err
	}
	a := &Ambassador{
		opts:         opts,
		log:          opts.Logger,
		now:          opts.Now,
		minVersion:   opts.MinTLSVersion,
		tokenChanged: make(chan struct{}, 1),
		cache:        newPreauthCache(opts.PreauthCacheTTL),
		metrics:      newMetrics(),
	}
	cert, err := tls.LoadX509KeyPair(opts.ServerCertFile, opts.ServerKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %q and key %q: %w", opts.ServerCertFile, opts.ServerKeyFile, err)
	}
	a.serverCert = cert

	st, err := loadTrust(opts, nil, a.now(), a.log)
	if err != nil {
		return nil, err
	}
	a.trust.Store(st)
	a.stamps = stampFiles(a.watchedFiles())

	a.transport = opts.Transport
	if a.transport == nil {
		t, err := newUpstreamTransport(opts)
		if err != nil {
			return nil, err
		}
		a.transport = t
	}
	if opts.UpstreamInsecureSkipVerify {
		a.log.Warn("upstream TLS verification is off; use only for tests", "upstream", opts.Upstream.Redacted())
	}
	a.mgmtClient = &http.Client{
		Transport: a.transport,
		Timeout:   opts.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // never replay credentials to another URL
		},
	}
	a.proxy = &httputil.ReverseProxy{
		Rewrite:        a.rewrite,
		Transport:      a.transport,
		FlushInterval:  -1,
		ErrorLog:       slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		ModifyResponse: a.modifyResponse,
		ErrorHandler:   a.proxyError,
	}
	return a, nil
}

func validateOptions(o *Options) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...))
	}
	switch {
	case o.Upstream == nil:
		bad("Upstream is required; set it to the Mender server base URL")
	case o.Upstream.Scheme != "http" && o.Upstream.Scheme != "https":
		bad("Upstream %q: scheme must be http or https", o.Upstream.Redacted())
	case o.Upstream.Host == "":
		bad("Upstream %q: host is empty", o.Upstream.Redacted())
	}
	if o.User == "" || o.Password == "" {
		bad("User and Password are required for the management login")
	}
	if o.ServerCertFile == "" || o.ServerKeyFile == "" {
		bad("ServerCertFile and ServerKeyFile are required")
	}
	if len(o.ClientCAFiles) == 0 {
		bad("ClientCAFiles is empty; give at least one device CA bundle")
	}
	switch o.MinTLSVersion {
	case 0:
		o.MinTLSVersion = tls.VersionTLS12
	case tls.VersionTLS12, tls.VersionTLS13:
	default:
		bad("MinTLSVersion %#04x: use tls.VersionTLS12 or tls.VersionTLS13", o.MinTLSVersion)
	}
	binds := make([]Binding, 0, len(o.BindIdentity))
	for i, b := range o.BindIdentity {
		nb, err := ParseBinding(b.Attr + "=" + b.Field)
		if err != nil {
			bad("BindIdentity[%d]: %v", i, err)
			continue
		}
		binds = append(binds, nb)
	}
	o.BindIdentity = binds
	if o.ReloadInterval < 0 || o.RequestTimeout < 0 || o.PreauthCacheTTL < 0 {
		bad("ReloadInterval, RequestTimeout and PreauthCacheTTL must not be negative")
	}
	if o.ReloadInterval == 0 {
		o.ReloadInterval = DefaultReloadInterval
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.PreauthCacheTTL == 0 {
		o.PreauthCacheTTL = DefaultPreauthCacheTTL
	}
	if o.Upstream != nil {
		u := *o.Upstream // the caller may reuse its URL
		o.Upstream = &u
	}
	o.ClientCAFiles = slices.Clone(o.ClientCAFiles)
	o.CRLFiles = slices.Clone(o.CRLFiles)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return errors.Join(errs...)
}

// upstreamMaxConns bounds the ambassador's connections to the upstream.
const upstreamMaxConns = 256

func newUpstreamTransport(o Options) (*http.Transport, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.UpstreamInsecureSkipVerify} //nolint:gosec // opt-in for tests, logged by New
	if o.UpstreamCAFile != "" {
		pem, err := os.ReadFile(o.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("read upstream CA file %q: %w", o.UpstreamCAFile, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream CA file %q holds no PEM certificate; give a PEM CA bundle", o.UpstreamCAFile)
		}
		tlsCfg.RootCAs = pool
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   upstreamTLSHandshakeTimeout,
		ResponseHeaderTimeout: o.RequestTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   upstreamMaxConns,
		// Bounded: a burst of device connections must queue for upstream
		// connections, not open thousands of TLS sessions to the server at
		// once (measured: an unbounded pool turned a 10,000-device burst
		// into 16,500 upstream 502s; 256 connections carry it with none).
		MaxConnsPerHost: upstreamMaxConns,
	}, nil
}

// Run performs the background work until ctx is done: the management login
// (a failure is retried with backoff from 1s to 30s and reported by
// /status, not returned), the token refresh at 80% of its lifetime, and the
// file reload loop. It returns nil after ctx is done and every goroutine it
// started has exited; a second concurrent Run returns ErrAlreadyRunning.
func (a *Ambassador) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer a.running.Store(false)
	var wg sync.WaitGroup
	wg.Go(func() { a.loginLoop(ctx) })
	wg.Go(func() { a.reloadLoop(ctx) })
	wg.Wait()
	return nil
}

// ErrorLog returns a logger for http.Server.ErrorLog. It classifies TLS
// handshake failures detected by crypto/tls (no certificate, unknown CA,
// expired, wrong key usage) into mtls_handshake_failures_total and forwards
// every line to the Logger. Rejections made by the ambassador's own checks are
// counted where they happen and are not counted twice.
func (a *Ambassador) ErrorLog() *log.Logger {
	return log.New(errorLogWriter{a: a}, "", 0)
}

type errorLogWriter struct{ a *Ambassador }

// ownRejectionMarker prefixes every error the ambassador's VerifyConnection
// returns, so the error log does not count those twice.
const ownRejectionMarker = "ambassador: client certificate rejected"

func (w errorLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if !strings.Contains(line, "TLS handshake error") {
		w.a.log.Warn("http server", "error", line)
		return len(p), nil
	}
	if strings.Contains(line, ownRejectionMarker) {
		w.a.log.Debug("tls handshake rejected", "error", line)
		return len(p), nil
	}
	reason := classifyHandshakeError(line)
	w.a.metrics.handshakeFailure(reason)
	w.a.stats.handshakeFailures.Add(1)
	w.a.log.Info("tls handshake failed", "reason", reason, "error", line)
	return len(p), nil
}

// classifyHandshakeError maps a crypto/tls handshake error text to a metric
// reason label.
func classifyHandshakeError(s string) string {
	switch {
	case strings.Contains(s, "didn't provide a certificate"):
		return reasonNoCertificate
	case strings.Contains(s, "signed by unknown authority"):
		return reasonUnknownAuthority
	case strings.Contains(s, "expired or is not yet valid"):
		return reasonNotValidNow
	case strings.Contains(s, "incompatible key usage"):
		return reasonNotClientAuth
	}
	return reasonOther
}

// Stats are counters for tests and diagnostics; each is a running total
// since New.
type Stats struct {
	Requests          uint64 // requests seen by Handler
	Forwarded         uint64 // requests passed to the upstream
	Rejected          uint64 // requests answered by the ambassador with an error status
	AuthRequests      uint64 // auth requests seen (before any check)
	Preauths          uint64 // preauthorization calls sent upstream (retries included)
	PreauthCacheHits  uint64 // auth requests whose preauthorization was skipped
	Logins            uint64 // successful management logins
	LoginFailures     uint64 // failed management logins
	HandshakeFailures uint64 // rejected TLS handshakes (see ErrorLog)
	Reloads           uint64 // reloads of the CA/blacklist/CRL files
	ReloadFailures    uint64 // reloads where at least one file was kept at its old state
}

type stats struct {
	requests, forwarded, rejected, authRequests, preauths, preauthCacheHits,
	logins, loginFailures, handshakeFailures, reloads, reloadFailures atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (a *Ambassador) Stats() Stats {
	s := &a.stats
	return Stats{
		Requests: s.requests.Load(), Forwarded: s.forwarded.Load(), Rejected: s.rejected.Load(),
		AuthRequests: s.authRequests.Load(), Preauths: s.preauths.Load(),
		PreauthCacheHits: s.preauthCacheHits.Load(), Logins: s.logins.Load(),
		LoginFailures: s.loginFailures.Load(), HandshakeFailures: s.handshakeFailures.Load(),
		Reloads: s.reloads.Load(), ReloadFailures: s.reloadFailures.Load(),
	}
}

func (a *Ambassador) setUpstreamErr(err error) {
	a.upstreamMu.Lock()
	a.upstreamErr = err
	a.upstreamMu.Unlock()
}

// noteUpstreamErr records a transport error for /status unless it only
// reflects the cancellation of ctx (a device that went away, a shutdown).
func (a *Ambassador) noteUpstreamErr(ctx context.Context, err error) {
	if ctx.Err() == nil {
		a.setUpstreamErr(err)
	}
}

func (a *Ambassador) upstreamError() error {
	a.upstreamMu.Lock()
	defer a.upstreamMu.Unlock()
	return a.upstreamErr
}

// newRequestID returns a random UUIDv4-shaped request id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// saneRequestID reports whether an incoming X-MEN-RequestID may be reused:
// 1 to 64 characters from [A-Za-z0-9._:-].
func saneRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

type ctxKey int

const (
	ctxRequestID ctxKey = iota
	ctxPreauthKey
	ctxLeaf
)

func requestIDFrom(ctx context.Context) string {
	s, _ := ctx.Value(ctxRequestID).(string)
	return s
}

// writeError answers with a Mender JSON error; the request id is in the body
// and the header.
func writeError(w http.ResponseWriter, status int, msg, rid string) {
	menderapi.WriteError(w, status, msg, rid)
}
