package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(d time.Duration) {
	c.mu.Lock()
	c.t = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(d)
	c.mu.Unlock()
}

// offlineFleet builds a fleet of n key-only devices that is never run;
// tests feed its devices' observers directly.
func offlineFleet(t *testing.T, n int, clock *fakeClock) *Fleet {
	t.Helper()
	creds, _, err := LoadCredentials(t.Context(), StoreOptions{}, 0, n)
	require.NoError(t, err)
	clock.set(0)
	f, err := New(Options{ServerURL: "https://mender.invalid", Credentials: creds, Now: clock.now, SampleInterval: time.Second})
	require.NoError(t, err)
	f.col.begin()
	return f
}

func ev(op string, status int, err error, d time.Duration) client.Event {
	return client.Event{Op: op, Status: status, Err: err, Duration: d}
}

var errTimeout = fmt.Errorf("inventory: %w", context.DeadlineExceeded)

func TestClassify(t *testing.T) {
	tests := []struct {
		op           string
		status       int
		err          error
		wantKind     string
		wantFallback bool
		wantCanceled bool
	}{
		{op: client.OpAuth, status: 200},
		{op: client.OpAuth, status: 401, wantKind: "http_401"},
		{op: client.OpAuth, status: 500, wantKind: "http_500"},
		{op: client.OpInventory, status: 200},
		{op: client.OpInventory, status: 405, wantFallback: true},
		{op: client.OpNext, status: 204},
		{op: client.OpNext, status: 200},
		{op: client.OpNext, status: 404, wantFallback: true},
		{op: client.OpNext, status: 409, wantKind: "http_409"},
		{op: client.OpStatus, status: 204},
		{op: client.OpStatus, status: 200, wantKind: "http_200"},
		{op: client.OpStatus, status: 409, wantKind: "http_409"},
		{op: client.OpLog, status: 204},
		{op: client.OpDownload, status: 206},
		{op: client.OpDownload, status: 200, err: io.ErrUnexpectedEOF, wantKind: KindInterrupted},
		{op: client.OpNext, err: errTimeout, wantKind: KindTimeout},
		{op: client.OpNext, err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}, wantKind: KindConnection},
		{op: client.OpNext, err: fmt.Errorf("x: %w", context.Canceled), wantCanceled: true},
		{op: client.OpDownload, status: 200, err: fmt.Errorf("download: write: %w", errArtifactRejected)},
		{op: "custom", status: 201},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %d %v", tt.op, tt.status, tt.err), func(t *testing.T) {
			kind, fallback, canceled := classify(tt.op, tt.status, tt.err)
			assert.Equal(t, tt.wantKind, kind)
			assert.Equal(t, tt.wantFallback, fallback)
			assert.Equal(t, tt.wantCanceled, canceled)
		})
	}
}

