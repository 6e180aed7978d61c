package e2e

import (
	"crypto"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// checkStatuses maps each check name of `device-agent check` output to its
// status (PASS, FAIL, SKIP); the last line of a name wins.
func checkStatuses(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		status, rest, ok := strings.Cut(l, "  ")
		if !ok || (status != "PASS" && status != "FAIL" && status != "SKIP") {
			continue
		}
		// Names are padded to 12 columns and may hold a space ("device type").
		if len(rest) < 12 {
			continue
		}
		m[strings.TrimSpace(rest[:12])] = status
	}
	return m
}

// checkOnce runs check and requires it to fail with exactly one FAIL line.
func checkFails(t *testing.T, a *agentSetup, failing string, want ...string) string {
	t.Helper()
	stdout, stderr, code := runAgent(t, a.env, a.args("check", "--timeout", "10s")...)
	t.Logf("check:\n%s", stdout)
	assert.Equal(t, 1, code, "exit code; stderr:\n%s", stderr)
	assert.Equal(t, "FAIL", checkStatuses(stdout)[failing], "the %s check fails:\n%s", failing, stdout)
	assert.Equal(t, 1, strings.Count(stdout, "\nFAIL")+boolInt(strings.HasPrefix(stdout, "FAIL")), "one FAIL line:\n%s", stdout)
	for _, w := range want {
		assert.Contains(t, stdout, w)
	}
	assert.NotContains(t, stdout+stderr, "panic")
	return stdout
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// `device-agent check` against the real mTLS ambassador: each way the
// connection can fail is named for what it is, on its own line.
func TestCheckDiagnosesConnections(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	out := simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-check", "--out", certDir)
	m := regexp.MustCompile(`serial ([0-9a-f]+),`).FindStringSubmatch(out)
	require.Len(t, m, 2, "serial in: %s", out)
	serial := m[1]

	t.Run("all pass", func(t *testing.T) {
		a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c0:01")
		stdout, stderr, code := runAgent(t, a.env, a.args("check")...)
		require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		assert.Equal(t, map[string]string{"config": "PASS", "certificate": "PASS", "key": "PASS", "identity": "PASS",
			"device type": "PASS", "connect": "PASS", "tls": "PASS", "auth": "PASS", "dbus": "SKIP"}, checkStatuses(stdout))
		assert.Contains(t, stdout, "client certificate accepted")
	})

	t.Run("certificate from a CA the ambassador does not trust", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "other")
		cert, key := newTestCA(t).writeClient(t, other, "dev-stranger")
		a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c0:02")
		rewriteConf(t, a, map[string]any{
			"HttpsClient": map[string]any{"Certificate": cert, "Key": key},
			"Security":    map[string]any{"AuthPrivateKey": key},
		})
		stdout := checkFails(t, a, "tls", "the server refused this device's certificate", "not signed by a CA the server (the mTLS ambassador) trusts")
		assert.NotContains(t, stdout, "unreachable", "a refused certificate is not a network problem")
		st := checkStatuses(stdout)
		assert.Equal(t, "PASS", st["connect"])
		assert.Equal(t, "SKIP", st["auth"])
	})

	t.Run("http:// to the TLS port", func(t *testing.T) {
		a := mtlsAgent(t, strings.Replace(b.url, "https://", "http://", 1), b.ca, certDir, "02:00:00:00:c0:03")
		checkFails(t, a, "tls", "ServerURL uses http:// but the server speaks TLS", "use https://")
	})

	t.Run("https:// to a plain HTTP port", func(t *testing.T) {
		status := strings.TrimSuffix(strings.Replace(b.statusURL, "http://", "https://", 1), "/status")
		a := mtlsAgent(t, status, b.ca, certDir, "02:00:00:00:c0:04")
		checkFails(t, a, "tls", "the server answered in plain HTTP", "https port")
	})

	t.Run("nothing listening", func(t *testing.T) {
		a := mtlsAgent(t, "https://127.0.0.1:1", b.ca, certDir, "02:00:00:00:c0:05")
		stdout := checkFails(t, a, "connect", "unreachable", "connection refused")
		assert.Equal(t, "SKIP", checkStatuses(stdout)["tls"])
	})

	// Last: it revokes the shared device certificate.
	t.Run("revoked certificate", func(t *testing.T) {
		simulator(t, "pki", "revoke", "--dir", dir, "--serial", serial)
		a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c0:06")
		var stdout string
		require.Eventually(t, func() bool {
			stdout, _, _ = runAgent(t, a.env, a.args("check", "--timeout", "5s")...)
			return checkStatuses(stdout)["tls"] == "FAIL"
		}, 20*time.Second, 300*time.Millisecond, "the ambassador never refused the revoked certificate:\n%s", stdout)
		assert.Contains(t, stdout, "the server refused this device's certificate")
		assert.Contains(t, stdout, "revoked")
		assert.NotContains(t, stdout, "unreachable")
	})
}

