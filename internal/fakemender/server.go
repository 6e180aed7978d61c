// Package fakemender is an in-memory Mender backend for tests and load runs:
// one http.Handler that plays deviceauth, useradm, inventory and deployments
// as faithfully as docs/protocol.md §10 asks (the "§N" in this package cite
// that page).
//
// Device authentication verifies X-MEN-Signature over the raw body with
// [menderapi.VerifyAuthRequest], keys devices on the canonical identity hash
// and auth sets on (hash, normalized key, device tier; no tier means
// standard), and issues real signed JWTs
// (EdDSA or RS256) with the claims of §3. Device endpoints verify those
// tokens like the real gateway does. Management endpoints take a management
// JWT from the useradm login. Accessors ([Server.Devices], [Server.Stats],
// ...) and fault injection ([Server.AddFault]) serve assertions; the same
// controls are reachable over HTTP under /api/management/v1/fake/ for tests
// that drive a separate process.
//
// Artifacts are real Mender Artifacts, checked with internal/artifact on
// upload and kept as files in Options.ArtifactDir; devices download them
// through HMAC-signed links, as from presigned storage links.
//
// A Server is safe for concurrent use; all state sits behind one mutex. The
// zero value is a usable memory-only server with an Ed25519 signing key
// (artifacts then go to a temporary directory that [Server.Close] removes);
// [New] adds options and persistence.
package fakemender

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Errors returned by the test accessors; callers branch on them with errors.Is.
var (
	// ErrNotFound means the device, auth set or deployment does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNoPending means the device has no pending auth set to accept.
	ErrNoPending = errors.New("no pending auth set")
	// ErrInvalid means a DeploymentSpec, option value or artifact is not
	// valid.
	ErrInvalid = errors.New("invalid value")
	// ErrConflict means an artifact with the same name and an overlapping
	// device type (or the same id) is already stored.
	ErrConflict = errors.New("conflict")
	// ErrTooLarge means an artifact is over Options.MaxArtifactUploadSize.
	ErrTooLarge = errors.New("too large")
)

// Signing algorithms for Options.SigningAlg.
const (
	AlgEdDSA = "EdDSA" // Ed25519 key
	AlgRS256 = "RS256" // RSA-2048 key
)

// Defaults for Options zero values.
const (
	DefaultUser          = "admin@example.com"
	DefaultPassword      = "mender-test"
	DefaultTokenLifetime = 7 * 24 * time.Hour
)

// Options configure a Server. Every zero value has a documented default.
type Options struct {
	// AutoAccept accepts every new auth set at once, as a plain Mender
	// server without an ambassador would after a human accepted it. False:
	// new auth sets stay pending (401) until accepted or preauthorized.
	AutoAccept bool
	// User and Password are the management login (HTTP Basic). The email is
	// compared lowercased. "" user = DefaultUser, "" password = DefaultPassword.
	User, Password string
	// TokenLifetime is the device and management JWT lifetime; 0 = 7 days.
	TokenLifetime time.Duration
	// EnableV2Next serves POST /api/devices/v2/.../next (enterprise). False:
	// it answers 404 as the OSS server does, so clients fall back to v1.
	EnableV2Next bool
	// SigningAlg is the JWT algorithm of a newly generated key: "" or
	// AlgEdDSA = Ed25519, AlgRS256 = RSA-2048. A key loaded from StatePath
	// keeps its own algorithm.
	SigningAlg string
	// StatePath is the JSON state file: "" = memory only. Otherwise New
	// loads it (a missing file starts empty) and every mutation (devices,
	// auth sets, tokens, inventory, deployments, the JWT signing key) is
	// saved atomically, so a restarted process keeps its devices accepted.
	// Device check-in times are saved with the next other mutation only.
	// The file holds the JWT private key and is written with mode 0600.
	StatePath string
	// ArtifactDir is where uploaded and generated artifacts are stored, as
	// ID.mender files (mode 0600); their metadata lives in the state. "" =
	// DIR/artifacts next to StatePath when that is set, else a temporary
	// directory made on first need and removed by Close.
	ArtifactDir string
	// MaxArtifactUploadSize bounds an artifact upload in bytes; larger
	// uploads get 413. 0 = DefaultMaxArtifactUploadSize (1 GiB).
	MaxArtifactUploadSize int64
	// LinkLifetime is how long a signed artifact download link is valid;
	// 0 = DefaultLinkLifetime (24 h).
	LinkLifetime time.Duration
	// DeviceConnectPingInterval is how often the server pings the
	// deviceconnect websockets; a peer that does not answer within the
	// interval is disconnected. 0 = DefaultDeviceConnectPingInterval (30 s).
	DeviceConnectPingInterval time.Duration
	// Now is the clock for token times and timestamps; nil = time.Now.
	Now func() time.Time
	// Logger receives request and auth logs; nil = discard. Tokens and keys
	// are logged as fingerprints only.
	Logger *slog.Logger
}

