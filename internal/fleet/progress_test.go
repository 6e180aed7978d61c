package fleet

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The progress line fits an 80-column terminal whatever the numbers, and
// shows the elapsed and total time.
func TestProgressLineFits80Columns(t *testing.T) {
	tests := []struct {
		name string
		p    Progress
		want []string
	}{
		{"demo", Progress{Elapsed: 83 * time.Second, Total: time.Minute, Devices: 1000, Started: 1000, Accepted: 950,
			Pending: 20, Failing: 3, Requests: 12345, Errors: 5, RPS: 850},
			[]string{"01:23/01:00", "accepted 950/1000", "pending 20", "failing 3", "850 req/s", "errors 5"}},
		{"ramping", Progress{Elapsed: 5 * time.Second, Total: 5 * time.Minute, Devices: 1000, Started: 120, Accepted: 100},
			[]string{"00:05/05:00", "accepted 100/1000", "started 120"}},
		{"until Ctrl-C", Progress{Elapsed: 2*time.Hour + 3*time.Minute + 4*time.Second, Devices: 3, Started: 3, Accepted: 3},
			[]string{"2:03:04 ", "accepted 3/3"}},
		{"big fleet", Progress{Elapsed: 90 * time.Minute, Total: 2 * time.Hour, Devices: 400000, Started: 399999, Accepted: 399998,
			Pending: 123456, Failing: 234567, Requests: 987654321, Errors: 123456789, RPS: 123456},
			[]string{"1:30:00/2:00:00", "399998/400000"}},
		{"absurd", Progress{Elapsed: 9999 * time.Hour, Total: 9999 * time.Hour, Devices: 1 << 40, Started: 1 << 39, Accepted: 1 << 38,
			Pending: 1 << 37, Failing: 1 << 36, Errors: 1 << 62, RPS: 1e15}, []string{"9999:00:00/9999:00:00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := tt.p.String()
			assert.LessOrEqual(t, len(line), ProgressWidth, "%q", line)
			assert.NotContains(t, line, "\n")
			for _, w := range tt.want {
				assert.Contains(t, line, w)
			}
		})
	}
}

// The summary says why deployments failed and at what fleet size the
// memory per device was measured.
func TestSummaryExplainsFailuresAndMemory(t *testing.T) {
	r := knownReport(t, 3, Shard{}, 0, []time.Duration{time.Millisecond})
	r.Memory = Memory{PeakBytes: 10 << 20, BaselineBytes: 4 << 20, PerDeviceKiB: 2048}
	r.Deployments = Deployments{Started: 12, Succeeded: 9, Failed: 3, FailedOnPurpose: 2, FailRate: 0.1}
	var b bytes.Buffer
	require.NoError(t, r.WriteSummary(&b))
	sum := b.String()
	assert.Contains(t, sum, "2048.0 KiB per device, measured with 3 devices")
	assert.Contains(t, sum, "2 failed on purpose: the devices fail 10 % of deployments (deployment fail rate)")
	assert.Contains(t, sum, "1 failed an artifact check: length, checksum, format, device type or name")

	r.Deployments = Deployments{Started: 2, Succeeded: 2}
	b.Reset()
	require.NoError(t, r.WriteSummary(&b))
	assert.NotContains(t, b.String(), "on purpose", "no failure, no explanation")
	assert.Equal(t, "7 %", percent(0.07))

	m, err := Merge(withDeployments(knownReport(t, 2, Shard{Index: 0, Total: 2}, 0, []time.Duration{time.Millisecond}), 1, 0.1),
		withDeployments(knownReport(t, 2, Shard{Index: 1, Total: 2}, 2, []time.Duration{time.Millisecond}), 2, 0.2))
	require.NoError(t, err)
	assert.Equal(t, uint64(3), m.Deployments.FailedOnPurpose)
	assert.Equal(t, 0.2, m.Deployments.FailRate)
	assert.True(t, strings.Contains(string(mustJSON(t, m)), `"failed_on_purpose": 3`))
}

func withDeployments(r *Report, onPurpose uint64, rate float64) *Report {
	r.Deployments = Deployments{Started: onPurpose, Failed: onPurpose, FailedOnPurpose: onPurpose, FailRate: rate}
	return r
}

func mustJSON(t *testing.T, r *Report) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, r.WriteJSON(&b))
	return b.Bytes()
}
