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
		"Every flag also reads the MTLS_* variable of Mender's mtls-ambassador named in its help.", stderr)
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
	fs.Var(&f.bind, "bind-identity", "require identity attribute = certificate field, e.g. mac=CN (fields: CN, serial, SAN-DNS, OU; repeatable)")
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
	if len(errs) > 0 {
		return ambassador.Options{}, errors.Join(errs...)
	}
	return ambassador.Options{
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
	}, nil
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

// runAmbassador serves the ambassador on ln (TLS) and its status on sln
// until ctx is done; SIGHUP reloads the CA bundle, blacklist and CRLs.
// Shutdown lets in-flight requests finish (up to 10 s).
func runAmbassador(ctx context.Context, amb *ambassador.Ambassador, ln, sln net.Listener, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{
		Handler:           amb.Handler(),
		TLSConfig:         amb.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          amb.ErrorLog(), // counts TLS handshake failures by reason
	}
	status := &http.Server{Handler: amb.StatusHandler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 3)
	go func() { errc <- amb.Run(ctx) }()
	go func() { errc <- ignoreClosed(srv.Serve(tls.NewListener(ln, srv.TLSConfig))) }()
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
