package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunThresholdsSetTheExitCode runs a small fleet twice against the
// in-process backend and ambassador: with thresholds that hold it exits 0,
// with one that cannot hold (and one without data) it exits 99 after
// writing every report, the JUnit file included.
func TestRunThresholdsSetTheExitCode(t *testing.T) {
	dir := t.TempDir()
	env := startServers(t, filepath.Join(dir, "pki"))
	base := []string{"run", "--server", env.url, "--pki-dir", filepath.Join(dir, "pki"), "--count", "3",
		"--ramp", "0s", "--duration", "3s", "--poll", "1s", "--inventory", "2s", "--retry-poll", "1s",
		"--tenant-token", "tenant-secret-value"}
	files := func(round string) (string, string, string) {
		return filepath.Join(dir, round, "r.json"), filepath.Join(dir, round, "r.html"), filepath.Join(dir, round, "junit.xml")
	}

	report, html, junit := files("pass")
	args := append(append([]string{}, base...), "--report", report, "--html", html, "--junit", junit,
		"--threshold", "accepted.all<120s", "--threshold", "auth.p99<30s", "--threshold", "errors.rate<=50%",
		"--threshold", "accepted.ratio==1")
	var out, errb syncBuffer
	code := run(t.Context(), args, &out, &errb)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", out.String(), errb.String())
	assert.Contains(t, out.String(), "THRESHOLDS   4 of 4 passed")
	assert.Contains(t, out.String(), "✓ PASS  accepted.all<120s: observed ")
	assert.Contains(t, out.String(), "JUnit XML: "+junit)
	m := readJSONReport(t, report)
	require.Len(t, m["thresholds"], 4)
	runInfo := m["run"].(map[string]any)
	assert.Equal(t, "run", runInfo["command"])
	assert.Equal(t, version, runInfo["version"])
	assert.Positive(t, runInfo["cores"])
	flags := map[string]string{}
	for _, f := range runInfo["flags"].([]any) {
		fv := f.(map[string]any)
		flags[fv["name"].(string)] = fv["value"].(string)
	}
	assert.Equal(t, "3", flags["count"])
	assert.Equal(t, "(set)", flags["tenant-token"], "secrets are redacted")
	assert.Equal(t, "accepted.all<120s auth.p99<30s errors.rate<=50% accepted.ratio==1", flags["threshold"])
	assert.NotContains(t, flags, "fail-rate", "hidden aliases are not listed")
	for _, p := range []string{report, html, junit} {
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.NotContains(t, string(data), "tenant-secret-value", p)
	}
	assert.NotContains(t, out.String(), "tenant-secret-value")

	report, html, junit = files("fail")
	args = append(append([]string{}, base...), "--report", report, "--html", html, "--junit", junit,
		"--threshold", "accepted.all<120s", "--threshold", "auth.p99<0.001ms", "--threshold", "log.count>0")
	out, errb = syncBuffer{}, syncBuffer{}
	code = run(t.Context(), args, &out, &errb)
	assert.Equal(t, exitThresholds, code, "stdout: %s\nstderr: %s", out.String(), errb.String())
	assert.Contains(t, out.String(), "THRESHOLDS   1 of 3 passed")
	assert.Contains(t, out.String(), "✗ FAIL  auth.p99<0.001ms: observed ")
	assert.Contains(t, out.String(), "✗ FAIL  log.count>0: no data: no log request finished")
	assert.Contains(t, errb.String(), "2 of 3 thresholds failed (exit code 99)")
	for _, p := range []string{report, html, junit} {
		assert.FileExists(t, p, "every report is written before the exit")
	}
	page, err := os.ReadFile(html)
	require.NoError(t, err)
	assert.Contains(t, string(page), "✗ THRESHOLDS FAILED: 2 of 3")
	xml, err := os.ReadFile(junit)
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(xml), `<failure message=`))
	assert.Contains(t, string(xml), `<testsuite name="simulator thresholds" tests="3" failures="2" errors="0" time="0">`)
}