// Server is the fake Mender backend. It implements http.Handler.
type Server struct {
	once    sync.Once
	initErr error
	opts    Options
	log     *slog.Logger
	now     func() time.Time

	mu              sync.Mutex
	key             *signingKey
	devices         map[string]*device // by device id
	byHash          map[string]string  // identity hash → device id
	tokens          map[string]tokenRecord
	deployments     map[string]*deployment     // by deployment id
	artifacts       map[string]*storedArtifact // by artifact id
	linkKey         []byte                     // HMAC key of download links
	seq             int64
	faults          []*faultEntry
	stats           Stats
	artifactBaseURL string
	table           []route // immutable after ensure

	// dc holds the deviceconnect websockets and sessions.
	dc deviceConnect

	// dirMu guards the artifact directory fields.
	dirMu      sync.Mutex
	artDir     string // "" until first needed
	artDirTemp bool   // artDir is ours to remove in Close
	closed     bool
}

var _ http.Handler = (*Server)(nil)

// New returns a Server configured by opts. It generates the JWT signing key,
// or loads it and all other state from opts.StatePath.
func New(opts Options) (*Server, error) {
	switch opts.SigningAlg {
	case "", AlgEdDSA, AlgRS256:
	default:
		return nil, fmt.Errorf("fakemender options: SigningAlg %q: %w: want %q or %q", opts.SigningAlg, ErrInvalid, AlgEdDSA, AlgRS256)
	}
	if opts.MaxArtifactUploadSize < 0 {
		return nil, fmt.Errorf("fakemender options: MaxArtifactUploadSize %d: %w: want 0 (1 GiB) or positive", opts.MaxArtifactUploadSize, ErrInvalid)
	}
	if opts.LinkLifetime < 0 {
		return nil, fmt.Errorf("fakemender options: LinkLifetime %v: %w: want 0 (24 h) or positive", opts.LinkLifetime, ErrInvalid)
	}
	if opts.DeviceConnectPingInterval < 0 {
		return nil, fmt.Errorf("fakemender options: DeviceConnectPingInterval %v: %w: want 0 (30 s) or positive", opts.DeviceConnectPingInterval, ErrInvalid)
	}
	if opts.TokenLifetime < 0 {
		return nil, fmt.Errorf("fakemender options: TokenLifetime %v: %w: want 0 (7 days) or positive", opts.TokenLifetime, ErrInvalid)
	}
	s := &Server{opts: opts}
	if err := s.ensure(); err != nil {
		return nil, err
	}
	return s, nil
}

// ensure initialises the server once (for New and for the zero value).
func (s *Server) ensure() error {
	s.once.Do(func() {
		s.log = s.opts.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.now = s.opts.Now
		if s.now == nil {
			s.now = time.Now
		}
		if s.opts.User == "" {
			s.opts.User = DefaultUser
		}
		if s.opts.Password == "" {
			s.opts.Password = DefaultPassword
		}
		if s.opts.TokenLifetime == 0 {
			s.opts.TokenLifetime = DefaultTokenLifetime
		}
		s.devices = map[string]*device{}
		s.byHash = map[string]string{}
		s.tokens = map[string]tokenRecord{}
		s.deployments = map[string]*deployment{}
		s.artifacts = map[string]*storedArtifact{}
		if s.opts.MaxArtifactUploadSize == 0 {
			s.opts.MaxArtifactUploadSize = DefaultMaxArtifactUploadSize
		}
		if s.opts.LinkLifetime == 0 {
			s.opts.LinkLifetime = DefaultLinkLifetime
		}
		s.stats = newStats()
		s.table = s.routes()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.initErr = s.loadOrInit()
	})
	return s.initErr
}

