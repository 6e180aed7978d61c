package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// simulator runs a simulator subcommand to completion.
func simulator(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(bins.simulator, args...).CombinedOutput()
	require.NoError(t, err, "simulator %v:\n%s", args, out)
	return string(out)
}

// mtlsAgent writes an agent setup whose mender.conf uses the device
// certificate and key in certDir (the mTLS guide's file names) for both TLS
// and auth-request signing.
func mtlsAgent(t *testing.T, url, serverCA, certDir, mac string) *agentSetup {
	t.Helper()
	return newAgent(t, url, serverCA, agentConf{mac: mac, update: 1, inv: 60, retry: 1, extra: map[string]any{
		"HttpsClient": map[string]any{
			"Certificate": filepath.Join(certDir, "mender-cert.pem"),
			"Key":         filepath.Join(certDir, "mender-cert-private.pem"),
		},
		"Security": map[string]any{"AuthPrivateKey": filepath.Join(certDir, "mender-cert-private.pem")},
	}})
}

// waitAcceptedAndPolling waits until exactly one device is accepted, its
// inventory holds the certificate attributes, and it has polled twice.
func waitAcceptedAndPolling(t *testing.T, b *backend, wantCN string) menderapi.Device {
	t.Helper()
	var dev menderapi.Device
	require.Eventually(t, func() bool {
		devs := b.devices(t)
		if len(devs) == 1 && devs[0].Status == menderapi.DevStatusAccepted {
			dev = devs[0]
			return true
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "device was not accepted automatically")
	var inv menderapi.InventoryDevice
	require.Eventually(t, func() bool {
		return b.mgmt(t, http.MethodGet, menderapi.PathInventoryMgmtPrefix+dev.ID, nil, &inv) == http.StatusOK &&
			attr(inv, "mtls_cert_subject") != nil
	}, 30*time.Second, 100*time.Millisecond, "inventory with the certificate attributes never arrived")
	assert.Contains(t, attr(inv, "mtls_cert_subject"), "CN="+wantCN)
	assert.NotEmpty(t, attr(inv, "mtls_cert_serial"))
	assert.NotEmpty(t, attr(inv, "mtls_cert_not_after"))
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 2 }, 30*time.Second, 100*time.Millisecond,
		"device did not poll")
	return dev
}

// For each device key type, a certificate from `simulator pki device` gets
// the agent accepted through `simulator serve --mtls` with no manual step.
func TestMTLSAutoAcceptPerKeyType(t *testing.T) {
	for i, kt := range []string{"rsa2048", "ecdsa-p256", "ecdsa-p384", "ed25519"} {
		t.Run(kt, func(t *testing.T) {
			dir := t.TempDir()
			b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
			require.NotEqual(t, b.url, b.mgmtURL, "devices talk to the ambassador, management to the backend")
			certDir := filepath.Join(t.TempDir(), "device")
			simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-"+kt, "--out", certDir, "--key-type", kt)

			a := mtlsAgent(t, b.url, b.ca, certDir, fmt.Sprintf("02:00:00:00:0a:%02x", i))
			agent := startAgent(t, a.env, a.args("daemon")...)
			dev := waitAcceptedAndPolling(t, b, "dev-"+kt)
			assert.Len(t, dev.AuthSets, 1)
			assert.Zero(t, b.stats(t).ok("auth", 401), "a preauthorized device is never pending")

			resp, err := http.Get(b.statusURL)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode, "ambassador /status is ready")
			assert.Equal(t, 0, agent.stop(t, 2*time.Second))
		})
	}
}

