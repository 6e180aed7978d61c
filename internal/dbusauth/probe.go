//go:build !nodbus

package dbusauth

import (
	"context"
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

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
