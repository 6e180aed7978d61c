package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/flaghelp"
)

// menderAuthName is the program name of the role: a symlink
// /usr/bin/mender-auth -> device-agent selects it, as does
// `device-agent mender-auth ...`.
const menderAuthName = "mender-auth"

// bootstrapTimeout bounds `mender-auth bootstrap`'s authentication, as
// Mender's bootstrap does.
const bootstrapTimeout = 30 * time.Second

// errReported is an error already printed (exit 1, no further message).
var errReported = errors.New("reported")

const menderAuthUsage = `mender-auth (device-agent): Mender's authentication daemon, with mTLS client certificates

Usage:
  mender-auth [global options] daemon    [--forwarder-addr ADDR]
  mender-auth [global options] bootstrap [--forcebootstrap|-F]
  mender-auth --version | --help

Commands:
  daemon     serve io.mender.Authentication1 on the system bus ($DBUS_SYSTEM_BUS_ADDRESS)
             and the local forwarder handed out as the server URL, so mender-update,
             mender-connect and mender-configure reach the server with this device's
             certificate and key (a TPM key included); authenticates at start and
             whenever a consumer calls FetchJwtToken. No inventory, no polling:
             mender-update does those.
  bootstrap  open (or generate) the auth key and authenticate once; exit 0 when the
             server issued a token, 1 otherwise

Global options (--opt VALUE, --opt=VALUE or the short form):
  --config, -c FILE           main configuration (default $MENDER_CONF_DIR/mender.conf)
  --fallback-config, -b FILE  fallback configuration (default <datastore>/mender.conf)
  --agent-config FILE         the agent-only file read last (default device-agent.conf beside --config)
  --datastore, --data, -d DIR state directory (default $MENDER_DATASTORE_DIR or /var/lib/mender)
  --log-file, -L FILE         append the log to FILE instead of stderr
  --log-level, -l LEVEL       trace, debug, info, warning, error, fatal or panic
  --trusted-certs, -E FILE    trusted server certificates; overrides ServerCertificate
  --skipverify                skip server certificate verification (insecure)
  --version, -v               print the version (alone)
  --help, -h                  print this help

Command options:
  --forcebootstrap, -F        generate a new auth key first (only the generated key
                              <datastore>/mender-agent.pem; a configured key is never replaced)
  --passphrase-file FILE      refused: this agent reads no encrypted keys
  --forwarder-addr ADDR       (daemon) loopback listen address of the forwarder
                              (default 127.0.0.1 on a random port)
`

// menderAuthFlags are mender-auth's options.
type menderAuthFlags struct {
	cf             commonFlags
	logFile        string
	trustedCerts   string
	skipVerify     bool
	version, help  bool
	forceBootstrap bool
	passphraseFile string
	forwarderAddr  string
	setFlags       map[string]bool
}

// register adds the global options to fs; a command's flag set gets them
// too, so they may also follow the command.
func (m *menderAuthFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	mainPath, fallbackPath := config.DefaultPaths(getenv("MENDER_CONF_DIR"), getenv("MENDER_DATA_DIR"), getenv("MENDER_DATASTORE_DIR"))
	if m.cf.config == "" {
		m.cf.config, m.cf.fallback = mainPath, fallbackPath
		m.cf.data = getenv("MENDER_DATASTORE_DIR")
	}
	for _, n := range []string{"config", "c"} {
		fs.StringVar(&m.cf.config, n, m.cf.config, "")
	}
	for _, n := range []string{"fallback-config", "b"} {
		fs.StringVar(&m.cf.fallback, n, m.cf.fallback, "")
	}
	fs.Var(overlayPathFlag{&m.cf}, "agent-config", "")
	for _, n := range []string{"datastore", "data", "d"} {
		fs.StringVar(&m.cf.data, n, m.cf.data, "")
	}
	for _, n := range []string{"log-file", "L"} {
		fs.StringVar(&m.logFile, n, m.logFile, "")
	}
	for _, n := range []string{"log-level", "l"} {
		fs.StringVar(&m.cf.logLevel, n, m.cf.logLevel, "")
	}
	for _, n := range []string{"trusted-certs", "E"} {
		fs.StringVar(&m.trustedCerts, n, m.trustedCerts, "")
	}
	fs.BoolVar(&m.skipVerify, "skipverify", m.skipVerify, "")
	for _, n := range []string{"version", "v"} {
		fs.BoolVar(&m.version, n, m.version, "")
	}
	for _, n := range []string{"help", "h"} {
		fs.BoolVar(&m.help, n, m.help, "")
	}
}

