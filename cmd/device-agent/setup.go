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

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/identity"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// commonFlags are the flags every configuration-reading command takes.
type commonFlags struct {
	config, fallback, data string
	logLevel               string
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: device-agent %s [flags]\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func (c *commonFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	mainPath, fallbackPath := config.DefaultPaths(getenv("MENDER_CONF_DIR"), getenv("MENDER_DATA_DIR"), getenv("MENDER_DATASTORE_DIR"))
	fs.StringVar(&c.config, "config", mainPath, "main `FILE` (mender.conf); its keys override the fallback file's")
	fs.StringVar(&c.fallback, "fallback-config", fallbackPath, "fallback `FILE`, read first; \"\" to skip")
	fs.StringVar(&c.data, "data", getenv("MENDER_DATASTORE_DIR"), "state `DIR` for the generated key, device_type and artifact_name (default $MENDER_DATASTORE_DIR or /var/lib/mender)")
	fs.StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn or error (default: DaemonLogLevel from the config, else info)")
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errUsage
		}
		return errUsage // the flag package already printed the problem and usage
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

func loadEnv(c *commonFlags, stderr io.Writer, getenv func(string) string) (*env, error) {
	cfg, err := config.Load(config.LoadOptions{
		MainPath:     c.config,
		FallbackPath: c.fallback,
		DataDir:      getenv("MENDER_DATA_DIR"),
		DatastoreDir: c.data,
	})
	if err != nil {
		return nil, err
	}
	level := c.logLevel
	if level == "" {
		level = cfg.File.DaemonLogLevel
	}
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	return &env{cfg: cfg, log: log, scopts: identity.Options{DataDir: cfg.DataDir, Logger: log}}, nil
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
	if cfg.CertFile != "" {
		tk, err := keystore.Open(ctx, cfg.KeyFile, keystore.Options{CertFile: cfg.CertFile, TPMDevice: cfg.TPMDevice, Logger: e.log})
		if err != nil {
			return nil, fmt.Errorf("mTLS key (HttpsClient.Key): %w", err)
		}
		k.tls = tk
		for _, w := range tk.Warnings() {
			e.log.Warn(w, "file", cfg.CertFile)
		}
	}
	switch {
	case k.tls != nil && samePath(cfg.AuthKeyFile, cfg.KeyFile):
		k.auth = k.tls
	case cfg.AuthKeyGenerated:
		ak, gen, err := keystore.OpenOrGenerate(ctx, cfg.AuthKeyFile, keystore.Options{TPMDevice: cfg.TPMDevice, Logger: e.log})
		if err != nil {
			k.Close()
			return nil, fmt.Errorf("auth key: %w", err)
		}
		k.auth, k.generated = ak, gen
	default:
		ak, err := keystore.Open(ctx, cfg.AuthKeyFile, keystore.Options{TPMDevice: cfg.TPMDevice, Logger: e.log})
		if err != nil {
			k.Close()
			return nil, fmt.Errorf("auth key (Security.AuthPrivateKey): %w", err)
		}
		k.auth = ak
	}
	if k.tls != nil && !menderapi.PublicKeysEqual(k.tls.Public(), k.auth.Public()) {
		e.log.Warn("auth requests are signed with a key other than the mTLS key; an mTLS ambassador will refuse them (set Security.AuthPrivateKey to the HttpsClient.Key file)",
			"auth_key", k.auth.Fingerprint(), "tls_key", k.tls.Fingerprint())
	}
	return k, nil
}

func samePath(a, b string) bool {
	return a == b || filepath.Clean(a) == filepath.Clean(b)
}

func (e *env) identityFunc() func(context.Context) (menderapi.Attributes, error) {
	return func(ctx context.Context) (menderapi.Attributes, error) {
		a, err := identity.Collect(ctx, e.scopts)
		return menderapi.Attributes(a), err
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
	opts := client.Options{
		Servers:               cfg.Servers,
		AuthKey:               k.auth,
		TenantToken:           cfg.TenantToken,
		Identity:              e.identityFunc(),
		Inventory:             e.inventoryFunc(),
		DeviceType:            deviceType,
		ArtifactName:          artifact,
		ClientVersion:         "device-agent " + version,
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
	return opts, nil
}
