package fleet

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

func TestParseThreshold(t *testing.T) {
	tests := []struct {
		expr   string
		metric string
		op     string
		limit  float64
	}{
		// The examples.
		{"auth.p99<500ms", "auth.p99", "<", 500},
		{"errors.rate<0.01", "errors.rate", "<", 0.01},
		{"accepted.all<120s", "accepted.all", "<", 120},
		// Every stat of an operation.
		{"inventory.min>=1", "inventory.min", ">=", 1},
		{"next.mean<=2.5ms", "next.mean", "<=", 2.5},
		{"status.p50<1s", "status.p50", "<", 1000},
		{"log.p90<0.5m", "log.p90", "<", 30000},
		{"download.p95>10", "download.p95", ">", 10},
		{"auth.p99==3", "auth.p99", "==", 3},
		{"auth.max<2s", "auth.max", "<", 2000},
		{"auth.count>=100", "auth.count", ">=", 100},
		{"auth.errors==0", "auth.errors", "==", 0},
		{"auth.rate<5%", "auth.rate", "<", 0.05},
		{"next.rps>10", "next.rps", ">", 10},
		// Fleet metrics, units and spaces.
		{"requests.count > 1000", "requests.count", ">", 1000},
		{"requests.rps>=50", "requests.rps", ">=", 50},
		{"errors.count<=3", "errors.count", "<=", 3},
		{"errors.rate < 1 %", "errors.rate", "<", 0.01},
		{"accepted.all<=2m", "accepted.all", "<=", 120},
		{"accepted.all<1500ms", "accepted.all", "<", 1.5},
		{"accepted.count==1000", "accepted.count", "==", 1000},
		{"accepted.ratio>=99.5%", "accepted.ratio", ">=", 0.995},
		{"memory.rss_per_device_kib<16", "memory.rss_per_device_kib", "<", 16},
		{"deployments.failed==0", "deployments.failed", "==", 0},
		{"deployments.succeeded>=10", "deployments.succeeded", ">=", 10},
		{"storm.recovery<30s", "storm.recovery", "<", 30},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			th, err := ParseThreshold(tt.expr)
			require.NoError(t, err)
			assert.Equal(t, tt.expr, th.Expr)
			assert.Equal(t, tt.metric, th.Metric)
			assert.Equal(t, tt.op, th.Op)
			assert.InDelta(t, tt.limit, th.Limit, 1e-9)
		})
	}

	bad := []struct{ expr, want string }{
		{"auth.p99", "no comparison"},
		{"auth.p99 500ms", "no comparison"},
		{"auth.p99=500", `"=" is no comparison`},
		{"auth.p99=>500", `"=" is no comparison`},
		{"<500ms", "no metric"},
		{"auth.p98<500ms", `unknown metric "auth.p98"`},
		{"login.p99<500ms", `unknown metric "login.p99"`},
		{"errors<1", `unknown metric "errors"`},
		{"auth.p99<", "no value after <: e.g. auth.p99<500ms"},
		{"auth.p99<fast", `value "fast" is not a number`},
		{"auth.p99<5xs", `value "5xs" is not a number`},
		{"auth.p99<NaN", "not a number"},
		{"auth.p99<1%", `unit "%" does not fit auth.p99`},
		{"errors.rate<5ms", `unit "ms" does not fit errors.rate`},
		{"auth.count>1s", `unit "s" does not fit auth.count`},
		{"accepted.ratio>1m", `unit "m" does not fit`},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.expr, func(t *testing.T) {
			_, err := ParseThreshold(tt.expr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), "\n", "one line")
		})
	}
}

// thresholdReport is a crafted report: 100 auth requests of 1..100 ms, 2
// failed; 60 s; 9 of 10 devices accepted at first, then all after 42 s.
func thresholdReport() *Report {
	h := &Histogram{}
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	r := &Report{Version: ReportVersion, Devices: 10, Accepted: 9, DurationS: 60, RequestsTotal: 100, ErrorsTotal: 2,
		Operations: newOpReports(), Memory: Memory{RSSPerDeviceKiB: 12.5}, Deployments: Deployments{Failed: 1, Succeeded: 4}}
	r.Operations[client.OpAuth] = &OpReport{Count: 100, Errors: 2, ErrorsByKind: map[string]uint64{"http_500": 2}, Histogram: h}
	for _, o := range r.Operations {
		o.fillStats()
	}
	r.fillRates()
	return r
}