// loadOrInit loads the state file or generates a fresh signing key. Called
// with s.mu held.
func (s *Server) loadOrInit() error {
	loaded, err := s.loadLocked()
	if err != nil {
		return err
	}
	if loaded {
		return nil
	}
	alg := s.opts.SigningAlg
	if alg == "" {
		alg = AlgEdDSA
	}
	if s.key, err = generateSigningKey(alg); err != nil {
		return err
	}
	s.linkKey = make([]byte, 32)
	_, _ = rand.Read(s.linkKey) // crypto/rand.Read never fails (Go ≥ 1.24)
	// Save at once so that management tokens survive a restart even when
	// nothing else changed.
	return s.saveLocked()
}

// Route keys of Stats.Requests and Stats.ByRouteStatus.
const (
	RouteAuth      = "auth"
	RouteInventory = "inventory"
	RouteNext      = "next"
	RouteStatus    = "status"
	RouteLog       = "log"
	RouteDownload  = "download"
	RouteMgmt      = "mgmt"
	RouteOther     = "other"
)

// authKind says which token a route needs.
type authKind int

const (
	authNone authKind = iota
	authDevice
	authMgmt
)

// reqCtx carries per-request data from the middleware to handlers.
type reqCtx struct {
	id     string
	params map[string]string
	// devID is set for device routes after the token check.
	devID string
	// authOutcome is set by the auth_requests handler for Stats.
	authOutcome  string
	authDevID    string
	authHash     string
	authKeyPrint string
	// record counts the request in Stats; it runs once, when the handler
	// returns, or before a dropped connection is closed (see drop).
	record func(status int)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, rc *reqCtx)

// route is one path pattern; "{x}" segments capture one non-empty segment.
// An upload route takes a multipart body bounded by the handler instead of
// the JSON body every other route takes.
type route struct {
	key     string
	auth    authKind
	pattern []string
	methods methods
	upload  bool
}

// methods maps an HTTP method to its handler.
type methods map[string]handlerFunc

