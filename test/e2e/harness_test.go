// Package e2e runs the binaries built from this repository as real processes
// on loopback: simulator serve (the fake backend) and device-agent.
//
// Environment:
//
//	E2E_BIN            directory holding device-agent and simulator (default: built into a temp dir)
//	E2E_AGENT          agent binary to test instead of E2E_BIN/device-agent (the ARM smoke test)
//	E2E_AGENT_WRAPPER  command that runs the agent, e.g. qemu-aarch64-static
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

var bins struct {
	simulator, agent, wrapper string
}

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	if code >= 0 {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func setup() (int, error) {
	dir := os.Getenv("E2E_BIN")
	if dir == "" {
		tmp, err := os.MkdirTemp("", "e2e-bin-")
		if err != nil {
			return 1, err
		}
		// The Makefile's build, so the binaries are built exactly as they
		// ship (the agent's tags and flags included).
		cmd := exec.Command("make", "-C", "../..", "build", "BIN="+tmp)
		if out, err := cmd.CombinedOutput(); err != nil {
			return 1, fmt.Errorf("make build BIN=%s: %v\n%s", tmp, err, out)
		}
		dir = tmp
	}
	bins.simulator = filepath.Join(dir, "simulator")
	bins.agent = filepath.Join(dir, "device-agent")
	if a := os.Getenv("E2E_AGENT"); a != "" {
		bins.agent = a
	}
	bins.wrapper = os.Getenv("E2E_AGENT_WRAPPER")
	if bins.wrapper != "" {
		if _, err := exec.LookPath(bins.wrapper); err != nil {
			return 1, fmt.Errorf("E2E_AGENT_WRAPPER %s not found (make deps installs qemu-user-static): %v", bins.wrapper, err)
		}
	}
	for _, b := range []string{bins.simulator, bins.agent} {
		if _, err := os.Stat(b); err != nil {
			return 1, fmt.Errorf("binary %s: %v (run make build)", b, err)
		}
	}
	return -1, nil
}

// syncBuffer collects a process's output for assertions while it runs.
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

// proc is a running process started by a test; it is killed at cleanup.
type proc struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	require.NoError(t, cmd.Start(), "start %s", name)
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s %v\n--- stdout:\n%s\n--- stderr:\n%s", filepath.Base(name), args, p.stdout, lastLines(p.stderr.String(), 60))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stop sends SIGTERM and returns the exit code and how long the exit took.
func (p *proc) stop(t *testing.T, within time.Duration) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process did not exit within %s of SIGTERM", within)
	}
	return p.cmd.ProcessState.ExitCode()
}

// runAgent runs the agent to completion and returns stdout, stderr and the exit code.
func runAgent(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	name, args := agentCommand(args)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "run agent: %v", err)
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func agentCommand(args []string) (string, []string) {
	if bins.wrapper != "" {
		return bins.wrapper, append([]string{bins.agent}, args...)
	}
	return bins.agent, args
}

func startAgent(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	name, args := agentCommand(args)
	return start(t, env, name, args...)
}

// backend is a running `simulator serve`.
type backend struct {
	*proc
	dir, url, ca string
	mgmtURL      string // the backend itself (differs from url with --mtls)
	statusURL    string // the ambassador's /status with --mtls
	user, pass   string
	http         *http.Client
	mu           sync.Mutex
	token        string
}

func startServe(t *testing.T, dir string, args ...string) *backend {
	t.Helper()
	return startServeAt(t, dir, "127.0.0.1:0", args...)
}

