package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// mender5Device is one device running Mender's split client: something in
// the mender-auth role, the stock mender-update 5.1.0 daemon and Debian's
// mender-connect, all on one private D-Bus, in front of `simulator serve
// --mtls`.
type mender5Device struct {
	peer       string // ../shared/peers/mender-5.1.0
	dir        string // MENDER_CONF_DIR: mender.conf
	store      string // MENDER_DATASTORE_DIR
	data       string // MENDER_DATA_DIR: identity, inventory, modules
	agentConf  string // our agent's own settings (TPM variant), "" = none
	env        []string
	deviceType string
	mac        string
}

// authVariant is what plays mender-auth.
type authVariant struct {
	name string
	// ours: our agent through a symlink named mender-auth; else the stock
	// mender-auth 5.1.0.
	ours bool
	// tpm: the device key is in swtpm (ours only); else a `simulator pki
	// device` key file.
	tpm bool
}

// Drop-in: the same deployment, token revocation and remote terminal
// scenario with the stock mender-auth 5.1.0 and with our agent as
// mender-auth (file key, and key in swtpm), side by side.
//
// Each variant: a private dbus-daemon; the mender-auth role; mender-update
// 5.1.0 as a daemon (it asks mender-auth for the token over D-Bus and sends
// its API calls through mender-auth's local forwarder); mender-connect 2.1
// (Debian), which takes the same token and URL and opens its deviceconnect
// websocket through the forwarder and the ambassador. The device is
// accepted through the ambassador with no manual step; deviceconnect shows
// it connected, and a user websocket through the management API runs a
// command in its shell. Its token is revoked through the management API:
// mender-update gets 401, has mender-auth fetch a new one and carries on.
// Then `simulator deploy` deploys a single-file artifact: success, the file
// is installed, the inventory names the new artifact, the download went
// through the ambassador with the device certificate, and the device
// authenticated again before commit.
func TestRealToolsMender5AuthDropIn(t *testing.T) {
	for _, v := range []authVariant{
		// No commas in the names: swtpm's option syntax cannot take a
		// comma in the TempDir paths made from them.
		{name: "stock mender-auth 5.1.0 with a key file"},
		{name: "device-agent as mender-auth with a key file", ours: true},
		{name: "device-agent as mender-auth with the key in swtpm", ours: true, tpm: true},
	} {
		t.Run(v.name, func(t *testing.T) { runMender5Scenario(t, v) })
	}
}

// requireAgentAuthRole skips when the agent under test has no mender-auth
// role yet (the binary predates it), naming the missing piece.
func requireAgentAuthRole(t *testing.T) {
	t.Helper()
	out, errOut, code := runAgent(t, nil, "mender-auth", "--help")
	if code != 0 {
		t.Skipf("SKIPPED LOUDLY: %s has no mender-auth role (`device-agent mender-auth --help` exits %d: %s); "+
			"the drop-in variant needs the agent's io.mender.Authentication1 D-Bus service and forwarder (issue 12)",
			bins.agent, code, strings.TrimSpace(lastLines(out+errOut, 3)))
	}
}