// The PKI made by exactly the openssl commands of Mender's mTLS guide: a
// P-256 CA (req -new -x509), a server and a device certificate from CSRs
// signed with `openssl x509 -req -CA … -CAcreateserial` (version-1
// certificates without subjectAltName). The ambassador runs on the guide's
// server certificate in front of the fake backend; the agent, on the guide's
// device certificate, is accepted with no manual step.
func TestMTLSWithOpensslGuideCertificates(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl not found: make deps installs it (%v)", err)
	}
	pk := t.TempDir()
	sh := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = pk
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "openssl %v:\n%s", args, out)
	}
	// CA
	sh("ecparam", "-genkey", "-name", "P-256", "-out", "ca-private.key")
	sh("req", "-new", "-x509", "-key", "ca-private.key", "-out", "ca-cert.pem", "-days", "3650", "-subj", "/CN=My Mender mTLS CA")
	// server (the ambassador)
	sh("ecparam", "-genkey", "-name", "P-256", "-out", "server-private.key")
	sh("req", "-new", "-key", "server-private.key", "-out", "server-cert.req", "-subj", "/CN=localhost")
	sh("x509", "-req", "-CA", "ca-cert.pem", "-CAkey", "ca-private.key", "-CAcreateserial", "-in", "server-cert.req", "-out", "server-cert.pem", "-days", "365")
	// device
	sh("ecparam", "-genkey", "-name", "P-256", "-out", "device-private.key")
	sh("req", "-new", "-key", "device-private.key", "-out", "device-cert.req", "-subj", "/CN=device-0001")
	sh("x509", "-req", "-CA", "ca-cert.pem", "-CAkey", "ca-private.key", "-CAcreateserial", "-in", "device-cert.req", "-out", "device-cert.pem", "-days", "365")
	text, err := exec.Command("openssl", "x509", "-in", filepath.Join(pk, "server-cert.pem"), "-noout", "-text").Output()
	require.NoError(t, err)
	require.NotContains(t, string(text), "Subject Alternative Name", "the guide's server certificate has no SAN")

	// The guide's file names on the device.
	certDir := t.TempDir()
	copyFile(t, filepath.Join(pk, "device-cert.pem"), filepath.Join(certDir, "mender-cert.pem"), 0o644)
	copyFile(t, filepath.Join(pk, "device-private.key"), filepath.Join(certDir, "mender-cert-private.pem"), 0o600)

	b := startServe(t, t.TempDir()) // the backend, plain (no auto-accept)
	amb := startAmbassador(t, b,
		"--server-cert", filepath.Join(pk, "server-cert.pem"), "--server-key", filepath.Join(pk, "server-private.key"),
		"--ca", filepath.Join(pk, "ca-cert.pem"))
	// ServerURL names "localhost", the only name (CN) in the guide's server certificate.
	url := strings.Replace(amb.url, "127.0.0.1", "localhost", 1)
	a := mtlsAgent(t, url, filepath.Join(pk, "ca-cert.pem"), certDir, "02:00:00:00:0b:01")
	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "device-0001")
	assert.Contains(t, agent.stderr.String(), "subjectAltName", "the agent warns once how to add a SAN")
	assert.Equal(t, 1, strings.Count(agent.stderr.String(), "legacy Common Name"), "the warning is logged once")
}

// Upstream down: the ambassador answers 502 with a JSON error, the agent
// backs off, and it recovers by itself when the backend returns.
func TestMTLSUpstreamDownAndBack(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir)
	amb := startAmbassador(t, b)
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-outage", "--out", certDir)
	a := mtlsAgent(t, amb.url, b.ca, certDir, "02:00:00:00:0c:01")
	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "dev-outage")

	addr := strings.TrimPrefix(b.mgmtURL, "https://")
	b.kill()
	require.Eventually(t, func() bool { return strings.Contains(agent.stderr.String(), "502") }, 30*time.Second, 100*time.Millisecond,
		"the agent never saw the ambassador's 502")
	assert.Contains(t, amb.stderr.String()+agent.stderr.String(), "upstream")

	b2 := startServeAt(t, dir, addr)
	require.Eventually(t, func() bool { return b2.stats(t).ok("next", 204) >= 2 }, 60*time.Second, 200*time.Millisecond,
		"the agent did not recover after the backend returned")
	assert.False(t, agent.exited())
}

// ambassadorProc is a running `simulator ambassador`.
type ambassadorProc struct {
	*proc
	url, status string
}

