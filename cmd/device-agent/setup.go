package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/flaghelp"
	"github.com/mender-mtls/mtls-agent/internal/identity"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// commonFlags are the flags every configuration-reading command takes.
type commonFlags struct {
	config, fallback, data string
	agentConfig            string // --agent-config, when agentConfigSet
	agentConfigSet         bool
	logLevel, logFormat    string
}

// newFlagSet returns a command's flag set. Flag errors go to stderr (one
// line naming the flag as --flag, plus a pointer to --help, by parseFlags);
// help asked for with --help or -h is returned by parseFlags as a
// *helpShown error, which run prints to stdout with exit 0.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { // called by Parse for -h/--help; parseFlags collects the text
		if hw, ok := fs.Output().(*helpWriter); ok {
			hw.text = helpText(fs, synopsis)
		}
	}
	return fs
}

// helpWriter is a flag set's output while parseFlags runs Parse: the flag
// package's own error lines are dropped (parseFlags prints them with --flag
// spelling); Usage leaves the help text in it.
type helpWriter struct {
	io.Writer
	text string
}

// helpShown carries the help text asked for with --help (exit 0).
type helpShown struct{ text string }

func (h *helpShown) Error() string { return "help requested" }

// helpText renders fs's help (flaghelp: flags spelled --flag with their
// placeholders).
func helpText(fs *flag.FlagSet, synopsis string) string {
	var b strings.Builder
	flaghelp.Write(&b, "device-agent "+fs.Name()+" [flags]", synopsis, fs, nil)
	return b.String()
}

func (c *commonFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	c.registerPaths(fs, getenv)
	fs.StringVar(&c.logLevel, "log-level", "", "log `LEVEL`: debug, info, warn or error (default: DaemonLogLevel from the config, else info)")
	fs.StringVar(&c.logFormat, "log-format", logFormatText, "log `FORMAT` on stderr: text or json (under systemd, text lines start with the syslog priority and carry no time stamp)")
}

// registerPaths registers --config, --fallback-config, --agent-config and
// --data only.
func (c *commonFlags) registerPaths(fs *flag.FlagSet, getenv func(string) string) {
	mainPath, fallbackPath := config.DefaultPaths(getenv("MENDER_CONF_DIR"), getenv("MENDER_DATA_DIR"), getenv("MENDER_DATASTORE_DIR"))
	fs.StringVar(&c.config, "config", mainPath, "main `FILE` (mender.conf); its keys override the fallback file's")
	fs.StringVar(&c.fallback, "fallback-config", fallbackPath, "fallback `FILE`, read first; \"\" to skip")
	fs.Var(overlayPathFlag{c}, "agent-config",
		"agent-only `FILE`, same keys as mender.conf, read last: its keys win; for what Mender's own tools must not read, such as an HttpsClient key in a TPM; absent is fine, \"\" to skip (default: device-agent.conf beside --config, /etc/mender/device-agent.conf)")
	fs.StringVar(&c.data, "data", getenv("MENDER_DATASTORE_DIR"), "state `DIR` for the generated key, device_type, artifact_name, the daemon's lock and status files (default $MENDER_DATASTORE_DIR or /var/lib/mender)")
}

// logSetup returns the logger setup from --log-level (or configLevel, the
// DaemonLogLevel, when the flag is not set) and --log-format.
func (c *commonFlags) logSetup(stderr io.Writer, getenv func(string) string, configLevel string) (logSetup, error) {
	level := c.logLevel
	if level == "" {
		level = configLevel
	}
	lvl, err := parseLevel(level)
	if err != nil {
		return logSetup{}, err
	}
	format, err := parseLogFormat(c.logFormat)
	if err != nil {
		return logSetup{}, err
	}
	return logSetup{level: lvl, format: format, journal: isJournal(stderr, getenv)}, nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	hw := &helpWriter{Writer: io.Discard} // parseFlags prints the flag package's error itself
	fs.SetOutput(hw)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &helpShown{text: hw.text}
		}
		fmt.Fprintf(out, "device-agent %s: %s\nrun 'device-agent %s --help' for its flags\n", fs.Name(), flaghelp.Error(err), fs.Name())
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "device-agent %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// env holds everything a command needs once the configuration is loaded.
type env struct {
	cfg    *config.Config
	log    *slog.Logger
	scopts identity.Options
}

