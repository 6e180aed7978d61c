package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// notifySocket stands in for systemd: a unixgram socket collecting the
// agent's sd_notify datagrams.
type notifySocket struct {
	conn *net.UnixConn
	path string
	seen []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdn") // short: socket paths are limited to 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{conn: conn, path: path}
}

// waitFor returns the first datagram, from now on, holding line.
func (n *notifySocket) waitFor(t *testing.T, line string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		require.NoError(t, n.conn.SetReadDeadline(deadline))
		k, err := n.conn.Read(buf)
		require.NoError(t, err, "no sd_notify %s within %v; seen %q", line, timeout, n.seen)
		msg := string(buf[:k])
		n.seen = append(n.seen, msg)
		for l := range strings.Lines(msg) {
			if strings.TrimSuffix(l, "\n") == line {
				return msg
			}
		}
	}
}

// agentStatus is the part of `device-agent status --json` the tests read.
type agentStatus struct {
	Running       bool      `json:"running"`
	AgeSeconds    float64   `json:"age_seconds"`
	PID           int       `json:"pid"`
	Authenticated bool      `json:"authenticated"`
	Pending       bool      `json:"pending"`
	Server        string    `json:"server"`
	TokenExpires  time.Time `json:"token_expires"`
	LastInventory time.Time `json:"last_inventory"`
	LastPoll      time.Time `json:"last_poll"`
	StoppedAt     time.Time `json:"stopped_at"`
	Deployment    *struct {
		ID           string `json:"id"`
		ArtifactName string `json:"artifact_name"`
	} `json:"pending_deployment"`
	LastReload *struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	} `json:"last_reload"`
}

func statusJSON(t *testing.T, a *agentSetup) agentStatus {
	t.Helper()
	st, err := tryStatusJSON(t, a)
	require.NoError(t, err)
	return st
}

// tryStatusJSON is statusJSON for polling: the status file may not exist yet.
func tryStatusJSON(t *testing.T, a *agentSetup) (agentStatus, error) {
	t.Helper()
	var st agentStatus
	stdout, stderr, code := runAgent(t, a.env, a.args("status", "--json")...)
	if code != 0 {
		return st, fmt.Errorf("status --json: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		return st, fmt.Errorf("status --json: %w: %s", err, stdout)
	}
	return st, nil
}

// writeAuthKey writes a new Ed25519 auth key and returns its path and
// public key PEM.
func writeAuthKey(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, err := pki.GenerateKey(pki.Ed25519)
	require.NoError(t, err)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	path := filepath.Join(dir, "new-auth-key.pem")
	require.NoError(t, atomicfile.Write(path, keyPEM, pki.KeyFileMode))
	pub, err := menderapi.MarshalPublicKeyPEM(key.Public())
	require.NoError(t, err)
	return path, pub
}

// SIGHUP reloads mender.conf and the keys without killing the process (it
// used to kill it: SIGHUP was not handled): a new server and a new auth key
// take over between polls, with RELOADING=1/READY=1 to systemd; a broken
// configuration is refused and the running one goes on; SIGTERM sends
// STOPPING=1 and exits 0.
func TestDaemonReloadsOnSIGHUP(t *testing.T) {
	b1 := startServe(t, t.TempDir(), "--auto-accept")
	b2 := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b1.url, b1.ca, agentConf{mac: "02:00:00:00:00:31", update: 1, inv: 60, retry: 1})
	ns := listenNotify(t)
	agent := startAgent(t, append(a.env, "NOTIFY_SOCKET="+ns.path), a.args("daemon")...)

	ns.waitFor(t, "READY=1", 30*time.Second)
	assert.GreaterOrEqual(t, b1.stats(t).Requests["auth"], 1, "READY=1 comes after the first authentication attempt")
	require.Eventually(t, func() bool { return b1.stats(t).ok("next", 204) >= 1 }, 20*time.Second, 100*time.Millisecond)

	// New server, new CA, new auth key.
	keyPath, pubPEM := writeAuthKey(t, a.dir)
	rewriteConf(t, a, map[string]any{"ServerURL": b2.url, "ServerCertificate": b2.ca,
		"Security": map[string]any{"AuthPrivateKey": keyPath}})
	require.NoError(t, agent.cmd.Process.Signal(syscall.SIGHUP))
	msg := ns.waitFor(t, "RELOADING=1", 10*time.Second)
	assert.Contains(t, msg, "MONOTONIC_USEC=")
	ns.waitFor(t, "READY=1", 15*time.Second)
	require.Eventually(t, func() bool { return b2.stats(t).ok("next", 204) >= 2 }, 20*time.Second, 100*time.Millisecond,
		"the reloaded configuration polls the new server")
	require.False(t, agent.exited(), "SIGHUP must not kill the daemon: %s", agent.stderr)
	devs := b2.devices(t)
	require.Len(t, devs, 1)
	require.Len(t, devs[0].AuthSets, 1)
	assert.Equal(t, strings.TrimSpace(pubPEM), strings.TrimSpace(devs[0].AuthSets[0].PubKey), "auth requests are signed with the new key")
	polls1 := b1.stats(t).ok("next", 204)
	time.Sleep(1500 * time.Millisecond)
	assert.Equal(t, polls1, b1.stats(t).ok("next", 204), "the old configuration no longer polls")

	// A broken configuration: refused, logged, the running one goes on.
	require.NoError(t, os.WriteFile(a.conf, []byte(`{"ServerURL": `), 0o644))
	require.NoError(t, agent.cmd.Process.Signal(syscall.SIGHUP))
	ns.waitFor(t, "RELOADING=1", 10*time.Second)
	msg = ns.waitFor(t, "READY=1", 10*time.Second)
	assert.Contains(t, msg, "STATUS=reload failed")
	polls2 := b2.stats(t).ok("next", 204)
	require.Eventually(t, func() bool { return b2.stats(t).ok("next", 204) > polls2 }, 10*time.Second, 100*time.Millisecond,
		"the running configuration keeps polling")
	assert.Contains(t, agent.stderr.String(), `msg="reload failed, keeping the running configuration" error="`)
	assert.Contains(t, agent.stderr.String(), "mender.conf")
	st := statusJSON(t, a)
	require.NotNil(t, st.LastReload)
	assert.False(t, st.LastReload.OK)
	assert.Equal(t, b2.url, st.Server)

	assert.Equal(t, 0, agent.stop(t, 2*time.Second), "exit code after SIGTERM")
	ns.waitFor(t, "STOPPING=1", time.Second)
	assert.NotContains(t, agent.stderr.String(), "panic")
	assertNoSecrets(t, agent.stderr.String(), b2)
}

