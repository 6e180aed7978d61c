package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// shutdownGrace bounds how long the daemon waits for in-flight requests
// after SIGINT/SIGTERM, so it always exits within 2 s.
const shutdownGrace = 1500 * time.Millisecond

// swapGrace bounds how long a reload waits for the job attempt in flight to
// finish before it cancels it.
const swapGrace = 10 * time.Second

const daemonSynopsis = `Authenticate, send inventory and poll for deployments until SIGINT/SIGTERM.

SIGHUP reloads mender.conf, the keys and the certificates: the new
configuration replaces the running one between polls; when it does not
load, the running one stays and the log says why. One daemon per datastore
(--data): a lock file there holds the PID of the daemon that runs. The
daemon keeps a status file there for 'device-agent status'. Started by
systemd with Type=notify ($NOTIFY_SOCKET), it reports READY=1 once the first
authentication was attempted, RELOADING=1/READY=1 around a reload and
STOPPING=1 at shutdown.

With --dbus it also serves Mender's io.mender.Authentication1 on the system
bus ($DBUS_SYSTEM_BUS_ADDRESS) with a local forwarder as the server URL, as
Mender 3.x did, so mender-connect and mender-configure use this device's
token and client certificate.`

// daemon is one running `device-agent daemon`.
type daemon struct {
	cf     commonFlags
	stderr io.Writer
	getenv func(string) string
	notify *notifier
	status *statusWriter
	front  *authFront // nil without --dbus

	log atomic.Pointer[slog.Logger] // of the configuration in use
	gen atomic.Uint64               // generation of the instance in use

	mu           sync.Mutex
	ready        bool   // READY=1 was sent
	lastNotified string // the last STATUS= text sent
}

// instance is one configuration at work: its keys and its client.
type instance struct {
	gen    uint64
	env    *env
	keys   *keys
	client *client.Client
	cancel context.CancelFunc
	done   chan error
}

func cmdDaemon(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string, reload <-chan os.Signal) error {
	d := &daemon{stderr: stderr, getenv: getenv}
	fs := newFlagSet("daemon", daemonSynopsis, stderr)
	d.cf.register(fs, getenv)
	var ff frontFlags
	fs.BoolVar(&ff.dbus, "dbus", false, "also serve io.mender.Authentication1 on the system bus and the local forwarder, for mender-connect and other Mender add-ons")
	fs.StringVar(&ff.forwarderAddr, "forwarder-addr", "", "listen `ADDR` of the local forwarder with --dbus; a loopback address (default 127.0.0.1 on a random port)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if ff.forwarderAddr != "" && !ff.dbus {
		fmt.Fprintln(stderr, "device-agent daemon: --forwarder-addr needs --dbus")
		return errUsage
	}
	if ff.dbus {
		d.front = &authFront{}
	}
	e, err := loadEnv(&d.cf, stderr, getenv)
	if err != nil {
		return err
	}
	loadedAt := time.Now()
	d.log.Store(e.log)
	lock, err := lockDatastore(e.cfg.DatastoreDir, os.Getpid())
	if err != nil {
		return err
	}
	defer lock.Close()
	if d.notify, err = newNotifier(getenv("NOTIFY_SOCKET")); err != nil {
		e.log.Warn("systemd notification disabled", "error", err)
	}
	d.status = newStatusWriter(e.cfg.DatastoreDir, os.Getpid(), e.log, nil)

	cur, err := d.build(ctx, e, 1)
	if err != nil {
		return err
	}
	if d.front != nil {
		if err := d.front.start(ctx, cur.client, ff.options(getenv, e)); err != nil {
			cur.keys.Close()
			return errNoFront(err)
		}
		defer d.front.close()
	}
	d.gen.Store(cur.gen)
	d.status.configLoaded(e.cfg, loadedAt)
	cur.start(ctx)
	for {
		select {
		case <-ctx.Done():
			return d.shutdown(cur)
		case err := <-cur.done: // Run returns early only when misused
			cur.cancel()
			cur.keys.Close()
			return err
		case <-reload:
			cur = d.reload(ctx, cur)
		}
	}
}

func (d *daemon) logger() *slog.Logger { return d.log.Load() }

// build opens the keys of e and makes the client; nothing runs yet.
func (d *daemon) build(ctx context.Context, e *env, gen uint64) (*instance, error) {
	k, err := e.openKeys(ctx)
	if err != nil {
		return nil, err
	}
	opts, err := e.clientOptions(k)
	if err != nil {
		k.Close()
		return nil, err
	}
	opts.OnState = func(s client.State) { d.onState(gen, s) }
	if d.front != nil {
		opts.OnToken = d.front.onToken
	}
	c, err := client.New(opts)
	if err != nil {
		k.Close()
		return nil, err
	}
	attrs := []any{"version", version, "servers", e.cfg.Servers, "auth_key", k.auth.Fingerprint(),
		"device_type", opts.DeviceType, "artifact_name", opts.ArtifactName, "config", e.cfg.Sources}
	if k.generated {
		attrs = append(attrs, "auth_key_generated", e.cfg.AuthKeyFile)
	}
	if k.tls != nil {
		attrs = append(attrs, "mtls_cert", e.cfg.CertFile, "mtls_key", k.tls.Fingerprint())
	}
	msg := "device-agent starting"
	if gen > 1 {
		msg = "configuration loaded"
	}
	e.log.Info(msg, attrs...)
	return &instance{gen: gen, env: e, keys: k, client: c}, nil
}