// TestReportFromKnownEvents feeds a known stream of exchanges through the
// devices' observers and checks that every report field follows from it.
func TestReportFromKnownEvents(t *testing.T) {
	clock := &fakeClock{}
	f := offlineFleet(t, 4, clock)
	d := f.devices

	clock.set(time.Second)
	d[0].observe(ev(client.OpAuth, 401, nil, 5*time.Millisecond))
	d[3].observe(ev(client.OpAuth, 401, nil, 5*time.Millisecond))
	d[0].observe(ev(client.OpAuth, 200, nil, 5*time.Millisecond))
	clock.set(2 * time.Second)
	d[1].observe(ev(client.OpAuth, 200, nil, 5*time.Millisecond))
	clock.set(5 * time.Second)
	d[2].observe(ev(client.OpAuth, 200, nil, 5*time.Millisecond))
	f.col.sample()

	// inventory: 1..100 ms, seven 503s and three timeouts among them.
	for i := 1; i <= 100; i++ {
		var e client.Event
		switch {
		case i%10 == 3 && i <= 70:
			e = ev(client.OpInventory, 503, nil, time.Duration(i)*time.Millisecond)
		case i > 97:
			e = ev(client.OpInventory, 0, errTimeout, time.Duration(i)*time.Millisecond)
		default:
			e = ev(client.OpInventory, 200, nil, time.Duration(i)*time.Millisecond)
		}
		d[1].observe(e)
	}
	for range 10 {
		d[2].observe(ev(client.OpNext, 404, nil, time.Millisecond))
		d[2].observe(ev(client.OpNext, 204, nil, 2*time.Millisecond))
	}
	d[0].observe(ev(client.OpStatus, 0, context.Canceled, time.Millisecond))
	d[0].observe(ev(client.OpDownload, 200, io.ErrUnexpectedEOF, 40*time.Millisecond))
	f.col.handshake(false)
	f.col.handshake(true)
	f.col.handshake(true)
	f.col.sample()

	clock.set(6 * time.Second)
	r := f.report(clock.now())
	assert.Equal(t, 4, r.Devices)
	assert.Equal(t, 3, r.Accepted)
	assert.Equal(t, 1, r.Pending, "device 3 got only 401")
	assert.Equal(t, 2, r.Failing, "device 0 (cut download) and device 1 (last inventory timed out)")
	assert.Nil(t, r.TimeToAllAcceptedS, "device 3 was never accepted")
	assert.Equal(t, uint64(5+100+20+1), r.RequestsTotal, "the canceled status report is not a request")
	assert.Equal(t, uint64(1), r.Canceled)
	assert.Equal(t, uint64(2+10+1), r.ErrorsTotal, "two 401s, ten inventory failures, one cut download")
	assert.Equal(t, Handshakes{Full: 1, Resumed: 2}, r.Handshakes)
	assert.Equal(t, 6.0, r.DurationS)

	inv := r.Operations[client.OpInventory]
	assert.Equal(t, uint64(100), inv.Count)
	assert.Equal(t, uint64(10), inv.Errors)
	assert.Equal(t, map[string]uint64{"http_503": 7, KindTimeout: 3}, inv.ErrorsByKind)
	assert.InEpsilon(t, 50.0, inv.P50Ms, HistogramRelativeError)
	assert.InEpsilon(t, 90.0, inv.P90Ms, HistogramRelativeError)
	assert.InEpsilon(t, 99.0, inv.P99Ms, HistogramRelativeError)
	assert.Equal(t, 100.0, inv.MaxMs)
	assert.Equal(t, 50.5, inv.MeanMs)

	next := r.Operations[client.OpNext]
	assert.Equal(t, uint64(20), next.Count)
	assert.Zero(t, next.Errors)
	assert.Equal(t, uint64(10), next.Fallbacks)
	assert.Equal(t, map[string]uint64{"http_401": 2}, r.Operations[client.OpAuth].ErrorsByKind)
	assert.Equal(t, map[string]uint64{KindInterrupted: 1}, r.Operations[client.OpDownload].ErrorsByKind)
	assert.Zero(t, r.Operations[client.OpStatus].Count)
	for _, op := range Operations {
		require.Contains(t, r.Operations, op, "every operation is reported")
	}

	assert.Equal(t, 1.0, r.Timeline.StepS)
	assert.Equal(t, []int{3, 3}, r.Timeline.Accepted, "one point per sample")
	assert.Equal(t, []uint64{5, 121}, r.Timeline.Requests)
	assert.Equal(t, []uint64{2, 11}, r.Timeline.Errors)

	// The last device is accepted at 7 s: time until all is measured from the start.
	clock.set(7 * time.Second)
	d[3].observe(ev(client.OpAuth, 200, nil, 5*time.Millisecond))
	r = f.report(clock.now())
	require.NotNil(t, r.TimeToAllAcceptedS)
	assert.Equal(t, 7.0, *r.TimeToAllAcceptedS)
	assert.Equal(t, 0, r.Pending)
	assert.Equal(t, r.TimeToAllAcceptedS, r.Shards[0].TimeToAllAcceptedS)
	assert.Equal(t, "0/1", r.Shards[0].Shard)

	p := f.Progress()
	assert.Equal(t, 4, p.Accepted)
	assert.Equal(t, uint64(127), p.Requests)
	assert.Contains(t, p.String(), "accepted 4/4")
}