func mustParse(t *testing.T, exprs ...string) []Threshold {
	t.Helper()
	var out []Threshold
	for _, e := range exprs {
		th, err := ParseThreshold(e)
		require.NoError(t, err)
		out = append(out, th)
	}
	return out
}

func TestEvaluateThresholds(t *testing.T) {
	r := thresholdReport()
	ts := mustParse(t,
		"auth.p99<500ms",      // pass: about 99 ms
		"auth.p50<=10ms",      // fail: about 50 ms
		"auth.min==1",         // pass: exact
		"auth.max>=0.1s",      // pass: 100 ms
		"auth.mean==50.5",     // pass: exact
		"auth.rate<=2%",       // pass
		"auth.count>100",      // fail
		"auth.rps>1.6",        // pass: 100/60
		"errors.rate<0.01",    // fail: 0.02
		"requests.rps<2",      // pass
		"accepted.all<120s",   // fail: never
		"accepted.ratio>=0.9", // pass
		"accepted.count>9",    // fail
		"log.p99<500ms",       // fail: no data
		"memory.rss_per_device_kib<16",
		"deployments.failed==0",    // fail
		"deployments.succeeded>=4", // pass
	)
	failed := r.EvaluateThresholds(ts)
	want := map[string]bool{
		"auth.p99<500ms": true, "auth.p50<=10ms": false, "auth.min==1": true, "auth.max>=0.1s": true, "auth.mean==50.5": true,
		"auth.rate<=2%": true, "auth.count>100": false, "auth.rps>1.6": true, "errors.rate<0.01": false, "requests.rps<2": true,
		"accepted.all<120s": false, "accepted.ratio>=0.9": true, "accepted.count>9": false, "log.p99<500ms": false,
		"memory.rss_per_device_kib<16": true, "deployments.failed==0": false, "deployments.succeeded>=4": true,
	}
	require.Len(t, r.Thresholds, len(ts))
	n := 0
	for _, res := range r.Thresholds {
		assert.Equal(t, want[res.Expr], res.Pass, res.Expr)
		if !want[res.Expr] {
			n++
		}
	}
	assert.Equal(t, n, failed)
	assert.Equal(t, n, r.FailedThresholds())

	byExpr := map[string]ThresholdResult{}
	for _, res := range r.Thresholds {
		byExpr[res.Expr] = res
	}
	noData := byExpr["log.p99<500ms"]
	assert.Nil(t, noData.Observed)
	assert.Equal(t, "no data: no log request finished", noData.Reason)
	never := byExpr["accepted.all<120s"]
	assert.Nil(t, never.Observed)
	assert.Contains(t, never.Reason, "never, 9 of 10 devices accepted")
	require.NotNil(t, byExpr["errors.rate<0.01"].Observed)
	assert.Equal(t, 0.02, *byExpr["errors.rate<0.01"].Observed)
	assert.InEpsilon(t, 99.0, *byExpr["auth.p99<500ms"].Observed, HistogramRelativeError)
	assert.Equal(t, "✗ FAIL  errors.rate<0.01: observed 0.02 (limit 0.01)", byExpr["errors.rate<0.01"].Line())
	assert.Equal(t, "✓ PASS  auth.min==1: observed 1ms", byExpr["auth.min==1"].Line())

	// Once every device is accepted, accepted.all has a value in seconds.
	tta := 42.0
	r.TimeToAllAcceptedS = &tta
	r.EvaluateThresholds(mustParse(t, "accepted.all<120s", "accepted.all<=0.5m"))
	assert.True(t, r.Thresholds[0].Pass)
	assert.False(t, r.Thresholds[1].Pass)
	assert.Equal(t, 42.0, *r.Thresholds[1].Observed)

	// storm.recovery needs a storm that every device recovered from.
	r.EvaluateThresholds(mustParse(t, "storm.recovery<30s"))
	assert.Equal(t, "no data: the run had no reconnect storm", r.Thresholds[0].Reason)
	r.Storm = &StormReport{Devices: 10, Recovered: 7}
	r.EvaluateThresholds(mustParse(t, "storm.recovery<30s"))
	assert.Equal(t, "no data: never, 7 of 10 devices recovered", r.Thresholds[0].Reason)
	rec := 12.5
	r.Storm = &StormReport{Devices: 10, Recovered: 10, RecoveryS: &rec}
	r.EvaluateThresholds(mustParse(t, "storm.recovery<30s", "storm.recovery<=10s"))
	assert.True(t, r.Thresholds[0].Pass)
	assert.False(t, r.Thresholds[1].Pass)
	r.Storm = nil

	// The summary and the JSON carry the results.
	r.EvaluateThresholds(mustParse(t, "auth.p99<500ms", "log.count>0"))
	var sum bytes.Buffer
	require.NoError(t, r.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "THRESHOLDS   1 of 2 passed\n")
	assert.Contains(t, sum.String(), "  ✓ PASS  auth.p99<500ms: observed ")
	assert.Contains(t, sum.String(), "  ✗ FAIL  log.count>0: no data: no log request finished (limit 0)\n")
	raw := string(mustJSON(t, r))
	for _, want := range []string{`"thresholds": [`, `"expr": "log.count\u003e0"`, `"reason": "no data: no log request finished"`,
		`"observed": null`, `"pass": false`, `"metric": "auth.p99"`, `"limit": 500`} {
		assert.Contains(t, raw, want)
	}
}

