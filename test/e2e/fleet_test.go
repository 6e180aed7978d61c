package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleetReport holds the report fields the acceptance criteria name.
type fleetReport struct {
	Devices            int      `json:"devices"`
	Accepted           int      `json:"accepted"`
	ErrorsTotal        uint64   `json:"errors_total"`
	Canceled           uint64   `json:"canceled"`
	TimeToAllAcceptedS *float64 `json:"time_to_all_accepted_s"`
	Operations         map[string]struct {
		Count        uint64            `json:"count"`
		Errors       uint64            `json:"errors"`
		ErrorsByKind map[string]uint64 `json:"errors_by_kind"`
		P50          float64           `json:"p50_ms"`
		P99          float64           `json:"p99_ms"`
	} `json:"operations"`
	Deployments struct {
		Started   uint64 `json:"started"`
		Succeeded uint64 `json:"succeeded"`
		Failed    uint64 `json:"failed"`
	} `json:"deployments"`
}

// errorKinds lists the errors as "op kind: count", for failure messages.
func (r fleetReport) errorKinds() string {
	var parts []string
	for op, o := range r.Operations {
		for k, v := range o.ErrorsByKind {
			parts = append(parts, fmt.Sprintf("%s %s: %d", op, k, v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func readReport(t *testing.T, path string) fleetReport {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var r fleetReport
	require.NoError(t, json.Unmarshal(data, &r))
	return r
}

// simulator demo --count 300 --duration 30s: every device accepted, zero
// errors, the deployment mid-run shows in the report, and the HTML report is
// written and self-contained.
func TestDemo300(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s demo run")
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), bins.simulator, "demo", "--count", "300", "--duration", "30s", "--report", "r.json")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "demo:\n%s", out)
	r := readReport(t, filepath.Join(dir, "r.json"))
	assert.GreaterOrEqual(t, r.Devices, 300, "300 virtual devices (plus the real agent, when counted)")
	assert.Equal(t, r.Devices, r.Accepted, "every device accepted")
	assert.Zero(t, r.ErrorsTotal, "zero errors: %s", r.errorKinds())
	require.NotNil(t, r.TimeToAllAcceptedS)
	assert.Greater(t, *r.TimeToAllAcceptedS, 0.0)
	for _, op := range []string{"auth", "inventory", "next"} {
		assert.NotZero(t, r.Operations[op].Count, op)
		assert.LessOrEqual(t, r.Operations[op].P50, r.Operations[op].P99, op)
	}
	assert.NotZero(t, r.Deployments.Started, "the mid-run deployment reached devices")
	assert.Equal(t, r.Deployments.Started, r.Deployments.Succeeded+r.Deployments.Failed)

	html, err := os.ReadFile(filepath.Join(dir, "simulator-demo", "report.html"))
	require.NoError(t, err, "the HTML report defaults to ./simulator-demo/")
	assert.Contains(t, string(html), "<svg")
	assert.NotRegexp(t, `(src|href)="https?://`, string(html), "self-contained: nothing fetched from the network")
	assert.Contains(t, string(out), "device-agent", "the demo runs one real device-agent too")
}

// With serve --fail-rate 0.2 the devices retry and all get accepted, and
// the report counts the failures.
func TestRunAgainstFailingBackend(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0", "--fail-rate", "0.2")
	report := filepath.Join(t.TempDir(), "fail.json")
	cmd := exec.CommandContext(t.Context(), bins.simulator, "run", "--server", b.url, "--pki-dir", dir, "--count", "100",
		"--ramp", "2s", "--duration", "25s", "--poll", "2s", "--inventory", "10s", "--retry-poll", "2s", "--report", report)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "run:\n%s", out)
	r := readReport(t, report)
	assert.Equal(t, 100, r.Devices)
	assert.Equal(t, 100, r.Accepted, "every device accepted despite the failures")
	assert.NotZero(t, r.ErrorsTotal, "the 503s are counted")
	var opErrors uint64
	for _, op := range r.Operations {
		opErrors += op.Errors
	}
	assert.Equal(t, r.ErrorsTotal, opErrors, "errors_total is the sum of the per-operation errors")
	s := b.stats(t)
	served503 := 0
	for _, byStatus := range s.ByRouteStatus {
		served503 += byStatus[503]
	}
	t.Logf("503 served %d, errors counted %d (%s), canceled %d", served503, r.ErrorsTotal, r.errorKinds(), r.Canceled)
	// Every injected 503 is in the report, except those whose device was
	// stopped before the answer arrived: the report counts those as canceled.
	assert.LessOrEqual(t, r.ErrorsTotal, uint64(served503), "no failure counted that the backend did not inject")
	assert.LessOrEqual(t, uint64(served503)-r.ErrorsTotal, r.Canceled,
		"every injected failure is counted (%d served, %d counted, %d canceled at stop)", served503, r.ErrorsTotal, r.Canceled)
	assert.True(t, strings.Contains(string(out), "accepted"), "summary printed")
}
