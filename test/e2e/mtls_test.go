package e2e

import (
	"bufio"
	"crypto/x509"
	"encoding/pem"
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

// opensslGuide is the "Generating the keys" block of Mender's mTLS guide
// (mender-docs 3.7, Server integration > Mutual TLS authentication > Keys
// and certificates), verbatim: the -config files make version-1
// certificates without any extension (no basicConstraints on the CA, no
// subjectAltName on the server).
const opensslGuide = `openssl ecparam -genkey -name P-256 -noout -out ca-private.key
cat > ca.conf <<EOF
[req]
distinguished_name = req_distinguished_name
prompt = no

[req_distinguished_name]
commonName=My CA
organizationName=My Organization
organizationalUnitName=My Unit
emailAddress=myusername@example.com
countryName=NO
localityName=Oslo
stateOrProvinceName=Oslo
EOF

openssl req -new -x509 -key ca-private.key -out ca.crt -config ca.conf -days $((365*10))
openssl ecparam -genkey -name P-256 -noout -out server.key

cat > server.conf <<EOF
[req]
distinguished_name = req_distinguished_name
prompt = no

[req_distinguished_name]
commonName=$MTLS_DOMAIN
organizationName=My Organization
organizationalUnitName=My Unit
emailAddress=myusername@example.com
countryName=NO
localityName=Oslo
stateOrProvinceName=Oslo
EOF
openssl req -new -key server.key -out server.req -config server.conf
openssl x509 -req -CA ca.crt -CAkey ca-private.key -CAcreateserial -in server.req -out server.crt -days $((365*2))
openssl ecparam -genkey -name P-256 -noout -out device-private.key
cat > device-cert.conf <<EOF
[req]
distinguished_name = req_distinguished_name
prompt = no

[req_distinguished_name]
commonName=my-device-hostname.com
organizationName=My Organization
organizationalUnitName=My Unit
emailAddress=myusername@example.com
countryName=NO
localityName=Oslo
stateOrProvinceName=Oslo
EOF
openssl req -new -key device-private.key -out device-cert.req -config device-cert.conf
openssl x509 -req -CA ca.crt -CAkey ca-private.key -CAcreateserial -in device-cert.req -out device-cert.pem -days $((365*10))
`

// runOpensslGuide runs the guide's commands in a new directory with
// MTLS_DOMAIN=localhost and returns it; it checks that they made what the
// guide makes: version-1 certificates without extensions.
func runOpensslGuide(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl not found: make deps installs it (%v)", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-e", "-c", opensslGuide)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MTLS_DOMAIN=localhost")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the guide's commands:\n%s", out)
	for _, f := range []string{"ca.crt", "server.crt", "device-cert.pem"} {
		c := readCert(t, filepath.Join(dir, f))
		require.Equal(t, 1, c.Version, "%s: the guide's -config files make version-1 certificates", f)
		require.Empty(t, c.Extensions, "%s has no extensions", f)
	}
	return dir
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(data)
	require.NotNil(t, blk, "%s holds no PEM block", path)
	c, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return c
}

// guideDevice puts the guide's device certificate and key on a device
// under the file names the guide's mender.conf uses.
func guideDevice(t *testing.T, pk string) string {
	t.Helper()
	certDir := t.TempDir()
	copyFile(t, filepath.Join(pk, "device-cert.pem"), filepath.Join(certDir, "mender-cert.pem"), 0o644)
	copyFile(t, filepath.Join(pk, "device-private.key"), filepath.Join(certDir, "mender-cert-private.pem"), 0o600)
	return certDir
}

