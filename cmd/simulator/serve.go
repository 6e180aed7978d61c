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
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/memconn"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

type serveFlags struct {
	dir, listen    string
	autoAccept     bool
	user, password string
	state          string
	v2Next         bool
	tokenLifetime  time.Duration
	logLevel       string
	mtls           bool
	statusListen   string
	backendListen  string
	bind           listFlag
	identityKeys   string
	failRate       float64
	dropRate       float64
	latency        time.Duration
	maxUpload      int64
	conns          connFlags
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := newFlagSet("serve", "Run the fake Mender backend over HTTPS until Ctrl-C. A CA and a server certificate\n"+
		"(for localhost, 127.0.0.1 and the --listen host) are created in --dir when absent; a server\n"+
		"certificate serve made is reissued when the names it must cover change. A server certificate\n"+
		"from elsewhere (simulator pki server, the openssl commands of Mender's mTLS guide) is served as\n"+
		"it is, and serve prints the names devices must use in ServerURL. A guide CA key named\n"+
		"ca-private.key is used as it is.", stdout, stderr)
	fs.StringVar(&f.dir, "dir", "simulator-data", "`DIR` for ca.crt, ca.key, server.crt, server.key and the backend state")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8443", "HTTPS listen `ADDR` (port 0 picks a free port)")
	fs.BoolVar(&f.autoAccept, "auto-accept", false, "accept every new device at once (plain Mender without an ambassador)")
	fs.StringVar(&f.user, "user", "admin@example.com", "management user (`EMAIL`) for useradm login")
	fs.StringVar(&f.password, "password", defaultServePassword, "management `PASSWORD` (printed only when it is the default)")
	fs.StringVar(&f.state, "state", "", "state `FILE` that keeps devices across restarts (default DIR/state.json; \"none\" keeps state in memory only)")
	fs.BoolVar(&f.v2Next, "v2-next", false, "serve the v2 deployments next endpoint (enterprise); without it v2 answers 404 like the open-source server")
	fs.DurationVar(&f.tokenLifetime, "token-lifetime", 7*24*time.Hour, "device and management JWT lifetime (a `DURATION` such as 24h)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	fs.BoolVar(&f.mtls, "mtls", false, "put the test mTLS ambassador on --listen in front of the backend: devices need a certificate\n"+
		"signed by DIR/ca.crt (simulator pki device --dir DIR) and are preauthorized with no manual step")
	fs.StringVar(&f.statusListen, "status-listen", "127.0.0.1:8081", "with --mtls: plain-HTTP `ADDR` of the ambassador's /status and /metrics")
	fs.StringVar(&f.backendListen, "backend-listen", "127.0.0.1:0", "with --mtls: the backend's own HTTPS `ADDR` (management calls go there)")
	fs.Var(&f.bind, "bind-identity", "with --mtls: require identity attribute = certificate field (`ATTR=FIELD`), e.g. mac=CN")
	fs.StringVar(&f.identityKeys, "identity-keys", "", "with --mtls: comma-separated identity `KEYS` allowed besides the bound ones (see simulator ambassador)")
	fs.Float64Var(&f.failRate, "fail-rate", 0, "answer this `FRACTION` (0..1) of device API requests with 503, to test retries")
	fs.Float64Var(&f.dropRate, "drop-rate", 0, "close the connection without an answer on this `FRACTION` (0..1) of device API requests")
	fs.DurationVar(&f.latency, "latency", 0, "delay every device API request by this `DURATION` (one that gets a --fail-rate or --drop-rate fault gets no delay)")
	fs.Int64Var(&f.maxUpload, "max-upload-size", fakemender.DefaultMaxArtifactUploadSize, "largest artifact upload in `BYTES`; larger uploads get 413")
	f.conns.register(fs, "with --mtls: ")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	applyServeGC(os.Getenv)
	if errs := f.conns.check(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	if f.maxUpload <= 0 {
		return fmt.Errorf("--max-upload-size %d: want a positive number of bytes", f.maxUpload)
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8443", f.listen)
	}
	f.dir = absPath(f.dir)
	pk, err := pki.EnsureServerPKI(f.dir, hostsFor(host))
	if err != nil {
		return err
	}
	logServerPKI(log, pk)
	statePath := f.state
	switch statePath {
	case "":
		statePath = filepath.Join(f.dir, "state.json")
	case "none":
		statePath = ""
	default:
		statePath = absPath(statePath)
	}
	// Artifacts live in DIR/artifacts with persistent state; without
	// state they go to a temporary directory that Close removes.
	artifactDir := ""
	if statePath != "" {
		artifactDir = filepath.Join(f.dir, "artifacts")
	}
	backend, err := fakemender.New(fakemender.Options{
		AutoAccept:            f.autoAccept,
		User:                  f.user,
		Password:              f.password,
		TokenLifetime:         f.tokenLifetime,
		EnableV2Next:          f.v2Next,
		StatePath:             statePath,
		ArtifactDir:           artifactDir,
		MaxArtifactUploadSize: f.maxUpload,
		Logger:                log,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := backend.Close(); err != nil {
			log.Warn("close fake backend", "err", err)
		}
	}()
	if err := addServeFaults(backend, &f, log); err != nil {
		return err
	}
	if f.mtls {
		return serveMTLS(ctx, &f, pk, backend, log, stdout)
	}
	cert, err := tls.LoadX509KeyPair(pk.ServerCert, pk.ServerKey)
	if err != nil {
		return fmt.Errorf("load server certificate %s: %w", pk.ServerCert, err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", f.listen, err)
	}
	srv := backendServer(backend, cert, log)
	devURL, note := deviceURL(pk, ln.Addr())
	fmt.Fprintf(stdout, "fake Mender backend ready\n")
	fmt.Fprintf(stdout, "  URL:         %s\n", devURL)
	if note != "" {
		fmt.Fprintf(stdout, "               %s\n", note)
	}
	fmt.Fprintf(stdout, "  CA:          %s   (ServerCertificate for devices)\n", pk.CACert)
	fmt.Fprintf(stdout, "  server cert: %s\n", serverCertLine(pk))
	fmt.Fprintf(stdout, "  management:  user %s, %s\n", f.user, passwordNote(f.password))
	fmt.Fprintf(stdout, "  devices:     %s\n", map[bool]string{true: "accepted automatically (--auto-accept)", false: "pending until accepted through the management API"}[f.autoAccept])
	if statePath != "" {
		fmt.Fprintf(stdout, "  state:       %s\n", statePath)
	}
	return serveUntilDone(ctx, srv, ln, log)
}

// logServerPKI logs what EnsureServerPKI created or reissued and the
// warnings about a server certificate from elsewhere.
func logServerPKI(log *slog.Logger, pk *pki.ServerPKIResult) {
	for _, p := range pk.Created {
		log.Info("created", "file", p)
	}
	if pk.Reissued {
		log.Info("reissued the server certificate serve made", "file", pk.ServerCert, "reason", pk.ReissueReason,
			"names", strings.Join(pk.Names, ","), "serial", pki.FormatSerial(pk.Cert.SerialNumber))
	}
	if !pk.Managed {
		log.Info("serving a server certificate serve did not make, as it is", "file", pk.ServerCert,
			"names", strings.Join(pk.Names, ","), "fingerprint", pki.CertFingerprint(pk.Cert))
	}
	for _, w := range pk.Warnings {
		log.Warn(w)
	}
}

// passwordNote names the management password in the ready message: the
// documented default is shown, one given with --password is not.
func passwordNote(p string) string {
	if p == defaultServePassword {
		return "password " + p
	}
	return "password as given with --password"
}

// defaultServePassword is serve's documented default management password.
const defaultServePassword = "mender-test"

// serverCertLine describes the server certificate in the ready message.
func serverCertLine(pk *pki.ServerPKIResult) string {
	who := "made by serve, reissued when the names it must cover change"
	if !pk.Managed {
		who = "not made by serve: served as it is"
	}
	return fmt.Sprintf("%s (%s; names: %s)", pk.ServerCert, who, strings.Join(pk.Names, ", "))
}

// deviceURL returns the URL devices use for a listener at addr, and a note
// when that is not simply the listen address: when the server certificate
// does not cover it, or when the listener is on every address. The URL
// then uses a name the certificate covers (localhost first, for a loopback
// or unspecified listen address) and the note lists the names devices may
// use in ServerURL.
func deviceURL(pk *pki.ServerPKIResult, addr net.Addr) (string, string) {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "https://" + addr.String(), ""
	}
	ip := net.ParseIP(host)
	everywhere := ip != nil && ip.IsUnspecified()
	if !everywhere && pki.CoversHost(pk.Cert, host) {
		return "https://" + net.JoinHostPort(host, port), ""
	}
	names := pk.Names
	if len(names) == 0 {
		return "https://" + net.JoinHostPort(host, port), fmt.Sprintf("%s names no host (no subjectAltName, no common name): "+
			"devices cannot verify it; use a certificate for the names devices connect to", pk.ServerCert)
	}
	pick := names[0]
	if ip != nil && (ip.IsLoopback() || everywhere) && slices.Contains(names, "localhost") {
		pick = "localhost"
	}
	note := fmt.Sprintf("%s does not cover %s: devices must use one of its names in ServerURL: %s", pk.ServerCert, host, strings.Join(names, ", "))
	if everywhere {
		note = fmt.Sprintf("listening on every address: devices must use one of the names of %s in ServerURL: %s", pk.ServerCert, strings.Join(names, ", "))
	}
	if pick != "localhost" && net.ParseIP(pick) == nil {
		note += fmt.Sprintf(" (%s must resolve to this host on the devices, e.g. through /etc/hosts)", pick)
	}
	return "https://" + net.JoinHostPort(pick, port), note
}

// backendServer is the fake backend's HTTPS server. ReadTimeout bounds
// reading a request, headers and body; IdleTimeout outlasts the 90 s the
// ambassador keeps an idle upstream connection, so the backend does not
// close one the ambassador is about to reuse. No WriteTimeout: it would cut
// artifact downloads to slow devices.
func backendServer(h http.Handler, cert tls.Certificate, log *slog.Logger) *http.Server {
	srv := plainBackendServer(h, log)
	srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	return srv
}

// plainBackendServer is backendServer without TLS: the backend's server on
// the in-process link from the ambassador (serve --mtls), with the same
// timeouts.
func plainBackendServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       40 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// serveUntilDone serves TLS on ln until ctx is done, then shuts down
// gracefully, letting in-flight requests finish for up to 5 s.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, log *slog.Logger) error {
	return serveUntil(ctx, srv, func() error { return srv.ServeTLS(ln, "", "") }, log)
}

// serveUntil runs serve (one of srv's Serve methods) until ctx is done and
// then shuts srv down as serveUntilDone does.
func serveUntil(ctx context.Context, srv *http.Server, serve func() error, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // shutdown deadline
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// backendListenWarning returns a warning when the backend's own listener
// (serve --mtls --backend-listen) is not on a loopback address: the device
// API is served there too, without mTLS, next to the management API.
func backendListenWarning(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return ""
	}
	return "--backend-listen is not a loopback address: the device API is reachable there without mTLS, " +
		"bypassing the ambassador; use 127.0.0.1:PORT unless a test needs it"
}

// hostsFor returns the names the server certificate must cover.
func hostsFor(listenHost string) []string {
	hosts := []string{"localhost", "127.0.0.1"}
	if listenHost != "" && listenHost != "0.0.0.0" && listenHost != "::" {
		hosts = append(hosts, strings.Trim(listenHost, "[]"))
	}
	return hosts
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

// serveMTLS runs the backend on its private listener and the ambassador in
// front of it, with the PKI in f.dir: DIR/ca.crt is the device CA and signs
// the backend listener's certificate (issued in memory for the
// --backend-listen host, so the backend is reachable at its address
// whatever names server.crt has); the ambassador serves server.crt.
// The ambassador reaches the backend in process, over memconn with plain
// HTTP (no second TLS hop, no sockets); the backend's TLS listener is for
// management clients and tools. The backend sees the same request either
// way: the ambassador's X-Forwarded-Proto and X-Forwarded-Host, from which
// it builds artifact links, do not depend on the link.
// DIR/blacklist and DIR/crl.pem are created empty when absent and reloaded
// when they change (no CRL for a CA that may not sign one).
func serveMTLS(ctx context.Context, f *serveFlags, pk *pki.ServerPKIResult, backend *fakemender.Server, log *slog.Logger, stdout io.Writer) error {
	if w := backendListenWarning(f.backendListen); w != "" {
		log.Warn(w, "backend_listen", f.backendListen)
	}
	ca, err := pki.LoadCA(pk.CACert, pk.CAKey)
	if err != nil {
		return err
	}
	blacklist := filepath.Join(f.dir, "blacklist")
	crlPath := filepath.Join(f.dir, "crl.pem")
	crls, err := ensureRevocationFiles(ca, blacklist, crlPath, log)
	if err != nil {
		return err
	}
	var binds []ambassador.Binding
	for _, b := range f.bind {
		bd, err := ambassador.ParseBinding(b)
		if err != nil {
			return fmt.Errorf("--bind-identity %q: %w", b, err)
		}
		binds = append(binds, bd)
	}
	keys, err := parseIdentityKeys(f.identityKeys)
	if err != nil {
		return err
	}
	bhost, _, err := net.SplitHostPort(f.backendListen)
	if err != nil {
		return fmt.Errorf("--backend-listen %q: want HOST:PORT, e.g. 127.0.0.1:0", f.backendListen)
	}
	bcert, err := backendCert(ca, hostsFor(bhost))
	if err != nil {
		return err
	}
	bln, err := net.Listen("tcp", f.backendListen)
	if err != nil {
		return fmt.Errorf("--backend-listen %s: %w", f.backendListen, err)
	}
	raiseFileLimit(log)
	link := memconn.Listen(inProcessBackendHost)
	opts := ambassador.Options{
		Upstream:            &url.URL{Scheme: "http", Host: inProcessBackendHost},
		UpstreamDialContext: link.DialContext,
		User:                f.user,
		Password:            f.password,
		ServerCertFile:      pk.ServerCert,
		ServerKeyFile:       pk.ServerKey,
		ClientCAFiles:       []string{pk.CACert},
		BlacklistFile:       blacklist,
		CRLFiles:            crls,
		BindIdentity:        binds,
		IdentityKeys:        keys,
		Logger:              log.With("component", "ambassador"),
	}
	f.conns.apply(&opts)
	amb, err := ambassador.New(opts)
	if err != nil {
		bln.Close()
		return err
	}
	aln, err := net.Listen("tcp", f.listen)
	if err != nil {
		bln.Close()
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	sln, err := net.Listen("tcp", f.statusListen)
	if err != nil {
		bln.Close()
		aln.Close()
		return fmt.Errorf("--status-listen %s: %w", f.statusListen, err)
	}
	devURL, note := deviceURL(pk, aln.Addr())
	revocation := blacklist
	if len(crls) > 0 {
		revocation += ", " + crlPath
	}
	fmt.Fprintf(stdout, "fake Mender backend behind the mTLS ambassador ready\n")
	fmt.Fprintf(stdout, "  URL:         %s   (device URL: the ambassador)\n", devURL)
	if note != "" {
		fmt.Fprintf(stdout, "               %s\n", note)
	}
	fmt.Fprintf(stdout, "  backend:     https://%s   (management API)\n", bln.Addr())
	fmt.Fprintf(stdout, "  device link: in process   (the ambassador hands device requests to the backend in memory, no second TLS hop)\n")
	fmt.Fprintf(stdout, "  status:      http://%s/status\n", sln.Addr())
	fmt.Fprintf(stdout, "  device CA:   %s   (sign devices: simulator pki device --dir %s --cn NAME --out OUTDIR)\n", pk.CACert, f.dir)
	fmt.Fprintf(stdout, "  revocation:  %s\n", revocation)
	fmt.Fprintf(stdout, "  server cert: %s\n", serverCertLine(pk))
	fmt.Fprintf(stdout, "  management:  user %s, %s\n", f.user, passwordNote(f.password))
	fmt.Fprintf(stdout, "  CA:          %s   (ServerCertificate for devices)\n", pk.CACert)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	backendErr := make(chan error, 2)
	go func() { backendErr <- serveUntilDone(ctx, backendServer(backend, bcert, log), bln, log) }()
	inProcess := plainBackendServer(backend, log)
	go func() {
		backendErr <- serveUntil(ctx, inProcess, func() error { return inProcess.Serve(link) }, log.With("link", "in-process"))
	}()
	err = runAmbassador(ctx, amb, aln, sln, log)
	cancel()
	for range 2 {
		if berr := <-backendErr; err == nil {
			err = berr
		}
	}
	return err
}

// inProcessBackendHost is the host of the ambassador's Upstream URL in
// serve --mtls: a name for the in-process link, never resolved or dialed.
const inProcessBackendHost = "backend.internal"

// backendCert issues, in memory, the certificate of the backend's private
// listener behind the ambassador: signed by ca for hosts, valid for as long
// as a server certificate serve makes.
func backendCert(ca *pki.CA, hosts []string) (tls.Certificate, error) {
	key, err := pki.GenerateKey(pki.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	cert, err := ca.IssueServer(key.Public(), hosts[0], dns, ips, pki.ServerCertValidity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("backend certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// ensureRevocationFiles creates the blacklist (empty) and the CRL when they
// are missing and returns the CRL files for the ambassador: none when the CA
// may not sign CRLs (logged once).
func ensureRevocationFiles(ca *pki.CA, blacklist, crlPath string, log *slog.Logger) ([]string, error) {
	if _, err := os.Stat(blacklist); errors.Is(err, os.ErrNotExist) {
		if err := atomicfile.Write(blacklist, nil, 0o644); err != nil {
			return nil, err
		}
	}
	if why := pki.CRLRefusal(ca.Cert); why != "" {
		log.Info("no CRL", "reason", why)
		return nil, nil
	}
	if _, err := os.Stat(crlPath); errors.Is(err, os.ErrNotExist) {
		serials, err := pki.ReadBlacklist(blacklist)
		if err != nil {
			return nil, err
		}
		if _, err := pki.WriteCRL(ca, crlPath, serials); err != nil {
			return nil, err
		}
	}
	return []string{crlPath}, nil
}

// addServeFaults installs the --fail-rate, --drop-rate and --latency faults
// on the device API. A request gets at most one: a 503 (fail-rate), else a
// dropped connection (drop-rate), else the latency.
func addServeFaults(backend *fakemender.Server, f *serveFlags, log *slog.Logger) error {
	for _, r := range []struct {
		name string
		v    float64
	}{{"--fail-rate", f.failRate}, {"--drop-rate", f.dropRate}} {
		if r.v < 0 || r.v > 1 {
			return fmt.Errorf("%s %v: want a fraction from 0 to 1", r.name, r.v)
		}
	}
	if f.latency < 0 {
		return fmt.Errorf("--latency %v: want a positive duration such as 200ms", f.latency)
	}
	const devices = "/api/devices/"
	if f.failRate > 0 {
		backend.AddFault(fakemender.Fault{PathPrefix: devices, Status: http.StatusServiceUnavailable, FailRate: f.failRate})
	}
	if f.dropRate > 0 {
		backend.AddFault(fakemender.Fault{PathPrefix: devices, Drop: true, FailRate: f.dropRate})
	}
	if f.latency > 0 {
		backend.AddFault(fakemender.Fault{PathPrefix: devices, Delay: f.latency})
	}
	if f.failRate > 0 || f.dropRate > 0 || f.latency > 0 {
		log.Info("fault injection on", "fail_rate", f.failRate, "drop_rate", f.dropRate, "latency", f.latency)
	}
	return nil
}