// routes lists every endpoint; literal patterns come before overlapping
// parameter patterns.
func (s *Server) routes() []route {
	devauth := "api/management/v2/devauth/"
	return []route{
		{RouteAuth, authNone, split(menderapi.PathAuthRequests), methods{"POST": s.handleAuthRequest}, false},
		{RouteInventory, authDevice, split(menderapi.PathInventoryAttributes), methods{"PUT": s.handleInventoryPut, "PATCH": s.handleInventoryPatch}, false},
		{RouteNext, authDevice, split(menderapi.PathNextV1), methods{"GET": s.handleNextV1Get, "POST": s.handleNextV1Post}, false},
		{RouteNext, authDevice, split(menderapi.PathNextV2), methods{"POST": s.handleNextV2}, false},
		{RouteStatus, authDevice, split(menderapi.DeploymentStatusPath("{id}")), methods{"PUT": s.handleDeploymentStatus}, false},
		{RouteLog, authDevice, split(menderapi.DeploymentLogPath("{id}")), methods{"PUT": s.handleDeploymentLog}, false},
		{RouteDownload, authNone, split(pathDownloadPrefix + "{id}"), methods{"GET": s.handleDownload, "HEAD": s.handleDownload}, false},
		{RouteMgmt, authNone, split(menderapi.PathLogin), methods{"POST": s.handleLogin}, false},
		{RouteMgmt, authMgmt, split(devauth + "devices"), methods{"GET": s.handleListDevices, "POST": s.handlePreauth}, false},
		{RouteMgmt, authMgmt, split(devauth + "devices/count"), methods{"GET": s.handleCountDevices}, false},
		{RouteMgmt, authMgmt, split(devauth + "devices/{id}"), methods{"GET": s.handleGetDevice, "DELETE": s.handleDecommission}, false},
		{RouteMgmt, authMgmt, split(devauth + "devices/{id}/auth/{aid}"), methods{"DELETE": s.handleDeleteAuthSet}, false},
		{RouteMgmt, authMgmt, split(devauth + "devices/{id}/auth/{aid}/status"), methods{"GET": s.handleGetAuthSetStatus, "PUT": s.handlePutAuthSetStatus}, false},
		{RouteMgmt, authMgmt, split(menderapi.PathDevauthTokensPrefix + "{jti}"), methods{"DELETE": s.handleRevokeToken}, false},
		{RouteMgmt, authMgmt, split(menderapi.PathInventoryMgmtPrefix + "{id}"), methods{"GET": s.handleInventoryMgmt}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "group/{name}"), methods{"POST": s.handleCreateGroupDeployment}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}/status"), methods{"PUT": s.handleMgmtDeploymentStatus}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}/devices"), methods{"GET": s.handleMgmtDeploymentDevices}, false},
		{RouteMgmt, authMgmt, split(pathFakePrefix + "faults"), methods{"POST": s.handleFakeAddFault, "DELETE": s.handleFakeClearFaults}, false},
		{RouteMgmt, authMgmt, split(pathFakePrefix + "stats"), methods{"GET": s.handleFakeStats}, false},
		{RouteMgmt, authMgmt, split(pathFakePrefix + "deployments"), methods{"POST": s.handleFakeAddDeployment}, false},
		{RouteMgmt, authMgmt, split(pathMgmtArtifacts), methods{"GET": s.handleListArtifacts, "POST": s.handleUploadArtifact}, true},
		{RouteMgmt, authMgmt, split(pathMgmtArtifacts + "/list"), methods{"GET": s.handleListArtifactsPaged}, false},
		{RouteMgmt, authMgmt, split(pathMgmtArtifacts + "/{id}"), methods{"GET": s.handleGetArtifact, "DELETE": s.handleDeleteArtifact}, false},
		{RouteMgmt, authMgmt, split(pathMgmtArtifacts + "/{id}/download"), methods{"GET": s.handleArtifactDownloadLink}, false},
		{RouteMgmt, authMgmt, split(strings.TrimSuffix(pathMgmtDeployments, "/")), methods{"GET": s.handleListDeployments, "POST": s.handleCreateDeployment}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}"), methods{"GET": s.handleGetDeployment}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}/statistics"), methods{"GET": s.handleDeploymentStatistics}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}/devices/list"), methods{"GET": s.handleMgmtDeploymentDevicesPaged}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeployments + "{id}/devices/{devid}/log"), methods{"GET": s.handleMgmtDeviceLog}, false},
		{RouteMgmt, authMgmt, split(strings.TrimSuffix(menderapi.PathInventoryMgmtPrefix, "/")), methods{"GET": s.handleInventoryList}, false},
		{RouteMgmt, authMgmt, split(menderapi.PathInventoryMgmtPrefix + "{id}/group"), methods{"PUT": s.handleSetGroup}, false},
		{RouteDeviceConnect, authDevice, split(pathDeviceConnect), methods{"GET": s.handleDeviceConnect}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeviceConnect + "{id}"), methods{"GET": s.handleDeviceConnectStatus}, false},
		{RouteMgmt, authMgmt, split(pathMgmtDeviceConnect + "{id}/connect"), methods{"GET": s.handleMgmtDeviceConnect}, false},
	}
}

func split(p string) []string { return strings.Split(strings.TrimPrefix(p, "/"), "/") }

// match finds the route for path; params holds the captured segments.
func match(routes []route, path string) (*route, map[string]string) {
	segs := split(path)
	for i := range routes {
		rt := &routes[i]
		if len(rt.pattern) != len(segs) {
			continue
		}
		ok := true
		for j, p := range rt.pattern {
			if isParam(p) {
				ok = segs[j] != ""
			} else {
				ok = p == segs[j]
			}
			if !ok {
				break
			}
		}
		if !ok {
			continue
		}
		params := map[string]string{}
		for j, p := range rt.pattern {
			if isParam(p) {
				params[p[1:len(p)-1]] = segs[j]
			}
		}
		return rt, params
	}
	return nil, nil
}

