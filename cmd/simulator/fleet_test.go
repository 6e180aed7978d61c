package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// syncBuffer is a bytes.Buffer safe for the progress goroutine.
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

// startServers starts the demo backend and ambassador with the PKI in dir.
func startServers(t *testing.T, dir string) *demoServers {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background()) // outlives the test context until Cleanup
	env, err := startDemoServers(ctx, dir, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { cancel(); env.wait() })
	require.NoError(t, err)
	return env
}

// acceptedDevices counts devices the backend accepted.
func acceptedDevices(env *demoServers) int {
	n := 0
	for _, d := range env.backend.Devices() {
		if d.Status == menderapi.DevStatusAccepted {
			n++
		}
	}
	return n
}

// scrape fetches the metrics whose URL the run printed, "" before that.
func scrape(t *testing.T, stdout string) string {
	t.Helper()
	_, rest, ok := strings.Cut(stdout, "metrics: ")
	if !ok {
		return ""
	}
	u, _, _ := strings.Cut(rest, "\n")
	resp, err := http.Get(u)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// readJSONReport decodes a report file as plain JSON, as a consumer would.
func readJSONReport(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m))
	return m
}

// TestRunThroughAmbassadorStopsOnCtrlCAndReports runs 'simulator run'
// until every device is accepted, then cancels it as Ctrl-C does: the
// summary and both reports must still be written. A second run reuses the
// cached credentials.
func TestRunThroughAmbassadorStopsOnCtrlCAndReports(t *testing.T) {
	dir := t.TempDir()
	env := startServers(t, filepath.Join(dir, "pki"))
	const n = 30
	report, html := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	args := []string{"--server", env.url, "--pki-dir", filepath.Join(dir, "pki"), "--count", "30",
		"--ramp", "0s", "--duration", "0", "--poll", "1s", "--inventory", "2s", "--retry-poll", "1s",
		"--identity-attr", "site=lab", "--inventory-attr", "group=a|b", "--report", report, "--html", html,
		"--metrics", "127.0.0.1:0"}

	for round, wantCache := range []string{"0 loaded from the cache, 30 keys minted", "30 loaded from the cache, 0 keys minted"} {
		ctx, cancel := context.WithCancel(t.Context())
		var out, errb syncBuffer
		done := make(chan error, 1)
		go func() { done <- cmdRun(ctx, args, &out, &errb) }()
		// The live metrics say when every device of this run is accepted.
		require.Eventually(t, func() bool {
			return strings.Contains(scrape(t, out.String()), "fleet_devices_accepted 30\n")
		}, 60*time.Second, 20*time.Millisecond)
		assert.Equal(t, n, acceptedDevices(env))
		cancel() // Ctrl-C
		requireStopped(t, done, &errb, "run")
		stdout := out.String()
		assert.Contains(t, stdout, wantCache, "round %d", round)
		assert.Contains(t, stdout, "interrupted: reporting what happened so far")
		assert.Contains(t, stdout, "accepted     30/30")
		assert.Contains(t, stdout, "metrics: http://127.0.0.1:")
		assert.Contains(t, stdout, "JSON report: "+report)
		assert.Contains(t, stdout, "HTML report: "+html)

		m := readJSONReport(t, report)
		assert.Equal(t, float64(n), m["devices"])
		assert.Equal(t, float64(n), m["accepted"])
		assert.Equal(t, float64(0), m["errors_total"])
		assert.Positive(t, m["time_to_all_accepted_s"])
		ops := m["operations"].(map[string]any)
		auth := ops["auth"].(map[string]any)
		assert.Equal(t, float64(n), auth["count"], "round %d: one auth per device", round)
		for _, k := range []string{"count", "errors", "p50_ms", "p99_ms"} {
			assert.Contains(t, auth, k)
		}
		page, err := os.ReadFile(html)
		require.NoError(t, err)
		assert.Contains(t, string(page), "<svg")
	}
	devs := env.backend.Devices()
	require.Len(t, devs, n, "the second run reused the same identities and keys")
	assert.Equal(t, "lab", devs[0].IdentityData["site"])
}

func TestRunFlagErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no server", []string{"--count", "1", "--pki-dir", dir}, "--server is required"},
		{"no count", []string{"--server", "https://x", "--pki-dir", dir}, "--count 0"},
		{"no pki dir", []string{"--server", "https://x", "--count", "1"}, "--pki-dir is required"},
		{"no-mtls without a key cache", []string{"--server", "https://x", "--count", "1", "--no-mtls"}, "--key-file"},
		{"key-file with mTLS", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--key-file", "k"}, "--key-file is for --no-mtls"},
		{"bad shard", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--shard", "2/2"}, "--shard"},
		{"bad key type", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--key-type", "dsa"}, "--key-type"},
		{"prefix too long", []string{"--server", "https://x", "--count", "300", "--pki-dir", dir, "--mac-prefix", "02:00:00:00:00"}, "room for 256"},
		{"deployment fail rate", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--deployment-fail-rate", "2"}, "--deployment-fail-rate 2"},
		{"negative install time", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--install-time", "-1s"}, "--install-time -1s"},
		{"old fail-rate name", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--fail-rate", "0.1"}, "renamed --deployment-fail-rate"},
		{"attribute", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--inventory-attr", "novalue"}, "--inventory-attr"},
		{"zero poll", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--poll", "0s"}, "--poll"},
		{"no CA in the pki dir", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir}, "simulator pki init"},
		{"empty shard", []string{"--server", "https://x", "--count", "1", "--pki-dir", dir, "--no-mtls", "--shard", "0/2"}, "holds no device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := cmdRun(t.Context(), tt.args, &out, &errb)
			require.Error(t, err)
			assert.Contains(t, err.Error()+errb.String(), tt.want)
		})
	}
}

func writeShardReport(t *testing.T, dir, shard string, first, devices int) string {
	t.Helper()
	h := &fleet.Histogram{}
	h.Record(time.Duration(first+1) * time.Millisecond)
	tta := 2.5
	r := &fleet.Report{Version: fleet.ReportVersion, Devices: devices, Accepted: devices, RequestsTotal: 1,
		TimeToAllAcceptedS: &tta, Started: time.Now(), Ended: time.Now().Add(time.Minute),
		Shards:     []fleet.ShardReport{{Shard: shard, FirstIndex: first, Devices: devices, TimeToAllAcceptedS: &tta}},
		Operations: map[string]*fleet.OpReport{"auth": {Count: 1, ErrorsByKind: map[string]uint64{}, Histogram: h}},
		Timeline:   fleet.Timeline{StepS: 1, Accepted: []int{devices}, Requests: []uint64{1}, Errors: []uint64{0}}}
	p := filepath.Join(dir, "shard-"+strings.ReplaceAll(shard, "/", "-")+".json")
	require.NoError(t, r.SaveJSON(p))
	return p
}

func TestReportMerge(t *testing.T) {
	dir := t.TempDir()
	a := writeShardReport(t, dir, "0/2", 0, 5)
	b := writeShardReport(t, dir, "1/2", 5, 5)
	outFile, html := filepath.Join(dir, "all.json"), filepath.Join(dir, "all.html")

	var out, errb bytes.Buffer
	require.NoError(t, cmdReport([]string{"merge", a, "--out", outFile, b, "--html", html}, &out, &errb), errb.String())
	m := readJSONReport(t, outFile)
	assert.Equal(t, float64(10), m["devices"])
	assert.Equal(t, float64(2), m["operations"].(map[string]any)["auth"].(map[string]any)["count"])
	assert.Len(t, m["shards"], 2)
	assert.Contains(t, out.String(), "accepted     10/10")
	assert.FileExists(t, html)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"same shard twice", []string{"merge", a, a, "--out", outFile}, "appears twice"},
		{"no inputs", []string{"merge", "--out", outFile}, "no input reports"},
		{"no out", []string{"merge", a}, "--out is required"},
		{"missing file", []string{"merge", filepath.Join(dir, "nope.json"), "--out", outFile}, "no such file"},
		{"positional after terminator", []string{"merge", "--out", outFile, "--", "--html"}, "--html"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := cmdReport(tt.args, &out, &errb)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	assert.ErrorIs(t, cmdReport(nil, io.Discard, io.Discard), errUsage)
	assert.ErrorIs(t, cmdReport([]string{"frobnicate"}, io.Discard, io.Discard), errUsage)
}

// TestDemoShort runs the demo with a small fleet: every device accepted,
// no errors, the mid-run deployment scheduled, reports written; without a
// device-agent next to the test binary it says so and runs anyway.
func TestDemoShort(t *testing.T) {
	dir := t.TempDir()
	report, html := filepath.Join(dir, "demo.json"), filepath.Join(dir, "demo.html")
	var out, errb syncBuffer
	err := cmdDemo(t.Context(), []string{"--count", "20", "--duration", "8s", "--report", report, "--html", html}, &out, &errb)
	require.NoError(t, err, errb.String())
	stdout := out.String()
	assert.Contains(t, stdout, "no device-agent next to this binary")
	assert.Contains(t, stdout, "deployment of demo-release-2 scheduled to 2 devices")
	assert.Contains(t, stdout, "deployment: demo-release-2 to 2 devices on the backend")
	assert.Contains(t, stdout, "HTML report: "+html)

	m := readJSONReport(t, report)
	assert.Equal(t, float64(20), m["devices"])
	assert.Equal(t, float64(20), m["accepted"], "every device accepted")
	assert.Equal(t, float64(0), m["errors_total"], "no errors")
	assert.NotNil(t, m["time_to_all_accepted_s"])
}

func TestDemoCtrlCStillReports(t *testing.T) {
	dir := t.TempDir()
	report := filepath.Join(dir, "demo.json")
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- cmdDemo(ctx, []string{"--count", "10", "--duration", "10m", "--report", report, "--html", ""}, &out, &errb)
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "10 devices with their own") }, 30*time.Second, 20*time.Millisecond)
	cancel()
	requireStopped(t, done, &errb, "demo")
	assert.Contains(t, out.String(), "interrupted: reporting what happened so far")
	assert.Contains(t, out.String(), "deployment: not scheduled (the run ended before half time)")
	m := readJSONReport(t, report)
	assert.Equal(t, float64(10), m["devices"])
}

func TestShowProgress(t *testing.T) {
	get := func() fleet.Progress {
		return fleet.Progress{Devices: 3, Started: 3, Accepted: 2, Elapsed: time.Second}
	}
	tests := []struct {
		name       string
		tty        bool
		wantPrefix string
	}{
		{"terminal: one line refreshed with \\r", true, "\r"},
		{"pipe: plain lines", false, "00:01  accepted 2/3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			var buf bytes.Buffer
			showProgress(ctx, &buf, tt.tty, get)
			assert.True(t, strings.HasPrefix(buf.String(), tt.wantPrefix), "%q", buf.String())
			assert.True(t, strings.HasSuffix(buf.String(), "\n"), "the final state ends its line")
			assert.Equal(t, 1, strings.Count(buf.String(), "accepted 2/3"))
		})
	}
	assert.False(t, isTerminal(&bytes.Buffer{}))
}