// xmllint validates path against testdata/junit.xsd; it reports the
// outcome and xmllint's output.
func xmllint(t *testing.T, path string) (bool, string) {
	t.Helper()
	bin, err := exec.LookPath("xmllint")
	require.NoError(t, err, "xmllint is missing: run scripts/install-deps.sh (it installs libxml2-utils)")
	out, err := exec.Command(bin, "--noout", "--schema", filepath.Join("testdata", "junit.xsd"), path).CombinedOutput()
	return err == nil, string(out)
}

func TestJUnitValidatesAgainstSchema(t *testing.T) {
	r := thresholdReport()
	r.EvaluateThresholds(mustParse(t, "auth.p99<500ms", "errors.rate<0.01", "log.p99<1s"))
	dir := t.TempDir()
	path := filepath.Join(dir, "junit.xml")
	require.NoError(t, r.SaveJUnit(path))
	ok, out := xmllint(t, path)
	assert.True(t, ok, "the JUnit file must validate: %s", out)

	var doc struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Cases    []struct {
			Name      string `xml:"name,attr"`
			ClassName string `xml:"classname,attr"`
			Time      string `xml:"time,attr"`
			Failure   *struct {
				Message string `xml:"message,attr"`
				Type    string `xml:"type,attr"`
			} `xml:"failure"`
		} `xml:"testcase"`
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, xml.Unmarshal(data, &doc))
	assert.Equal(t, "simulator thresholds", doc.Name)
	assert.Equal(t, 3, doc.Tests)
	assert.Equal(t, 2, doc.Failures)
	require.Len(t, doc.Cases, 3)
	assert.Equal(t, "auth.p99<500ms", doc.Cases[0].Name, "the expression, escaped in the XML")
	assert.Equal(t, "simulator.thresholds", doc.Cases[0].ClassName)
	assert.Equal(t, "0", doc.Cases[0].Time)
	assert.Nil(t, doc.Cases[0].Failure)
	require.NotNil(t, doc.Cases[1].Failure)
	assert.Equal(t, "threshold", doc.Cases[1].Failure.Type)
	assert.Equal(t, "observed 0.02, limit < 0.01", doc.Cases[1].Failure.Message)
	assert.Equal(t, "no data: no log request finished", doc.Cases[2].Failure.Message)

	// The schema rejects what CI systems would: a test case without its
	// classname, and counts that are not numbers.
	for name, doc := range map[string]string{
		"no classname": `<testsuite name="s" tests="1" failures="0" errors="0" time="0"><testcase name="x" time="0"/></testsuite>`,
		"bad count":    `<testsuite name="s" tests="one" failures="0" errors="0" time="0"/>`,
		"failure without type": `<testsuite name="s" tests="1" failures="1" errors="0" time="0">` +
			`<testcase name="x" classname="c" time="0"><failure message="m"/></testcase></testsuite>`,
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".xml")
		require.NoError(t, os.WriteFile(p, []byte(doc), 0o644))
		ok, out := xmllint(t, p)
		assert.False(t, ok, "%s must not validate: %s", name, out)
	}
}

