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
// header is rewritten to the upstream; spoofable forwarding and
// client-certificate headers are dropped in every spelling). On an auth
// request the ambassador checks that the pubkey is exactly one PUBLIC KEY
// PEM block holding the certificate's key (parsed keys, not PEM text; a
// separate auth key only with [Options.AllowSeparateAuthKey]), verifies
// X-MEN-Signature with that key, applies the identity policy (optional
// binding of attributes to certificate fields, allowed keys, one identity
// per certificate; without binding a bounded number of new identities per
// certificate and hour), preauthorizes the device with the management API
// using the normalised key (201 and 409 both continue; results are cached in
// a bounded LRU) and forwards the original bytes unchanged. When the
// upstream refuses an auth request whose preauthorization came from the
// cache, the device is preauthorized again (with force for a pending auth
// set, never for a rejected one) and the request is forwarded once more.
// The management token is obtained in the background, refreshed before it
// expires and on 401, and never logged. Errors are Mender JSON errors with
// request ids; [Ambassador.StatusHandler] serves readiness, the connection
// limits and Prometheus metrics (client_golang, one registry per
// Ambassador).
//
// [Ambassador.Listener] sheds overload instead of collapsing: it bounds the
// open device connections (past Options.MaxConns requests get 503 with
// Retry-After; past a hard ceiling connections are reset before their
// handshake) and the TLS handshakes in progress, and backs off when accept
// fails (EMFILE).
//
// Protocol upgrades are refused (400) except a websocket upgrade of GET
// /api/devices/v1/deviceconnect/connect; such a tunnel is closed when a
// reload revokes its certificate or removes its CA, when the certificate
// expires, and when Run returns.
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
	"runtime"
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
	// DefaultPreauthCacheSize is the zero value of Options.PreauthCacheSize.
	DefaultPreauthCacheSize = 1 << 16
	// DefaultNewIdentitiesPerHour is the zero value of
	// Options.NewIdentitiesPerHour.
	DefaultNewIdentitiesPerHour = 10
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
	// UpstreamDialContext, when set, opens the built-in transport's
	// connections to the upstream instead of a TCP dial, for example
	// memconn's DialContext when the backend runs in the same process.
	// With an http Upstream the link carries plain HTTP; with https TLS is
	// still spoken over the connections it returns. Every dial is bounded
	// by a 10 s timeout, and no HTTP proxy from the environment is used.
	// It may not be combined with Transport. nil = dial TCP.
	UpstreamDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
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
	// field on auth requests. When it is set, each bound attribute must be a
	// single JSON string, identity keys other than the bound ones and
	// IdentityKeys are refused (403), and a certificate (issuer and serial)
	// speaks for one identity only: the first one preauthorized through it.
	// nil = identity data is not checked against the certificate.
	BindIdentity []Binding
	// IdentityKeys lists identity attributes allowed besides the bound ones
	// (for example "serial_no"). With BindIdentity set, nil = only the bound
	// attributes are allowed; without it, nil = any attribute, and a
	// non-empty list refuses every key not in it.
	IdentityKeys []string
	// NewIdentitiesPerHour bounds how many identities one certificate may
	// introduce per hour when BindIdentity is not set (with binding it may
	// introduce one, ever); beyond it auth requests get 429 with
	// Retry-After. 0 = DefaultNewIdentitiesPerHour; negative = no limit.
	NewIdentitiesPerHour int
	// AllowSeparateAuthKey accepts auth requests whose pubkey is not the
	// client certificate's key, as Mender gateway 2.x does (MEN-7046): the
	// signature is then verified with the request's key and that key is
	// preauthorized. The certificate must still verify and BindIdentity
	// still applies. False (the default) = the auth key must be the
	// certificate's key, which proves the device holds the certificate's
	// private key in the auth request too.
	AllowSeparateAuthKey bool
	// PreauthCacheSize bounds the preauthorization cache (least recently
	// used entries are dropped first). 0 = DefaultPreauthCacheSize.
	PreauthCacheSize int
	// ReloadInterval is how often the CA, blacklist and CRL files are
	// stat'ed for changes (mtime or size). 0 = DefaultReloadInterval.
	ReloadInterval time.Duration
	// RequestTimeout bounds each management call (login, preauthorization)
	// and the wait for the response headers of each proxied request; a
	// streamed response body is not cut. 0 = DefaultRequestTimeout.
	RequestTimeout time.Duration
	// BodyReadTimeout bounds reading a device's request body, which is read
	// completely (at most 1 MiB, else 413) before an upstream connection is
	// taken; a device that sends it slower gets 408 and its connection is
	// closed. 0 = DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// UpstreamWaitTimeout bounds the wait for a free upstream slot (see
	// UpstreamMaxConns) of each proxied or management request; a device
	// request that waits longer gets 503 with Retry-After.
	// 0 = DefaultUpstreamWaitTimeout.
	UpstreamWaitTimeout time.Duration
	// UpstreamMaxConns bounds the requests in flight to the upstream,
	// proxied and management ones together, and the built-in transport's
	// connections to it. 0 = DefaultUpstreamMaxConns.
	UpstreamMaxConns int
	// MaxInflightPerCert bounds the requests one client certificate (issuer
	// and serial) may have in flight at once, an open websocket included;
	// beyond it requests get 429 with Retry-After.
	// 0 = DefaultMaxInflightPerCert; negative = no limit.
	MaxInflightPerCert int
	// MaxConns bounds the device connections open at once. A connection
	// accepted while MaxConns are open is still handshaken, but every
	// request on it is answered 503 with Retry-After and Connection: close,
	// so the device's own backoff spreads a herd out; beyond a hard ceiling
	// (MaxConns plus an eighth, at least 8 more) a connection is reset
	// before its handshake. 0 = derived from the open-file soft limit (see
	// [DeriveMaxConns]); negative is refused.
	MaxConns int
	// MaxHandshakes bounds the TLS handshakes in progress at once; a new
	// connection waits up to HandshakeWait for a slot and is then closed
	// before its handshake. 0 = DefaultHandshakesPerCPU x GOMAXPROCS;
	// negative is refused.
	MaxHandshakes int
	// HandshakeWait is how long a new connection waits for a handshake slot
	// (see MaxHandshakes). 0 = DefaultHandshakeWait.
	HandshakeWait time.Duration
	// IdleTimeout is how long a kept-alive device connection may sit idle
	// between requests before the server closes it. 0 = DefaultIdleTimeout.
	IdleTimeout time.Duration
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
	buffers    copyBuffers // the proxy's copy buffers

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
	limiter *upstreamLimiter // wraps transport
	perCert *certLimiter
	policy  identityPolicy
	certIDs *certIdentities
	metrics *ambMetrics
	stats   stats
	running atomic.Bool

	conns            *connLimits   // device connection and handshake bounds, shared by every Listener
	handshakeTimeout time.Duration // deadline of one TLS handshake; serverReadHeaderTimeout, lowered by tests

	upgrades     upgradeRegistry // websocket connections hijacked by the proxy
	handshakeLog logLimiter      // handshake failure log lines, by reason
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
		cache:        newPreauthCache(opts.PreauthCacheTTL, opts.PreauthCacheSize),
		policy:       newIdentityPolicy(opts.BindIdentity, opts.IdentityKeys),
		certIDs:      newCertIdentities(opts.NewIdentitiesPerHour),

		handshakeTimeout: serverReadHeaderTimeout,
	}
	a.conns = newConnLimits(opts)
	a.metrics = newMetrics(a.conns)
	a.log.Info("device connection bounds", "max_conns", a.conns.max, "conn_ceiling", a.conns.ceiling,
		"max_handshakes", cap(a.conns.slots), "handshake_wait", opts.HandshakeWait, "idle_timeout", opts.IdleTimeout,
		"files_soft", a.conns.filesSoft, "files_hard", a.conns.filesHard)
	if opts.AllowSeparateAuthKey {
		a.log.Warn("auth keys that differ from the certificate key are accepted (AllowSeparateAuthKey): an auth request " +
			"then proves only that the device holds some key, not the certificate's")
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
	a.limiter = newUpstreamLimiter(a.transport, opts.UpstreamMaxConns, opts.UpstreamWaitTimeout, a.noteUpstreamBusy)
	a.transport = a.limiter // proxied and management requests share the slots
	a.perCert = newCertLimiter(opts.MaxInflightPerCert)
	if opts.UpstreamDialContext != nil && opts.Transport == nil {
		a.log.Info("upstream connections come from UpstreamDialContext, not a TCP dial", "upstream", opts.Upstream.Redacted())
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
		Transport:      authRetryTransport{a: a},
		FlushInterval:  -1,
		BufferPool:     &a.buffers,
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
	keys := make([]string, 0, len(o.IdentityKeys))
	for i, k := range o.IdentityKeys {
		k = strings.TrimSpace(k)
		if k == "" {
			bad("IdentityKeys[%d] is empty; list attribute names such as serial_no", i)
			continue
		}
		keys = append(keys, k)
	}
	o.IdentityKeys = keys
	if o.PreauthCacheSize < 0 {
		bad("PreauthCacheSize %d must not be negative", o.PreauthCacheSize)
	}
	if o.PreauthCacheSize == 0 {
		o.PreauthCacheSize = DefaultPreauthCacheSize
	}
	if o.NewIdentitiesPerHour == 0 {
		o.NewIdentitiesPerHour = DefaultNewIdentitiesPerHour
	}
	if o.ReloadInterval < 0 || o.RequestTimeout < 0 || o.PreauthCacheTTL < 0 {
		bad("ReloadInterval, RequestTimeout and PreauthCacheTTL must not be negative")
	}
	if o.ReloadInterval == 0 {
		o.ReloadInterval = DefaultReloadInterval
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.BodyReadTimeout < 0 || o.UpstreamWaitTimeout < 0 || o.UpstreamMaxConns < 0 {
		bad("BodyReadTimeout, UpstreamWaitTimeout and UpstreamMaxConns must not be negative")
	}
	if o.BodyReadTimeout == 0 {
		o.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if o.UpstreamWaitTimeout == 0 {
		o.UpstreamWaitTimeout = DefaultUpstreamWaitTimeout
	}
	if o.UpstreamMaxConns == 0 {
		o.UpstreamMaxConns = DefaultUpstreamMaxConns
	}
	if o.MaxConns < 0 || o.MaxHandshakes < 0 || o.HandshakeWait < 0 || o.IdleTimeout < 0 {
		bad("MaxConns, MaxHandshakes, HandshakeWait and IdleTimeout must not be negative; 0 picks the default")
	}
	if o.HandshakeWait == 0 {
		o.HandshakeWait = DefaultHandshakeWait
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxHandshakes == 0 {
		o.MaxHandshakes = DefaultHandshakesPerCPU * runtime.GOMAXPROCS(0)
	}
	if o.MaxInflightPerCert == 0 {
		o.MaxInflightPerCert = DefaultMaxInflightPerCert
	}
	if o.PreauthCacheTTL == 0 {
		o.PreauthCacheTTL = DefaultPreauthCacheTTL
	}
	if o.UpstreamDialContext != nil && o.Transport != nil {
		bad("UpstreamDialContext and Transport are both set; UpstreamDialContext applies to the built-in transport only, " +
			"so dial with it in Transport or leave Transport nil")
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
	proxy := http.ProxyFromEnvironment
	dial := (&net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	if d := o.UpstreamDialContext; d != nil {
		proxy = nil // the caller's link leads to the upstream itself
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, upstreamDialTimeout)
			defer cancel()
			return d(ctx, network, addr)
		}
	}
	return &http.Transport{
		Proxy:                 proxy,
		DialContext:           dial,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   upstreamTLSHandshakeTimeout,
		ResponseHeaderTimeout: o.RequestTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   o.UpstreamMaxConns,
		// Bounded: a burst of device connections must queue for upstream
		// connections, not open thousands of TLS sessions to the server at
		// once (measured: an unbounded pool turned a 10,000-device burst
		// into 16,500 upstream 502s; 256 connections carry it with none).
		// UpstreamWaitTimeout bounds the wait for one (upstreamLimiter).
		MaxConnsPerHost: o.UpstreamMaxConns,
	}, nil
}

// Run performs the background work until ctx is done: the management login
// (a failure is retried with backoff from 1s to 30s and reported by
// /status, not returned), the token refresh at 80% of its lifetime, and the
// file reload loop. It returns nil after ctx is done and every goroutine it
// started has exited; a second concurrent Run returns ErrAlreadyRunning.
// On return it closes the connections upgraded to websocket, which
// http.Server.Shutdown neither closes nor waits for.
func (a *Ambassador) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer a.running.Store(false)
	defer a.closeAllUpgrades()
	var wg sync.WaitGroup
	wg.Go(func() { a.loginLoop(ctx) })
	wg.Go(func() { a.reloadLoop(ctx) })
	wg.Wait()
	return nil
}

// ErrorLog returns a logger for http.Server.ErrorLog. It classifies TLS
// handshake failures detected by crypto/tls (no certificate, unknown CA,
// expired, wrong key usage) into mtls_handshake_failures_total and forwards
// the lines to the Logger: every line but handshake failures, which are
// logged at most once per reason every 10 s, the next line carrying the
// number suppressed in between ("suppressed"); the metric counts them all.
// Rejections made by the ambassador's own checks are counted where they
// happen and are not counted twice.
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
		w.a.logLimited(w.a.log.Debug, "rejected-echo", "tls handshake rejected", "error", line)
		return len(p), nil
	}
	reason := classifyHandshakeError(line)
	w.a.metrics.handshakeFailure(reason)
	w.a.stats.handshakeFailures.Add(1)
	w.a.logLimited(w.a.log.Info, "failed/"+reason, "tls handshake failed", "reason", reason, "error", line)
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
	AuthRetries       uint64 // auth requests forwarded again after a stale cached preauthorization
	Logins            uint64 // successful management logins
	LoginFailures     uint64 // failed management logins
	HandshakeFailures uint64 // rejected TLS handshakes (see ErrorLog)
	Reloads           uint64 // reloads of the CA/blacklist/CRL files
	ReloadFailures    uint64 // reloads where at least one file was kept at its old state
	Upgrades          uint64 // device connections upgraded to websocket (deviceconnect)
	UpgradesRefused   uint64 // requests refused (400) for asking for any other upgrade
	UpgradesClosed    uint64 // upgraded connections closed for revocation, lost trust or expiry
	InflightRefused   uint64 // requests refused (429): the certificate had MaxInflightPerCert in flight
	UpstreamBusy      uint64 // upstream calls that found no free slot within UpstreamWaitTimeout (503 to a device, or a failed management call)
	BodyTimeouts      uint64 // request bodies not received within BodyReadTimeout (408)
	BodiesTooLarge    uint64 // request bodies over 1 MiB (413)

	ConnLimitRefused    uint64 // requests answered 503 on connections accepted past MaxConns
	ConnCeilingClosed   uint64 // connections reset before the handshake at the connection ceiling
	HandshakeWaitClosed uint64 // connections closed before the handshake: no handshake slot within HandshakeWait
	AcceptErrors        uint64 // failed accepts of device connections (EMFILE, ...), each followed by a backoff
}

type stats struct {
	requests, forwarded, rejected, authRequests, preauths, preauthCacheHits,
	logins, loginFailures, handshakeFailures, reloads, reloadFailures atomic.Uint64
	authRetries atomic.Uint64

	upgrades, upgradesRefused, upgradesClosed atomic.Uint64

	inflightRefused, upstreamBusy, bodyTimeouts, bodiesTooLarge atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (a *Ambassador) Stats() Stats {
	s := &a.stats
	return Stats{
		Requests: s.requests.Load(), Forwarded: s.forwarded.Load(), Rejected: s.rejected.Load(),
		AuthRequests: s.authRequests.Load(), Preauths: s.preauths.Load(),
		PreauthCacheHits: s.preauthCacheHits.Load(), AuthRetries: s.authRetries.Load(), Logins: s.logins.Load(),
		LoginFailures: s.loginFailures.Load(), HandshakeFailures: s.handshakeFailures.Load(),
		Reloads: s.reloads.Load(), ReloadFailures: s.reloadFailures.Load(),
		Upgrades: s.upgrades.Load(), UpgradesRefused: s.upgradesRefused.Load(), UpgradesClosed: s.upgradesClosed.Load(),
		InflightRefused: s.inflightRefused.Load(), UpstreamBusy: s.upstreamBusy.Load(),
		BodyTimeouts: s.bodyTimeouts.Load(), BodiesTooLarge: s.bodiesTooLarge.Load(),
		ConnLimitRefused: a.conns.shed.Load(), ConnCeilingClosed: a.conns.overCeiling.Load(),
		HandshakeWaitClosed: a.conns.handshakeWait.Load(), AcceptErrors: a.conns.acceptErrors.Load(),
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
	ctxAuthAttempt
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