// startAmbassador runs `simulator ambassador` in front of b with the PKI in
// b.dir unless args override it.
func startAmbassador(t *testing.T, b *backend, args ...string) *ambassadorProc {
	t.Helper()
	all := []string{"ambassador", "--backend", b.mgmtURL, "--upstream-ca", b.ca,
		"--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"}
	has := strings.Join(args, " ")
	if !strings.Contains(has, "--server-cert") {
		all = append(all, "--server-cert", filepath.Join(b.dir, "server.crt"), "--server-key", filepath.Join(b.dir, "server.key"))
	}
	if !strings.Contains(has, "--ca ") {
		all = append(all, "--ca", b.ca)
	}
	p := start(t, []string{"MTLS_MENDER_USER=" + b.user, "MTLS_MENDER_PASS=" + b.pass}, bins.simulator, append(all, args...)...)
	require.Eventually(t, func() bool { return strings.Contains(p.stdout.String(), "status:") || p.exited() }, 30*time.Second, 20*time.Millisecond)
	require.False(t, p.exited(), "ambassador exited: %s", p.stderr)
	a := &ambassadorProc{proc: p}
	sc := bufio.NewScanner(strings.NewReader(p.stdout.String()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "device" && f[1] == "URL:" {
			a.url = f[2]
		}
		if len(f) >= 2 && f[0] == "status:" {
			a.status = f[1]
		}
	}
	require.NotEmpty(t, a.url)
	require.Eventually(t, func() bool {
		resp, err := http.Get(a.status)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond, "ambassador never became ready")
	return a
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, data, mode))
}

// A device revoked with `simulator pki revoke` while everything runs gets
// nothing more through: the ambassador reloads the blacklist and CRL, the
// agent's requests are refused, and the backend sees no further request.
func TestMTLSRevokedWhileRunning(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	out := simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-stolen", "--out", certDir)
	serial := ""
	for _, f := range strings.Fields(out) {
		if strings.HasSuffix(f, ",") && serial == "" && strings.Contains(out, "serial "+strings.TrimSuffix(f, ",")) {
			serial = strings.TrimSuffix(f, ",")
		}
	}
	require.NotEmpty(t, serial, "serial in: %s", out)
	a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:0d:01")
	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "dev-stolen")

	simulator(t, "pki", "revoke", "--dir", dir, "--serial", serial)
	refused := func() int {
		s := agent.stderr.String()
		return strings.Count(s, "403") + strings.Count(s, "certificate revoked") + strings.Count(s, "bad certificate")
	}
	require.Eventually(t, func() bool { return refused() >= 1 }, 30*time.Second, 100*time.Millisecond,
		"the agent was never refused after its certificate was revoked")
	deviceRequests := func() map[string]int {
		r := b.stats(t).Requests
		delete(r, "mgmt") // our own management and stats calls
		return r
	}
	seen := deviceRequests()
	n := refused()
	require.Eventually(t, func() bool { return refused() >= n+2 }, 30*time.Second, 100*time.Millisecond,
		"the agent did not keep trying")
	assert.Equal(t, seen, deviceRequests(), "the backend received nothing from the revoked device")
}

// A device decommissioned through the management API comes back on its
// next authentication and is accepted again with no manual step, although
// the ambassador still has its preauthorization cached (issue 9, defect 4).
func TestMTLSDecommissionedDeviceIsAcceptedAgain(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-decom", "--out", certDir)
	a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:0e:01")
	agent := startAgent(t, a.env, a.args("daemon")...)
	dev := waitAcceptedAndPolling(t, b, "dev-decom")

	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodDelete, menderapi.PathDevauthDevices+"/"+dev.ID, nil, nil))
	require.Eventually(t, func() bool {
		devs := b.devices(t)
		return len(devs) == 1 && devs[0].ID != dev.ID && devs[0].Status == menderapi.DevStatusAccepted
	}, 30*time.Second, 100*time.Millisecond, "the decommissioned device was not accepted again; agent log:\n%s",
		lastLines(agent.stderr.String(), 20))
}