// seriesFleet feeds two sampling steps of known exchanges to an offline
// fleet with device states and bytes counted.
func seriesFleet(t *testing.T) (*Fleet, *fakeClock) {
	t.Helper()
	clock := &fakeClock{}
	f := offlineFleet(t, 3, clock)
	f.col.gauges = func() seriesGauges {
		g := f.seriesGauges()
		g.conns, g.waiting = 2, 1 // the offline fleet opens none
		return g
	}
	d := f.devices
	clock.set(time.Second)
	d[0].observe(ev(client.OpAuth, 200, nil, 10*time.Millisecond))
	d[1].observe(ev(client.OpAuth, 401, nil, 20*time.Millisecond))
	d[2].observe(ev(client.OpAuth, 0, errTimeout, 30*time.Millisecond))
	f.col.addBytes(1000, 300)
	f.col.sample()
	clock.set(2 * time.Second)
	for i := 1; i <= 100; i++ {
		d[0].observe(ev(client.OpNext, 204, nil, time.Duration(i)*time.Millisecond))
	}
	d[0].observe(ev(client.OpNext, 503, nil, time.Millisecond))
	f.col.addBytes(50, 0)
	f.Mark("deployment", "10 devices")
	f.col.sample()
	return f, clock
}

func TestSeriesFromKnownEvents(t *testing.T) {
	f, clock := seriesFleet(t)
	r := f.report(clock.now())
	s := r.Series
	require.NotNil(t, s)
	assert.Equal(t, 1.0, s.StepS)
	require.Len(t, s.Points, 2)

	p0 := s.Points[0]
	assert.Equal(t, 1, p0.Accepted)
	assert.Equal(t, 1, p0.Pending, "device 1 got a 401")
	assert.Equal(t, 1, p0.Failing, "device 2 timed out; a 401 leaves device 1 pending, not failing")
	assert.Equal(t, 2, p0.Conns)
	assert.Equal(t, 1, p0.Waiting)
	assert.Equal(t, uint64(1000), p0.BytesIn)
	assert.Equal(t, uint64(300), p0.BytesOut)
	require.Contains(t, p0.Ops, client.OpAuth)
	assert.NotContains(t, p0.Ops, client.OpNext, "no point entry for an operation without requests in the step")
	auth := p0.Ops[client.OpAuth]
	assert.Equal(t, uint64(3), auth.Count)
	assert.Equal(t, uint64(2), auth.Errors)
	assert.Equal(t, map[string]uint64{"http_401": 1, KindTimeout: 1}, auth.ErrorsByKind)
	assert.InEpsilon(t, 20.0, auth.P50Ms, HistogramRelativeError)
	assert.Equal(t, 30.0, auth.P99Ms, "the largest is exact")

	p1 := s.Points[1]
	assert.Equal(t, uint64(50), p1.BytesIn)
	assert.Zero(t, p1.BytesOut)
	next := p1.Ops[client.OpNext]
	require.NotNil(t, next)
	assert.Equal(t, uint64(101), next.Count)
	assert.Equal(t, map[string]uint64{"http_503": 1}, next.ErrorsByKind)
	assert.InEpsilon(t, 95.0, next.P95Ms, HistogramRelativeError)
	assert.NotContains(t, p1.Ops, client.OpAuth)

	assert.Equal(t, uint64(1050), r.BytesIn)
	assert.Equal(t, uint64(300), r.BytesOut)
	require.Len(t, r.Markers, 1)
	assert.Equal(t, Marker{AtS: 2, Kind: "deployment", Detail: "10 devices"}, r.Markers[0])

	// The op table has the new figures.
	o := r.Operations[client.OpNext]
	assert.Equal(t, 1.0, o.MinMs)
	assert.InEpsilon(t, 95.0, o.P95Ms, HistogramRelativeError)
	assert.Equal(t, 101.0/r.DurationS, o.RPS)

	// RSS is read from /proc on Linux.
	if runtime.GOOS == "linux" {
		assert.Positive(t, r.Memory.RSSBytes)
		assert.GreaterOrEqual(t, r.Memory.PeakRSSBytes, r.Memory.RSSBytes)
		assert.InDelta(t, float64(r.Memory.RSSBytes)/3/1024, r.Memory.RSSPerDeviceKiB, 0.1)
	}

	// The series survives the JSON round trip, histograms included.
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, r.SaveJSON(path))
	back, err := ReadReport(path)
	require.NoError(t, err)
	assert.Equal(t, r.Series, back.Series)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, want := range []string{`"series": {`, `"p95_ms"`, `"bytes_in": 1050`, `"rss_bytes"`, `"peak_rss_bytes"`, `"rss_per_device_kib"`, `"min_ms"`, `"rps"`} {
		assert.Contains(t, string(raw), want)
	}
	// The third "count": 101 is the series point's (after the operation's
	// and its histogram's).
	parts := strings.SplitN(string(raw), `"count": 101,`, 4)
	require.Len(t, parts, 4)
	bad := parts[0] + `"count": 101,` + parts[1] + `"count": 101,` + parts[2] + `"count": 102,` + parts[3]
	require.NoError(t, os.WriteFile(path, []byte(bad), 0o644))
	_, err = ReadReport(path)
	assert.ErrorContains(t, err, "series point 1: operation next: count 102 but its histogram holds 101")
}

