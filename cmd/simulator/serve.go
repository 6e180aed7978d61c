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
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
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
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := newFlagSet("serve", "Run the fake Mender backend over HTTPS until Ctrl-C. A CA and a server certificate\n"+
		"(for localhost, 127.0.0.1 and the --listen host) are created in --dir when absent.", stderr)
	fs.StringVar(&f.dir, "dir", "simulator-data", "`DIR` for ca.crt, ca.key, server.crt, server.key and the backend state")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8443", "HTTPS listen `ADDR` (port 0 picks a free port)")
	fs.BoolVar(&f.autoAccept, "auto-accept", false, "accept every new device at once (plain Mender without an ambassador)")
	fs.StringVar(&f.user, "user", "admin@example.com", "management user (`EMAIL`) for useradm login")
	fs.StringVar(&f.password, "password", "mender-test", "management `PASSWORD`")
	fs.StringVar(&f.state, "state", "", "state `FILE` that keeps devices across restarts (default DIR/state.json; \"none\" keeps state in memory only)")
	fs.BoolVar(&f.v2Next, "v2-next", false, "serve the v2 deployments next endpoint (enterprise); without it v2 answers 404 like the open-source server")
	fs.DurationVar(&f.tokenLifetime, "token-lifetime", 7*24*time.Hour, "device and management JWT lifetime")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&f.mtls, "mtls", false, "put the test mTLS ambassador on --listen in front of the backend: devices need a certificate\n"+
		"signed by DIR/ca.crt (simulator pki device --dir DIR) and are preauthorized with no manual step")
	fs.StringVar(&f.statusListen, "status-listen", "127.0.0.1:8081", "with --mtls: plain-HTTP `ADDR` of the ambassador's /status and /metrics")
	fs.StringVar(&f.backendListen, "backend-listen", "127.0.0.1:0", "with --mtls: the backend's own HTTPS `ADDR` (management calls go there)")
	fs.Var(&f.bind, "bind-identity", "with --mtls: require identity attribute = certificate field, e.g. mac=CN")
	fs.StringVar(&f.identityKeys, "identity-keys", "", "with --mtls: comma-separated identity `KEYS` allowed besides the bound ones (see simulator ambassador)")
	fs.Float64Var(&f.failRate, "fail-rate", 0, "answer this `FRACTION` (0..1) of device API requests with 503, to test retries")
	fs.Float64Var(&f.dropRate, "drop-rate", 0, "close the connection without an answer on this `FRACTION` (0..1) of device API requests")
	fs.DurationVar(&f.latency, "latency", 0, "delay every device API request by this `DURATION` (one that gets a --fail-rate or --drop-rate fault gets no delay)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8443", f.listen)
	}
	pk, err := pki.EnsureServerPKI(f.dir, hostsFor(host))
	if err != nil {
		return err
	}
	for _, p := range pk.Created {
		log.Info("created", "file", p)
	}
	statePath := f.state
	switch statePath {
	case "":
		statePath = filepath.Join(f.dir, "state.json")
	case "none":
		statePath = ""
	}
	backend, err := fakemender.New(fakemender.Options{
		AutoAccept:    f.autoAccept,
		User:          f.user,
		Password:      f.password,
		TokenLifetime: f.tokenLifetime,
		EnableV2Next:  f.v2Next,
		StatePath:     statePath,
		Logger:        log,
	})
	if err != nil {
		return err
	}
	if err := addServeFaults(backend, &f, log); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(pk.ServerCert, pk.ServerKey)
	if err != nil {
		return fmt.Errorf("load server certificate %s: %w", pk.ServerCert, err)
	}
	backendAddr := f.listen
	if f.mtls {
		backendAddr = f.backendListen
	}
	ln, err := net.Listen("tcp", backendAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", backendAddr, err)
	}
	backendURL := "https://" + ln.Addr().String()
	srv := backendServer(backend, cert, log)
	if f.mtls {
		return serveMTLS(ctx, &f, pk, srv, ln, log, stdout)
	}
	fmt.Fprintf(stdout, "fake Mender backend ready\n")
	fmt.Fprintf(stdout, "  URL:         %s\n", backendURL)
	fmt.Fprintf(stdout, "  CA:          %s   (ServerCertificate for devices)\n", pk.CACert)
	fmt.Fprintf(stdout, "  management:  user %s, password %s\n", f.user, f.password)
	fmt.Fprintf(stdout, "  devices:     %s\n", map[bool]string{true: "accepted automatically (--auto-accept)", false: "pending until accepted through the management API"}[f.autoAccept])
	if statePath != "" {
		fmt.Fprintf(stdout, "  state:       %s\n", statePath)
	}
	return serveUntilDone(ctx, srv, ln, log)
}

