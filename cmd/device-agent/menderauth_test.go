package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/dbusauth"
	"github.com/mender-mtls/mtls-agent/internal/dbusauth/dbustest"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// mender-auth's command line: both spellings of every option, globals
// before or after the command, -d moving the fallback file, and the
// refusals.
func TestParseMenderAuth(t *testing.T) {
	env := map[string]string{"MENDER_CONF_DIR": "/etc/mc", "MENDER_DATASTORE_DIR": "/var/ds"}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		args    []string
		cmd     string
		wantErr string
		check   func(t *testing.T, m *menderAuthFlags)
	}{
		{name: "defaults", args: []string{"daemon"}, cmd: "daemon", check: func(t *testing.T, m *menderAuthFlags) {
			assert.Equal(t, "/etc/mc/mender.conf", m.cf.config)
			assert.Equal(t, "/var/ds/mender.conf", m.cf.fallback)
			assert.Equal(t, "/etc/mc/device-agent.conf", m.cf.overlayPath())
			assert.Equal(t, "/var/ds", m.cf.data)
			assert.False(t, m.forceBootstrap)
		}},
		{name: "short options", args: []string{"-c", "/a.conf", "-b", "/b.conf", "-d", "/ds", "-l", "debug", "-L", "/log", "-E", "/ca.pem", "bootstrap", "-F"},
			cmd: "bootstrap", check: func(t *testing.T, m *menderAuthFlags) {
				assert.Equal(t, "/a.conf", m.cf.config)
				assert.Equal(t, "/b.conf", m.cf.fallback, "-b wins over the datastore's file")
				assert.Equal(t, "/ds", m.cf.data)
				assert.Equal(t, "debug", m.cf.logLevel)
				assert.Equal(t, "/log", m.logFile)
				assert.Equal(t, "/ca.pem", m.trustedCerts)
				assert.True(t, m.forceBootstrap)
			}},
		{name: "long options with =", args: []string{"--config=/a.conf", "--datastore=/ds", "--log-level=warning", "--skipverify", "bootstrap", "--forcebootstrap"},
			cmd: "bootstrap", check: func(t *testing.T, m *menderAuthFlags) {
				assert.Equal(t, "/a.conf", m.cf.config)
				assert.Equal(t, "/ds/mender.conf", m.cf.fallback, "-d moves the fallback file")
				assert.Equal(t, "warning", m.cf.logLevel)
				assert.True(t, m.skipVerify)
				assert.True(t, m.forceBootstrap)
			}},
		{name: "--data alias and globals after the command", args: []string{"daemon", "--data", "/ds2", "--trusted-certs", "/ca.pem", "--forwarder-addr", "127.0.0.1:7000"},
			cmd: "daemon", check: func(t *testing.T, m *menderAuthFlags) {
				assert.Equal(t, "/ds2", m.cf.data)
				assert.Equal(t, "/ds2/mender.conf", m.cf.fallback)
				assert.Equal(t, "/ca.pem", m.trustedCerts)
				assert.Equal(t, "127.0.0.1:7000", m.forwarderAddr)
			}},
		{name: "version", args: []string{"--version"}, cmd: "version"},
		{name: "-v", args: []string{"-v"}, cmd: "version"},
		{name: "help", args: []string{"-h"}, cmd: "help"},
		{name: "command help", args: []string{"daemon", "--help"}, cmd: "help"},
		{name: "version not alone", args: []string{"--version", "daemon"}, wantErr: "--version must be given alone"},
		{name: "passphrase file", args: []string{"bootstrap", "--passphrase-file", "/p"}, wantErr: "--passphrase-file is not supported"},
		{name: "passphrase file on daemon", args: []string{"daemon", "--passphrase-file=-"}, wantErr: "--passphrase-file is not supported"},
		{name: "unknown command", args: []string{"frobnicate"}, wantErr: `unknown command "frobnicate"`},
		{name: "no command", args: nil, wantErr: "no command given"},
		{name: "unknown option", args: []string{"--nope", "daemon"}, wantErr: "--nope"},
		{name: "forwarder-addr is daemon only", args: []string{"bootstrap", "--forwarder-addr", "127.0.0.1:1"}, wantErr: "--forwarder-addr"},
		{name: "extra argument", args: []string{"daemon", "extra"}, wantErr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, m, err := parseMenderAuth(tt.args, getenv)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.NotContains(t, err.Error(), "\n", "one line")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.cmd, cmd)
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func TestMenderAuthRoleDispatch(t *testing.T) {
	assert.True(t, isMenderAuth("/usr/bin/mender-auth"))
	assert.True(t, isMenderAuth("mender-auth"))
	assert.False(t, isMenderAuth("/usr/bin/device-agent"))

	stdout, stderr, code := agent(t, nil, "mender-auth", "--help")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "mender-auth [global options] daemon")
	stdout, _, code = agent(t, nil, "mender-auth", "--version")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "mender-auth (device-agent dev)")
	_, stderr, code = agent(t, nil, "mender-auth", "bootstrap", "--passphrase-file", "/p")
	assert.Equal(t, 1, code, "errors exit 1, as Mender's do")
	assert.True(t, strings.HasPrefix(stderr, "mender-auth: --passphrase-file is not supported"), stderr)
	_, stderr, code = agent(t, nil, "mender-auth", "--bogus")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "mender-auth: ")
}