func runMender5Scenario(t *testing.T, v authVariant) {
	peer := menderPeer(t)
	connect := requireTool(t, "mender-connect", "mender-connect")
	if v.ours {
		requireAgentAuthRole(t)
	}
	bus := startDBus(t)
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0", "--log-level", "debug")

	d := newMender5Device(t, peer, "02:00:00:00:51:01", "e2e-mender5")
	d.identity(t, v, b, dir)
	d.env = append(d.env, "DBUS_SYSTEM_BUS_ADDRESS="+bus)

	auth := d.startAuth(t, v)
	// mender-updated.service has Restart=always, and mender-update 5.1.0
	// relies on it: some races in its state machine abort the process "in
	// the hope that restarting will help" (a 401 answered while a new token
	// arrives is one). The test restarts it the same way.
	update := startRestarting(t, d.env, filepath.Join(peer, "bin", "mender-update"), "--log-level", "debug", "daemon")

	devID := waitMender5Accepted(t, b, d, auth, update)
	require.Eventually(t, func() bool {
		return b.stats(t).ok("inventory", http.StatusOK) > 0
	}, 60*time.Second, 200*time.Millisecond, "mender-update never sent its inventory through mender-auth's forwarder")

	// mender-connect: token and URL from D-Bus, websocket through the
	// forwarder and the ambassador to the fake's deviceconnect.
	connConf := filepath.Join(d.dir, "mender-connect.conf")
	writeJSON(t, connConf, map[string]any{"User": "root", "ShellCommand": "/bin/sh", "ShellArguments": []string{}})
	mc := start(t, d.env, connect, "--config", connConf, "--fallback-config", filepath.Join(d.dir, "absent.conf"), "--debug", "daemon")
	waitDeviceConnected(t, b, devID, mc)
	assert.True(t, ambassadorUpgraded(b),
		"the deviceconnect websocket went through the ambassador with the device certificate:\n%s", lastLines(b.stderr.String(), 40))
	out := remoteShell(t, b, devID, mc, "echo $((6*7))", "42")
	assert.Contains(t, out, "42", "the command ran in mender-connect's shell")

	// Revocation: the next API call gets 401; mender-update has mender-auth
	// fetch a new token over D-Bus and goes on polling with it.
	authsBefore := b.stats(t).ok("auth", http.StatusOK)
	jti := acceptedAuthSet(t, b, devID)
	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodDelete, menderapi.PathDevauthTokensPrefix+jti, nil, nil))
	unauthorizedBefore := b.stats(t).ok("next", http.StatusUnauthorized) + b.stats(t).ok("inventory", http.StatusUnauthorized)
	require.Eventually(t, func() bool {
		s := b.stats(t)
		return s.ok("auth", http.StatusOK) > authsBefore &&
			s.ok("next", http.StatusUnauthorized)+s.ok("inventory", http.StatusUnauthorized) >= unauthorizedBefore
	}, 60*time.Second, 200*time.Millisecond, "after the revocation mender-update never got a new token")
	nextBefore := b.stats(t).ok("next", http.StatusNoContent) + b.stats(t).ok("next", http.StatusOK)
	require.Eventually(t, func() bool {
		s := b.stats(t)
		return s.ok("next", http.StatusNoContent)+s.ok("next", http.StatusOK) > nextBefore
	}, 60*time.Second, 200*time.Millisecond, "mender-update did not poll again with its new token")
	// mender-connect follows the new token (mender-auth 5.1 hands out a new
	// forwarder URL with every token): the device is connected again.
	waitDeviceConnected(t, b, devID, mc)

	// The deployment.
	dest := filepath.Join(t.TempDir(), "installed")
	require.NoError(t, os.MkdirAll(dest, 0o755))
	payload := []byte(fmt.Sprintf("installed by mender-update 5.1.0 (%s) at %s\n", v.name, time.Now().UTC().Format(time.RFC3339Nano)))
	art := writeSingleFileArtifact(t, t.TempDir(), "release-5-dropin", d.deviceType, dest, "payload.txt", payload)
	authsBefore = b.stats(t).ok("auth", http.StatusOK)
	downloadsBefore := b.stats(t).ok("download", http.StatusOK)
	depOut, code, depID := deploy(t, b, art, devID)
	require.Equal(t, 0, code, "simulator deploy:\n%s\n--- mender-update:\n%s", depOut, lastLines(update.out.String(), 60))
	assert.Contains(t, depOut, "success")
	assert.Equal(t, "success", b.deploymentDevice(t, depID, devID).Status)
	got, err := os.ReadFile(filepath.Join(dest, "payload.txt"))
	require.NoError(t, err, "the single-file module installed the payload")
	assert.Equal(t, payload, got)
	if !assert.Eventually(t, func() bool { return inventoryArtifact(t, b, devID) == "release-5-dropin" }, 60*time.Second, 200*time.Millisecond,
		"the inventory never reported artifact_name release-5-dropin") {
		_, inv := b.mgmtRaw(t, menderapi.PathInventoryMgmtPrefix+devID)
		t.Logf("inventory: %s\nmender-update inventory lines:\n%s", inv, grepLines(update.out.String(), "nventory"))
	}
	s := b.stats(t)
	assert.Greater(t, s.ok("download", http.StatusOK), downloadsBefore, "the artifact came from the backend")
	assert.True(t, ambassadorLogged(b, "/api/devices/v1/deployments/download/", http.StatusOK),
		"the download went through the ambassador with the device certificate:\n%s", lastLines(b.stderr.String(), 40))
	assert.Greater(t, s.ok("auth", http.StatusOK), authsBefore, "mender-update has the token renewed before ArtifactCommit")
	if v.tpm {
		// mender.conf names no client certificate, and the ambassador
		// refuses a download without one: the download can only have gone
		// through our forwarder, which signs the handshake in the TPM.
		conf := readJSON(t, filepath.Join(d.dir, "mender.conf"))
		assert.NotContains(t, conf, "HttpsClient")
	}

	for name, p := range map[string]*proc{"mender-auth": auth, "mender-connect": mc} {
		assert.False(t, p.exited(), "%s keeps running: %s", name, lastLines(p.stderr.String(), 20))
	}
	assert.Eventually(t, update.running, 5*time.Second, 100*time.Millisecond, "mender-update keeps running")
	if n := update.restarts(); n > 0 {
		t.Logf("mender-update 5.1.0 aborted and was restarted %d times (as systemd would); its last words:\n%s", n, update.lastWords())
	}
}