// loadEnv loads the configuration and sets up logging, as loadEnvQuiet,
// and logs the configuration's warnings, also when it is invalid: a warning
// often explains the error (the unknown key "ServerUrl" next to "ServerURL
// is not set").
func loadEnv(c *commonFlags, stderr io.Writer, getenv func(string) string) (*env, error) {
	e, warnings, err := loadEnvQuiet(c, stderr, getenv)
	if len(warnings) > 0 {
		log := slog.New(slog.NewTextHandler(stderr, nil))
		if e != nil {
			log = e.log
		} else if ls, lerr := c.logSetup(stderr, getenv, ""); lerr == nil {
			log = newLogger(stderr, ls)
		}
		for _, w := range warnings {
			log.Warn(w)
		}
	}
	return e, err
}

// loadEnvQuiet loads the configuration and sets up logging. It returns the
// configuration's warnings for the caller to show, also with an error.
func loadEnvQuiet(c *commonFlags, stderr io.Writer, getenv func(string) string) (*env, []string, error) {
	cfg, err := config.Load(c.loadOptions(getenv))
	if le, ok := errors.AsType[*config.LoadError](err); ok {
		return nil, le.Warnings, err
	}
	if err != nil {
		return nil, nil, err
	}
	ls, err := c.logSetup(stderr, getenv, cfg.File.DaemonLogLevel)
	if err != nil {
		return nil, cfg.Warnings, err
	}
	log := newLogger(stderr, ls)
	return &env{cfg: cfg, log: log, scopts: identity.Options{DataDir: cfg.DataDir, Logger: log}}, cfg.Warnings, nil
}

// loadOptions are the config.Load options of the flags.
func (c *commonFlags) loadOptions(getenv func(string) string) config.LoadOptions {
	return config.LoadOptions{
		MainPath:     c.config,
		FallbackPath: c.fallback,
		OverlayPath:  c.overlayPath(),
		DataDir:      getenv("MENDER_DATA_DIR"),
		DatastoreDir: c.data,
	}
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug", "trace":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "fatal", "panic":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: use debug, info, warn or error (--log-level or DaemonLogLevel)", s)
}

// keys holds the auth-signing key and, with mTLS, the TLS credential. They
// are the same *keystore.Key when the mTLS key also signs auth requests.
type keys struct {
	auth      *keystore.Key
	tls       *keystore.Key
	generated bool
}

func (k *keys) Close() {
	if k.tls != nil && k.tls != k.auth {
		_ = k.tls.Close()
	}
	if k.auth != nil {
		_ = k.auth.Close()
	}
}

func (e *env) openKeys(ctx context.Context) (*keys, error) {
	cfg := e.cfg
	k := &keys{}
	tk, err := e.openTLSKey(ctx)
	if err != nil {
		return nil, err
	}
	if tk != nil {
		k.tls = tk
		for _, w := range tk.Warnings() {
			e.log.Warn(w, "file", cfg.CertFile)
		}
	}
	ak, gen, err := e.openAuthKey(ctx, k.tls)
	if err != nil {
		k.Close()
		return nil, err
	}
	k.auth, k.generated = ak, gen
	if k.tls != nil && !menderapi.PublicKeysEqual(k.tls.Public(), k.auth.Public()) {
		e.log.Warn("auth requests are signed with a key other than the mTLS key; an mTLS ambassador will refuse them (set Security.AuthPrivateKey to the HttpsClient.Key file)",
			"auth_key", k.auth.Fingerprint(), "tls_key", k.tls.Fingerprint())
	}
	return k, nil
}