// bootstrap authenticates once through the mTLS server: 0 on success, 1
// with the diagnosis when the server cannot be reached; -F never replaces
// a configured key.
func TestMenderAuthBootstrap(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	_, stderr, code := agent(t, s.env, "mender-auth", "-c", s.conf, "-b", "", "bootstrap")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "bootstrap done")

	down := newSite(t, "https://127.0.0.1:1", serverCA, deviceCA, nil)
	_, stderr, code = agent(t, down.env, "mender-auth", "-c", down.conf, "-b", "", "bootstrap")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "mender-auth: bootstrap:")

	_, stderr, code = agent(t, s.env, "mender-auth", "-c", s.conf, "-b", "", "bootstrap", "-F")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "never replaces")
	_, err := os.Stat(s.key)
	assert.NoError(t, err, "the configured key is still there")
}

// consumer calls io.mender.Authentication1 as mender-update does.
type consumer struct {
	obj     dbus.BusObject
	signals chan *dbus.Signal
}

func newConsumer(t *testing.T, bus *dbustest.Bus) *consumer {
	t.Helper()
	conn, err := dbus.Connect(bus.Address)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.AddMatchSignal(dbus.WithMatchInterface(dbusauth.Interface), dbus.WithMatchMember(dbusauth.Signal)))
	ch := make(chan *dbus.Signal, 16)
	conn.Signal(ch)
	return &consumer{obj: conn.Object(dbusauth.BusName, dbusauth.ObjectPath), signals: ch}
}

// token waits up to 20s for a signal with a token, or asks GetJwtToken.
func (c *consumer) token(t *testing.T) (token, url string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case s := <-c.signals:
			if tok := s.Body[0].(string); tok != "" {
				return tok, s.Body[1].(string)
			}
		case <-time.After(200 * time.Millisecond):
			// The signal may have gone out before the match was added.
			var tok, url string
			if err := c.obj.CallWithContext(t.Context(), dbusauth.Interface+".GetJwtToken", 0).Store(&tok, &url); err == nil && tok != "" {
				return tok, url
			}
		case <-deadline:
			t.Fatal("no token over D-Bus within 20s")
		}
	}
}

// putInventory sends an inventory update through the forwarder with token
// and returns the status: 200 proves the forwarder presented the client
// certificate (the server requires one) and passed Authorization.
func putInventory(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, url+menderapi.PathInventoryAttributes,
		strings.NewReader(`[{"name":"via","value":"forwarder"}]`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// syncBuffer is a log sink read while the daemon writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `mender-auth daemon` (in process) authenticates at start, hands out the
// token with its forwarder URL over D-Bus, and the forwarder reaches the
// mTLS server with the device certificate; the token never shows in the
// log. `device-agent check` then reports the name and the forwarder.
func TestMenderAuthDaemon(t *testing.T) {
	bus := dbustest.Start(t)
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	s.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.Address
	c := newConsumer(t, bus)

	ctx, cancel := context.WithCancel(t.Context())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"mender-auth", "-c", s.conf, "-b", "", "daemon"}, io.Discard, &logs, func(k string) string { return s.env[k] })
	}()
	token, url := c.token(t)
	assert.True(t, strings.HasPrefix(url, "http://127.0.0.1:"), "server_url %s is the forwarder", url)
	assert.Equal(t, http.StatusOK, putInventory(t, url, token))
	assert.Equal(t, http.StatusUnauthorized, putInventory(t, url, "not-the-token"), "the server, not the forwarder, checks the token")

	stdout, _, code := s.check(t)
	assert.Equal(t, 0, code, stdout)
	assert.Contains(t, stdout, "PASS  dbus")
	assert.Contains(t, stdout, "forwarder "+url)
	assert.Contains(t, stdout, menderapi.TokenFingerprint(token))

	_, stderr, code := agent(t, s.env, "mender-auth", "-c", s.conf, "-b", "", "daemon")
	assert.Equal(t, 1, code, "a second daemon on the same datastore is refused")
	assert.Contains(t, stderr, "mender-auth: ")

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, 0, code, logs.String())
	case <-time.After(5 * time.Second):
		t.Fatal("mender-auth daemon did not stop within 5s")
	}
	assert.NotContains(t, logs.String(), token, "the token must never be logged")
	assert.Contains(t, logs.String(), menderapi.TokenFingerprint(token))
}

