package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
)

// daemonFixture is one device's files for an in-process daemon.
type daemonFixture struct {
	conf, datastore string
	env             map[string]string
}

func newDaemonFixture(t *testing.T, serverURL string) *daemonFixture {
	t.Helper()
	dir := t.TempDir()
	f := &daemonFixture{conf: filepath.Join(dir, "mender.conf"), datastore: filepath.Join(dir, "var")}
	share := filepath.Join(dir, "share")
	require.NoError(t, os.MkdirAll(filepath.Join(share, "identity"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(share, "identity", "mender-device-identity"), []byte("#!/bin/sh\necho mac=02:00:00:00:00:42\n"), 0o755))
	require.NoError(t, os.MkdirAll(f.datastore, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(f.datastore, "device_type"), []byte("device_type=test\n"), 0o644))
	f.writeConf(t, serverURL)
	f.env = map[string]string{"MENDER_DATA_DIR": share, "MENDER_DATASTORE_DIR": f.datastore}
	return f
}

func (f *daemonFixture) writeConf(t *testing.T, serverURL string) {
	t.Helper()
	conf, err := json.Marshal(map[string]any{"ServerURL": serverURL, "UpdatePollIntervalSeconds": 1,
		"InventoryPollIntervalSeconds": 60, "RetryPollIntervalSeconds": 1})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(f.conf, conf, 0o600))
}

func (f *daemonFixture) args() []string {
	return []string{"--config", f.conf, "--fallback-config", "", "--data", f.datastore}
}

func startFakeMender(t *testing.T) (*fakemender.Server, string) {
	t.Helper()
	fm, err := fakemender.New(fakemender.Options{AutoAccept: true})
	require.NoError(t, err)
	srv := httptest.NewServer(fm)
	t.Cleanup(srv.Close)
	return fm, srv.URL
}

func nextCount(fm *fakemender.Server) int { return fm.Stats().Requests[fakemender.RouteNext] }

// The daemon as a service, in process: READY=1 after the first
// authentication, one daemon per datastore, SIGHUP swaps in a new
// configuration (another server) with RELOADING=1/READY=1, a broken one is
// refused and the running one keeps working, and SIGTERM sends STOPPING=1
// and records a clean stop in the status file.
func TestDaemonServiceLifecycle(t *testing.T) {
	fm1, url1 := startFakeMender(t)
	fm2, url2 := startFakeMender(t)
	f := newDaemonFixture(t, url1)
	l := listenNotify(t, false)
	f.env["NOTIFY_SOCKET"] = l.name
	getenv := func(k string) string { return f.env[k] }

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	hup := make(chan os.Signal, 1)
	var stderr syncBuf
	done := make(chan error, 1)
	go func() { done <- cmdDaemon(ctx, f.args(), &stderr, getenv, hup) }()

	ready := l.waitFor(t, "READY=1", 20*time.Second)
	assert.Contains(t, ready, "STATUS=")
	require.Eventually(t, func() bool {
		st := readStatusIfAny(f.datastore)
		return st.Authenticated && st.Server == url1 && !st.LastPoll.IsZero()
	}, 20*time.Second, 20*time.Millisecond, "status file: authenticated and polling; log:\n%s", &stderr)
	assert.Equal(t, os.Getpid(), readStatus(t, f.datastore).PID)

	// One daemon per datastore.
	var stderr2 syncBuf
	err := cmdDaemon(ctx, f.args(), &stderr2, getenv, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "another device-agent daemon (PID "+strconv.Itoa(os.Getpid())+") is running")

	// Reload to another server.
	f.writeConf(t, url2)
	hup <- syscall.SIGHUP
	reloading := l.waitFor(t, "RELOADING=1", 10*time.Second)
	assert.Contains(t, reloading, "MONOTONIC_USEC=")
	l.waitFor(t, "READY=1", 15*time.Second)
	require.Eventually(t, func() bool { return nextCount(fm2) >= 2 }, 20*time.Second, 20*time.Millisecond,
		"the new configuration polls the new server; log:\n%s", &stderr)
	old := nextCount(fm1)
	time.Sleep(1500 * time.Millisecond) // more than the 1 s poll interval
	assert.Equal(t, old, nextCount(fm1), "the old configuration stopped polling")
	assert.Equal(t, url2, readStatus(t, f.datastore).Server)
	assert.Len(t, fm2.Devices(), 1)

	// A broken configuration is refused; the running one goes on.
	require.NoError(t, os.WriteFile(f.conf, []byte(`{"ServerURL": `), 0o600))
	hup <- syscall.SIGHUP
	l.waitFor(t, "RELOADING=1", 10*time.Second)
	msg := l.waitFor(t, "READY=1", 10*time.Second)
	assert.Contains(t, msg, "STATUS=reload failed, running the previous configuration: ")
	assert.Contains(t, stderr.String(), `msg="reload failed, keeping the running configuration" error="`)
	polls := nextCount(fm2)
	require.Eventually(t, func() bool { return nextCount(fm2) > polls }, 10*time.Second, 20*time.Millisecond, "still polling")
	st := readStatus(t, f.datastore)
	require.NotNil(t, st.LastReload)
	assert.False(t, st.LastReload.OK)
	assert.Contains(t, st.LastReload.Error, "mender.conf")

	cancel()
	l.waitFor(t, "STOPPING=1", 5*time.Second)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		require.FailNow(t, "daemon did not stop")
	}
	assert.False(t, readStatus(t, f.datastore).StoppedAt.IsZero(), "a clean stop is recorded")
	running, _, err := lockHolder(f.datastore)
	require.NoError(t, err)
	assert.False(t, running, "the lock is released")
	assert.NotContains(t, stderr.String(), "eyJ", "no token in the log")
}

// A failed start (bad key) exits with the error and releases the lock.
func TestDaemonStartFailureReleasesLock(t *testing.T) {
	_, url := startFakeMender(t)
	f := newDaemonFixture(t, url)
	conf := readJSONFile(t, f.conf)
	conf["Security"] = map[string]any{"AuthPrivateKey": filepath.Join(f.datastore, "missing.pem")}
	js, err := json.Marshal(conf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(f.conf, js, 0o600))
	var stderr syncBuf
	err = cmdDaemon(t.Context(), f.args(), &stderr, func(k string) string { return f.env[k] }, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "missing.pem")
	running, _, err := lockHolder(f.datastore)
	require.NoError(t, err)
	assert.False(t, running)
}

func readStatusIfAny(dir string) agentStatus {
	var st agentStatus
	if data, err := os.ReadFile(filepath.Join(dir, statusFileName)); err == nil {
		_ = json.Unmarshal(data, &st)
	}
	return st
}

func readJSONFile(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m))
	return m
}

func TestStateSummary(t *testing.T) {
	tests := []struct {
		name string
		s    client.State
		want string
	}{
		{"authenticated", client.State{Authenticated: true, Server: "https://m"}, "authenticated with https://m"},
		{"pending", client.State{Pending: true}, "waiting for the server to accept the device"},
		{"failing", client.State{LastError: &client.JobError{Err: "auth: connection refused"}}, "not authenticated: auth: connection refused"},
		{"starting", client.State{}, "not authenticated"},
		{"deployment", client.State{Authenticated: true, Server: "https://m", Deployment: &client.OfferedDeployment{ID: "d1", ArtifactName: "r2"}},
			"authenticated with https://m; deployment d1 (r2) offered, not installed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, stateSummary(tt.s))
		})
	}
}
