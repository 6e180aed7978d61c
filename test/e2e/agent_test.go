package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// stats mirrors the JSON of the fake backend's /api/management/v1/fake/stats.
type stats struct {
	Requests      map[string]int         `json:"requests"`
	ByRouteStatus map[string]map[int]int `json:"by_route_status"`
	FaultsApplied int                    `json:"faults_applied"`
}

func (s stats) ok(route string, code int) int { return s.ByRouteStatus[route][code] }

// The device shows pending, is accepted through the management API,
// authenticates, its inventory arrives with the expected attributes, and it
// polls at its interval; SIGTERM stops it with exit 0 within 2 s.
func TestAgentPendingAcceptInventoryPoll(t *testing.T) {
	b := startServe(t, t.TempDir())
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:11", update: 1, inv: 60, retry: 1})
	agent := startAgent(t, a.env, a.args("daemon", "--log-level", "debug")...)

	var dev menderapi.Device
	require.Eventually(t, func() bool {
		devs := b.devices(t)
		if len(devs) == 1 && devs[0].Status == menderapi.DevStatusPending {
			dev = devs[0]
			return true
		}
		return false
	}, 20*time.Second, 100*time.Millisecond, "device never showed up as pending")
	require.Len(t, dev.AuthSets, 1)
	assert.Equal(t, map[string]any{"mac": "02:00:00:00:00:11"}, dev.IdentityData)
	// While pending, it keeps asking (401) but gets no token.
	require.Eventually(t, func() bool { return b.stats(t).ok("auth", 401) >= 2 }, 20*time.Second, 100*time.Millisecond)
	assert.Zero(t, b.stats(t).ok("auth", 200))

	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodPut,
		menderapi.PathDevauthDevices+"/"+dev.ID+"/auth/"+dev.AuthSets[0].ID+"/status",
		menderapi.StatusUpdate{Status: menderapi.DevStatusAccepted}, nil))

	var inv menderapi.InventoryDevice
	require.Eventually(t, func() bool {
		return b.mgmt(t, http.MethodGet, menderapi.PathInventoryMgmtPrefix+dev.ID, nil, &inv) == http.StatusOK &&
			attr(inv, "device_type") != nil
	}, 30*time.Second, 100*time.Millisecond, "inventory never arrived")
	assert.Equal(t, "raspberrypi4", attr(inv, "device_type"))
	assert.Equal(t, "unknown", attr(inv, "artifact_name"))
	assert.Contains(t, fmt.Sprint(attr(inv, "mender_client_version")), "device-agent")
	assert.Equal(t, "hello", attr(inv, "e2e_attr"))
	assert.Equal(t, []any{"10.0.0.1/8", "10.0.0.2/8"}, attr(inv, "ipv4"), "a repeated script key becomes an array")

	// Polling at its 1 s interval (±10% jitter): after the first poll,
	// several more arrive, and each one is answered 204 (nothing to do).
	first := b.stats(t).ok("next", 204)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= first+3 }, 20*time.Second, 100*time.Millisecond,
		"agent did not keep polling")

	assert.Equal(t, 0, agent.stop(t, 2*time.Second), "exit code after SIGTERM")
	assert.NotContains(t, agent.stderr.String(), "panic")
	assertNoSecrets(t, agent.stderr.String(), b)
}

func attr(inv menderapi.InventoryDevice, name string) any {
	for _, a := range inv.Attributes {
		if a.Name == name && a.Scope == "inventory" {
			return a.Value
		}
	}
	return nil
}

// assertNoSecrets checks a log holds no JWT (three base64url parts starting
// with eyJ) and no PEM block.
func assertNoSecrets(t *testing.T, log string, b *backend) {
	t.Helper()
	assert.NotContains(t, log, "eyJ", "a JWT was logged")
	assert.NotContains(t, log, "PRIVATE KEY", "key material was logged")
	assert.NotContains(t, log, b.pass)
}

// The backend is killed and restarted on the same port; the agent recovers
// by itself (its state file keeps the device accepted).
func TestAgentRecoversFromBackendRestart(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--auto-accept")
	addr := strings.TrimPrefix(b.url, "https://")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:12", update: 1, inv: 60, retry: 2})
	agent := startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 2 }, 30*time.Second, 100*time.Millisecond)

	b.kill()
	b2 := startServeAt(t, dir, addr, "--auto-accept")
	require.Eventually(t, func() bool { return b2.stats(t).ok("next", 204) >= 2 }, 60*time.Second, 200*time.Millisecond,
		"agent did not resume polling after the backend came back")
	assert.False(t, agent.exited(), "agent must keep running through the outage")
	assert.Len(t, b2.devices(t), 1, "the same device, not a second one")
}

