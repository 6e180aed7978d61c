package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/dbusauth"
	"github.com/mender-mtls/mtls-agent/internal/forwarder"
)

// authFront is what Mender's mender-auth offers other processes: the
// io.mender.Authentication1 D-Bus service and the local forwarder it hands
// out as the server URL. It serves whichever client is current, so a
// daemon reload swaps the client underneath without restarting either.
type authFront struct {
	cur atomic.Pointer[client.Client]
	svc atomic.Pointer[dbusauth.Service]
	fwd *forwarder.Forwarder

	cancel context.CancelFunc
	done   chan error // the forwarder's Run
}

// authFrontOptions come from the flags and the environment.
type authFrontOptions struct {
	busAddress    string        // $DBUS_SYSTEM_BUS_ADDRESS; "" = the system bus
	forwarderAddr string        // "" = 127.0.0.1:0
	retryMax      time.Duration // cap of the retry backoff after a failed fetch
	log           *slog.Logger
}

// onToken is the clients' OnToken hook: a token the client got on its own
// (its daemon loop) is published on D-Bus too.
func (a *authFront) onToken(token, _ string) {
	if s := a.svc.Load(); s != nil {
		s.Publish(token)
	}
}

// setClient makes c the client that forwards and authenticates.
func (a *authFront) setClient(c *client.Client) { a.cur.Store(c) }

// start binds the forwarder and takes the D-Bus name for c.
func (a *authFront) start(ctx context.Context, c *client.Client, o authFrontOptions) error {
	a.setClient(c)
	fwd, err := forwarder.Listen(forwarder.Options{
		Addr:   o.forwarderAddr,
		Target: a.target,
		Logger: o.log,
	})
	if err != nil {
		return err
	}
	a.fwd = fwd
	fctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.done = make(chan error, 1)
	go func() { a.done <- fwd.Run(fctx) }()

	svc, err := dbusauth.Start(dbusauth.Options{
		Address:   o.busAddress,
		Fetch:     a.fetch,
		ServerURL: fwd.URL(),
		RetryMax:  o.retryMax,
		Logger:    o.log,
	})
	if err != nil {
		a.stopForwarder()
		return err
	}
	a.svc.Store(svc)
	o.log.Info("serving io.mender.Authentication1", "name", dbusauth.BusName, "forwarder", fwd.URL())
	return nil
}

// target names the current server and transport for the forwarder.
func (a *authFront) target() forwarder.Target {
	c := a.cur.Load()
	_, server := c.Session()
	return forwarder.Target{Servers: c.Servers(), Current: server, Transport: c.Transport()}
}

// fetch authenticates the current client once, for FetchJwtToken.
func (a *authFront) fetch(ctx context.Context) (string, error) {
	c := a.cur.Load()
	if err := c.Authenticate(ctx); err != nil {
		return "", err
	}
	token, _ := c.Session()
	if token == "" {
		return "", errors.New("authenticated, but the token was dropped at once")
	}
	return token, nil
}

// fetchNow starts an authentication, as a FetchJwtToken call would.
func (a *authFront) fetchNow() {
	if s := a.svc.Load(); s != nil {
		s.Fetch()
	}
}

// lost is closed when the bus connection is gone.
func (a *authFront) lost() <-chan struct{} {
	if s := a.svc.Load(); s != nil {
		return s.Done()
	}
	return nil
}

// close releases the D-Bus name and stops the forwarder.
func (a *authFront) close() {
	if s := a.svc.Load(); s != nil {
		_ = s.Close()
	}
	a.stopForwarder()
}

func (a *authFront) stopForwarder() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case <-a.done:
	case <-time.After(shutdownGrace):
	}
}

// frontFlags are the flags of the D-Bus role on `daemon`.
type frontFlags struct {
	dbus          bool
	forwarderAddr string
}

func (f *frontFlags) options(getenv func(string) string, e *env) authFrontOptions {
	return authFrontOptions{
		busAddress:    getenv("DBUS_SYSTEM_BUS_ADDRESS"),
		forwarderAddr: f.forwarderAddr,
		retryMax:      e.cfg.RetryPollInterval,
		log:           e.log,
	}
}

// errNoFront wraps a D-Bus or forwarder start failure with the fix.
func errNoFront(err error) error {
	return fmt.Errorf("serve io.mender.Authentication1: %w", err)
}