// The demo (make run) writes its reports to ./simulator-demo/, explains
// the deliberate deployment failures, shows elapsed/total time, and
// removes its work directory unless --keep.
func TestDemoDefaultsAndKeep(t *testing.T) {
	tmp := t.TempDir()
	t.Chdir(tmp)
	for _, keep := range []bool{false, true} {
		args := []string{"--count", "10", "--duration", "4s"}
		if keep {
			args = append(args, "--keep")
		}
		var out, errb syncBuffer
		require.NoError(t, cmdDemo(t.Context(), args, &out, &errb), errb.String())
		stdout := out.String()
		assert.FileExists(t, filepath.Join(tmp, "simulator-demo", "report.json"))
		assert.FileExists(t, filepath.Join(tmp, "simulator-demo", "report.html"))
		assert.Contains(t, stdout, "JSON report: "+filepath.Join(tmp, "simulator-demo", "report.json"))
		assert.Contains(t, stdout, "/00:04", "the progress shows the total time")
		assert.Contains(t, stdout, "measured with 10 devices")
		assert.Contains(t, stdout, "fail on purpose")
		_, rest, ok := strings.Cut(stdout, "work directory: ")
		require.True(t, ok, stdout)
		work, _, _ := strings.Cut(rest, " ")
		require.True(t, filepath.IsAbs(work), work)
		if keep {
			assert.DirExists(t, work, "--keep keeps the work directory")
			assert.Contains(t, stdout, "work directory kept: "+work)
			require.NoError(t, os.RemoveAll(work))
		} else {
			assert.NoDirExists(t, work, "the work directory is removed")
			assert.Contains(t, stdout, "work directory removed (--keep keeps")
		}
	}
}