// TestTimelineIsDerivedFromTheSeries: the report's timeline comes from the
// bounded series: the same step and points, every request and error of
// every operation ("other" included) kept through the downsampling, and
// the latest accepted count last.
func TestTimelineIsDerivedFromTheSeries(t *testing.T) {
	buf := seriesBuf{base: time.Second, factor: 1}
	var h Histogram
	h.Record(time.Millisecond)
	var total uint64
	for i := range 5000 {
		p := SeriesPoint{Accepted: i, Ops: map[string]*OpPoint{}}
		for _, op := range []string{client.OpAuth, client.OpNext, "other"} {
			p.Ops[op] = &OpPoint{Count: 1, Errors: uint64(i % 2), Histogram: sparseOf(&h)}
			total++
		}
		buf.add(p)
	}
	s := buf.snapshot()
	tl := timelineOf(s)
	assert.LessOrEqual(t, len(tl.Accepted), maxTimelinePoints)
	assert.Equal(t, s.StepS, tl.StepS)
	assert.Equal(t, float64(buf.factor), tl.StepS, "the step doubled with each halving")
	require.Len(t, tl.Requests, len(s.Points))
	require.Len(t, tl.Errors, len(s.Points))
	var sum, errs uint64
	for i := range tl.Requests {
		sum += tl.Requests[i]
		errs += tl.Errors[i]
	}
	assert.Equal(t, total, sum, "downsampling keeps every request")
	assert.Equal(t, total/2, errs)
	assert.Equal(t, 4999, tl.Accepted[len(tl.Accepted)-1], "the last point holds the latest accepted count")
}

// knownReport returns the report of an offline fleet of n devices that
// all got accepted, with lat as the auth latencies.
func knownReport(t *testing.T, n int, shard Shard, first int, lat []time.Duration) *Report {
	t.Helper()
	clock := &fakeClock{}
	creds, _, err := LoadCredentials(t.Context(), StoreOptions{}, first, first+n)
	require.NoError(t, err)
	clock.set(0)
	f, err := New(Options{ServerURL: "https://mender.invalid", Credentials: creds, Now: clock.now, Shard: shard})
	require.NoError(t, err)
	f.col.begin()
	for i, d := range f.devices {
		clock.set(time.Duration(i+1) * time.Second)
		d.observe(ev(client.OpAuth, 200, nil, lat[i%len(lat)]))
		f.col.sample()
		// Every device downloads a 1000-byte artifact in i+1 s and
		// installs it in 2 s.
		f.col.depDownload.record(time.Duration(i+1) * time.Second)
		f.col.depCompletedBytes.Add(1000)
		f.col.depInstall.record(2 * time.Second)
	}
	f.devices[0].observe(ev(client.OpNext, 503, nil, time.Millisecond))
	return f.report(clock.now())
}

