// Package dbustest starts a private dbus-daemon for tests: a bus of its own
// per test, with a policy that lets the test's user own any name, so tests
// of the D-Bus service (and end-to-end tests of mender-update and
// mender-connect against it) never touch the machine's system bus.
package dbustest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// busConfig is a custom bus listening on one socket, open to everyone on
// this machine who can reach the socket (the test's temporary directory).
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
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

// Bus is a running private bus.
type Bus struct {
	// Address is the bus address for DBUS_SYSTEM_BUS_ADDRESS.
	Address string
	// Socket is the path of the bus socket.
	Socket string
	cmd    *exec.Cmd
}

// Start runs dbus-daemon on a socket in a new temporary directory and
// stops it when the test ends. It skips the test, loudly, when dbus-daemon
// is not installed (make test installs it: the dbus package).
func Start(tb testing.TB) *Bus {
	tb.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		tb.Skip("SKIP: dbus-daemon is not installed (apt-get install dbus; make test installs it)")
	}
	// A short directory: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "dbus")
	if err != nil {
		tb.Fatalf("dbustest: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "bus")
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, socket), 0o644); err != nil {
		tb.Fatalf("dbustest: %v", err)
	}
	cmd := exec.Command(daemon, "--config-file="+conf, "--nofork", "--print-address")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatalf("dbustest: %v", err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("dbustest: start dbus-daemon: %v", err)
	}
	b := &Bus{Socket: socket, cmd: cmd}
	tb.Cleanup(b.stop)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case addr, ok := <-lines:
		if !ok || addr == "" {
			tb.Fatalf("dbustest: dbus-daemon printed no address: %s", stderr.String())
		}
		b.Address = strings.TrimSpace(addr)
	case <-time.After(10 * time.Second):
		tb.Fatalf("dbustest: dbus-daemon printed no address within 10s: %s", stderr.String())
	}
	return b
}

// Stop ends the bus now (a test of what happens when the bus goes away);
// it is also done when the test ends.
func (b *Bus) Stop() { b.stop() }

func (b *Bus) stop() {
	if b.cmd.ProcessState != nil {
		return
	}
	_ = b.cmd.Process.Kill()
	_ = b.cmd.Wait()
}