func (in *instance) start(ctx context.Context) {
	rctx, cancel := context.WithCancel(ctx)
	in.cancel = cancel
	in.done = make(chan error, 1)
	go func() { in.done <- in.client.Run(rctx) }()
}

// stop ends the instance's Run: between polls when it can (Client.Stop),
// else after grace by cancelling the attempt in flight. The keys are closed
// once Run has returned; they are left to the process exit when it has not
// returned shutdownGrace after the cancel (a request may still be signing).
func (in *instance) stop(log *slog.Logger, grace time.Duration) bool {
	in.client.Stop()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-in.done:
	case <-t.C:
		in.cancel()
		select {
		case <-in.done:
		case <-time.After(shutdownGrace):
			in.client.CloseIdleConnections()
			log.Warn("requests of the previous configuration still in flight; its keys stay open")
			return false
		}
	}
	in.cancel()
	in.client.CloseIdleConnections()
	in.keys.Close()
	return true
}

// reload builds an instance from the configuration as it is now and swaps
// it in; when that fails the running instance stays and the log says why.
func (d *daemon) reload(ctx context.Context, cur *instance) *instance {
	log := d.logger()
	d.send(notifyReloading()...)
	log.Info("reloading configuration, keys and certificates", "signal", "SIGHUP")
	e, err := loadEnv(&d.cf, d.stderr, d.getenv)
	loadedAt := time.Now()
	var next *instance
	if err == nil {
		next, err = d.build(ctx, e, cur.gen+1)
	}
	if err != nil {
		log.Error("reload failed, keeping the running configuration", "error", flatError(err),
			"hint", "fix it (device-agent check shows the problem) and reload again: systemctl reload device-agent, or kill -HUP the daemon")
		d.status.reloaded(err)
		d.send("READY=1", notifyStatus("reload failed, running the previous configuration: "+flatError(err)))
		return cur
	}
	cur.stop(log, swapGrace)
	if d.front != nil {
		d.front.setClient(next.client)
	}
	d.gen.Store(next.gen)
	d.log.Store(e.log)
	d.status.setLogger(e.log)
	d.status.configLoaded(e.cfg, loadedAt)
	d.status.reloaded(nil)
	next.start(ctx)
	e.log.Info("configuration reloaded")
	d.send("READY=1", notifyStatus("configuration reloaded"))
	return next
}

// shutdown waits for the running instance after ctx was cancelled.
func (d *daemon) shutdown(cur *instance) error {
	log := d.logger()
	d.send("STOPPING=1")
	select {
	case err := <-cur.done:
		cur.keys.Close()
		d.status.stopped()
		log.Info("device-agent stopped")
		return err
	case <-time.After(shutdownGrace):
		// The process exits now; the keys (a TPM handle perhaps) may still be
		// in use by an in-flight handshake, so they are left to the exit.
		d.status.stopped()
		log.Warn("device-agent stopped with requests still in flight")
		return nil
	}
}

// onState receives the client's state: it updates the status file and, at
// the first report (the first authentication attempt), tells systemd the
// daemon is ready. Reports of a replaced instance are ignored.
func (d *daemon) onState(gen uint64, s client.State) {
	if gen != d.gen.Load() {
		return
	}
	d.status.clientState(s)
	text := stateSummary(s)
	d.mu.Lock()
	first, changed := !d.ready, text != d.lastNotified
	d.ready, d.lastNotified = true, text
	d.mu.Unlock()
	switch {
	case first:
		d.send("READY=1", notifyStatus(text))
	case changed:
		d.send(notifyStatus(text))
	}
}

// send notifies systemd; a failure is logged at debug (a missing listener
// must not disturb the daemon).
func (d *daemon) send(lines ...string) {
	if err := d.notify.send(lines...); err != nil {
		d.logger().Debug("sd_notify", "error", err)
	}
}

// stateSummary is the one-line STATUS= text for `systemctl status`.
func stateSummary(s client.State) string {
	var msg string
	switch {
	case s.Authenticated:
		msg = "authenticated with " + s.Server
	case s.Pending:
		msg = "waiting for the server to accept the device"
	case s.LastError != nil:
		msg = "not authenticated: " + s.LastError.Err
	default:
		msg = "not authenticated"
	}
	if dep := s.Deployment; dep != nil {
		msg += fmt.Sprintf("; deployment %s (%s) offered, not installed", dep.ID, dep.ArtifactName)
	}
	return msg
}

// flatError is err on one line: the problems of a joined error separated
// by "; ".
func flatError(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; ")), " ")
}