// TestRunConnectionFlags runs with the connection flags of issue 15: the
// run raises and prints its open-file limit and its connection cap, and
// a reconnect storm shows in the report.
func TestRunConnectionFlags(t *testing.T) {
	dir := t.TempDir()
	env := startServers(t, filepath.Join(dir, "pki"))
	report := filepath.Join(dir, "r.json")
	args := []string{"--server", env.url, "--pki-dir", filepath.Join(dir, "pki"), "--count", "10",
		"--duration", "0", "--poll", "1h", "--inventory", "1h", "--retry-poll", "1s",
		"--source-ips", "127.0.0.2-127.0.0.3", "--max-conns", "5", "--arrival-rate", "50/s",
		"--keep-alive", "--reconnect-storm", "2s", "--report", report}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan error, 1)
	go func() { done <- cmdRun(ctx, args, &out, &errb) }()
	require.Eventually(t, func() bool { return acceptedDevices(env) == 10 }, 30*time.Second, 20*time.Millisecond)
	time.Sleep(4 * time.Second) // past the storm, time to poll again
	cancel()
	requireStopped(t, done, &errb, "run")
	stdout := out.String()
	assert.Contains(t, stdout, "open-file limit")
	assert.Contains(t, stdout, "capping open connections at 5 (open-file limit ")
	assert.Contains(t, stdout, ", 2 source addresses)")
	m := readJSONReport(t, report)
	storm, ok := m["storm"].(map[string]any)
	require.True(t, ok, "the report has the storm: %v", m["storm"])
	assert.Equal(t, float64(10), storm["devices"])
	assert.Equal(t, float64(10), storm["recovered"])
	assert.Contains(t, storm, "recovery_s")
}

// TestRunConnectionFlagErrors checks that a bad connection or arrival
// flag is one line on stderr and exit status 2.
func TestRunConnectionFlagErrors(t *testing.T) {
	dir := t.TempDir()
	base := []string{"run", "--server", "https://127.0.0.1:8443", "--count", "1", "--pki-dir", dir}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"source range", []string{"--source-ips", "127.0.0.9-127.0.0.2"}, "--source-ips"},
		{"source not an address", []string{"--source-ips", "lo"}, "not an IP address"},
		{"source not loopback", []string{"--source-ips", "192.0.2.7"}, "use 127.x.y.z addresses"},
		{"max conns", []string{"--max-conns", "0"}, "--max-conns"},
		{"rate syntax", []string{"--arrival-rate", "500"}, "want N/s or N/m"},
		{"rate and ramp", []string{"--arrival-rate", "500/s", "--ramp", "10s"}, "--ramp and --arrival-rate both set"},
		{"negative storm", []string{"--reconnect-storm", "-1s"}, "--reconnect-storm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(t.Context(), append(append([]string{}, base...), tt.args...), &out, &errb)
			assert.Equal(t, 2, code, "stderr: %s", errb.String())
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			require.Len(t, lines, 2, "one error line and the help hint: %q", errb.String())
			assert.Contains(t, lines[0], tt.want)
		})
	}
	var out, errb bytes.Buffer
	require.Zero(t, run(t.Context(), []string{"run", "--help"}, &out, &errb))
	for _, flag := range []string{"--keep-alive", "--source-ips", "--max-conns", "--arrival-rate", "--reconnect-storm"} {
		assert.Contains(t, out.String(), flag)
	}
}

// requireStopped waits up to 30 s for the command running into done to
// return after Ctrl-C (its context cancelled), and requires no error.
func requireStopped(t *testing.T, done <-chan error, errb fmt.Stringer, what string) {
	t.Helper()
	select {
	case err := <-done:
		require.NoError(t, err, "stderr: %s", errb.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not stop after Ctrl-C", what)
	}
}