// restarting is a process restarted a second after every exit, as systemd
// does for a unit with Restart=always; it is stopped at cleanup.
type restarting struct {
	out  *syncBuffer // the output of every run, in order
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	cmd   *exec.Cmd
	exits []string // how each run ended, with the last lines of its output
}

func startRestarting(t *testing.T, env []string, name string, args ...string) *restarting {
	t.Helper()
	r := &restarting{out: &syncBuffer{}, stop: make(chan struct{}), done: make(chan struct{})}
	first := make(chan error, 1)
	go r.run(append(os.Environ(), env...), name, args, first)
	require.NoError(t, <-first, "start %s", name)
	t.Cleanup(func() {
		close(r.stop)
		r.mu.Lock()
		if r.cmd != nil && r.cmd.Process != nil {
			_ = r.cmd.Process.Kill()
		}
		r.mu.Unlock()
		<-r.done
		if t.Failed() {
			t.Logf("%s %v (restarted %d times)\n--- output:\n%s", filepath.Base(name), args, r.restarts(), lastLines(r.out.String(), 80))
		}
	})
	return r
}

func (r *restarting) run(env []string, name string, args []string, first chan<- error) {
	defer close(r.done)
	for run := 0; ; run++ {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = r.out, r.out
		r.mu.Lock()
		select {
		case <-r.stop:
			r.mu.Unlock()
			return
		default:
		}
		err := cmd.Start()
		if err == nil {
			r.cmd = cmd
		}
		r.mu.Unlock()
		if run == 0 {
			first <- err
		}
		if err != nil {
			return
		}
		mark := len(r.out.String())
		err = cmd.Wait()
		select {
		case <-r.stop:
			return
		default:
		}
		r.mu.Lock()
		r.exits = append(r.exits, fmt.Sprintf("exit: %v\n%s", err, lastLines(strings.TrimSpace(r.out.String()[mark:]), 3)))
		r.mu.Unlock()
		fmt.Fprintf(r.out, "=== e2e: %s exited (%v); restarting in 1 s\n", filepath.Base(name), err)
		select {
		case <-r.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *restarting) restarts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.exits)
}

func (r *restarting) lastWords() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.exits, "\n")
}

// running reports whether the process is up (between restarts it is not).
func (r *restarting) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil && r.cmd.ProcessState == nil
}