func TestMergeShardReports(t *testing.T) {
	a := knownReport(t, 3, Shard{0, 2}, 0, []time.Duration{time.Millisecond, 2 * time.Millisecond})
	b := knownReport(t, 5, Shard{1, 2}, 3, []time.Duration{10 * time.Millisecond})
	m, err := Merge(b, a)
	require.NoError(t, err)
	assert.Equal(t, 8, m.Devices)
	assert.Equal(t, 8, m.Accepted)
	assert.Equal(t, a.RequestsTotal+b.RequestsTotal, m.RequestsTotal)
	assert.Equal(t, uint64(2), m.ErrorsTotal)
	require.NotNil(t, m.TimeToAllAcceptedS)
	assert.Equal(t, 5.0, *m.TimeToAllAcceptedS, "the slowest shard")
	assert.Equal(t, []string{"0/2", "1/2"}, []string{m.Shards[0].Shard, m.Shards[1].Shard}, "shards in index order")

	var want Histogram
	want.Merge(a.Operations[client.OpAuth].Histogram)
	want.Merge(b.Operations[client.OpAuth].Histogram)
	assert.Equal(t, want, *m.Operations[client.OpAuth].Histogram, "histograms merge exactly")
	assert.Equal(t, 10.0, m.Operations[client.OpAuth].P99Ms)
	assert.Equal(t, map[string]uint64{"http_503": 2}, m.Operations[client.OpNext].ErrorsByKind)
	assert.Equal(t, []int{2, 4, 6, 7, 8}, m.Timeline.Accepted, "aligned on each shard's start; a finished shard keeps its last count")

	dl := m.Deployments.DownloadSeconds
	want = Histogram{}
	want.Merge(a.Deployments.DownloadSeconds.Histogram)
	want.Merge(b.Deployments.DownloadSeconds.Histogram)
	assert.Equal(t, want, *dl.Histogram, "download times merge exactly")
	assert.Equal(t, uint64(8), dl.Count)
	assert.Equal(t, 5.0, dl.MaxS, "the slowest download of both shards")
	assert.InEpsilon(t, 2.0, dl.P50S, HistogramRelativeError, "1, 1, 2, 2, 3, 3, 4, 5 s")
	assert.Equal(t, (6.0+15.0)/8, dl.MeanS)
	assert.Equal(t, uint64(8), m.Deployments.InstallSeconds.Count)
	assert.Equal(t, 2.0, m.Deployments.InstallSeconds.P99S)
	assert.Equal(t, uint64(8000), m.Deployments.CompletedDownloadBytes)
	assert.Equal(t, uint64(1000), m.Deployments.ArtifactBytesPerDevice)

	_, err = Merge(a, a)
	assert.ErrorIs(t, err, ErrIncompatible, "the same shard twice")
	_, err = Merge()
	assert.ErrorIs(t, err, ErrInvalid)
	old := *a
	old.Version = 99
	_, err = Merge(&old, b)
	assert.ErrorIs(t, err, ErrIncompatible)

	pending := *b
	pending.TimeToAllAcceptedS = nil
	m, err = Merge(a, &pending)
	require.NoError(t, err)
	assert.Nil(t, m.TimeToAllAcceptedS, "null when any shard never had all its devices accepted")
}

func TestMergeRebinsTimelines(t *testing.T) {
	a := &Report{Version: ReportVersion, Shards: []ShardReport{{Shard: "0/2"}},
		Timeline: Timeline{StepS: 1, Accepted: []int{1, 2, 3, 4}, Requests: []uint64{1, 1, 1, 1}, Errors: []uint64{0, 1, 0, 1}}}
	b := &Report{Version: ReportVersion, Shards: []ShardReport{{Shard: "1/2"}},
		Timeline: Timeline{StepS: 2, Accepted: []int{10}, Requests: []uint64{5}, Errors: []uint64{0}}}
	m, err := Merge(a, b)
	require.NoError(t, err)
	assert.Equal(t, Timeline{StepS: 2, Accepted: []int{12, 14}, Requests: []uint64{7, 2}, Errors: []uint64{1, 1}}, m.Timeline)

	c := &Report{Version: ReportVersion, Shards: []ShardReport{{Shard: "2/3"}},
		Timeline: Timeline{StepS: 3, Accepted: []int{1}, Requests: []uint64{1}, Errors: []uint64{0}}}
	_, err = Merge(b, c)
	assert.ErrorIs(t, err, ErrIncompatible, "a step of 2s does not divide 3s")
}

