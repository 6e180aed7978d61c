// Package dbusauth serves Mender's io.mender.Authentication1 D-Bus API, so
// that the stock mender-update, mender-connect and mender-configure get the
// device token and the server URL from this agent, as they would from
// Mender's own mender-auth.
//
// The service owns io.mender.AuthenticationManager on the system bus and
// exports /io/mender/AuthenticationManager with GetJwtToken (the cached
// token and the server URL, "" and "" without a token), FetchJwtToken
// (starts one authentication unless one is running, and returns true at
// once) and the JwtTokenStateChange signal, sent after every finished
// authentication: with the new token and the server URL, or with "" and ""
// when it failed. After a failure the service tries again with a jittered
// backoff until a fetch succeeds, so a consumer that only listens
// (mender-connect never calls FetchJwtToken) gets a token once the server
// is back. org.freedesktop.DBus.Introspectable describes the interface as
// Mender's XML does.
//
// The server URL handed out is the local forwarder's (internal/forwarder),
// never the real server: consumers reach the server through it with the
// device's client certificate. Tokens are never logged, only fingerprints.
//
// Built with -tags nodbus (a smaller agent without the mender-auth role),
// [Start] and [Probe] return [ErrNoDBus].
package dbusauth

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// The names Mender's clients use.
const (
	BusName    = "io.mender.AuthenticationManager"
	ObjectPath = "/io/mender/AuthenticationManager"
	Interface  = "io.mender.Authentication1"
	// Signal is the signal member name.
	Signal = "JwtTokenStateChange"
	// DefaultSystemBusAddress is the system bus when DBUS_SYSTEM_BUS_ADDRESS
	// is not set.
	DefaultSystemBusAddress = "unix:path=/var/run/dbus/system_bus_socket"
)

// Defaults applied by [Start] for zero Options fields.
const (
	DefaultRetryBase = time.Second
	DefaultRetryMax  = 5 * time.Minute
	// DefaultFetchTimeout bounds one authentication started over D-Bus
	// (mender-update waits 60 s for the signal).
	DefaultFetchTimeout = 50 * time.Second
)

// ErrNoDBus is what [Start] and [Probe] return in an agent built with
// -tags nodbus.
var ErrNoDBus = errors.New("this device-agent was built without D-Bus support (-tags nodbus): the mender-auth role and daemon --dbus are not available")

// ErrNameTaken is returned, wrapped with the owner, when another process
// owns io.mender.AuthenticationManager.
var ErrNameTaken = errors.New("the D-Bus name " + BusName + " is already owned")

// Options configure a [Service].
type Options struct {
	// Address is the bus address, e.g. "unix:path=/run/dbus/system_bus_socket";
	// cmd/ passes $DBUS_SYSTEM_BUS_ADDRESS. "" means DefaultSystemBusAddress.
	Address string
	// Fetch authenticates once and returns the new token. It is called by
	// one goroutine at a time, under FetchTimeout. Required.
	Fetch func(ctx context.Context) (token string, err error)
	// ServerURL is the URL handed out with every token: the local
	// forwarder's "http://127.0.0.1:PORT". Required.
	ServerURL string
	// FetchTimeout bounds one Fetch call. 0 means 50s.
	FetchTimeout time.Duration
	// RetryBase and RetryMax shape the backoff after a failed fetch (full
	// jitter, doubling from RetryBase up to RetryMax). 0 means 1s and 5min.
	RetryBase, RetryMax time.Duration
	// Rand returns uniform values in [0, 1) for the backoff; nil means
	// math/rand/v2.
	Rand func() float64
	// Logger receives the service's logs (fingerprints, never tokens). nil
	// discards them.
	Logger *slog.Logger
}

// ProbeResult is what [Probe] found on the bus.
type ProbeResult struct {
	// Owned reports whether a process owns BusName.
	Owned bool
	// Owner describes the owner: its unique name, PID and command when the
	// bus tells them. "" when not owned.
	Owner string
	// Token is the fingerprint of the token GetJwtToken returned
	// (menderapi.TokenFingerprint), "" when it returned none. The token
	// itself is not kept.
	Token string
	// ServerURL is the server URL GetJwtToken returned, "" with no token.
	ServerURL string
	// CallError is why GetJwtToken failed when the name is owned (a bus
	// policy that refuses this user, a daemon that does not answer); nil
	// when the call worked.
	CallError error
}