// openTLSKey opens the mTLS key (HttpsClient.Key) with its certificate
// (HttpsClient.Certificate); nil, nil without mTLS.
func (e *env) openTLSKey(ctx context.Context) (*keystore.Key, error) {
	cfg := e.cfg
	if cfg.CertFile == "" {
		return nil, nil
	}
	tk, err := keystore.Open(ctx, cfg.KeyFile, keystore.Options{CertFile: cfg.CertFile, TPMDevice: cfg.TPMDevice, Logger: e.log})
	if errors.Is(err, keystore.ErrSwapped) {
		return nil, fmt.Errorf("mTLS key (HttpsClient.Key) and certificate (HttpsClient.Certificate): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("mTLS key (HttpsClient.Key): %w", err)
	}
	return tk, nil
}

// openAuthKey opens the key that signs auth requests: tk itself when that
// is the mTLS key, else Security.AuthPrivateKey, else the generated key
// (created when missing; the bool reports that).
func (e *env) openAuthKey(ctx context.Context, tk *keystore.Key) (*keystore.Key, bool, error) {
	cfg := e.cfg
	switch {
	case tk != nil && samePath(cfg.AuthKeyFile, cfg.KeyFile):
		return tk, false, nil
	case cfg.AuthKeyGenerated:
		ak, gen, err := keystore.OpenOrGenerate(ctx, cfg.AuthKeyFile, keystore.Options{TPMDevice: cfg.TPMDevice, Logger: e.log})
		if err != nil {
			return nil, false, fmt.Errorf("auth key: %w", err)
		}
		return ak, gen, nil
	}
	ak, err := keystore.Open(ctx, cfg.AuthKeyFile, keystore.Options{TPMDevice: cfg.TPMDevice, Logger: e.log})
	if err != nil {
		return nil, false, fmt.Errorf("auth key (Security.AuthPrivateKey): %w", err)
	}
	return ak, false, nil
}

func samePath(a, b string) bool {
	return a == b || filepath.Clean(a) == filepath.Clean(b)
}

// identityFunc collects the identity at each authentication and logs its
// warnings (a random or down interface for the MAC fallback) when they
// differ from the ones logged last, not at every re-authentication.
func (e *env) identityFunc() func(context.Context) (menderapi.Attributes, error) {
	var mu sync.Mutex
	var logged string
	return func(ctx context.Context) (menderapi.Attributes, error) {
		res, err := identity.Identify(ctx, e.scopts)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if w := strings.Join(res.Warnings, "\n"); w != logged {
			logged = w
			for _, w := range res.Warnings {
				e.log.Warn(w)
			}
		}
		return menderapi.Attributes(res.Attributes), nil
	}
}

func (e *env) inventoryFunc() func(context.Context) (menderapi.Attributes, error) {
	return func(ctx context.Context) (menderapi.Attributes, error) {
		a, errs := identity.Inventory(ctx, e.scopts)
		for _, err := range errs {
			e.log.Warn("inventory script", "err", err)
		}
		return menderapi.Attributes(a), nil
	}
}

// clientOptions maps the configuration to client options.
func (e *env) clientOptions(k *keys) (client.Options, error) {
	cfg := e.cfg
	deviceType, err := config.ReadDeviceType(cfg.DeviceTypeFile)
	if err != nil {
		return client.Options{}, err
	}
	artifact, err := config.ReadArtifactName(cfg.DatastoreDir)
	if err != nil {
		return client.Options{}, err
	}
	opts := e.baseClientOptions(k)
	opts.DeviceType, opts.ArtifactName = deviceType, artifact
	return opts, nil
}

// baseClientOptions maps the configuration to client options without
// reading the device_type and artifact_name files.
func (e *env) baseClientOptions(k *keys) client.Options {
	cfg := e.cfg
	opts := client.Options{
		Servers:               cfg.Servers,
		AuthKey:               k.auth,
		TenantToken:           cfg.TenantToken,
		DeviceTier:            cfg.DeviceTier,
		Identity:              e.identityFunc(),
		Inventory:             e.inventoryFunc(),
		ClientVersion:         "device-agent " + version,
		UserAgent:             client.UserAgent(version),
		ServerCertificate:     cfg.ServerCertificate,
		SkipVerify:            cfg.SkipVerify,
		UpdatePollInterval:    cfg.UpdatePollInterval,
		InventoryPollInterval: cfg.InventoryPollInterval,
		RetryPollInterval:     cfg.RetryPollInterval,
		Logger:                e.log,
	}
	if k.tls != nil {
		opts.TLSCredential = k.tls
	}
	return opts
}

// overlayPathFlag is --agent-config. Unset, the overlay is device-agent.conf
// beside --config, so a test or a second installation that moves mender.conf
// moves its overlay with it.
type overlayPathFlag struct{ c *commonFlags }

func (f overlayPathFlag) String() string {
	if f.c == nil {
		return ""
	}
	return f.c.agentConfig
}

func (f overlayPathFlag) Set(s string) error {
	f.c.agentConfig, f.c.agentConfigSet = s, true
	return nil
}

// overlayPath is the agent-only file to read: --agent-config when given
// ("" skips it), else device-agent.conf in --config's directory.
func (c *commonFlags) overlayPath() string {
	if c.agentConfigSet {
		return c.agentConfig
	}
	if c.config == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(c.config), config.AgentConfFileName)
}
