// Package client speaks the Mender device API as one device: it signs and
// sends auth requests (with failover across servers), keeps the device token,
// sends inventory, checks for deployments, reports deployment status and logs,
// downloads artifacts with resume, and runs the polling daemon loop with
// jittered schedules and classified retries (internal/retry). A daemon reads
// the loop's progress as a [State] (Options.OnState) and replaces a Client
// between polls with [Client.Stop].
//
// API calls never follow HTTP redirects: a 3xx answer is an [APIError]
// naming its Location, so the device token, the tenant token and the
// inventory go only to the configured server. Artifact downloads follow at
// most 3 redirects, each from https to https, without Authorization.
//
// TLS is built in one place (newTLSConfig): TLS 1.2 or later, system roots
// plus ServerCertificate, the mTLS client certificate read from the
// Credential at every handshake, and full server verification that also
// accepts legacy Common-Name-only server certificates with a warning.
//
// The package knows nothing about where keys, certificates or identity come
// from: callers pass a crypto.Signer, a [Credential] and identity/inventory
// functions in [Options]. The wire format comes from internal/menderapi.
package client

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// Defaults applied by [New] for zero Options fields.
const (
	DefaultUpdatePollInterval    = 1800 * time.Second
	DefaultInventoryPollInterval = 28800 * time.Second
	DefaultRetryPollInterval     = 300 * time.Second
	DefaultPollJitter            = 0.1
	DefaultRequestTimeout        = 60 * time.Second
	// DefaultArtifactName is reported when no artifact name is known, as
	// Mender does on first boot without a bootstrap artifact.
	DefaultArtifactName = "unknown"
)

const (
	// maxRetryAfter caps a server's Retry-After: honoured exactly up to 1h.
	maxRetryAfter = time.Hour
	// firstContactSpread is the largest random delay before the first
	// request of Run, so a fleet that boots together does not knock at once.
	firstContactSpread = time.Second
	// maxBackoffBase is the largest first-retry ceiling of the failure backoff.
	maxBackoffBase = 60 * time.Second
	// maxResponseBody bounds every API response body read into memory.
	maxResponseBody = 1 << 20
)

// Operation names used in [Event.Op], [APIError.Op] and logs.
const (
	OpAuth      = "auth"
	OpInventory = "inventory"
	OpNext      = "next"
	OpStatus    = "status"
	OpLog       = "log"
	OpDownload  = "download"
)

// Credential is an mTLS client identity: the private key as a crypto.Signer
// plus its certificate chain, leaf first. CertificateChain is called at every
// TLS handshake, so a renewed certificate is used on the next connection. An
// empty chain means no client certificate is presented. Implementations must
// be safe for concurrent use.
type Credential interface {
	crypto.Signer
	CertificateChain() []*x509.Certificate
}

