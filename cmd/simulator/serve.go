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
	"path/filepath"
	"strings"
	"time"

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
	cert, err := tls.LoadX509KeyPair(pk.ServerCert, pk.ServerKey)
	if err != nil {
		return fmt.Errorf("load server certificate %s: %w", pk.ServerCert, err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	url := "https://" + ln.Addr().String()
	srv := &http.Server{
		Handler:           backend,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	fmt.Fprintf(stdout, "fake Mender backend ready\n")
	fmt.Fprintf(stdout, "  URL:         %s\n", url)
	fmt.Fprintf(stdout, "  CA:          %s   (ServerCertificate for devices)\n", pk.CACert)
	fmt.Fprintf(stdout, "  management:  user %s, password %s\n", f.user, f.password)
	fmt.Fprintf(stdout, "  devices:     %s\n", map[bool]string{true: "accepted automatically (--auto-accept)", false: "pending until accepted through the management API"}[f.autoAccept])
	if statePath != "" {
		fmt.Fprintf(stdout, "  state:       %s\n", statePath)
	}
	return serveUntilDone(ctx, srv, ln, log)
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