// newMender5Device makes the device's directories: a data directory with
// an identity script printing mac, an inventory script and the stock
// single-file update module, a datastore with device_type.
func newMender5Device(t *testing.T, peer, mac, deviceType string) *mender5Device {
	t.Helper()
	root := t.TempDir()
	d := &mender5Device{peer: peer, dir: filepath.Join(root, "etc"), store: filepath.Join(root, "var"),
		data: filepath.Join(root, "share"), deviceType: deviceType, mac: mac}
	for _, p := range []string{d.dir, d.store, filepath.Join(d.data, "identity"), filepath.Join(d.data, "inventory"),
		filepath.Join(d.data, "modules", "v3")} {
		require.NoError(t, os.MkdirAll(p, 0o755))
	}
	writeScript(t, filepath.Join(d.data, "identity", "mender-device-identity"), "echo mac="+mac)
	writeScript(t, filepath.Join(d.data, "inventory", "mender-inventory-e2e"), "echo e2e_client=mender-5.1")
	// mender-update 5.1 reports artifact_name and device_type only through
	// an inventory script; the stock one (mender-inventory-provides) runs
	// /usr/bin/mender-update, which is not where the test's copy is.
	writeScript(t, filepath.Join(d.data, "inventory", "mender-inventory-provides"),
		"set -e\n\""+filepath.Join(peer, "bin", "mender-update")+"\" show-provides\ncat \"$MENDER_DATASTORE_DIR/device_type\"")
	copyFile(t, filepath.Join(peer, "share", "mender", "modules", "v3", "single-file"),
		filepath.Join(d.data, "modules", "v3", "single-file"), 0o755)
	require.NoError(t, os.WriteFile(filepath.Join(d.store, "device_type"), []byte("device_type="+deviceType+"\n"), 0o644))
	d.env = []string{"MENDER_CONF_DIR=" + d.dir, "MENDER_DATA_DIR=" + d.data, "MENDER_DATASTORE_DIR=" + d.store}
	return d
}

// identity gives the device its key and certificate from the CA in caDir
// and writes mender.conf for backend b (and, with the key in a TPM, our
// agent's own configuration).
//
// With a key file, mender.conf has HttpsClient and Security.AuthPrivateKey,
// as for the stock client. With the key in the TPM, mender.conf has neither:
// mender-update loads HttpsClient itself and cannot open a TPM handle, so
// the key reference goes to the agent's configuration only.
func (d *mender5Device) identity(t *testing.T, v authVariant, b *backend, caDir string) {
	t.Helper()
	conf := map[string]any{
		"ServerURL":                    b.url,
		"ServerCertificate":            b.ca,
		"UpdatePollIntervalSeconds":    1,
		"InventoryPollIntervalSeconds": 1,
		"RetryPollIntervalSeconds":     1,
	}
	cn := "dev-mender5"
	if !v.tpm {
		certDir := filepath.Join(t.TempDir(), "device")
		simulator(t, "pki", "device", "--dir", caDir, "--cn", cn, "--out", certDir, "--device-path", certDir)
		for k, val := range readJSON(t, filepath.Join(certDir, "mender.conf.fragment")) {
			conf[k] = val
		}
		writeJSON(t, filepath.Join(d.dir, "mender.conf"), conf)
		return
	}
	tpm := startSwtpm(t)
	keyDir := t.TempDir()
	csr := filepath.Join(keyDir, "device.csr")
	stdout, stderr, code := runAgent(t, nil, "keygen", "--tpm-device", tpm, "--key", "handle:0x81000100",
		"--cn", cn, "--csr", csr, "--config", "", "--fallback-config", "")
	require.Equal(t, 0, code, "keygen:\n%s%s", stdout, stderr)
	cert := filepath.Join(keyDir, "mender-cert.pem")
	simulator(t, "pki", "sign-csr", "--dir", caDir, "--csr", csr, "--out", cert)
	writeJSON(t, filepath.Join(d.dir, "mender.conf"), conf)
	d.agentConf = filepath.Join(d.dir, "device-agent.conf")
	writeJSON(t, d.agentConf, map[string]any{
		"HttpsClient": map[string]any{"Certificate": cert, "Key": "handle:0x81000100"},
		"Security":    map[string]any{"AuthPrivateKey": "handle:0x81000100"},
		"TPM":         map[string]any{"Device": tpm},
	})
}

// startAuth starts what plays mender-auth: the stock binary, or our agent
// through a symlink named mender-auth (the role is chosen from argv[0]).
func (d *mender5Device) startAuth(t *testing.T, v authVariant) *proc {
	t.Helper()
	if !v.ours {
		return start(t, d.env, filepath.Join(d.peer, "bin", "mender-auth"), "--log-level", "debug", "daemon")
	}
	link := filepath.Join(t.TempDir(), "mender-auth")
	abs, err := filepath.Abs(bins.agent)
	require.NoError(t, err)
	require.NoError(t, os.Symlink(abs, link))
	args := []string{"--log-level", "debug"}
	if d.agentConf != "" {
		args = append(args, "--agent-config", d.agentConf)
	}
	args = append(args, "daemon")
	if bins.wrapper != "" {
		return start(t, d.env, bins.wrapper, append([]string{link}, args...)...)
	}
	return start(t, d.env, link, args...)
}

