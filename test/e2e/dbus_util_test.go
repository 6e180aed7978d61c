package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// privateBusConfig is a dbus-daemon configuration for a test bus: a custom
// bus on one Unix socket where anyone may own any name and send or receive
// anything, since the stock system-bus policy for
// io.mender.AuthenticationManager lets only root own the name (%s is the
// socket path).
const privateBusConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
  </policy>
</busconfig>
`

// startDBus starts a private dbus-daemon and returns its address, for
// DBUS_SYSTEM_BUS_ADDRESS (libdbus, godbus and GLib all honour it). The
// daemon is killed at cleanup. Its socket lives in a short temporary
// directory of its own: a Unix socket path must stay under 108 bytes, which
// a test's TempDir named after a long subtest may not.
func startDBus(t *testing.T) string {
	t.Helper()
	bin := requireTool(t, "dbus-daemon", "dbus")
	dir, err := os.MkdirTemp("", "e2e-dbus-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "bus.sock")
	conf := filepath.Join(dir, "bus.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(privateBusConfig, sock)), 0o644))
	p := start(t, nil, bin, "--config-file="+conf, "--nofork", "--print-address")
	require.Eventually(t, func() bool {
		return strings.Contains(p.stdout.String(), "unix:") || p.exited()
	}, 10*time.Second, 10*time.Millisecond, "dbus-daemon printed no address")
	require.False(t, p.exited(), "dbus-daemon exited: %s", p.stderr)
	_, err = os.Stat(sock)
	require.NoError(t, err, "dbus-daemon socket")
	return "unix:path=" + sock
}