// backendServer is the fake backend's HTTPS server. ReadTimeout bounds
// reading a request, headers and body; IdleTimeout outlasts the 90 s the
// ambassador keeps an idle upstream connection, so the backend does not
// close one the ambassador is about to reuse. No WriteTimeout: it would cut
// artifact downloads to slow devices.
func backendServer(h http.Handler, cert tls.Certificate, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       40 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// serveUntilDone serves TLS on ln until ctx is done, then shuts down
// gracefully, letting in-flight requests finish for up to 5 s.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
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
// front of it, with the PKI in f.dir: DIR/ca.crt is both the server CA and
// the device CA; DIR/blacklist and DIR/crl.pem are created empty when absent
// and reloaded when they change.
func serveMTLS(ctx context.Context, f *serveFlags, pk *pki.ServerPKIResult, backend *http.Server, bln net.Listener, log *slog.Logger, stdout io.Writer) error {
	if w := backendListenWarning(f.backendListen); w != "" {
		log.Warn(w, "backend_listen", f.backendListen)
	}
	blacklist := filepath.Join(f.dir, "blacklist")
	crlPath := filepath.Join(f.dir, "crl.pem")
	if err := ensureRevocationFiles(pk, blacklist, crlPath); err != nil {
		bln.Close()
		return err
	}
	upstream := &url.URL{Scheme: "https", Host: bln.Addr().String()}
	var binds []ambassador.Binding
	for _, b := range f.bind {
		bd, err := ambassador.ParseBinding(b)
		if err != nil {
			bln.Close()
			return fmt.Errorf("--bind-identity %q: %w", b, err)
		}
		binds = append(binds, bd)
	}
	keys, err := parseIdentityKeys(f.identityKeys)
	if err != nil {
		bln.Close()
		return err
	}
	amb, err := ambassador.New(ambassador.Options{
		Upstream:       upstream,
		UpstreamCAFile: pk.CACert,
		User:           f.user,
		Password:       f.password,
		ServerCertFile: pk.ServerCert,
		ServerKeyFile:  pk.ServerKey,
		ClientCAFiles:  []string{pk.CACert},
		BlacklistFile:  blacklist,
		CRLFiles:       []string{crlPath},
		BindIdentity:   binds,
		IdentityKeys:   keys,
		Logger:         log.With("component", "ambassador"),
	})
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
	fmt.Fprintf(stdout, "fake Mender backend behind the mTLS ambassador ready\n")
	fmt.Fprintf(stdout, "  URL:         https://%s   (device URL: the ambassador)\n", aln.Addr())
	fmt.Fprintf(stdout, "  backend:     https://%s   (management API)\n", bln.Addr())
	fmt.Fprintf(stdout, "  status:      http://%s/status\n", sln.Addr())
	fmt.Fprintf(stdout, "  device CA:   %s   (sign devices: simulator pki device --dir %s --cn NAME --out OUTDIR)\n", pk.CACert, f.dir)
	fmt.Fprintf(stdout, "  revocation:  %s, %s\n", blacklist, crlPath)
	fmt.Fprintf(stdout, "  management:  user %s, password %s\n", f.user, f.password)
	fmt.Fprintf(stdout, "  CA:          %s   (ServerCertificate for devices)\n", pk.CACert)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	backendErr := make(chan error, 1)
	go func() { backendErr <- serveUntilDone(ctx, backend, bln, log) }()
	err = runAmbassador(ctx, amb, aln, sln, log)
	cancel()
	if berr := <-backendErr; err == nil {
		err = berr
	}
	return err
}

func ensureRevocationFiles(pk *pki.ServerPKIResult, blacklist, crlPath string) error {
	if _, err := os.Stat(blacklist); errors.Is(err, os.ErrNotExist) {
		if err := atomicfile.Write(blacklist, nil, 0o644); err != nil {
			return err
		}
	}
	if _, err := os.Stat(crlPath); errors.Is(err, os.ErrNotExist) {
		ca, err := pki.LoadCA(pk.CACert, pk.CAKey)
		if err != nil {
			return err
		}
		serials, err := pki.ReadBlacklist(blacklist)
		if err != nil {
			return err
		}
		if _, err := pki.WriteCRL(ca, crlPath, serials); err != nil {
			return err
		}
	}
	return nil
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
