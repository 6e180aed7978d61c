package main

import (
	"context"
	"io"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// shutdownGrace bounds how long the daemon waits for in-flight requests
// after SIGINT/SIGTERM, so it always exits within 2 s.
const shutdownGrace = 1500 * time.Millisecond

func cmdDaemon(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("daemon", "Authenticate, send inventory and poll for deployments until SIGINT/SIGTERM.", stderr)
	cf.register(fs, getenv)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	e, err := loadEnv(&cf, stderr, getenv)
	if err != nil {
		return err
	}
	k, err := e.openKeys(ctx)
	if err != nil {
		return err
	}
	closeKeys := true // false when requests may still be signing with them
	defer func() {
		if closeKeys {
			k.Close()
		}
	}()
	opts, err := e.clientOptions(k)
	if err != nil {
		return err
	}
	c, err := client.New(opts)
	if err != nil {
		return err
	}
	attrs := []any{"version", version, "servers", e.cfg.Servers, "auth_key", k.auth.Fingerprint(),
		"device_type", opts.DeviceType, "artifact_name", opts.ArtifactName}
	if k.generated {
		attrs = append(attrs, "auth_key_generated", e.cfg.AuthKeyFile)
	}
	if k.tls != nil {
		attrs = append(attrs, "mtls_cert", e.cfg.CertFile, "mtls_key", k.tls.Fingerprint())
	}
	e.log.Info("device-agent starting", attrs...)

	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		e.log.Info("device-agent stopped")
		return err
	case <-time.After(shutdownGrace):
		// The process exits now; the keys (a TPM handle perhaps) may still be
		// in use by an in-flight handshake, so they are left to the exit.
		closeKeys = false
		e.log.Warn("device-agent stopped with requests still in flight")
		return nil
	}
}