// waitMender5Accepted waits until the device with d's identity is accepted
// and returns its id.
func waitMender5Accepted(t *testing.T, b *backend, d *mender5Device, auth *proc, update *restarting) string {
	t.Helper()
	var id string
	require.Eventually(t, func() bool {
		for _, dev := range b.devices(t) {
			if dev.IdentityData["mac"] == d.mac && dev.Status == menderapi.DevStatusAccepted {
				id = dev.ID
				return true
			}
		}
		return auth.exited()
	}, 60*time.Second, 200*time.Millisecond, "the device was not accepted through the ambassador")
	require.False(t, auth.exited(), "mender-auth exited: %s", lastLines(auth.stderr.String(), 40))
	return id
}

// waitDeviceConnected waits until the fake's deviceconnect shows the
// device connected.
func waitDeviceConnected(t *testing.T, b *backend, devID string, mc *proc) {
	t.Helper()
	var st fakemender.DeviceConnectState
	require.Eventually(t, func() bool {
		st = fakemender.DeviceConnectState{}
		return b.mgmt(t, http.MethodGet, "/api/management/v1/deviceconnect/devices/"+devID, nil, &st) == http.StatusOK &&
			st.Status == fakemender.DeviceConnectConnected || mc.exited()
	}, 60*time.Second, 200*time.Millisecond, "mender-connect never connected to deviceconnect (last status %+v)", st)
	require.False(t, mc.exited(), "mender-connect exited: %s", lastLines(mc.stderr.String(), 40))
}

// acceptedAuthSet returns the id of the device's accepted auth set, which
// is the jti of its tokens.
func acceptedAuthSet(t *testing.T, b *backend, devID string) string {
	t.Helper()
	for _, dev := range b.devices(t) {
		if dev.ID != devID {
			continue
		}
		for _, as := range dev.AuthSets {
			if as.Status == menderapi.DevStatusAccepted {
				return as.ID
			}
		}
	}
	t.Fatalf("device %s has no accepted auth set", devID)
	return ""
}

// ambassadorLogged reports whether serve's log (debug level) has the
// ambassador's request line for a path starting with pathPrefix, with that
// status and a client certificate serial.
func ambassadorLogged(b *backend, pathPrefix string, status int) bool {
	sc := bufio.NewScanner(strings.NewReader(b.stderr.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "msg=request ") && strings.Contains(line, " path="+pathPrefix) &&
			strings.Contains(line, fmt.Sprintf(" status=%d ", status)) && strings.Contains(line, " serial=") &&
			!strings.Contains(line, " serial=\"\"") {
			return true
		}
	}
	return false
}

// ambassadorUpgraded reports whether serve's log (debug level) has the
// ambassador's line for a websocket upgrade with a client certificate
// serial. (A websocket's request line is logged only when it closes.)
func ambassadorUpgraded(b *backend) bool {
	for line := range strings.Lines(b.stderr.String()) {
		if strings.Contains(line, `msg="connection upgraded to websocket"`) && strings.Contains(line, " serial=") {
			return true
		}
	}
	return false
}

// remoteShell opens a terminal on the device through the management
// websocket, as `mender-cli terminal` does, runs command and returns the
// shell's output once it contains want.
//
// An attempt that gets no answer within 20 s is given up and retried with
// a new session, four times at most: mender-connect 2.1 sometimes starts a
// shell, runs the command and never sends the shell's output for that
// session (seen behind the stock mender-auth and ours alike, with no frame
// reaching the server), while the next session on the same websocket
// works. Each failed attempt is logged with what both sides saw.
func remoteShell(t *testing.T, b *backend, devID string, mc *proc, command, want string) string {
	t.Helper()
	var errs []string
	for attempt := 1; attempt <= 4; attempt++ {
		serveMark, mcMark := len(b.stderr.String()), len(mc.stderr.String())
		out, err := shellAttempt(t, b, devID, command, want)
		if err != nil {
			t.Logf("remote shell attempt %d failed: %v\n--- deviceconnect in serve's log:\n%s--- mender-connect:\n%s", attempt, err,
				grepLines(b.stderr.String()[serveMark:], "deviceconnect"), mc.stderr.String()[mcMark:])
		}
		if err == nil {
			if len(errs) > 0 {
				t.Logf("remote shell worked at attempt %d; earlier attempts: %s", attempt, strings.Join(errs, "; "))
			}
			return out
		}
		errs = append(errs, fmt.Sprintf("attempt %d: %v", attempt, err))
		require.Eventually(t, func() bool {
			var st fakemender.DeviceConnectState
			return b.mgmt(t, http.MethodGet, "/api/management/v1/deviceconnect/devices/"+devID, nil, &st) == http.StatusOK &&
				st.Status == fakemender.DeviceConnectConnected
		}, 2*time.Minute, 500*time.Millisecond, "mender-connect did not come back after %s", errs[len(errs)-1])
	}
	t.Fatalf("no remote shell: %s", strings.Join(errs, "; "))
	return ""
}

