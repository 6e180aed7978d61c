package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
)

// fakeClock is a settable clock for the status writer.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func readStatus(t *testing.T, dir string) agentStatus {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, statusFileName))
	require.NoError(t, err)
	var st agentStatus
	require.NoError(t, json.Unmarshal(data, &st))
	return st
}

func TestStatusWriter(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	w := newStatusWriter(dir, 321, slog.New(slog.DiscardHandler), clk.now)
	conf := filepath.Join(dir, "mender.conf")
	w.configLoaded(&config.Config{Sources: []string{conf}, Servers: []string{"https://a"}, CertFile: "/etc/cert.pem"}, clk.t)

	st := readStatus(t, dir)
	assert.Equal(t, statusFormat, st.Format)
	assert.Equal(t, 321, st.PID)
	assert.Equal(t, []string{conf}, st.ConfigFiles)
	assert.False(t, st.Authenticated)
	fi, err := os.Stat(filepath.Join(dir, statusFileName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	// Authenticated, inventory sent: a change, written at once.
	clk.add(time.Second)
	exp := clk.t.Add(7 * 24 * time.Hour)
	cs := client.State{Authenticated: true, Server: "https://a", TokenExpiry: exp, LastAuth: clk.t, LastInventory: clk.t,
		Certificate: &client.CertificateInfo{Subject: "CN=dev-1", Serial: "1a", NotAfter: exp}}
	w.clientState(cs)
	st = readStatus(t, dir)
	assert.True(t, st.Authenticated)
	assert.Equal(t, exp, st.TokenExpires)
	assert.Equal(t, clk.t, st.LastInventory)
	require.NotNil(t, st.Certificate)
	assert.Equal(t, statusCert{File: "/etc/cert.pem", Subject: "CN=dev-1", Serial: "1a", NotAfter: exp}, *st.Certificate)

	// First poll: written; the next polls only move a time stamp: not
	// written until statusRefresh passed.
	clk.add(time.Second)
	cs.LastUpdateCheck = clk.t
	w.clientState(cs)
	firstPoll := clk.t
	assert.Equal(t, firstPoll, readStatus(t, dir).LastPoll)
	for range 5 {
		clk.add(10 * time.Second)
		cs.LastUpdateCheck = clk.t
		w.clientState(cs)
	}
	assert.Equal(t, firstPoll, readStatus(t, dir).LastPoll, "time stamps alone are written at most once a minute")
	clk.add(15 * time.Second)
	cs.LastUpdateCheck = clk.t
	w.clientState(cs)
	assert.Equal(t, clk.t, readStatus(t, dir).LastPoll, "written after a minute")

	// A deployment is a change: written at once.
	clk.add(time.Second)
	cs.LastUpdateCheck = clk.t
	cs.Deployment = &client.OfferedDeployment{ID: "dep-1", ArtifactName: "r2", Since: clk.t}
	w.clientState(cs)
	require.NotNil(t, readStatus(t, dir).Deployment)
	assert.Equal(t, "dep-1", readStatus(t, dir).Deployment.ID)

	// After a reload, a new client reports: nothing polled yet, history kept.
	w.configLoaded(&config.Config{Sources: []string{conf}, Servers: []string{"https://b"}}, clk.t)
	w.reloaded(nil)
	clk.add(time.Second)
	w.clientState(client.State{AuthAttempts: 1, Pending: true})
	st = readStatus(t, dir)
	assert.True(t, st.Pending)
	assert.False(t, st.Authenticated)
	assert.Equal(t, firstPoll.Add(66*time.Second), st.LastPoll, "time stamps never move back")
	require.NotNil(t, st.Deployment, "kept until the new client checks")
	assert.Nil(t, st.Certificate, "no certificate in the new configuration")
	require.NotNil(t, st.LastReload)
	assert.True(t, st.LastReload.OK)

	// Errors: the latest one is kept, on one line.
	errAt := clk.t
	w.clientState(client.State{LastError: &client.JobError{Job: "inventory", At: errAt, Err: "auth: server answered 401\nUnauthorized"}})
	st = readStatus(t, dir)
	require.NotNil(t, st.LastError)
	assert.Equal(t, statusError{At: errAt, Job: "inventory", Message: "auth: server answered 401 Unauthorized"}, *st.LastError)

	w.reloaded(assertErr("mender.conf: bad"))
	assert.Equal(t, &statusReload{At: clk.t, OK: false, Error: "mender.conf: bad"}, readStatus(t, dir).LastReload)
	w.stopped()
	assert.Equal(t, clk.t, readStatus(t, dir).StoppedAt)
}

type assertErr string

func (e assertErr) Error() string { return string(e) }

func TestStatusWriterLogsFailureOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	log, buf := newTestLogger()
	w := newStatusWriter(dir, 1, log, nil)
	for range 3 {
		w.reloaded(nil)
	}
	assert.Equal(t, 1, strings.Count(buf.String(), "cannot write the status file"), buf.String())
	require.NoError(t, os.MkdirAll(dir, 0o700))
	w.reloaded(nil)
	assert.Contains(t, buf.String(), "status file written again")
}

func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`{"ServerURL":"https://mender.example"}`), 0o600))
	args := func(extra ...string) []string {
		return append([]string{"status", "--data", dir, "--config", conf, "--fallback-config", ""}, extra...)
	}

	_, stderr, code := agent(t, nil, args()...)
	assert.Equal(t, 1, code, "no status file")
	assert.Equal(t, "device-agent: no status file "+filepath.Join(dir, statusFileName)+": the daemon has not run with the datastore "+dir+
		" (start it: systemctl start device-agent; or point --data at its datastore)\n", stderr)

	now := time.Now().UTC()
	loaded := now.Add(-time.Hour)
	require.NoError(t, os.Chtimes(conf, loaded.Add(-time.Minute), loaded.Add(-time.Minute)))
	w := newStatusWriter(dir, 555, slog.New(slog.DiscardHandler), func() time.Time { return now.Add(-30 * time.Second) })
	w.configLoaded(&config.Config{Sources: []string{conf}, Servers: []string{"https://mender.example"}}, loaded)
	w.clientState(client.State{Authenticated: true, Server: "https://mender.example", TokenExpiry: now.Add(48 * time.Hour),
		LastAuth: now.Add(-2 * time.Hour), LastInventory: now.Add(-5 * time.Minute), LastUpdateCheck: now.Add(-40 * time.Second),
		Deployment:  &client.OfferedDeployment{ID: "dep-9", ArtifactName: "release-9", Since: now.Add(-3 * time.Minute)},
		Certificate: &client.CertificateInfo{Subject: "CN=dev-1", Serial: "1a2b", NotAfter: now.Add(400 * 24 * time.Hour)},
		LastError:   &client.JobError{Job: "update", At: now.Add(-time.Hour), Err: "next: server answered 503 Service Unavailable"}})

	stdout, stderr, code := agent(t, nil, args()...)
	require.Equal(t, 0, code, stderr)
	for _, want := range []string{
		"daemon:         not running: PID 555 (dev) ended without a clean shutdown",
		"status file:    " + filepath.Join(dir, statusFileName) + ", written 30s ago",
		"authenticated:  yes, with https://mender.example (last authentication ",
		"(2h0m ago)",
		"token expires:  " + now.Add(48*time.Hour).Format(time.RFC3339) + " (in 1d23h)",
		"last inventory: " + now.Add(-5*time.Minute).Format(time.RFC3339) + " (5m0s ago)",
		"last poll:      " + now.Add(-40*time.Second).Format(time.RFC3339) + " (40s ago)",
		"last error:     " + now.Add(-time.Hour).Format(time.RFC3339) + " (1h0m ago) in update: next: server answered 503",
		"certificate:    CN=dev-1, serial 1a2b, expires ",
		"deployment:     dep-9 (artifact release-9) offered since ",
		"this agent does not install artifacts",
		"config:         " + conf + ", loaded ",
	} {
		assert.Contains(t, stdout, want)
	}
	assert.NotContains(t, stdout, "changed since", "the config is older than its load")

	// Running (the lock is held), config changed since it was loaded.
	l, err := lockDatastore(dir, 555)
	require.NoError(t, err)
	defer l.Close()
	require.NoError(t, os.Chtimes(conf, now, now))
	stdout, _, code = agent(t, nil, args()...)
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "daemon:         running, PID 555, dev, started ")
	assert.Contains(t, stdout, conf+" changed since and loads: reload with `systemctl reload device-agent` (SIGHUP) to apply it")

	// A broken config: a reload would fail, and status says so.
	require.NoError(t, os.WriteFile(conf, []byte(`{"ServerURL": 5}`), 0o600))
	stdout, _, code = agent(t, nil, args()...)
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "config:         does not load now: ")
	assert.Contains(t, stdout, "a reload would fail and keep the running configuration")

	stdout, _, code = agent(t, nil, args("--json")...)
	require.Equal(t, 0, code)
	var rep map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	assert.Equal(t, true, rep["running"])
	assert.Equal(t, true, rep["authenticated"])
	assert.Equal(t, "https://mender.example", rep["server"])
	assert.InDelta(t, 30, rep["age_seconds"], 5)
	assert.Equal(t, map[string]any{"id": "dep-9", "artifact_name": "release-9", "since": now.Add(-3 * time.Minute).Format(time.RFC3339Nano)}, rep["pending_deployment"])
	assert.Equal(t, []any{conf}, rep["config_changed"])
	assert.NotEmpty(t, rep["config_error"])
	assert.NotContains(t, stdout, "token\":", "the token itself is never in the status")
}

func TestStatusCommandBadFile(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"not JSON", "{", "is not valid JSON"},
		{"other format", `{"format": 7}`, "has format 7; this device-agent reads format 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, statusFileName), []byte(tt.content), 0o644))
			_, stderr, code := agent(t, nil, "status", "--data", dir)
			assert.Equal(t, 1, code)
			assert.Contains(t, stderr, tt.want)
			assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
		})
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 59 * time.Second: "59s", 61 * time.Second: "1m1s", 3*time.Hour + 5*time.Minute: "3h5m",
		49 * time.Hour: "2d1h", 400 * 24 * time.Hour: "400d0h",
	} {
		assert.Equal(t, want, shortDuration(d), d.String())
	}
	now := time.Now()
	assert.Equal(t, "in 5m0s", relative(now, now.Add(5*time.Minute)))
	assert.Equal(t, "5m0s ago", relative(now, now.Add(-5*time.Minute)))
}

// syncBuf is a bytes.Buffer safe for concurrent writers.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestLogger() (*slog.Logger, *syncBuf) {
	b := &syncBuf{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}