// parseMenderAuth parses mender-auth's command line into the command and
// its options.
func parseMenderAuth(args []string, getenv func(string) string) (string, *menderAuthFlags, error) {
	m := &menderAuthFlags{cf: commonFlags{logFormat: logFormatText}, setFlags: map[string]bool{}}
	global := flag.NewFlagSet(menderAuthName, flag.ContinueOnError)
	global.SetOutput(io.Discard)
	global.Usage = func() {}
	m.register(global, getenv)
	if err := global.Parse(args); err != nil {
		return "", nil, fmt.Errorf("%s", flaghelp.Error(err))
	}
	global.Visit(func(f *flag.Flag) { m.setFlags[f.Name] = true })
	rest := global.Args()
	if m.version {
		if len(args) != 1 {
			return "", nil, errors.New("--version must be given alone")
		}
		return "version", m, nil
	}
	if m.help {
		return "help", m, nil
	}
	if len(rest) == 0 {
		return "", nil, errors.New("no command given: use daemon or bootstrap (--help lists them)")
	}
	cmd := rest[0]
	if cmd != "daemon" && cmd != "bootstrap" {
		return "", nil, fmt.Errorf("unknown command %q: use daemon or bootstrap", cmd)
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	m.register(fs, getenv)
	for _, n := range []string{"forcebootstrap", "F"} {
		fs.BoolVar(&m.forceBootstrap, n, false, "")
	}
	fs.StringVar(&m.passphraseFile, "passphrase-file", "", "")
	if cmd == "daemon" {
		fs.StringVar(&m.forwarderAddr, "forwarder-addr", "", "")
	}
	if err := fs.Parse(rest[1:]); err != nil {
		return "", nil, fmt.Errorf("%s: %s", cmd, flaghelp.Error(err))
	}
	fs.Visit(func(f *flag.Flag) { m.setFlags[f.Name] = true })
	if fs.NArg() > 0 {
		return "", nil, fmt.Errorf("%s: unexpected argument %q", cmd, fs.Arg(0))
	}
	if m.help {
		return "help", m, nil
	}
	if m.version {
		return "", nil, errors.New("--version must be given alone")
	}
	if m.setFlags["passphrase-file"] {
		return "", nil, errors.New("--passphrase-file is not supported: this agent reads no passphrase-protected keys; use an unencrypted key file (mode 0600) or a TPM key (HttpsClient.Key \"handle:0x81...\")")
	}
	// The fallback file lives in the datastore: -d moves it unless -b is given.
	if (m.setFlags["datastore"] || m.setFlags["data"] || m.setFlags["d"]) && !m.setFlags["fallback-config"] && !m.setFlags["b"] {
		m.cf.fallback = filepath.Join(m.cf.data, config.ConfFileName)
	}
	return cmd, m, nil
}

// cmdMenderAuth runs the mender-auth role. Errors are printed here with the
// mender-auth prefix; every failure exits 1, as Mender's does.
func cmdMenderAuth(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cmd, m, err := parseMenderAuth(args, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", menderAuthName, err)
		return errReported
	}
	switch cmd {
	case "help":
		fmt.Fprint(stdout, menderAuthUsage)
		return nil
	case "version":
		fmt.Fprintf(stdout, "%s (device-agent %s)\n", menderAuthName, version)
		return nil
	}
	logOut := stderr
	if m.logFile != "" {
		f, err := os.OpenFile(m.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "%s: --log-file: %v\n", menderAuthName, err)
			return errReported
		}
		defer f.Close()
		logOut = f
	}
	if err := m.run(ctx, cmd, logOut, getenv); err != nil {
		for _, line := range strings.Split(flatError(err), " ; ") {
			fmt.Fprintf(stderr, "%s: %s\n", menderAuthName, line)
		}
		return errReported
	}
	return nil
}