func startServeAt(t *testing.T, dir, listen string, args ...string) *backend {
	t.Helper()
	b := &backend{dir: dir, user: "admin@example.com", pass: "e2e-secret"}
	all := append([]string{"serve", "--dir", dir, "--listen", listen, "--user", b.user, "--password", b.pass}, args...)
	b.proc = start(t, nil, bins.simulator, all...)
	require.Eventually(t, func() bool {
		return strings.Contains(b.stdout.String(), "  CA:") || b.exited()
	}, 30*time.Second, 20*time.Millisecond, "simulator serve did not print its URL")
	require.False(t, b.exited(), "simulator serve exited: %s", b.stderr)
	sc := bufio.NewScanner(strings.NewReader(b.stdout.String()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "URL:" {
			b.url = f[1]
		}
		if len(f) >= 2 && f[0] == "CA:" {
			b.ca = f[1]
		}
		if len(f) >= 2 && f[0] == "backend:" {
			b.mgmtURL = f[1]
		}
		if len(f) >= 2 && f[0] == "status:" {
			b.statusURL = f[1]
		}
	}
	if b.mgmtURL == "" {
		b.mgmtURL = b.url
	}
	require.NotEmpty(t, b.url)
	require.NotEmpty(t, b.ca)
	pem, err := os.ReadFile(b.ca)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	b.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return b
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// mgmtToken returns the management token, logging in on first use.
func (b *backend) mgmtToken(t *testing.T) string {
	t.Helper()
	b.mu.Lock()
	if b.token == "" {
		req, err := http.NewRequest(http.MethodPost, b.mgmtURL+menderapi.PathLogin, nil)
		require.NoError(t, err)
		req.SetBasicAuth(b.user, b.pass)
		resp, err := b.http.Do(req)
		require.NoError(t, err)
		tok, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, "login: %s", tok)
		b.token = string(tok)
	}
	tok := b.token
	b.mu.Unlock()
	return tok
}

// mgmt performs a management API call, logging in first, and decodes a JSON
// answer into out when out is not nil. It returns the status code.
func (b *backend) mgmt(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	tok := b.mgmtToken(t)
	var rd io.Reader
	if body != nil {
		js, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, b.mgmtURL+path, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil && resp.StatusCode/100 == 2 {
		require.NoError(t, json.Unmarshal(data, out), "decode %s %s: %s", method, path, data)
	}
	return resp.StatusCode
}

func (b *backend) devices(t *testing.T) []menderapi.Device {
	t.Helper()
	var devs []menderapi.Device
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, menderapi.PathDevauthDevices, nil, &devs))
	return devs
}

// stats returns the fake backend's per-route counters.
func (b *backend) stats(t *testing.T) stats {
	t.Helper()
	var s stats
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, "/api/management/v1/fake/stats", nil, &s))
	return s
}

// agentSetup is one device's files: mender.conf, datastore, scripts.
type agentSetup struct {
	dir, conf, datastore, datadir string
	env                           []string
}

type agentConf struct {
	mac         string
	update, inv int // poll intervals in seconds
	retry       int
	extra       map[string]any
}

// newAgent writes mender.conf pointing at b, a device_type file, an
// identity script printing mac and an inventory script.
func newAgent(t *testing.T, serverURL, ca string, c agentConf) *agentSetup {
	t.Helper()
	dir := t.TempDir()
	a := &agentSetup{dir: dir, conf: filepath.Join(dir, "mender.conf"),
		datastore: filepath.Join(dir, "var"), datadir: filepath.Join(dir, "share")}
	require.NoError(t, os.MkdirAll(filepath.Join(a.datadir, "identity"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(a.datadir, "inventory"), 0o755))
	require.NoError(t, os.MkdirAll(a.datastore, 0o700))
	writeScript(t, filepath.Join(a.datadir, "identity", "mender-device-identity"), "echo mac="+c.mac)
	writeScript(t, filepath.Join(a.datadir, "inventory", "mender-inventory-e2e"), "echo e2e_attr=hello\necho ipv4=10.0.0.1/8\necho ipv4=10.0.0.2/8")
	require.NoError(t, os.WriteFile(filepath.Join(a.datastore, "device_type"), []byte("device_type=raspberrypi4\n"), 0o644))
	conf := map[string]any{
		"ServerURL":                    serverURL,
		"ServerCertificate":            ca,
		"UpdatePollIntervalSeconds":    c.update,
		"InventoryPollIntervalSeconds": c.inv,
		"RetryPollIntervalSeconds":     c.retry,
	}
	for k, v := range c.extra {
		conf[k] = v
	}
	js, err := json.MarshalIndent(conf, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(a.conf, js, 0o644))
	// No system bus: check's dbus line is a SKIP whatever the host runs
	// (the D-Bus tests start their own bus and set the variable).
	a.env = []string{"MENDER_DATA_DIR=" + a.datadir, "MENDER_DATASTORE_DIR=" + a.datastore, "MENDER_CONF_DIR=" + dir,
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(dir, "no-system-bus")}
	return a
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
}

func (a *agentSetup) args(cmd string, extra ...string) []string {
	return append([]string{cmd, "--config", a.conf, "--fallback-config", "", "--data", a.datastore}, extra...)
}