// Options configure a [Client]. Zero values are documented per field.
type Options struct {
	// Servers are base URLs (e.g. "https://mender.example.com"), tried in
	// order for authentication (failover). A URL without a scheme gets
	// "https://"; one trailing slash is removed; duplicates are dropped.
	// Required.
	Servers []string
	// AuthKey signs auth requests (RSA, ECDSA or Ed25519). Required. Behind
	// an mTLS ambassador it must be the key of TLSCredential.
	AuthKey crypto.Signer
	// TLSCredential is the mTLS client certificate and key, asked for at
	// every TLS handshake. nil means no client certificate.
	TLSCredential Credential
	// TenantToken is sent in the auth request (hosted/enterprise Mender).
	// Surrounding whitespace is trimmed. "" means none.
	TenantToken string
	// DeviceTier is the tier sent in the auth request, as Mender 5.1 sends
	// it: menderapi.TierStandard, TierMicro or TierSystem. "" means
	// standard.
	DeviceTier string
	// Identity returns the device identity attributes; it is called at each
	// authentication, under the request timeout. Required.
	Identity func(ctx context.Context) (menderapi.Attributes, error)
	// Inventory returns script inventory attributes; it is called at each
	// inventory update, under the request timeout. nil means none (only the
	// attributes the client always sets are sent).
	Inventory func(ctx context.Context) (menderapi.Attributes, error)
	// DeviceType is reported in inventory and update checks. Required.
	DeviceType string
	// ArtifactName is the installed artifact's name; "" means "unknown".
	// [Client.SetArtifactName] changes it later.
	ArtifactName string
	// ClientVersion is the mender_client_version inventory value; "" means
	// "unknown".
	ClientVersion string
	// UserAgent is the User-Agent header of every request: auth, inventory,
	// update checks, status and log uploads, and artifact downloads
	// (redirects included). "" means UserAgent("") (see [UserAgent]).
	UserAgent string
	// ServerCertificate is an extra trusted CA or server certificate PEM
	// file, added to the trusted roots. "" means none.
	ServerCertificate string
	// RootCAs are the trusted roots; ServerCertificate is added to a copy.
	// nil means the system pool (an empty pool where there is none).
	RootCAs *x509.CertPool
	// SkipVerify disables all TLS server verification. Insecure: New logs a
	// warning every time.
	SkipVerify bool
	// UpdatePollInterval is the update-check period, also the retry period
	// after a permanent error. 0 means 1800s.
	UpdatePollInterval time.Duration
	// InventoryPollInterval is the inventory period. 0 means 28800s.
	InventoryPollInterval time.Duration
	// RetryPollInterval is the wait while the device is pending acceptance
	// and the cap of the failure backoff, whose first ceiling is
	// min(RetryPollInterval, 60s)/8 and doubles per failure (full jitter).
	// 0 means 300s.
	RetryPollInterval time.Duration
	// PollJitter spreads every periodic wait uniformly over
	// interval·(1 ± PollJitter). 0 means 0.1; allowed range (0, 1]. The first
	// request of Run is delayed by a random value under one second.
	PollJitter float64
	// RequestTimeout bounds every request (and the identity and inventory
	// functions). For downloads it bounds the wait for the response headers
	// and any stall between body reads. 0 means 60s.
	RequestTimeout time.Duration
	// HTTPClient sends every request. nil means a client built from the TLS
	// options above (newTLSConfig/newTransport); when set, ServerCertificate,
	// RootCAs, SkipVerify and TLSCredential are not used by the client and
	// the caller's transport must handle TLS (tests, fleet simulator). Its
	// CheckRedirect is ignored: New uses copies with the client's own
	// redirect policy and leaves the caller's http.Client unmodified.
	HTTPClient *http.Client
	// Logger receives structured logs; nil discards them. Tokens and keys are
	// never logged, only their fingerprints.
	Logger *slog.Logger
	// Observer is called synchronously after every HTTP exchange (for fleet
	// metrics); it must be fast and safe for concurrent use. nil means none.
	Observer func(Event)
	// OnDeployment is called by Run when an update check returns deployment
	// instructions (after they are logged). This agent does not install
	// artifacts itself; nil means log only.
	OnDeployment func(ctx context.Context, d *menderapi.DeploymentInstructions)
	// OnState is called with a fresh [Client.State] after every auth
	// exchange and every job attempt of Run or Step, synchronously on the
	// calling goroutine (two jobs may call it concurrently); it must not
	// block for long. A daemon writes its status file and reports
	// readiness from it. nil means none.
	OnState func(State)
	// OnToken is called after every successful authentication with the new
	// token and the base URL of the server that issued it, synchronously on
	// the authenticating goroutine, before Authenticate returns; it must not
	// block for long and must never log the token. A D-Bus service
	// (io.mender.Authentication1) publishes it from here. nil means none.
	OnToken func(token, server string)
	// Rand returns uniform values in [0, 1) for jitter and backoff; calls are
	// serialised by the client. nil means math/rand/v2.
	Rand func() float64
}

