package main

import (
	"crypto/tls"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// site is a device set up against an in-test server: mender.conf, the
// datastore with device_type, an identity script, and an mTLS certificate.
type site struct {
	dir, conf, datastore string
	cert, key            string
	env                  map[string]string
}

// mtlsBackend serves an auto-accepting fake Mender backend over TLS on
// 127.0.0.1, requiring a client certificate from deviceCA when it is not nil.
func mtlsBackend(t *testing.T, serverCA, deviceCA *pkitest.CA) *httptest.Server {
	t.Helper()
	fm, err := fakemender.New(fakemender.Options{AutoAccept: true})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(fm)
	if deviceCA != nil {
		srv.TLS = serverCA.MTLSServerConfig(t)
		srv.TLS.ClientCAs = deviceCA.Pool()
	} else {
		srv.TLS = serverCA.ServerTLSConfig(t)
	}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// newSite writes a device whose mender.conf points at serverURL, trusts
// serverCA and uses a client certificate from deviceCA; extra keys are
// merged into mender.conf (a nil value deletes the key).
func newSite(t *testing.T, serverURL string, serverCA, deviceCA *pkitest.CA, extra map[string]any) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{dir: dir, conf: filepath.Join(dir, "mender.conf"), datastore: filepath.Join(dir, "var")}
	data := filepath.Join(dir, "share")
	require.NoError(t, os.MkdirAll(filepath.Join(data, "identity"), 0o755))
	require.NoError(t, os.MkdirAll(s.datastore, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(data, "identity", "mender-device-identity"),
		[]byte("#!/bin/sh\necho mac=02:00:00:00:00:42\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(s.datastore, "device_type"), []byte("device_type=test-board\n"), 0o644))
	s.cert, s.key = deviceCA.WriteClient(t, dir, "device-42", pki.ECDSAP256)
	conf := map[string]any{
		"ServerURL":         serverURL,
		"ServerCertificate": serverCA.WriteCA(t, dir),
		"HttpsClient":       map[string]any{"Certificate": s.cert, "Key": s.key},
	}
	for k, v := range extra {
		if v == nil {
			delete(conf, k)
			continue
		}
		conf[k] = v
	}
	js, err := json.Marshal(conf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(s.conf, js, 0o644))
	// No system bus: the dbus check is a SKIP with a warning (TestCheckDBus
	// runs it against a private bus).
	s.env = map[string]string{"MENDER_DATA_DIR": data, "MENDER_DATASTORE_DIR": s.datastore,
		"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=" + filepath.Join(dir, "no-bus")}
	return s
}

func (s *site) check(t *testing.T, extra ...string) (string, string, int) {
	t.Helper()
	args := append([]string{"check", "--config", s.conf, "--fallback-config", "", "--timeout", "10s"}, extra...)
	return agent(t, s.env, args...)
}

// lines maps each check name to its status (the last line of that name wins).
func statuses(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "PASS", "FAIL", "SKIP":
			name := f[1]
			if name == "device" || name == "auth" && len(f) > 2 && f[2] == "key" {
				name += " " + f[2]
			}
			m[name] = f[0]
		}
	}
	return m
}

func TestCheckAllPass(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)

	stdout, stderr, code := s.check(t)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Equal(t, map[string]string{"config": "PASS", "key": "PASS", "certificate": "PASS", "identity": "PASS",
		"device type": "PASS", "connect": "PASS", "tls": "PASS", "auth": "PASS", "dbus": "SKIP"}, statuses(stdout))
	order := []string{"PASS  config", "PASS  certificate", "PASS  key", "PASS  identity", "PASS  device type", "PASS  connect", "PASS  tls", "PASS  auth"}
	last := -1
	for _, o := range order {
		i := strings.Index(stdout, o)
		require.GreaterOrEqual(t, i, 0, "%q missing:\n%s", o, stdout)
		assert.Greater(t, i, last, "%q out of order:\n%s", o, stdout)
		last = i
	}
	assert.Contains(t, stdout, "CN=device-42")
	assert.Contains(t, stdout, "TLS 1.3")
	assert.NotContains(t, stdout+stderr, "PRIVATE KEY")
}

// A certificate the server refuses comes back as a TLS alert, which used to
// be reported as "the server is unreachable".
func TestCheckRefusedCertificate(t *testing.T) {
	serverCA, deviceCA, otherCA := pkitest.NewCA(t), pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, otherCA, nil) // a device certificate the server does not trust

	stdout, stderr, code := s.check(t)
	assert.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	st := statuses(stdout)
	assert.Equal(t, "PASS", st["connect"], stdout)
	assert.Equal(t, "FAIL", st["tls"], stdout)
	assert.Equal(t, "SKIP", st["auth"], stdout)
	assert.Contains(t, stdout, "the server refused this device's certificate")
	assert.Contains(t, stdout, "not signed by a CA the server (the mTLS ambassador) trusts")
	assert.NotContains(t, stdout, "unreachable")
	assert.Equal(t, 1, strings.Count(stdout, "FAIL"), "one failure, one FAIL line:\n%s", stdout)
}

// Every independent check runs: a missing device_type does not hide the
// certificate, the connection and the auth request.
func TestCheckRunsEveryCheck(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	require.NoError(t, os.Remove(filepath.Join(s.datastore, "device_type")))

	stdout, stderr, code := s.check(t)
	assert.Equal(t, 1, code, "a failed check means exit 1\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Equal(t, map[string]string{"config": "PASS", "key": "PASS", "certificate": "PASS", "identity": "PASS",
		"device type": "FAIL", "connect": "PASS", "tls": "PASS", "auth": "PASS", "dbus": "SKIP"}, statuses(stdout))
	assert.Contains(t, stdout, "device_type")
}