// A second owner of the name is refused with the owner named.
func TestMenderAuthNameTaken(t *testing.T) {
	bus := dbustest.Start(t)
	other, err := dbusauth.Start(dbusauth.Options{Address: bus.Address, ServerURL: "http://127.0.0.1:1",
		Fetch: func(context.Context) (string, error) { return "", fmt.Errorf("not used") }})
	require.NoError(t, err)
	defer other.Close()
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	s := newSite(t, "https://127.0.0.1:1", serverCA, deviceCA, nil)
	s.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.Address
	_, stderr, code := agent(t, s.env, "mender-auth", "-c", s.conf, "-b", "", "daemon")
	assert.Equal(t, 1, code)
	assert.Regexp(t, `mender-auth: serve io.mender.Authentication1: the D-Bus name io.mender.AuthenticationManager is already owned by :1\.\d+ \(PID \d+`, stderr)

	bus.Stop()
	_, stderr, code = agent(t, s.env, "mender-auth", "-c", s.conf, "-b", "", "daemon")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "connect to the D-Bus system bus")
}

// `device-agent daemon --dbus` keeps polling and also publishes the token
// its own loop gets, with the forwarder URL.
func TestDaemonDBus(t *testing.T) {
	bus := dbustest.Start(t)
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	s.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.Address
	c := newConsumer(t, bus)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"daemon", "--dbus", "--config", s.conf, "--fallback-config", ""}, io.Discard, io.Discard, func(k string) string { return s.env[k] })
	}()
	token, url := c.token(t)
	assert.True(t, strings.HasPrefix(url, "http://127.0.0.1:"))
	assert.Equal(t, http.StatusOK, putInventory(t, url, token))
	cancel()
	select {
	case code := <-done:
		assert.Equal(t, 0, code)
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop within 5s")
	}

	_, stderr, code := agent(t, s.env, "daemon", "--forwarder-addr", "127.0.0.1:0", "--config", s.conf)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "--forwarder-addr needs --dbus")
}

// The dbus check: a free name is a SKIP, an owner with a token a PASS that
// names the owner, the forwarder and the token's fingerprint.
func TestCheckDBus(t *testing.T) {
	bus := dbustest.Start(t)
	env := map[string]string{"DBUS_SYSTEM_BUS_ADDRESS": bus.Address}
	c := &checker{}
	dbusCheck(t.Context(), c, func(k string) string { return env[k] })
	require.Len(t, c.results, 1)
	assert.Equal(t, statusSkip, c.results[0].Status)
	assert.Contains(t, c.results[0].Detail, "is not owned")

	svc, err := dbusauth.Start(dbusauth.Options{Address: bus.Address, ServerURL: "http://127.0.0.1:4321",
		Fetch: func(context.Context) (string, error) { return "", fmt.Errorf("not used") }})
	require.NoError(t, err)
	defer svc.Close()
	c = &checker{}
	dbusCheck(t.Context(), c, func(k string) string { return env[k] })
	assert.Equal(t, statusPass, c.results[0].Status)
	assert.Contains(t, c.results[0].Detail, "holds no token yet")

	svc.Publish("the-token")
	c = &checker{}
	dbusCheck(t.Context(), c, func(k string) string { return env[k] })
	assert.Equal(t, statusPass, c.results[0].Status)
	assert.Contains(t, c.results[0].Detail, "forwarder http://127.0.0.1:4321; token "+menderapi.TokenFingerprint("the-token"))
	assert.NotContains(t, c.results[0].Detail, "the-token")
}

// The real binary, started through a mender-auth symlink as systemd starts
// it, serves D-Bus and stops on SIGTERM.
func TestMenderAuthSymlinkProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	bus := dbustest.Start(t)
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)

	dir := t.TempDir()
	bin := filepath.Join(dir, "device-agent")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	link := filepath.Join(dir, "mender-auth")
	require.NoError(t, os.Symlink("device-agent", link))

	out, err = exec.Command(link, "--version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "mender-auth (device-agent")

	c := newConsumer(t, bus)
	cmd := exec.Command(link, "--config", s.conf, "--fallback-config", "", "daemon")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address)
	for k, v := range s.env {
		if k != "DBUS_SYSTEM_BUS_ADDRESS" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	var logs syncBuffer
	cmd.Stderr = &logs
	require.NoError(t, cmd.Start())
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	token, url := c.token(t)
	assert.Equal(t, http.StatusOK, putInventory(t, url, token), logs.String())
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-waited:
		assert.NoError(t, err, "exit 0 on SIGTERM: %s", logs.String())
	case <-time.After(5 * time.Second):
		t.Fatal("mender-auth did not stop within 5s of SIGTERM")
	}
}

// When the bus goes away the daemon exits 1 with the reason, so that
// systemd restarts it once dbus is back.
func TestMenderAuthExitsWhenBusLost(t *testing.T) {
	bus := dbustest.Start(t)
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	s.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.Address
	c := newConsumer(t, bus)
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(t.Context(), []string{"mender-auth", "-c", s.conf, "-b", "", "daemon"}, io.Discard, &stderr, func(k string) string { return s.env[k] })
	}()
	c.token(t)
	bus.Stop()
	select {
	case code := <-done:
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr.String(), "mender-auth: lost the connection to the D-Bus system bus")
	case <-time.After(10 * time.Second):
		t.Fatal("mender-auth daemon did not exit within 10s of losing the bus")
	}
}