// Event describes one finished HTTP exchange, for [Options.Observer].
type Event struct {
	// Op is one of auth, inventory, next, status, log, download.
	Op string
	// Status is the HTTP status code, 0 when no response arrived.
	Status int
	// Err is the error that ended the exchange: a transport error (Status
	// 0), or for downloads also a failure while reading the body. nil when
	// the whole answer arrived, whatever its status.
	Err error
	// Duration is the time from sending the request until the response body
	// was read (the whole transfer for downloads).
	Duration time.Duration
	// Server is the base URL the request went to (scheme and host only for
	// downloads, never the presigned query).
	Server string
}

// Client is one Mender device. All methods are safe for concurrent use; Run
// may be running while other methods are called.
type Client struct {
	opts     Options // defaults applied; never modified after New
	servers  []string
	log      *slog.Logger
	hc       *http.Client // API calls: never follows redirects
	dl       *http.Client // artifact downloads: followDownloadRedirect
	rand     func() float64
	backoff  retry.Backoff
	keyFP    string
	authSem  chan struct{} // one authentication at a time
	legacyCN sync.Once     // one warning per Client for a CN-only server cert
	running  atomic.Bool
	authOK   chan struct{} // closed at the first successful authentication
	authOnce sync.Once
	rec      stateRecord // what State reports; see state.go

	mu           sync.Mutex
	token        string // verbatim auth response body; "" = none
	server       string // base URL that issued token
	artifactName string
}

// New validates opts, applies defaults and builds the TLS configuration.
// Every problem is reported, each naming its Options field.
func New(opts Options) (*Client, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	servers, errs := normalizeServers(opts.Servers)
	if opts.AuthKey == nil {
		errs = append(errs, errors.New("AuthKey is nil: set the key that signs auth requests"))
	} else if _, err := menderapi.SignerOpts(opts.AuthKey.Public()); err != nil {
		errs = append(errs, fmt.Errorf("AuthKey: %w (use RSA, ECDSA or Ed25519)", err))
	}
	if opts.Identity == nil {
		errs = append(errs, errors.New("Identity is nil: set the function that returns the device identity"))
	}
	if strings.TrimSpace(opts.DeviceType) == "" {
		errs = append(errs, errors.New("DeviceType is empty: set the device type (the device_type file value)"))
	}
	if opts.DeviceTier != "" && !menderapi.ValidTier(opts.DeviceTier) {
		errs = append(errs, fmt.Errorf("DeviceTier is %q: use standard, micro or system (\"\" means standard)", opts.DeviceTier))
	}
	if !validHeaderValue(opts.UserAgent) {
		errs = append(errs, fmt.Errorf("UserAgent %q has control characters: it must fit in an HTTP header", opts.UserAgent))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"UpdatePollInterval", &opts.UpdatePollInterval, DefaultUpdatePollInterval},
		{"InventoryPollInterval", &opts.InventoryPollInterval, DefaultInventoryPollInterval},
		{"RetryPollInterval", &opts.RetryPollInterval, DefaultRetryPollInterval},
		{"RequestTimeout", &opts.RequestTimeout, DefaultRequestTimeout},
	} {
		switch {
		case *d.v < 0:
			errs = append(errs, fmt.Errorf("%s is negative (%v): use 0 for the default %v", d.name, *d.v, d.def))
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case opts.PollJitter == 0:
		opts.PollJitter = DefaultPollJitter
	case math.IsNaN(opts.PollJitter) || opts.PollJitter < 0 || opts.PollJitter > 1:
		errs = append(errs, fmt.Errorf("PollJitter is %v: use a fraction in (0, 1], or 0 for %v", opts.PollJitter, DefaultPollJitter))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("client options: %w", errors.Join(errs...))
	}
	opts.TenantToken = strings.TrimSpace(opts.TenantToken)
	if opts.ArtifactName == "" {
		opts.ArtifactName = DefaultArtifactName
	}
	if opts.ClientVersion == "" {
		opts.ClientVersion = "unknown"
	}
	if opts.DeviceTier == "" {
		opts.DeviceTier = menderapi.TierStandard
	}
	if opts.UserAgent == "" {
		opts.UserAgent = UserAgent("")
	}

	c := &Client{
		opts:         opts,
		servers:      servers,
		log:          log,
		rand:         lockedRand(opts.Rand),
		keyFP:        menderapi.Fingerprint(opts.AuthKey.Public()),
		authSem:      make(chan struct{}, 1),
		authOK:       make(chan struct{}),
		artifactName: opts.ArtifactName,
	}
	c.backoff = retry.Backoff{
		Base: max(min(opts.RetryPollInterval, maxBackoffBase)/8, time.Millisecond),
		Max:  opts.RetryPollInterval,
		Rand: c.rand,
	}
	var hc http.Client
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient // a copy: the caller's client keeps its own CheckRedirect
	} else {
		cfg, err := c.newTLSConfig()
		if err != nil {
			return nil, fmt.Errorf("client options: %w", err)
		}
		hc = http.Client{Transport: c.newTransport(cfg)}
	}
	// Both share the transport, so its connections and TLS sessions.
	api, dl := hc, hc
	api.CheckRedirect = refuseRedirect
	dl.CheckRedirect = followDownloadRedirect
	c.hc, c.dl = &api, &dl
	if opts.SkipVerify {
		log.Warn("TLS server verification is disabled (SkipVerify): anyone on the network path can impersonate the server",
			"hint", "set ServerCertificate to the server's CA file instead")
	}
	for _, s := range servers {
		if strings.HasPrefix(s, "http://") {
			log.Warn("server URL uses plain http: traffic and tokens are not encrypted", "server", s)
		}
	}
	if cred := opts.TLSCredential; cred != nil && !menderapi.PublicKeysEqual(cred.Public(), opts.AuthKey.Public()) {
		log.Warn("auth key differs from the mTLS client certificate key; an mTLS ambassador refuses such auth requests",
			"auth_key", c.keyFP, "tls_key", menderapi.Fingerprint(cred.Public()))
	}
	return c, nil
}

