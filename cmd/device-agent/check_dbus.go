package main

import (
	"context"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/dbusauth"
)

// dbusProbeTimeout keeps the dbus check quick.
const dbusProbeTimeout = 3 * time.Second

// dbusCheck reports who owns io.mender.AuthenticationManager and the
// server URL (the forwarder) its GetJwtToken hands out. It never fails:
// a device without a bus or without a mender-auth daemon may be meant to
// run the agent alone; it says so with a SKIP and a warning.
func dbusCheck(ctx context.Context, c *checker, getenv func(string) string) {
	address := getenv("DBUS_SYSTEM_BUS_ADDRESS")
	if address == "" {
		address = dbusauth.DefaultSystemBusAddress
	}
	pctx, cancel := context.WithTimeout(ctx, dbusProbeTimeout)
	defer cancel()
	res, err := dbusauth.Probe(pctx, address)
	switch {
	case err != nil:
		c.skip("dbus", "no D-Bus system bus (%s)", errText(err))
		c.warn("dbus", "mender-update and mender-connect need the system bus and a mender-auth daemon: install dbus, then run mender-authd.service (device-agent as mender-auth) or device-agent daemon --dbus")
	case !res.Owned:
		c.skip("dbus", "%s is not owned on %s: no mender-auth daemon runs (start mender-authd.service, or device-agent daemon --dbus)", dbusauth.BusName, address)
	case res.CallError != nil:
		c.skip("dbus", "%s is owned by %s, but GetJwtToken failed: %s", dbusauth.BusName, res.Owner, errText(res.CallError))
		c.warn("dbus", "the bus policy lets only root call it (io.mender.AuthenticationManager.conf): run check as root")
	case res.Token == "":
		c.pass("dbus", "%s owned by %s; it holds no token yet (GetJwtToken returns empty strings)", dbusauth.BusName, res.Owner)
	default:
		c.pass("dbus", "%s owned by %s; forwarder %s; token %s", dbusauth.BusName, res.Owner, res.ServerURL, res.Token)
	}
}