func TestSeriesStaysBoundedAndSmall(t *testing.T) {
	buf := seriesBuf{base: time.Second, factor: 1}
	var total uint64
	var h Histogram
	for i := range 40 { // a spread of latencies: 40 non-empty buckets
		h.Record(time.Duration(1<<(i/4)) * time.Millisecond / 8)
	}
	for i := range 5000 {
		p := SeriesPoint{Accepted: i, Ops: map[string]*OpPoint{}}
		for _, op := range Operations {
			p.Ops[op] = &OpPoint{Count: h.Count(), Histogram: sparseOf(&h)}
			total += h.Count()
		}
		buf.add(p)
	}
	s := buf.snapshot()
	assert.LessOrEqual(t, len(s.Points), maxTimelinePoints)
	var sum uint64
	size := 0
	for _, p := range s.Points {
		for _, o := range p.Ops {
			sum += o.Count
			assert.Equal(t, o.Count, o.Histogram.Count())
			size += len(o.Histogram.idx)*2 + len(o.Histogram.counts)*8 + 100
		}
	}
	assert.Equal(t, total, sum, "downsampling keeps every request")
	assert.Equal(t, 4999, s.Points[len(s.Points)-1].Accepted)
	assert.Less(t, size, 4<<20, "6 operations × 1024 points of sparse histograms stay a few MB")
}

func TestMergeSeriesMarkersAndBytes(t *testing.T) {
	fa, ca := seriesFleet(t)
	a := fa.report(ca.now())
	a.Shards[0].Shard = "0/2"
	fb, cb := seriesFleet(t)
	cb.set(3 * time.Second)
	fb.devices[1].observe(ev(client.OpAuth, 200, nil, 40*time.Millisecond))
	fb.Mark("reconnect-storm", "")
	fb.col.sample()
	b := fb.report(cb.now())
	b.Shards[0].Shard = "1/2"

	m, err := Merge(a, b)
	require.NoError(t, err)
	require.NotNil(t, m.Series)
	require.Len(t, m.Series.Points, 3, "aligned on each shard's start; b ran a step longer")
	assert.Equal(t, uint64(6), m.Series.Points[0].Ops[client.OpAuth].Count)
	var want Histogram
	want.Merge(a.Series.Points[1].Ops[client.OpNext].Histogram.Histogram())
	want.Merge(b.Series.Points[1].Ops[client.OpNext].Histogram.Histogram())
	assert.Equal(t, &want, m.Series.Points[1].Ops[client.OpNext].Histogram.Histogram(), "per-step histograms merge exactly")
	assert.Equal(t, uint64(202), m.Series.Points[1].Ops[client.OpNext].Count)
	assert.Equal(t, 1+2, m.Series.Points[2].Accepted, "a's last state carries on; b accepted one more")
	assert.Equal(t, uint64(1), m.Series.Points[2].Ops[client.OpAuth].Count)
	assert.Equal(t, uint64(2100), m.BytesIn)
	assert.Equal(t, uint64(600), m.BytesOut)
	assert.Equal(t, uint64(2000), m.Series.Points[0].BytesIn)
	assert.Equal(t, 4, m.Series.Points[2].Conns, "connections add up across shards")
	assert.Equal(t, []Marker{{AtS: 2, Kind: "deployment", Detail: "10 devices"}, {AtS: 2, Kind: "deployment", Detail: "10 devices"},
		{AtS: 3, Kind: "reconnect-storm"}}, m.Markers)
	assert.Equal(t, a.Memory.RSSBytes+b.Memory.RSSBytes, m.Memory.RSSBytes)

	// The merged report reads back the same; a series whose step does
	// not divide the other's is refused.
	var buf bytes.Buffer
	require.NoError(t, m.WriteJSON(&buf))
	var back Report
	require.NoError(t, json.Unmarshal(buf.Bytes(), &back))
	assert.Equal(t, m.Series.Points[1].Ops[client.OpNext].Count, back.Series.Points[1].Ops[client.OpNext].Count)
	b.Series.StepS = 1.5
	_, err = Merge(a, b)
	assert.ErrorIs(t, err, ErrIncompatible)
}

