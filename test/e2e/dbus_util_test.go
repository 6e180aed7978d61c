package e2e

import (
	"testing"

	"github.com/mender-mtls/mtls-agent/internal/dbusauth/dbustest"
)

// startDBus starts a private dbus-daemon (internal/dbusauth/dbustest) and
// returns its address, for DBUS_SYSTEM_BUS_ADDRESS (libdbus, godbus and
// GLib all honour it). dbus-daemon missing fails the test: make test
// installs it, and these tests must not skip in CI.
func startDBus(t *testing.T) string {
	t.Helper()
	requireTool(t, "dbus-daemon", "dbus")
	return dbustest.Start(t).Address
}