// UserAgent returns the agent's User-Agent value for version:
// "device-agent/<version> (<GOOS>/<GOARCH>)", the form Mender 5.1's
// "Mender/<version>" takes here plus the platform. "" means "unknown".
func UserAgent(version string) string {
	if version == "" {
		version = "unknown"
	}
	return "device-agent/" + version + " (" + runtime.GOOS + "/" + runtime.GOARCH + ")"
}

// normalizeServers applies the Mender URL rules to every server and reports
// each bad entry by index.
func normalizeServers(in []string) ([]string, []error) {
	if len(in) == 0 {
		return nil, []error{fmt.Errorf("Servers is empty: %w (set at least one server URL)", ErrNoServer)}
	}
	var (
		out  []string
		errs []error
		seen = map[string]bool{}
	)
	for i, s := range in {
		n, err := normalizeServer(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("Servers[%d] %q: %w", i, s, err))
			continue
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, errs
}

func normalizeServer(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty URL")
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("not a URL: %w", err)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("scheme %q: use https:// (or http://)", u.Scheme)
	case u.Host == "":
		return "", errors.New("no host: use https://host[:port]")
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return "", errors.New("a server URL has no user info, query or fragment")
	}
	return strings.TrimSuffix(s, "/"), nil
}

// lockedRand returns a goroutine-safe source of uniform [0, 1) values.
func lockedRand(r func() float64) func() float64 {
	if r == nil {
		return rand.Float64
	}
	var mu sync.Mutex
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r()
	}
}

// SetArtifactName sets the artifact name reported from now on ("" means
// "unknown"). Safe for concurrent use.
func (c *Client) SetArtifactName(name string) {
	if name == "" {
		name = DefaultArtifactName
	}
	c.mu.Lock()
	c.artifactName = name
	c.mu.Unlock()
}

func (c *Client) currentArtifactName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.artifactName
}

// Token returns the current device token verbatim, "" when there is none.
// For tests only: never log it.
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Server returns the base URL of the server that issued the current token,
// or "" when the client holds none. Safe for concurrent use.
func (c *Client) Server() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

func (c *Client) observe(ev Event) {
	c.recordExchange(ev)
	if c.opts.Observer != nil {
		c.opts.Observer(ev)
	}
}