func TestReportJSONRoundTrip(t *testing.T) {
	r := knownReport(t, 3, Shard{}, 0, []time.Duration{time.Millisecond, 7 * time.Millisecond})
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, r.SaveJSON(path))
	back, err := ReadReport(path)
	require.NoError(t, err)
	assert.Equal(t, r.Operations, back.Operations)
	assert.Equal(t, r.Deployments, back.Deployments)
	assert.Equal(t, uint64(3), back.Deployments.InstallSeconds.Count)
	assert.Equal(t, r.Timeline, back.Timeline)
	assert.Equal(t, r.Devices, back.Devices)
	assert.True(t, r.Started.Equal(back.Started))

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, field := range []string{`"devices": 3`, `"accepted": 3`, `"errors_total": 1`, `"time_to_all_accepted_s": 3`,
		`"count"`, `"errors"`, `"p50_ms"`, `"p99_ms"`, `"downloaded_bytes"`, `"download_seconds"`, `"install_seconds"`,
		`"p50_s": 2`, `"artifact_bytes_per_device": 1000`} {
		assert.Contains(t, string(raw), field)
	}

	tests := []struct {
		name, edit, repl, want string
	}{
		{"version", `"version": 1`, `"version": 7`, "version"},
		{"operation count edited", "\"auth\": {\n      \"count\": 3,", "\"auth\": {\n      \"count\": 4,", "operation auth: count 4 but its histogram holds 3"},
		{"install count edited", "\"install_seconds\": {\n      \"count\": 3,", "\"install_seconds\": {\n      \"count\": 2,",
			"deployments.install_seconds: count 2 but its histogram holds 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := strings.Replace(string(raw), tt.edit, tt.repl, 1)
			require.NotEqual(t, string(raw), bad)
			p := filepath.Join(t.TempDir(), "bad.json")
			require.NoError(t, os.WriteFile(p, []byte(bad), 0o644))
			_, err := ReadReport(p)
			assert.ErrorContains(t, err, tt.want)
		})
	}
	_, err = ReadReport(filepath.Join(t.TempDir(), "missing.json"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	// A report written before the deployment times existed still reads.
	old := filepath.Join(t.TempDir(), "old.json")
	require.NoError(t, os.WriteFile(old, []byte(`{"version": 1, "deployments": {"started": 2, "downloaded_bytes": 10}}`), 0o644))
	back, err = ReadReport(old)
	require.NoError(t, err)
	assert.Equal(t, uint64(10), back.Deployments.DownloadedBytes)
	assert.Zero(t, back.Deployments.InstallSeconds.Histogram.Count(), "an empty histogram, ready to merge")
	m, err := Merge(back, r)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), m.Deployments.DownloadSeconds.Count)
}

func TestWriteSummaryAndHTML(t *testing.T) {
	r := knownReport(t, 3, Shard{}, 0, []time.Duration{time.Millisecond, 40 * time.Millisecond})
	r.Server = `https://<script>alert(1)</script>`
	var sum bytes.Buffer
	require.NoError(t, r.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "accepted     3/3, all accepted after: 3.0s")
	assert.Regexp(t, `(?m)^auth\s+3\s+0\s+`, sum.String())
	assert.Regexp(t, `(?m)^next\s+1\s+1\s+.*http_503:1`, sum.String())
	// p50 of 1, 2 and 3 s is its bucket's middle, within 2.2 % of 2 s.
	assert.Contains(t, sum.String(), "  download   3 devices: p50 1.965s, p90 3.000s, p99 3.000s, max 3.000s; 1000 artifact bytes per device\n")
	assert.Contains(t, sum.String(), "  install    3 devices: p50 2.000s, p90 2.000s, p99 2.000s, max 2.000s\n")

	var page bytes.Buffer
	require.NoError(t, r.WriteHTML(&page))
	html := page.String()
	assert.True(t, strings.HasPrefix(html, "<!DOCTYPE html>"))
	assert.Equal(t, 3+2*2, strings.Count(html, "<svg "),
		"devices, rates and throughput over time, then a latency chart and a histogram for each of the two operations that ran")
	assert.Contains(t, html, "<polyline", "the accepted and rate lines are drawn")
	assert.Contains(t, html, "<rect", "histogram bars are drawn")
	assert.NotContains(t, html, "<script>", "report text is escaped")
	assert.NotContains(t, html, "src=", "nothing is loaded from elsewhere")
	assert.NotContains(t, html, "<link")
	assert.Equal(t, strings.Count(html, "http://www.w3.org/2000/svg"), strings.Count(html, "http://"), "the only URLs are SVG namespaces")
	assert.Contains(t, html, "<tr><td>Deployment downloads</td><td>3 devices: p50 1.965s, p90 3.000s, p99 3.000s, max 3.000s; 1000 artifact bytes per device</td></tr>")
	assert.Contains(t, html, "<tr><td>Deployment installs</td><td>3 devices: p50 2.000s, p90 2.000s, p99 2.000s, max 2.000s</td></tr>")

	empty := &Report{Version: ReportVersion, Operations: newOpReports()}
	page.Reset()
	require.NoError(t, empty.WriteHTML(&page))
	assert.Contains(t, page.String(), "no samples")
	assert.Contains(t, page.String(), "no requests")
	assert.NotContains(t, page.String(), "Deployment downloads", "no row without a completed download")
	sum.Reset()
	require.NoError(t, empty.WriteSummary(&sum), "a report without deployments")
	assert.NotContains(t, sum.String(), "  download ")
}

