package metrics

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFormatFloat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{3, "3"},
		{0.005, "0.005"},
		{1e21, "1e+21"},
		{math.Inf(1), "+Inf"},
		{math.Inf(-1), "-Inf"},
		{math.NaN(), "NaN"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, FormatFloat(tt.in), "FormatFloat(%v)", tt.in)
	}
}

func TestEscapeLabel(t *testing.T) {
	assert.Equal(t, `a\\b\"c\nd`, EscapeLabel("a\\b\"c\nd"))
	assert.Equal(t, "plain", EscapeLabel("plain"))
}

func TestWriterSamplesAndHeaders(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Header("fleet_devices", "Devices\nsimulated.", TypeGauge)
	w.Sample("fleet_devices", nil, 10)
	w.Header("fleet_errors_total", "Errors.", TypeCounter)
	w.Sample("fleet_errors_total", []Label{{"op", "auth"}, {"kind", `http "503"`}}, 2)
	require.NoError(t, w.Flush())
	assert.Equal(t, "# HELP fleet_devices Devices\\nsimulated.\n# TYPE fleet_devices gauge\nfleet_devices 10\n"+
		"# HELP fleet_errors_total Errors.\n# TYPE fleet_errors_total counter\n"+
		`fleet_errors_total{op="auth",kind="http \"503\""} 2`+"\n", buf.String())
}

func TestWriterHistogramIsCumulative(t *testing.T) {
	tests := []struct {
		name   string
		labels []Label
		want   string
	}{
		{"no labels", nil, "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_sum 7.5\nh_count 4\n"},
		{"with label", []Label{{"op", "next"}}, "h_bucket{op=\"next\",le=\"0.1\"} 1\nh_bucket{op=\"next\",le=\"1\"} 3\n" +
			"h_bucket{op=\"next\",le=\"+Inf\"} 4\nh_sum{op=\"next\"} 7.5\nh_count{op=\"next\"} 4\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			w.Histogram("h", tt.labels, []float64{0.1, 1}, []uint64{1, 2, 1}, 7.5)
			require.NoError(t, w.Flush())
			assert.Equal(t, tt.want, buf.String())
		})
	}
}

func TestCounterVec(t *testing.T) {
	c := NewCounterVec("c_total", "A counter.", "code", "500")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c.Inc("200")
			}
		})
	}
	wg.Wait()
	c.Add("404", 3)
	assert.Equal(t, uint64(800), c.Get("200"))
	assert.Equal(t, uint64(0), c.Get("500"), "a preset value starts at zero")

	var buf bytes.Buffer
	w := NewWriter(&buf)
	c.Write(w)
	require.NoError(t, w.Flush())
	assert.Equal(t, "# HELP c_total A counter.\n# TYPE c_total counter\n"+
		"c_total{code=\"200\"} 800\nc_total{code=\"404\"} 3\nc_total{code=\"500\"} 0\n", buf.String(), "series sorted by label value")
}

func TestHistogramBoundsAreInclusive(t *testing.T) {
	h := NewHistogram("d_seconds", "Durations.", []float64{0.005, 0.5})
	for _, v := range []float64{0.005, 0.3, 100, math.NaN()} {
		h.Observe(v)
	}
	_, counts, sum := h.Snapshot()
	assert.Equal(t, []uint64{1, 1, 1}, counts, "0.005 lands in le=0.005; NaN is ignored")
	assert.InDelta(t, 100.305, sum, 1e-9)

	var buf bytes.Buffer
	w := NewWriter(&buf)
	h.Write(w)
	require.NoError(t, w.Flush())
	out := buf.String()
	assert.True(t, strings.HasPrefix(out, "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n"))
	assert.Contains(t, out, "d_seconds_bucket{le=\"0.5\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\n")
	assert.Contains(t, out, "d_seconds_count 3\n")
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriterReportsWriteErrors(t *testing.T) {
	w := NewWriter(failWriter{})
	w.Sample("x", nil, 1)
	assert.ErrorContains(t, w.Flush(), "disk full")
}