// One daemon per datastore: a second one exits at once with one line naming
// the running one's PID, and the first keeps running.
func TestDaemonOnePerDatastore(t *testing.T) {
	b := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:32", update: 1, inv: 60, retry: 1})
	first := startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 1 }, 30*time.Second, 100*time.Millisecond)

	start := time.Now()
	stdout, stderr, code := runAgent(t, a.env, a.args("daemon")...)
	assert.Equal(t, 1, code)
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Empty(t, stdout)
	pid := first.cmd.Process.Pid
	if bins.wrapper != "" {
		pid = 0 // under qemu-user the PID is the wrapper's; checked below by prefix only
	}
	assert.Regexp(t, `^device-agent: another device-agent daemon \(PID [0-9]+\) is running with the datastore `+a.datastore+` .*: stop it first`, stderr)
	if pid != 0 {
		assert.Contains(t, stderr, "(PID "+strconv.Itoa(pid)+")")
	}
	assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
	assert.False(t, first.exited(), "the running daemon is not disturbed")
	assert.Equal(t, 0, first.stop(t, 2*time.Second))
}

// status: an error before the daemon ever ran; then pending, accepted with
// the token's expiry, a deployment (logged once at WARN though offered at
// every poll), and a clean stop.
func TestDaemonStatus(t *testing.T) {
	b := startServe(t, t.TempDir())
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:33", update: 1, inv: 60, retry: 1})

	stdout, stderr, code := runAgent(t, a.env, a.args("status")...)
	assert.Equal(t, 1, code, "no status file yet")
	assert.Empty(t, stdout)
	assert.Equal(t, "device-agent: no status file "+filepath.Join(a.datastore, "device-agent-status.json")+
		": the daemon has not run with the datastore "+a.datastore+" (start it: systemctl start device-agent; or point --data at its datastore)\n", stderr)

	agent := startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool {
		st, err := tryStatusJSON(t, a)
		return err == nil && st.Pending
	}, 30*time.Second, 200*time.Millisecond, "status shows pending")
	stdout, _, code = runAgent(t, a.env, a.args("status")...)
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "authenticated:  no: the server answered 401, the device is pending acceptance")
	assert.Contains(t, stdout, "last error:")

	devs := b.devices(t)
	require.Len(t, devs, 1)
	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodPut,
		menderapi.PathDevauthDevices+"/"+devs[0].ID+"/auth/"+devs[0].AuthSets[0].ID+"/status",
		menderapi.StatusUpdate{Status: menderapi.DevStatusAccepted}, nil))
	var st agentStatus
	require.Eventually(t, func() bool {
		st = statusJSON(t, a)
		return st.Authenticated && !st.LastPoll.IsZero()
	}, 30*time.Second, 200*time.Millisecond, "status shows authenticated and polling")
	assert.True(t, st.Running)
	assert.Equal(t, b.url, st.Server)
	assert.WithinDuration(t, time.Now().Add(7*24*time.Hour), st.TokenExpires, 5*time.Minute, "the JWT's exp (7 days)")
	assert.False(t, st.LastInventory.IsZero())
	assert.Less(t, st.AgeSeconds, 70.0)
	if bins.wrapper == "" {
		assert.Equal(t, agent.cmd.Process.Pid, st.PID)
	}

	var dep struct {
		ID string `json:"id"`
	}
	require.Equal(t, http.StatusCreated, b.mgmt(t, http.MethodPost, "/api/management/v1/fake/deployments",
		map[string]any{"artifact_name": "release-7", "device_types": []string{"raspberrypi4"}}, &dep))
	polls := b.stats(t).ok("next", 200)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 200) >= polls+3 }, 20*time.Second, 100*time.Millisecond,
		"the deployment is offered at every poll")
	require.Eventually(t, func() bool {
		st = statusJSON(t, a)
		return st.Deployment != nil
	}, 10*time.Second, 200*time.Millisecond)
	assert.Equal(t, dep.ID, st.Deployment.ID)
	assert.Equal(t, "release-7", st.Deployment.ArtifactName)
	log := agent.stderr.String()
	assert.Equal(t, 1, strings.Count(log, "level=WARN msg=\"deployment offered, but this agent does not install artifacts (standalone mode)"),
		"one warning per deployment id, not one per poll:\n%s", log)
	assert.Contains(t, log, "deployment_id="+dep.ID)
	stdout, _, code = runAgent(t, a.env, a.args("status")...)
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "deployment:     "+dep.ID+" (artifact release-7) offered since ")
	assert.Regexp(t, `daemon:\s+running, PID [0-9]+`, stdout)
	assert.Regexp(t, `status file:\s+\S+device-agent-status.json, written [0-9]+s ago`, stdout)

	assert.Equal(t, 0, agent.stop(t, 2*time.Second))
	st = statusJSON(t, a)
	assert.False(t, st.Running)
	assert.False(t, st.StoppedAt.IsZero(), "a clean stop is recorded")
	stdout, _, _ = runAgent(t, a.env, a.args("status")...)
	assert.Contains(t, stdout, "daemon:         not running: stopped ")
	assertNoSecrets(t, stdout+log, b)
}