func TestWriteMetrics(t *testing.T) {
	clock := &fakeClock{}
	f := offlineFleet(t, 2, clock)
	f.devices[0].observe(ev(client.OpAuth, 200, nil, 3*time.Millisecond))
	f.devices[1].observe(ev(client.OpAuth, 401, nil, 3*time.Millisecond))
	f.devices[1].observe(ev(client.OpInventory, 503, nil, 3*time.Millisecond))
	f.col.handshake(false)
	var buf bytes.Buffer
	require.NoError(t, f.WriteMetrics(&buf))
	out := buf.String()
	for _, want := range []string{
		"fleet_devices 2\n",
		"fleet_devices_accepted 1\n",
		"fleet_devices_pending 1\n",
		"fleet_devices_failing 1\n",
		`fleet_requests_total{op="auth"} 2` + "\n",
		`fleet_request_errors_total{kind="http_401",op="auth"} 1` + "\n",
		`fleet_request_errors_total{kind="http_503",op="inventory"} 1` + "\n",
		`fleet_request_duration_seconds_bucket{op="auth",le="0.005"} 2` + "\n",
		`fleet_tls_handshakes_total{type="full"} 1` + "\n",
		`fleet_deployments_total{outcome="succeeded"} 0` + "\n",
		"# TYPE go_goroutines gauge\n",
		"# TYPE process_resident_memory_bytes gauge\n",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "fleet_all_accepted_seconds", "absent until every device is accepted")
	assert.NotContains(t, out, `op="other"`, "only the standard operations are exported")

	// The registry is the fleet's own, and what the handler serves.
	assert.NotSame(t, prometheus.DefaultRegisterer, f.Registry())
	assert.Same(t, f.Registry(), f.Registry())
	n, err := testutil.GatherAndCount(f.Registry(), "fleet_request_duration_seconds")
	require.NoError(t, err)
	assert.Equal(t, len(Operations), n, "one latency histogram per operation")
	require.NoError(t, testutil.GatherAndCompare(f.Registry(), strings.NewReader(`# HELP fleet_requests_total Finished exchanges, by operation.
# TYPE fleet_requests_total counter
fleet_requests_total{op="auth"} 2
fleet_requests_total{op="download"} 0
fleet_requests_total{op="inventory"} 1
fleet_requests_total{op="log"} 0
fleet_requests_total{op="next"} 0
fleet_requests_total{op="status"} 0
`), "fleet_requests_total"))
	srv := httptest.NewServer(f.MetricsHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	for _, want := range []string{"fleet_devices_accepted 1\n", "go_goroutines ", "process_resident_memory_bytes "} {
		assert.Contains(t, string(body), want)
	}
	resp, err = srv.Client().Get(srv.URL + "/other")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}