func (m *menderAuthFlags) run(ctx context.Context, cmd string, logOut io.Writer, getenv func(string) string) error {
	e, err := loadEnv(&m.cf, logOut, getenv)
	if err != nil {
		return err
	}
	if m.trustedCerts != "" {
		e.cfg.ServerCertificate = m.trustedCerts
	}
	if m.skipVerify {
		e.cfg.SkipVerify = true
	}
	if m.forceBootstrap {
		if err := forceBootstrap(e); err != nil {
			return err
		}
	}
	var lock io.Closer
	if cmd == "daemon" {
		// One daemon per datastore: not beside a device-agent daemon either.
		l, err := lockDatastore(e.cfg.DatastoreDir, os.Getpid())
		if err != nil {
			return err
		}
		lock = l
		defer lock.Close()
	}
	k, err := e.openKeys(ctx)
	if err != nil {
		return err
	}
	defer k.Close()
	front := &authFront{}
	opts := e.baseClientOptions(k)
	opts.Inventory = nil // mender-update sends the inventory
	opts.DeviceType = "unknown"
	if dt, err := config.ReadDeviceType(e.cfg.DeviceTypeFile); err == nil {
		opts.DeviceType = dt // not sent in auth requests; for completeness
	}
	opts.ClientVersion = "device-agent " + version + " (mender-auth)"
	opts.OnToken = front.onToken
	c, err := client.New(opts)
	if err != nil {
		return err
	}
	defer c.CloseIdleConnections()
	attrs := []any{"version", version, "servers", e.cfg.Servers, "auth_key", k.auth.Fingerprint(), "config", e.cfg.Sources}
	if k.tls != nil {
		attrs = append(attrs, "mtls_cert", e.cfg.CertFile, "mtls_key", k.tls.Fingerprint())
	}
	if k.generated {
		attrs = append(attrs, "auth_key_generated", e.cfg.AuthKeyFile)
	}

	if cmd == "bootstrap" {
		e.log.Info("mender-auth bootstrap", attrs...)
		bctx, cancel := context.WithTimeout(ctx, bootstrapTimeout)
		defer cancel()
		if err := c.Authenticate(bctx); err != nil {
			if d := client.Diagnose(err); d.Problem != "" {
				return fmt.Errorf("bootstrap: %w (%s)", err, d.String())
			}
			return fmt.Errorf("bootstrap: %w", err)
		}
		e.log.Info("bootstrap done: the server issued a device token", "server", c.Server())
		return nil
	}

	e.log.Info("mender-auth daemon starting", attrs...)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGQUIT) // Mender stops on SIGQUIT too
	defer stop()
	fo := authFrontOptions{busAddress: getenv("DBUS_SYSTEM_BUS_ADDRESS"), forwarderAddr: m.forwarderAddr,
		retryMax: e.cfg.RetryPollInterval, log: e.log}
	if err := front.start(ctx, c, fo); err != nil {
		return errNoFront(err)
	}
	defer front.close()
	// Mender's mender-auth waits for the first FetchJwtToken; authenticating
	// at once lets mender-connect, which only listens, connect sooner.
	front.fetchNow()
	select {
	case <-ctx.Done():
	case <-front.lost():
		return errors.New("lost the connection to the D-Bus system bus (did dbus restart?); exiting so that systemd restarts mender-authd")
	}
	e.log.Info("mender-auth daemon stopping")
	return nil
}

// forceBootstrap removes the generated auth key so that it is made anew;
// a configured key (a file or a TPM handle) is never replaced.
func forceBootstrap(e *env) error {
	if !e.cfg.AuthKeyGenerated {
		return fmt.Errorf("--forcebootstrap: the auth key is %s (HttpsClient.Key or Security.AuthPrivateKey), which this agent never replaces; run without -F to use it", e.cfg.AuthKeyFile)
	}
	if err := os.Remove(e.cfg.AuthKeyFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--forcebootstrap: remove %s: %w", e.cfg.AuthKeyFile, err)
	}
	e.log.Info("generating a new auth key (--forcebootstrap)", "file", e.cfg.AuthKeyFile)
	return nil
}

// isMenderAuth reports whether argv0 selects the mender-auth role.
func isMenderAuth(argv0 string) bool { return filepath.Base(argv0) == menderAuthName }