// The PKI made by exactly the openssl commands of Mender's mTLS guide, -config
// files included: a self-signed version-1 CA (no basicConstraints), a
// CN-only version-1 server certificate for localhost and a version-1 device
// certificate. The ambassador runs on the guide's server certificate and CA
// in front of the fake backend; the agent, on the guide's device
// certificate, is accepted with no manual step.
func TestMTLSWithOpensslGuideCertificates(t *testing.T) {
	pk := runOpensslGuide(t)
	certDir := guideDevice(t, pk)

	b := startServe(t, t.TempDir()) // the backend, plain (no auto-accept)
	amb := startAmbassador(t, b,
		"--server-cert", filepath.Join(pk, "server.crt"), "--server-key", filepath.Join(pk, "server.key"),
		"--ca", filepath.Join(pk, "ca.crt"))
	// ServerURL names "localhost", the only name (CN) in the guide's server certificate.
	url := strings.Replace(amb.url, "127.0.0.1", "localhost", 1)
	a := mtlsAgent(t, url, filepath.Join(pk, "ca.crt"), certDir, "02:00:00:00:0b:01")
	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "my-device-hostname.com")
	assert.Contains(t, agent.stderr.String(), "subjectAltName", "the agent warns once how to add a SAN")
	assert.Equal(t, 1, strings.Count(agent.stderr.String(), "legacy Common Name"), "the warning is logged once")
}

// `simulator serve --mtls --dir` run in the directory of the guide's
// commands: it serves the guide's server certificate as it is (and says
// devices use https://localhost:…), takes the guide's CA and its key
// (ca-private.key) as the device CA, signs its CRL with it, and `simulator
// pki device` signs with it. A device on the guide's certificate and one
// on a `pki device` certificate are both accepted.
func TestServeMTLSInOpensslGuideDirectory(t *testing.T) {
	pk := runOpensslGuide(t)
	serverCrt, err := os.ReadFile(filepath.Join(pk, "server.crt"))
	require.NoError(t, err)

	b := startServe(t, pk, "--mtls", "--status-listen", "127.0.0.1:0")
	out := b.stdout.String()
	assert.Contains(t, out, "does not cover 127.0.0.1: devices must use one of its names in ServerURL: localhost")
	assert.True(t, strings.HasPrefix(b.url, "https://localhost:"), "the device URL uses the certificate's name: %s", b.url)
	assert.Equal(t, filepath.Join(pk, "ca.crt"), b.ca)
	after, err := os.ReadFile(filepath.Join(pk, "server.crt"))
	require.NoError(t, err)
	assert.Equal(t, serverCrt, after, "serve never replaces a server certificate it did not make")
	assert.NoFileExists(t, filepath.Join(pk, "ca.key"), "the guide's ca-private.key is used as it is")
	crl, err := exec.Command("openssl", "crl", "-in", filepath.Join(pk, "crl.pem"), "-CAfile", filepath.Join(pk, "ca.crt"), "-noout").CombinedOutput()
	require.NoError(t, err, "openssl verifies the CRL serve signed with the guide's CA: %s", crl)

	ours := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", pk, "--cn", "dev-ours", "--out", ours)
	verify, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(pk, "ca.crt"), "-purpose", "sslclient",
		filepath.Join(ours, "mender-cert.pem")).CombinedOutput()
	require.NoError(t, err, "openssl accepts what pki device signed with the guide's CA: %s", verify)

	for i, dev := range []struct{ dir, cn string }{{guideDevice(t, pk), "my-device-hostname.com"}, {ours, "dev-ours"}} {
		mac := fmt.Sprintf("02:00:00:00:0f:%02x", i)
		a := mtlsAgent(t, b.url, b.ca, dev.dir, mac)
		agent := startAgent(t, a.env, a.args("daemon")...)
		require.Eventually(t, func() bool {
			for _, d := range b.devices(t) {
				if d.IdentityData["mac"] == mac && d.Status == menderapi.DevStatusAccepted {
					return true
				}
			}
			return false
		}, 30*time.Second, 100*time.Millisecond, "%s was not accepted; agent log:\n%s", dev.cn, lastLines(agent.stderr.String(), 20))
	}
	assert.Contains(t, simulator(t, "pki", "list", "--dir", pk), "CN=dev-ours")
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
	// The agent logs "server answered 502 Bad Gateway"; a bare "502" would
	// also match a port number in its start-up lines.
	require.Eventually(t, func() bool { return strings.Contains(agent.stderr.String(), "answered 502") }, 30*time.Second, 100*time.Millisecond,
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