func TestHTMLReportV2(t *testing.T) {
	f, clock := seriesFleet(t)
	r := f.report(clock.now())
	r.Run = NewRunInfo("run", "v9.9", r.Started)
	r.Run.AddFlag("count", "3")
	r.Run.AddFlag("tenant-token", "very-secret-token")
	r.EvaluateThresholds(mustParse(t, "auth.p99<500ms", "accepted.all<120s"))
	var page bytes.Buffer
	require.NoError(t, r.WriteHTML(&page))
	html := page.String()
	for _, want := range []string{
		`<meta name="viewport" content="width=device-width, initial-scale=1">`,
		`@media (max-width:700px)`,
		`class="banner fail" id="thresholds">✗ THRESHOLDS FAILED: 1 of 2`,
		"<li>✗ FAIL  accepted.all&lt;120s: no data: never, 1 of 3 devices accepted (limit 120s)</li>",
		`<th>error rate</th><th>min ms</th><th>mean ms</th><th>p50 ms</th><th>p90 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>req/s</th>`,
		"<tr><td>auth</td><td>3</td><td>2</td><td>66.7 %</td><td>10.0</td>",
		`<g class="marker"><title>deployment: 10 devices at 2.0 s</title>`,
		"<h3>Requests and errors per second, by kind</h3>", "http_401/s", "timeout/s",
		"<h3>Throughput per operation</h3>", "<h3>Device connections</h3>", "<h3>auth latency</h3>", "<h3>next latency</h3>", "<h3>Bytes per second</h3>",
		"<tr><td>auth</td><td style=\"text-align:left\">timeout</td><td>1</td></tr>",
		"<tr><td>--count</td><td>3</td></tr>", "<tr><td>--tenant-token</td><td>(set)</td></tr>",
		"simulator run, version v9.9, " + runtime.Version(),
		`width="100%"`,
	} {
		assert.Contains(t, html, want)
	}
	assert.NotContains(t, html, "very-secret-token", "secrets are redacted")
	assert.NotContains(t, html, "<tr><td>log</td>", "no row for an operation that never ran")
	assert.NotContains(t, html, "<h3>log latency</h3>")
	assert.Equal(t, strings.Count(html, "<svg "), strings.Count(html, `<svg xmlns="http://www.w3.org/2000/svg" width="100%"`),
		"every chart takes its container's width")
	markers := strings.Count(html, `<g class="marker">`)
	assert.Equal(t, 5+2, markers, "the marker is on every time chart: devices, rates, throughput, connections, bytes and both latency charts")

	r.EvaluateThresholds(mustParse(t, "auth.p99<500ms"))
	page.Reset()
	require.NoError(t, r.WriteHTML(&page))
	assert.Contains(t, page.String(), `class="banner pass" id="thresholds">✓ THRESHOLDS PASSED: all 1`)
	rec := 4.25
	r.Storm = &StormReport{AtS: 30, Devices: 3, ConnectionsClosed: 3, Recovered: 3, RecoveryS: &rec}
	r.Thresholds = nil
	page.Reset()
	require.NoError(t, r.WriteHTML(&page))
	assert.NotContains(t, page.String(), `id="thresholds"`, "no banner without thresholds")
	assert.Contains(t, page.String(), "<tr><td>Reconnect storm</td><td>at 30.0 s, 3 accepted devices, 3 connections cut: all polling again after 4.2 s;")
}

func TestRedactFlag(t *testing.T) {
	for name, want := range map[string]string{"tenant-token": "(set)", "password": "(set)", "client-secret": "(set)",
		"PASSWORD-FILE": "(set)", "count": "v"} {
		assert.Equal(t, want, RedactFlag(name, "v"), name)
	}
	assert.Empty(t, RedactFlag("tenant-token", ""), "an empty secret shows as empty")
}

// New wires the series to the fleet's device states and connection
// counts, so a run's series has its pending, failing and connection
// figures.
func TestFleetFeedsSeriesGauges(t *testing.T) {
	clock := &fakeClock{}
	f := offlineFleet(t, 2, clock)
	require.NotNil(t, f.col.gauges, "fleet.New must set f.col.gauges = f.seriesGauges")
	f.devices[1].observe(ev(client.OpAuth, 401, nil, time.Millisecond))
	f.col.sample()
	s := f.report(clock.now()).Series
	require.Len(t, s.Points, 1)
	assert.Equal(t, 1, s.Points[0].Pending)
}