// A bad --threshold is a usage error (exit 2) naming the flag, the
// expression and the fix, before anything runs.
func TestThresholdFlagErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"run: bad unit", []string{"run", "--server", "https://127.0.0.1:1", "--count", "1", "--pki-dir", dir, "--threshold", "auth.p99<5xs"},
			[]string{`simulator run: invalid value "auth.p99<5xs" for flag --threshold: value "5xs" is not a number`, "e.g. auth.p99<500ms"}},
		{"run: unknown metric", []string{"run", "--threshold", "auth.p98<5ms", "--count", "1"},
			[]string{`--threshold: unknown metric "auth.p98": use OPERATION.STAT`}},
		{"demo: no comparison", []string{"demo", "--threshold", "errors.rate"},
			[]string{"simulator demo: invalid value \"errors.rate\" for flag --threshold: no comparison"}},
		{"merge: wrong unit", []string{"report", "merge", "a.json", "--out", "b.json", "--threshold", "errors.rate<5ms"},
			[]string{`--threshold: unit "ms" does not fit errors.rate: e.g. errors.rate<0.01 (or 1%)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(t.Context(), tt.args, &out, &errb)
			assert.Equal(t, 2, code)
			for _, w := range tt.want {
				assert.Contains(t, errb.String(), w)
			}
			assert.Empty(t, out.String(), "nothing ran")
			assert.Equal(t, 2, strings.Count(errb.String(), "\n"), "one line and the pointer to --help: %q", errb.String())
		})
	}

	var out bytes.Buffer
	require.Equal(t, 0, run(t.Context(), []string{"run", "--help"}, &out, &out))
	for _, w := range []string{"--threshold EXPR", "exit 99", "OPERATION.STAT", "accepted.all", "'auth.p99<500ms'", "--junit FILE"} {
		assert.Contains(t, out.String(), w)
	}
}

// report merge checks thresholds against the merged fleet and writes
// JUnit; a failed one exits 99 after the files are written.
func TestReportMergeThresholds(t *testing.T) {
	dir := t.TempDir()
	a := writeShardReport(t, dir, "0/2", 0, 5)
	b := writeShardReport(t, dir, "1/2", 5, 5)
	outFile, junit := filepath.Join(dir, "all.json"), filepath.Join(dir, "junit.xml")

	var out, errb bytes.Buffer
	err := cmdReport([]string{"merge", a, b, "--out", outFile, "--junit", junit,
		"--threshold", "accepted.all<=2.5s", "--threshold", "auth.count==2"}, &out, &errb)
	require.NoError(t, err, errb.String())
	assert.Contains(t, out.String(), "THRESHOLDS   2 of 2 passed")
	assert.FileExists(t, junit)

	out.Reset()
	err = cmdReport([]string{"merge", a, b, "--out", outFile, "--junit", junit, "--threshold", "auth.p99<1ms"}, &out, &errb)
	var tf *thresholdsFailedError
	require.True(t, errors.As(err, &tf), "%v", err)
	assert.Equal(t, exitThresholds, tf.ExitCode())
	assert.Contains(t, out.String(), "✗ FAIL  auth.p99<1ms: observed 6ms (limit 1ms)")
	m := readJSONReport(t, outFile)
	assert.Equal(t, false, m["thresholds"].([]any)[0].(map[string]any)["pass"], "the merged report holds the result")
	data, err := os.ReadFile(junit)
	require.NoError(t, err)
	assert.Contains(t, string(data), `failures="1"`)
}

// Without --threshold there is no THRESHOLDS block and no "thresholds"
// in the JSON.
func TestRunWithoutThresholdsHasNoBlock(t *testing.T) {
	dir := t.TempDir()
	a := writeShardReport(t, dir, "0/1", 0, 2)
	var out, errb bytes.Buffer
	require.NoError(t, cmdReport([]string{"merge", a, "--out", filepath.Join(dir, "o.json")}, &out, &errb))
	assert.NotContains(t, out.String(), "THRESHOLDS")
	assert.NotContains(t, string(mustRead(t, filepath.Join(dir, "o.json"))), `"thresholds"`)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}
