package dbusauth

import (
	"context"
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

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

// Probe connects to the bus at address ("" = DefaultSystemBusAddress),
// finds the owner of BusName and, when there is one, calls GetJwtToken,
// all within ctx. It returns an error only when the bus cannot be reached.
func Probe(ctx context.Context, address string) (ProbeResult, error) {
	if address == "" {
		address = DefaultSystemBusAddress
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, err := dbus.Connect(address, dbus.WithContext(ctx))
	if err != nil {
		return ProbeResult{}, fmt.Errorf("connect to the D-Bus system bus at %s: %w", address, err)
	}
	defer conn.Close()
	var res ProbeResult
	var has bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, BusName).Store(&has); err != nil {
		return ProbeResult{}, fmt.Errorf("ask the bus at %s who owns %s: %w", address, BusName, err)
	}
	if !has {
		return res, nil
	}
	res.Owned = true
	res.Owner = describeOwner(conn, BusName)
	var token, url string
	if err := conn.Object(BusName, ObjectPath).CallWithContext(ctx, Interface+".GetJwtToken", 0).Store(&token, &url); err != nil {
		res.CallError = err
		return res, nil
	}
	if token != "" {
		res.Token = menderapi.TokenFingerprint(token)
	}
	res.ServerURL = url
	return res, nil
}