// Under systemd (JOURNAL_STREAM names the agent's stderr) text log lines
// start with the syslog priority and carry no time stamp; the same variable
// inherited by a process whose stderr goes elsewhere changes nothing.
func TestDaemonJournalLogging(t *testing.T) {
	b := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:34", update: 1, inv: 60, retry: 1})

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	fi, err := w.Stat()
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	name, args := agentCommand(a.args("daemon", "--log-level", "debug"))
	cmd := exec.Command(name, args...)
	cmd.Env = append(append(os.Environ(), a.env...), fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = w
	require.NoError(t, cmd.Start())
	w.Close()
	out := &syncBuffer{}
	copied := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			_, _ = out.Write(buf[:n])
			if err != nil {
				close(copied)
				return
			}
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 1 }, 30*time.Second, 100*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())
	<-copied

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.NotEmpty(t, lines)
	prios := map[string]bool{}
	for _, l := range lines {
		require.Regexp(t, `^<[3467]>level=(DEBUG|INFO|WARN|ERROR) msg=`, l, "every line starts with its priority")
		assert.NotContains(t, l, "time=", "journald adds the time")
		prios[l[:3]] = true
	}
	assert.True(t, prios["<6>"] && prios["<7>"], "info and debug lines: %v", prios)

	// The variable alone, inherited by a process whose stderr goes
	// elsewhere (here a pipe of the harness), changes nothing; --log-format
	// json gives one JSON object per line.
	other := startAgent(t, append(a.env, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino)),
		a.args("daemon", "--log-format", "json")...)
	require.Eventually(t, func() bool { return strings.Count(other.stderr.String(), "\n") >= 2 }, 30*time.Second, 50*time.Millisecond)
	assert.Equal(t, 0, other.stop(t, 2*time.Second))
	for _, l := range strings.Split(strings.TrimSpace(other.stderr.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), "a JSON line: %q", l)
		assert.Contains(t, m, "time")
		assert.Contains(t, m, "level")
	}
}