// A revoked token makes the agent re-authenticate and carry on.
func TestAgentReauthenticatesAfterTokenRevoke(t *testing.T) {
	b := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:13", update: 1, inv: 60, retry: 1})
	startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 1 }, 30*time.Second, 100*time.Millisecond)
	auths := b.stats(t).ok("auth", 200)
	require.Equal(t, 1, auths, "one auth while the token is good")

	devs := b.devices(t)
	require.Len(t, devs, 1)
	jti := devs[0].AuthSets[0].ID // the token's jti is the auth set id
	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodDelete, menderapi.PathDevauthTokensPrefix+jti, nil, nil))

	require.Eventually(t, func() bool { return b.stats(t).ok("auth", 200) == 2 }, 20*time.Second, 100*time.Millisecond,
		"agent did not re-authenticate after its token was revoked")
	s := b.stats(t)
	require.GreaterOrEqual(t, s.ok("next", 401), 1, "the revoked token was refused")
	after := s.ok("next", 204)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) > after }, 20*time.Second, 100*time.Millisecond,
		"agent did not resume polling with its new token")
}

// 429 with Retry-After is honoured: the agent waits at least that long
// before asking again, and says so in its log.
func TestAgentHonoursRetryAfter(t *testing.T) {
	b := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:14", update: 1, inv: 60, retry: 1})
	agent := startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 1 }, 30*time.Second, 100*time.Millisecond)

	require.Equal(t, http.StatusNoContent, b.mgmt(t, http.MethodPost, "/api/management/v1/fake/faults",
		map[string]any{"path_prefix": "/api/devices/v1/deployments/device/deployments/next", "count": 1, "status": 429, "retry_after_s": 4}, nil))
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 429) == 1 }, 20*time.Second, 50*time.Millisecond)
	at429 := time.Now()
	polls := b.stats(t).ok("next", 204)
	// With a 1 s poll interval, three more polls would arrive within 3.5 s
	// if Retry-After were ignored.
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) > polls }, 20*time.Second, 50*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(at429), 3500*time.Millisecond, "polled again before Retry-After (4 s) ran out")
	assert.Contains(t, agent.stderr.String(), "retry_in=4s")
}

// Bad input: a one-line error naming the problem, non-zero exit, no stack trace.
func TestAgentBadInput(t *testing.T) {
	b := startServe(t, t.TempDir(), "--auto-accept")
	ca := newTestCA(t)
	wrongCA := newTestCA(t)

	tests := []struct {
		name  string
		setup func(t *testing.T, a *agentSetup) []string // returns the command
		want  string
	}{
		{"missing config", func(t *testing.T, a *agentSetup) []string {
			require.NoError(t, os.Remove(a.conf))
			return a.args("daemon")
		}, "mender.conf"},
		{"malformed json", func(t *testing.T, a *agentSetup) []string {
			require.NoError(t, os.WriteFile(a.conf, []byte(`{"ServerURL": "https://x",`), 0o644))
			return a.args("daemon")
		}, "mender.conf"},
		{"unknown key type", func(t *testing.T, a *agentSetup) []string {
			key := filepath.Join(a.dir, "dsa.pem")
			require.NoError(t, os.WriteFile(key, []byte("-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"), 0o600))
			rewriteConf(t, a, map[string]any{"Security": map[string]any{"AuthPrivateKey": key}})
			return a.args("daemon")
		}, "DSA PRIVATE KEY"},
		{"cert/key mismatch", func(t *testing.T, a *agentSetup) []string {
			cert, _ := ca.writeClient(t, a.dir, "dev-a")
			_, otherKey := ca.writeClient(t, filepath.Join(a.dir, "other"), "dev-b")
			rewriteConf(t, a, map[string]any{"HttpsClient": map[string]any{"Certificate": cert, "Key": otherKey}})
			return a.args("daemon")
		}, "does not match"},
		{"expired certificate", func(t *testing.T, a *agentSetup) []string {
			cert, key := ca.writeExpiredClient(t, a.dir, "dev-old")
			rewriteConf(t, a, map[string]any{"HttpsClient": map[string]any{"Certificate": cert, "Key": key}})
			return a.args("daemon")
		}, "expired"},
		{"wrong server CA", func(t *testing.T, a *agentSetup) []string {
			rewriteConf(t, a, map[string]any{"ServerCertificate": wrongCA.writeCA(t, a.dir)})
			return a.args("check", "--timeout", "10s")
		}, "not trusted"},
		{"unreachable server (check)", func(t *testing.T, a *agentSetup) []string {
			rewriteConf(t, a, map[string]any{"ServerURL": "https://127.0.0.1:1"})
			return a.args("check", "--timeout", "10s")
		}, "unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:00:15", update: 1, inv: 60, retry: 1})
			args := tt.setup(t, a)
			stdout, stderr, code := runAgent(t, a.env, args...)
			assert.NotEqual(t, 0, code, "exit code")
			out := stdout + stderr
			t.Logf("%s", out)
			assert.Contains(t, out, tt.want)
			assert.NotContains(t, out, "goroutine ")
			assert.NotContains(t, out, "panic")
			failLines := 0
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.HasPrefix(l, "FAIL") || strings.HasPrefix(l, "device-agent:") {
					failLines++
				}
			}
			assert.Equal(t, 1, failLines, "exactly one error line, got:\n%s", out)
		})
	}
}

func rewriteConf(t *testing.T, a *agentSetup, set map[string]any) {
	t.Helper()
	conf := readJSON(t, a.conf)
	for k, v := range set {
		conf[k] = v
	}
	writeJSON(t, a.conf, conf)
}