func TestCheckJSON(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)

	t.Run("all pass", func(t *testing.T) {
		s := newSite(t, srv.URL, serverCA, deviceCA, nil)
		stdout, stderr, code := s.check(t, "--json")
		require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		var rep checkReport
		require.NoError(t, json.Unmarshal([]byte(stdout), &rep), "stdout is one JSON document:\n%s", stdout)
		assert.True(t, rep.OK)
		require.NotEmpty(t, rep.Checks)
		for _, c := range rep.Checks {
			want := "PASS"
			if c.Name == "dbus" {
				want = "SKIP" // no bus in this test
			}
			assert.Equal(t, want, c.Status, "%+v", c)
			assert.NotEmpty(t, c.Detail, "%+v", c)
		}
	})

	t.Run("failures and skips", func(t *testing.T) {
		s := newSite(t, "https://127.0.0.1:1", serverCA, deviceCA, nil)
		require.NoError(t, os.Remove(filepath.Join(s.datastore, "device_type")))
		stdout, stderr, code := s.check(t, "--json")
		assert.Equal(t, 1, code, "stderr:\n%s", stderr)
		var raw []map[string]any
		var rep struct {
			OK     bool              `json:"ok"`
			Checks []json.RawMessage `json:"checks"`
		}
		require.NoError(t, json.Unmarshal([]byte(stdout), &rep), "stdout is one JSON document:\n%s", stdout)
		assert.False(t, rep.OK)
		got := map[string]string{}
		for _, c := range rep.Checks {
			var m map[string]any
			require.NoError(t, json.Unmarshal(c, &m))
			raw = append(raw, m)
			for _, k := range []string{"name", "status", "detail", "fix"} {
				assert.Contains(t, m, k, "every check has %s: %s", k, c)
			}
			got[m["name"].(string)] = m["status"].(string)
		}
		assert.Equal(t, map[string]string{"config": "PASS", "key": "PASS", "certificate": "PASS", "identity": "PASS",
			"device type": "FAIL", "connect": "FAIL", "tls": "SKIP", "auth": "SKIP", "dbus": "SKIP"}, got)
		for _, m := range raw {
			switch m["name"] {
			case "connect":
				assert.Contains(t, m["detail"], "unreachable")
				assert.Contains(t, m["fix"], "ServerURL")
			case "tls", "auth":
				assert.Contains(t, m["detail"], "connect", "a skip says what it waits for")
			}
		}
	})
}

func TestCheckSwappedPair(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	srv := mtlsBackend(t, serverCA, deviceCA)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)
	swapped := newSite(t, srv.URL, serverCA, deviceCA, map[string]any{
		"HttpsClient": map[string]any{"Certificate": s.key, "Key": s.cert},
	})

	stdout, stderr, code := swapped.check(t)
	assert.Equal(t, 1, code)
	assert.Equal(t, "FAIL", statuses(stdout)["certificate"], stdout)
	assert.Contains(t, stdout, "look swapped")
	assert.Contains(t, stdout, "swap the values of HttpsClient.Certificate and HttpsClient.Key")
	assert.NotContains(t, stdout+stderr, "chmod")

	_, stderr, code = agent(t, swapped.env, "daemon", "--config", swapped.conf, "--fallback-config", "")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "look swapped")
	assert.NotContains(t, stderr, "chmod")
}

// A mistyped key is only a warning, but it is usually why validation fails:
// the warning must be shown with the errors, by check and by the daemon.
func TestConfigWarningsShownWithErrors(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	s := newSite(t, "", serverCA, deviceCA, map[string]any{"ServerURL": nil, "ServerUrl": "https://mender.example.com"})

	stdout, stderr, code := s.check(t)
	assert.Equal(t, 1, code)
	assert.Equal(t, "FAIL", statuses(stdout)["config"], stdout)
	assert.Contains(t, stdout, `"ServerURL" is not set`, stdout)
	assert.Contains(t, stdout, `did you mean "ServerURL"?`, "check shows the warning next to the error:\n%s\nstderr:\n%s", stdout, stderr)

	stdout, stderr, code = s.check(t, "--json")
	assert.Equal(t, 1, code)
	assert.Contains(t, stdout, `did you mean \"ServerURL\"?`, "the JSON carries the warning")

	_, stderr, code = agent(t, s.env, "daemon", "--config", s.conf, "--fallback-config", "")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, `"ServerURL" is not set`)
	assert.Contains(t, stderr, `did you mean \"ServerURL\"?`, "the daemon logs the warning too:\n%s", stderr)

	// And when the configuration is valid, as before.
	s = newSite(t, "https://mender.example.com", serverCA, deviceCA, map[string]any{"ServerUrl": "https://typo.example.com"})
	_, stderr, _ = agent(t, s.env, "daemon", "--config", s.conf, "--fallback-config", "", "--data", "/nonexistent/dir")
	assert.Contains(t, stderr, `did you mean \"ServerURL\"?`)
}

// The TLS handshake succeeds but the server has not accepted the device.
func TestCheckPendingDevice(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	fm, err := fakemender.New(fakemender.Options{})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(fm)
	srv.TLS = serverCA.ServerTLSConfig(t)
	srv.TLS.ClientAuth = tls.RequestClientCert
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s := newSite(t, srv.URL, serverCA, deviceCA, nil)

	stdout, _, code := s.check(t)
	assert.Equal(t, 1, code)
	st := statuses(stdout)
	assert.Equal(t, "PASS", st["tls"], stdout)
	assert.Equal(t, "FAIL", st["auth"], stdout)
	assert.Contains(t, stdout, "preauthorize")
}