func isParam(seg string) bool { return strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") }

// routeKeyForPath classifies paths that match no route, for Stats.
func routeKeyForPath(path string) string {
	if strings.HasPrefix(path, "/api/management/") {
		return RouteMgmt
	}
	return RouteOther
}

// ServeHTTP serves every device and management endpoint. Each response
// carries the request id in X-MEN-RequestID (taken from the request when
// present, as Mender's middleware does) and errors use the Mender JSON shape.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := &reqCtx{id: r.Header.Get(menderapi.HeaderRequestID)}
	if rc.id == "" {
		rc.id = newUUID()
	}
	w.Header().Set(menderapi.HeaderRequestID, rc.id)
	rec := &statusRecorder{ResponseWriter: w}
	if err := s.ensure(); err != nil {
		s.log.Error("fake backend not initialised", "err", err)
		menderapi.WriteError(rec, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	rt, params := match(s.table, r.URL.Path)
	key := routeKeyForPath(r.URL.Path)
	if rt != nil {
		key = rt.key
		rc.params = params
	}
	var recorded bool
	rc.record = func(status int) {
		if !recorded {
			recorded = true
			s.record(key, status, r, rc)
		}
	}
	defer func() { rc.record(rec.status) }()

	if !strings.HasPrefix(r.URL.Path, pathFakePrefix) && s.applyFault(rec, r, rc) {
		return
	}
	if rt == nil {
		menderapi.WriteError(rec, http.StatusNotFound, "not found", rc.id)
		return
	}
	h, ok := rt.methods[r.Method]
	if !ok {
		rec.Header().Set("Allow", strings.Join(slices.Sorted(maps.Keys(rt.methods)), ", "))
		menderapi.WriteError(rec, http.StatusMethodNotAllowed, "method not allowed", rc.id)
		return
	}
	switch rt.auth {
	case authDevice:
		if !s.checkDeviceToken(rec, r, rc) {
			return
		}
	case authMgmt:
		if !s.checkMgmtToken(rec, r, rc) {
			return
		}
	}
	if rt.upload && r.Method == http.MethodPost {
		h(rec, r, rc)
		return
	}
	if r.ContentLength > menderapi.MaxBodySize {
		menderapi.WriteError(rec, http.StatusRequestEntityTooLarge, "request body too large", rc.id)
		return
	}
	r.Body = http.MaxBytesReader(rec, r.Body, menderapi.MaxBodySize)
	if (r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch) && r.ContentLength > 0 {
		mt, _, err := mime.ParseMediaType(r.Header.Get(menderapi.HeaderContentType))
		if err != nil {
			menderapi.WriteError(rec, http.StatusBadRequest, "invalid Content-Type header: "+err.Error(), rc.id)
			return
		}
		if mt != menderapi.ContentTypeJSON {
			menderapi.WriteError(rec, http.StatusUnsupportedMediaType, "Content-Type must be application/json, got "+mt, rc.id)
			return
		}
	}
	h(rec, r, rc)
}

// statusRecorder remembers the status code for Stats. It unwraps for
// http.ResponseController (hijacking, flushing).
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// newUUID returns a random UUIDv4 string, the id format of deviceauth.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return formatUUID(b)
}

// formatUUID sets the version 4 and variant bits of b and formats it.
func formatUUID(b [16]byte) string {
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// writeJSON writes v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// readBody reads the (size-limited) body; it answers 413 or 400 itself and
// reports false on failure.
func readBody(w http.ResponseWriter, r *http.Request, rc *reqCtx) ([]byte, bool) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			menderapi.WriteError(w, http.StatusRequestEntityTooLarge, "request body too large", rc.id)
		} else {
			menderapi.WriteError(w, http.StatusBadRequest, "cannot read request body", rc.id)
		}
		return nil, false
	}
	return b, true
}

// mutatedLocked saves state after a mutation; on failure it answers 500 and
// reports false. Called with s.mu held.
func (s *Server) mutatedLocked(w http.ResponseWriter, rc *reqCtx) bool {
	if err := s.saveLocked(); err != nil {
		s.log.Error("save state", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return false
	}
	return true
}