// A server certificate that does not name the host in ServerURL: the fix
// lists the names it has; a Common-Name-only certificate reached by IP
// gets "use the host name in its CN".
func TestCheckServerNames(t *testing.T) {
	b := startServe(t, t.TempDir())
	serverCA := newTestCA(t)
	dir := t.TempDir()
	caFile := serverCA.writeCA(t, dir)
	writePair := func(name string, crt []byte, key crypto.Signer) (string, string) {
		keyPEM, err := pki.MarshalPrivateKeyPEM(key)
		require.NoError(t, err)
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		require.NoError(t, atomicfile.Write(c, crt, 0o644))
		require.NoError(t, atomicfile.Write(k, keyPEM, 0o600))
		return c, k
	}
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", b.dir, "--cn", "dev-names", "--out", certDir)

	t.Run("CN-only certificate reached by IP", func(t *testing.T) {
		legacy, leaf := serverCA.LegacyServerCert(t, "localhost")
		crt, key := writePair("legacy", pki.EncodeCertsPEM(leaf), legacy.PrivateKey.(crypto.Signer))
		amb := startAmbassador(t, b, "--server-cert", crt, "--server-key", key)
		a := mtlsAgent(t, amb.url, caFile, certDir, "02:00:00:00:c1:01")
		checkFails(t, a, "tls", "this certificate has no IP SANs", "use the host name in its CN (localhost)")
	})

	t.Run("name not in the certificate", func(t *testing.T) {
		key, err := pki.GenerateKey(pki.ECDSAP256)
		require.NoError(t, err)
		leaf, err := serverCA.IssueServer(key.Public(), "mender.example", []string{"mender.example", "mender-backup.example"}, []net.IP{net.IPv4(127, 0, 0, 1)}, 24*time.Hour)
		require.NoError(t, err)
		crt, keyFile := writePair("named", pki.EncodeCertsPEM(leaf), key)
		amb := startAmbassador(t, b, "--server-cert", crt, "--server-key", keyFile)
		a := mtlsAgent(t, strings.Replace(amb.url, "127.0.0.1", "localhost", 1), caFile, certDir, "02:00:00:00:c1:02")
		checkFails(t, a, "tls", `not valid for "localhost"`,
			"ServerURL must use a name in the server certificate: mender.example, mender-backup.example, 127.0.0.1")
	})
}

// Every independent check runs and --json carries the same results: a
// missing device_type fails its line, the certificate, connection and auth
// lines still pass, and the exit code is 1.
func TestCheckJSONRunsEveryCheck(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-json", "--out", certDir)
	a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c2:01")
	require.NoError(t, os.Remove(filepath.Join(a.datastore, "device_type")))

	stdout, stderr, code := runAgent(t, a.env, a.args("check", "--json")...)
	assert.Equal(t, 1, code, "stderr:\n%s", stderr)
	var rep struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Name, Status, Detail, Fix string
			Warnings                  []string
		} `json:"checks"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), "stdout is one JSON document:\n%s", stdout)
	assert.False(t, rep.OK)
	got := map[string]string{}
	for _, c := range rep.Checks {
		got[c.Name] = c.Status
		if c.Name == "device type" {
			assert.Contains(t, c.Detail, "device_type")
		}
	}
	assert.Equal(t, map[string]string{"config": "PASS", "certificate": "PASS", "key": "PASS", "identity": "PASS",
		"device type": "FAIL", "connect": "PASS", "tls": "PASS", "auth": "PASS", "dbus": "SKIP"}, got)

	text, _, code := runAgent(t, a.env, a.args("check")...)
	assert.Equal(t, 1, code)
	assert.Equal(t, got, checkStatuses(text), "text and JSON report the same results:\n%s", text)
}

// Bad files and keys: a swapped certificate/key pair is called swapped (not
// "chmod 600" on a certificate), and a mistyped key's "did you mean" warning
// is shown together with the error it causes.
func TestCheckConfigMistakes(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-mistakes", "--out", certDir)
	cert, key := filepath.Join(certDir, "mender-cert.pem"), filepath.Join(certDir, "mender-cert-private.pem")

	t.Run("swapped certificate and key", func(t *testing.T) {
		a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c3:01")
		rewriteConf(t, a, map[string]any{
			"HttpsClient": map[string]any{"Certificate": key, "Key": cert},
			"Security":    map[string]any{"AuthPrivateKey": cert},
		})
		stdout := checkFails(t, a, "certificate", "look swapped", "swap the values of HttpsClient.Certificate and HttpsClient.Key")
		assert.NotContains(t, stdout, "chmod")
		_, stderr, code := runAgent(t, a.env, a.args("daemon")...)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, "look swapped")
		assert.NotContains(t, stderr, "chmod")
	})

	t.Run("mistyped ServerURL", func(t *testing.T) {
		a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c3:02")
		conf := readJSON(t, a.conf)
		conf["ServerUrl"] = conf["ServerURL"]
		delete(conf, "ServerURL")
		writeJSON(t, a.conf, conf)

		stdout := checkFails(t, a, "config", `"ServerURL" is not set`, `did you mean "ServerURL"?`)
		assert.Equal(t, "SKIP", checkStatuses(stdout)["auth"])
		_, stderr, code := runAgent(t, a.env, a.args("daemon")...)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, `"ServerURL" is not set`)
		assert.Contains(t, stderr, `did you mean \"ServerURL\"?`, "the daemon logs the warning with the error:\n%s", stderr)
	})
}
