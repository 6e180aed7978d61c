package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/rlimit"
)

// ambassadorFlags are the ambassador's settings; every one can also come
// from the environment variable Mender's mtls-ambassador uses.
type ambassadorFlags struct {
	backend, user, password       string
	serverCert, serverKey         string
	cas, crls                     listFlag
	listen, statusListen          string
	debug, upstreamSkipVerify     bool
	upstreamCA, blacklist, tlsMin string
	bind                          listFlag
	identityKeys                  string
	separateAuthKey               bool
	newIdentitiesPerHour          int
	maxInflightPerCert            int
	bodyTimeout, upstreamWait     time.Duration
	conns                         connFlags
}

// connFlags are the device connection bounds, shared by `simulator
// ambassador` and `simulator serve --mtls`.
type connFlags struct {
	maxConns, maxHandshakes    int
	handshakeWait, idleTimeout time.Duration
}

// register adds the connection bound flags to fs; prefix starts their
// help text ("with --mtls: " for serve).
func (c *connFlags) register(fs *cmdFlags, prefix string) {
	fs.IntVar(&c.maxConns, "max-conns", 0, prefix+"`N` device connections served at once; past N a connection is still handshaken but\n"+
		"every request on it gets 503 with Retry-After and Connection: close, and past N + N/8 (at least 8 more)\n"+
		"it is reset before the handshake (0 = from the open-file limit: soft limit - 2 x 256 upstream - 128,\n"+
		"less that margin)")
	fs.IntVar(&c.maxHandshakes, "max-handshakes", 0, prefix+"`N` TLS handshakes in progress at once; a new connection waits up to\n"+
		"--handshake-wait for one (0 = "+strconv.Itoa(ambassador.DefaultHandshakesPerCPU)+" x GOMAXPROCS)")
	fs.DurationVar(&c.handshakeWait, "handshake-wait", ambassador.DefaultHandshakeWait, prefix+"longest `DURATION` a new connection waits for a handshake slot;\n"+
		"beyond it the connection is closed before the handshake")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", ambassador.DefaultIdleTimeout, prefix+"`DURATION` a kept-alive device connection may sit idle before it is closed")
}

// check returns one error per bad connection bound flag.
func (c *connFlags) check() []error {
	var errs []error
	if c.maxConns < 0 {
		errs = append(errs, fmt.Errorf("--max-conns %d: give a positive number, or 0 to derive it from the open-file limit", c.maxConns))
	}
	if c.maxHandshakes < 0 {
		errs = append(errs, fmt.Errorf("--max-handshakes %d: give a positive number, or 0 for the default", c.maxHandshakes))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--handshake-wait", c.handshakeWait}, {"--idle-timeout", c.idleTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v: give a positive duration such as 2s, or 0 for the default", d.name, d.v))
		}
	}
	return errs
}

// apply sets the connection bounds in o.
func (c *connFlags) apply(o *ambassador.Options) {
	o.MaxConns, o.MaxHandshakes = c.maxConns, c.maxHandshakes
	o.HandshakeWait, o.IdleTimeout = c.handshakeWait, c.idleTimeout
}