// shellAttempt is one terminal session: shell new, the command, output
// until it holds want, shell stop.
func shellAttempt(t *testing.T, b *backend, devID, command, want string) (string, error) {
	t.Helper()
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, "/api/management/v1/deviceconnect/devices/"+devID, nil, nil))
	b.mu.Lock()
	token := b.token
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	url := "wss" + strings.TrimPrefix(b.mgmtURL, "https") + "/api/management/v1/deviceconnect/devices/" + devID + "/connect"
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient: b.http, HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		return "", fmt.Errorf("management websocket: %w", err)
	}
	defer func() { _ = c.CloseNow() }()
	c.SetReadLimit(1 << 20)

	write := func(m fakemender.ProtoMsg) error {
		data, err := msgpack.Marshal(&m)
		require.NoError(t, err)
		return c.Write(ctx, websocket.MessageBinary, data)
	}
	read := func() (fakemender.ProtoMsg, error) {
		var m fakemender.ProtoMsg
		_, data, err := c.Read(ctx)
		if err != nil {
			return m, err
		}
		return m, msgpack.Unmarshal(data, &m)
	}
	shellMsg := func(typ, sid string, props map[string]any, body string) fakemender.ProtoMsg {
		return fakemender.ProtoMsg{Header: fakemender.ProtoHdr{Proto: fakemender.ProtoShell, MsgType: typ, SessionID: sid, Properties: props}, Body: []byte(body)}
	}

	if err := write(shellMsg(fakemender.ShellNew, "", map[string]any{"terminal_width": 80, "terminal_height": 24}, "")); err != nil {
		return "", fmt.Errorf("send shell new: %w", err)
	}
	var sid string
	for sid == "" {
		m, err := read()
		if err != nil {
			return "", fmt.Errorf("wait for the shell: %w", err)
		}
		if m.Header.Proto == fakemender.ProtoShell && m.Header.MsgType == fakemender.ShellNew {
			require.NotEqual(t, int64(fakemender.ShellStatusError), toInt(m.Header.Properties["status"]), "the device refused the shell: %s", m.Body)
			sid = m.Header.SessionID
		}
	}
	if err := write(shellMsg(fakemender.ShellData, sid, nil, command+"\n")); err != nil {
		return "", fmt.Errorf("send the command: %w", err)
	}
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		m, err := read()
		if err != nil {
			return out.String(), fmt.Errorf("shell started, no %q in the output %q: %w", want, out.String(), err)
		}
		if m.Header.Proto != fakemender.ProtoShell {
			continue
		}
		switch m.Header.MsgType {
		case fakemender.ShellData:
			out.Write(m.Body)
		case fakemender.ShellPing:
			_ = write(shellMsg(fakemender.ShellPong, sid, nil, ""))
		case fakemender.ShellStop:
			t.Fatalf("the device stopped the shell: %s (output so far %q)", m.Body, out.String())
		}
	}
	_ = write(shellMsg(fakemender.ShellStop, sid, nil, ""))
	_ = c.Close(websocket.StatusNormalClosure, "")
	return out.String(), nil
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out strings.Builder
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out.WriteString(line)
		}
	}
	return out.String()
}

// toInt reads a msgpack integer of any width; -1 when v is not one.
func toInt(v any) int64 {
	switch n := v.(type) {
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case int64:
		return n
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	case uint64:
		return int64(n)
	}
	return -1
}