// raiseFileLimit raises the open-file soft limit to the hard one before the
// ambassador is built, as its connection bound follows the soft limit, and
// logs both. A refused raise is a warning: the ambassador still runs, its
// bound derived from the limit in force.
func raiseFileLimit(log *slog.Logger) {
	f, err := rlimit.RaiseFiles()
	if err != nil {
		log.Warn("open-file limit not raised; device connections are bounded by the current limit",
			"soft", f.Soft, "hard", f.Hard, "err", err)
		return
	}
	log.Info(f.String(), "soft", f.Soft, "hard", f.Hard)
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func envBool(getenv func(string) string, key string) bool {
	b, _ := strconv.ParseBool(getenv(key))
	return b
}

func cmdAmbassador(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var f ambassadorFlags
	fs := newFlagSet("ambassador", "Run the mTLS ambassador in front of a Mender server: it requires a device certificate signed by\n"+
		"a known CA, checks that the certificate's key signed the auth request, preauthorizes the device\n"+
		"through the management API and forwards /api/devices/* unchanged.\n"+
		"Every flag also reads the MTLS_* variable of Mender's mtls-ambassador named in its help.", stdout, stderr)
	fs.StringVar(&f.backend, "backend", getenv("MTLS_MENDER_BACKEND"), "upstream Mender server `URL` (MTLS_MENDER_BACKEND; required)")
	fs.StringVar(&f.user, "user", getenv("MTLS_MENDER_USER"), "management user `EMAIL` (MTLS_MENDER_USER; required)")
	fs.StringVar(&f.password, "password", getenv("MTLS_MENDER_PASS"), "management `PASSWORD` (MTLS_MENDER_PASS; required; prefer the variable to the flag)")
	fs.StringVar(&f.serverCert, "server-cert", envOr(getenv, "MTLS_SERVER_CERT", "/etc/mtls/certs/server/server.crt"), "server certificate `FILE` (MTLS_SERVER_CERT)")
	fs.StringVar(&f.serverKey, "server-key", envOr(getenv, "MTLS_SERVER_KEY", "/etc/mtls/certs/server/server.key"), "server key `FILE` (MTLS_SERVER_KEY)")
	fs.Var(&f.cas, "ca", "device CA bundle `FILE` (repeatable; MTLS_TENANT_CA_PEM; default /etc/mtls/certs/tenant-ca/tenant.ca.pem)")
	fs.Var(&f.crls, "crl", "CRL `FILE` (PEM or DER; repeatable), reloaded when it changes")
	fs.StringVar(&f.listen, "listen", listenAddr(getenv("MTLS_LISTEN"), "127.0.0.1:8443"), "TLS listen `ADDR` (MTLS_LISTEN; a bare port means all interfaces, as in Mender's image)")
	fs.StringVar(&f.statusListen, "status-listen", "127.0.0.1:8081", "plain-HTTP `ADDR` for /status and /metrics")
	fs.BoolVar(&f.debug, "debug", envBool(getenv, "MTLS_DEBUG_LOG"), "debug logging (MTLS_DEBUG_LOG); tokens and passwords are never logged")
	fs.BoolVar(&f.upstreamSkipVerify, "upstream-insecure-skip-verify", envBool(getenv, "MTLS_INSECURE_SKIP_VERIFY"), "do not verify the upstream's certificate (MTLS_INSECURE_SKIP_VERIFY)")
	fs.StringVar(&f.upstreamCA, "upstream-ca", getenv("MTLS_MENDER_CERT"), "extra CA `FILE` for the upstream's certificate (MTLS_MENDER_CERT)")
	fs.StringVar(&f.blacklist, "blacklist", getenv("MTLS_BLACKLIST_PATH"), "`FILE` of revoked serials, one hex serial a line (MTLS_BLACKLIST_PATH), reloaded when it changes")
	fs.StringVar(&f.tlsMin, "tls-min", envOr(getenv, "MTLS_HTTPS_TLS_VERSION_MIN", "1.2"), "minimum TLS `VERSION`: 1.2 or 1.3 (MTLS_HTTPS_TLS_VERSION_MIN)")
	fs.Var(&f.bind, "bind-identity", "require identity attribute = certificate field (`ATTR=FIELD`), e.g. mac=CN (fields: CN, serial, SAN-DNS, OU; repeatable);\n"+
		"then a bound attribute must be one string, other identity keys are refused unless in --identity-keys,\n"+
		"and each certificate may register one identity")
	fs.StringVar(&f.identityKeys, "identity-keys", "", "comma-separated identity `KEYS` allowed besides the bound ones (default: none with\n"+
		"--bind-identity, any without it)")
	fs.IntVar(&f.newIdentitiesPerHour, "new-identities-per-hour", ambassador.DefaultNewIdentitiesPerHour,
		"without --bind-identity: `N` new identities one certificate may introduce per hour (429 beyond; -1 = no limit)")
	fs.BoolVar(&f.separateAuthKey, "allow-separate-auth-key", envBool(getenv, "MTLS_ALLOW_SEPARATE_AUTH_KEY"),
		"accept auth requests signed by a key other than the certificate's, as Mender gateway 2.x does\n"+
			"(MTLS_ALLOW_SEPARATE_AUTH_KEY); weaker: see the README's security section")
	fs.IntVar(&f.maxInflightPerCert, "max-inflight-per-cert", ambassador.DefaultMaxInflightPerCert,
		"`N` requests one device certificate may have in flight, an open websocket included\n"+
			"(429 with Retry-After beyond; -1 = no limit)")
	fs.DurationVar(&f.bodyTimeout, "body-timeout", ambassador.DefaultBodyReadTimeout,
		"`DURATION` a device has to send a request body, which is read whole (at most 1 MiB, else 413)\n"+
			"before anything goes upstream (408 and the connection closed beyond)")
	fs.DurationVar(&f.upstreamWait, "upstream-wait", ambassador.DefaultUpstreamWaitTimeout,
		"longest `DURATION` a request waits for one of the 256 upstream connections\n"+
			"(503 with Retry-After beyond)")
	f.conns.register(fs, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f.cas = deviceCAs(f.cas, getenv)
	opts, err := f.options()
	if err != nil {
		return err
	}
	lvl := slog.LevelInfo
	if f.debug {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	opts.Logger = log
	raiseFileLimit(log)
	amb, err := ambassador.New(opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	sln, err := net.Listen("tcp", f.statusListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("--status-listen %s: %w", f.statusListen, err)
	}
	fmt.Fprintf(stdout, "mTLS ambassador ready\n  device URL:  https://%s\n  status:      http://%s/status\n  upstream:    %s\n",
		ln.Addr(), sln.Addr(), opts.Upstream.Redacted())
	return runAmbassador(ctx, amb, ln, sln, log)
}

func listenAddr(env, def string) string {
	switch {
	case env == "":
		return def
	case !strings.Contains(env, ":"):
		return ":" + env
	}
	return env
}

func (f *ambassadorFlags) options() (ambassador.Options, error) {
	var errs []error
	if f.backend == "" {
		errs = append(errs, errors.New("--backend (MTLS_MENDER_BACKEND) is required: the upstream Mender server URL"))
	}
	if f.user == "" || f.password == "" {
		errs = append(errs, errors.New("--user and --password (MTLS_MENDER_USER, MTLS_MENDER_PASS) are required: a management user allowed to preauthorize devices"))
	}
	u, err := url.Parse(f.backend)
	switch {
	case f.backend != "" && (err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http")):
		errs = append(errs, fmt.Errorf("--backend %q: want an http(s) URL such as https://mender.example.com", f.backend))
	case err == nil && u.User != nil:
		errs = append(errs, fmt.Errorf("--backend %s: no credentials in the URL; use --user and MTLS_MENDER_PASS", u.Redacted()))
	}
	minTLS, err := parseTLSVersion(f.tlsMin)
	if err != nil {
		errs = append(errs, err)
	}
	var binds []ambassador.Binding
	for _, b := range f.bind {
		bd, err := ambassador.ParseBinding(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("--bind-identity %q: %w", b, err))
			continue
		}
		binds = append(binds, bd)
	}
	keys, err := parseIdentityKeys(f.identityKeys)
	if err != nil {
		errs = append(errs, err)
	}
	if f.newIdentitiesPerHour == 0 {
		errs = append(errs, errors.New("--new-identities-per-hour 0: give a positive number, or -1 for no limit"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--body-timeout", f.bodyTimeout}, {"--upstream-wait", f.upstreamWait}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v: give a positive duration such as 10s", d.name, d.v))
		}
	}
	errs = append(errs, f.conns.check()...)
	if len(errs) > 0 {
		return ambassador.Options{}, errors.Join(errs...)
	}
	o := ambassador.Options{
		Upstream:                   u,
		UpstreamCAFile:             f.upstreamCA,
		UpstreamInsecureSkipVerify: f.upstreamSkipVerify,
		User:                       f.user,
		Password:                   f.password,
		ServerCertFile:             f.serverCert,
		ServerKeyFile:              f.serverKey,
		ClientCAFiles:              f.cas,
		BlacklistFile:              f.blacklist,
		CRLFiles:                   f.crls,
		MinTLSVersion:              minTLS,
		BindIdentity:               binds,
		IdentityKeys:               keys,
		NewIdentitiesPerHour:       f.newIdentitiesPerHour,
		AllowSeparateAuthKey:       f.separateAuthKey,
		MaxInflightPerCert:         f.maxInflightPerCert,
		BodyReadTimeout:            f.bodyTimeout,
		UpstreamWaitTimeout:        f.upstreamWait,
	}
	f.conns.apply(&o)
	return o, nil
}

// parseIdentityKeys parses --identity-keys: comma-separated attribute names.
func parseIdentityKeys(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var keys []string
	for k := range strings.SplitSeq(s, ",") {
		if k = strings.TrimSpace(k); k == "" {
			return nil, fmt.Errorf("--identity-keys %q: an empty key; give comma-separated names such as serial_no,hw_rev", s)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parseTLSVersion(s string) (uint16, error) {
	switch strings.TrimPrefix(strings.ToLower(s), "tls") {
	case "1.2", "12", "":
		return tls.VersionTLS12, nil
	case "1.3", "13":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("--tls-min %q: use 1.2 or 1.3", s)
}

// runAmbassador serves the ambassador on ln (TLS, through amb.Listener and
// its connection bounds) and its status on sln until ctx is done; SIGHUP
// reloads the CA bundle, blacklist and CRLs. Shutdown lets in-flight
// requests finish (up to 10 s).
func runAmbassador(ctx context.Context, amb *ambassador.Ambassador, ln, sln net.Listener, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := amb.Server() // handler, TLS, error log and timeouts: the one definition
	status := &http.Server{Handler: amb.StatusHandler(), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	errc := make(chan error, 3)
	go func() { errc <- amb.Run(ctx) }()
	go func() { errc <- ignoreClosed(srv.Serve(amb.Listener(ln))) }()
	go func() { errc <- ignoreClosed(status.Serve(sln)) }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var runErr error
loop:
	for {
		select {
		case <-hup:
			if err := amb.Reload(); err != nil {
				log.Error("reload", "err", err)
			} else {
				log.Info("reloaded CA bundle, blacklist and CRLs")
			}
		case err := <-errc:
			runErr = err
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	log.Info("shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second) // shutdown deadline
	defer scancel()
	_ = srv.Shutdown(sctx)
	_ = status.Shutdown(sctx)
	cancel()
	return runErr
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// deviceCAs returns the device CA bundles: the --ca flags when given (they
// replace the variable, as every flag does), else MTLS_TENANT_CA_PEM, else
// the path Mender's image uses.
func deviceCAs(flags listFlag, getenv func(string) string) listFlag {
	if len(flags) > 0 {
		return flags
	}
	var l listFlag
	_ = l.Set(envOr(getenv, "MTLS_TENANT_CA_PEM", "/etc/mtls/certs/tenant-ca/tenant.ca.pem"))
	return l
}
