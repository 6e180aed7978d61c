package fleet

import (
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Chart geometry in SVG user units.
const (
	chartW, chartH               = 720.0, 240.0
	marginL, marginR             = 64.0, 16.0
	marginT, marginB             = 28.0, 36.0
	histW, histH                 = 352.0, 180.0
	colorAccepted, colorRequests = "#2b6cb0", "#2f855a"
	colorErrors                  = "#c53030"
	colorPending                 = "#d69e2e"
	colorMarker                  = "#805ad5"
)

// palette colours series without a colour of their own.
var palette = []string{"#2b6cb0", "#2f855a", "#d69e2e", "#c53030", "#805ad5", "#dd6b20", "#319795", "#b83280", "#4a5568"}

// WriteHTML writes the report as one self-contained HTML page that uses
// the window's width: the threshold verdict, the facts, the per-operation
// table, inline SVG charts over time (devices, request and error rates,
// throughput and latency per operation, bytes) with the run's markers,
// latency histograms on one common scale, deployments, failure reasons
// and run parameters. It needs no network and no script to view.
func (r *Report) WriteHTML(w io.Writer) error {
	data := htmlData{R: r, Failed: r.FailedThresholds()}
	for _, t := range r.Thresholds {
		data.Thresholds = append(data.Thresholds, htmlThreshold{Line: t.Line(), Pass: t.Pass})
	}
	data.Charts = r.timeCharts()
	var ran []*OpReport
	for _, name := range r.OperationNames() {
		o := r.Operations[name]
		if o.Count == 0 {
			continue // no row for an operation that never ran
		}
		ran = append(ran, o)
		data.Ops = append(data.Ops, htmlOp{Name: name, O: o, Kinds: kinds(o.ErrorsByKind), Rate: percent(float64(o.Errors) / float64(o.Count))})
		for _, k := range slices.Sorted(maps.Keys(o.ErrorsByKind)) {
			data.Failures = append(data.Failures, htmlFailure{Op: name, Kind: k, Count: o.ErrorsByKind[k]})
		}
	}
	scale := commonScale(ran)
	for i := range data.Ops {
		data.Ops[i].Chart = histChart(data.Ops[i].Name, data.Ops[i].O, scale)
	}
	if r.TimeToAllAcceptedS != nil {
		data.TimeToAll = fmt.Sprintf("%.1f s", *r.TimeToAllAcceptedS)
	} else {
		data.TimeToAll = fmt.Sprintf("not reached (%d of %d accepted)", r.Accepted, r.Devices)
	}
	for _, s := range r.Shards {
		data.Shards = append(data.Shards, s.Shard)
	}
	data.DeployWhy = r.Deployments.failureReasons()
	if err := pageTemplate.Execute(w, data); err != nil {
		return fmt.Errorf("render HTML report: %w", err)
	}
	return nil
}

// timeCharts draws the charts over time, markers on each.
func (r *Report) timeCharts() []htmlChart {
	var charts []htmlChart
	add := func(title, yLabel string, yMax, step float64, ss []series) {
		charts = append(charts, htmlChart{Title: title, SVG: lineChart(title, step, yMax, yLabel, ss, r.Markers)})
	}
	tl := r.Timeline
	s := r.Series
	if s == nil || len(s.Points) == 0 {
		accepted := make([]float64, len(tl.Accepted))
		rps := make([]float64, len(tl.Requests))
		eps := make([]float64, len(tl.Errors))
		for i := range tl.Accepted {
			accepted[i] = float64(tl.Accepted[i])
			if tl.StepS > 0 {
				rps[i] = float64(tl.Requests[i]) / tl.StepS
				eps[i] = float64(tl.Errors[i]) / tl.StepS
			}
		}
		add("Accepted devices", "devices", float64(r.Devices), tl.StepS, []series{{"accepted", colorAccepted, accepted}})
		add("Requests and errors per second", "per second", 0, tl.StepS, []series{{"requests/s", colorRequests, rps}, {"errors/s", colorErrors, eps}})
		return charts
	}
	n, step := len(s.Points), s.StepS
	col := func(f func(p SeriesPoint) float64) []float64 {
		out := make([]float64, n)
		for i, p := range s.Points {
			out[i] = f(p)
		}
		return out
	}
	perSec := func(v uint64) float64 {
		if step <= 0 {
			return 0
		}
		return float64(v) / step
	}
	add("Devices", "devices", float64(r.Devices), step, []series{
		{"accepted", colorAccepted, col(func(p SeriesPoint) float64 { return float64(p.Accepted) })},
		{"pending", colorPending, col(func(p SeriesPoint) float64 { return float64(p.Pending) })},
		{"failing", colorErrors, col(func(p SeriesPoint) float64 { return float64(p.Failing) })},
	})
	rates := []series{{"requests/s", colorRequests, col(func(p SeriesPoint) float64 {
		var t uint64
		for _, o := range p.Ops {
			t += o.Count
		}
		return perSec(t)
	})}}
	for i, k := range s.errorKinds() {
		rates = append(rates, series{k + "/s", palette[(i+3)%len(palette)], col(func(p SeriesPoint) float64 {
			var t uint64
			for _, o := range p.Ops {
				t += o.ErrorsByKind[k]
			}
			return perSec(t)
		})})
	}
	add("Requests and errors per second, by kind", "per second", 0, step, rates)
	var through []series
	var ranOps []string
	for _, name := range r.OperationNames() {
		if o := r.Operations[name]; o.Count > 0 {
			ranOps = append(ranOps, name)
		}
	}
	for i, name := range ranOps {
		through = append(through, series{name, palette[i%len(palette)], col(func(p SeriesPoint) float64 {
			if o := p.Ops[name]; o != nil {
				return perSec(o.Count)
			}
			return 0
		})})
	}
	if len(through) > 0 {
		add("Throughput per operation", "requests per second", 0, step, through)
	}
	var conns bool
	for _, p := range s.Points {
		conns = conns || p.Conns > 0 || p.Waiting > 0
	}
	if conns {
		add("Device connections", "connections", 0, step, []series{
			{"open", colorAccepted, col(func(p SeriesPoint) float64 { return float64(p.Conns) })},
			{"devices waiting for one", colorPending, col(func(p SeriesPoint) float64 { return float64(p.Waiting) })},
		})
	}
	if r.BytesIn > 0 || r.BytesOut > 0 {
		add("Bytes per second", "bytes per second", 0, step, []series{
			{"in", colorAccepted, col(func(p SeriesPoint) float64 { return perSec(p.BytesIn) })},
			{"out", colorRequests, col(func(p SeriesPoint) float64 { return perSec(p.BytesOut) })},
		})
	}
	for _, name := range ranOps {
		q := func(f func(o *OpPoint) float64) []float64 {
			return col(func(p SeriesPoint) float64 {
				if o := p.Ops[name]; o != nil {
					return f(o)
				}
				return math.NaN() // no request in the step: a gap
			})
		}
		add(name+" latency", "milliseconds", 0, step, []series{
			{"p50", colorAccepted, q(func(o *OpPoint) float64 { return o.P50Ms })},
			{"p95", colorPending, q(func(o *OpPoint) float64 { return o.P95Ms })},
			{"p99", colorErrors, q(func(o *OpPoint) float64 { return o.P99Ms })},
		})
	}
	return charts
}

type htmlData struct {
	R          *Report
	TimeToAll  string
	Shards     []string
	Charts     []htmlChart
	Ops        []htmlOp
	Failures   []htmlFailure
	Thresholds []htmlThreshold
	Failed     int
	DeployWhy  string
}

type htmlChart struct {
	Title string
	SVG   template.HTML
}

type htmlThreshold struct {
	Line string
	Pass bool
}

type htmlFailure struct {
	Op, Kind string
	Count    uint64
}

type htmlOp struct {
	Name  string
	O     *OpReport
	Kinds string
	Rate  string
	Chart template.HTML
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"mib":   func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) },
	"f1":    func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"f2":    func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"time":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"join":  func(s []string) string { return strings.Join(s, ", ") },
	"secs":  seconds,
	"deref": func(p *float64) float64 { return *p },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fleet simulator report: {{.R.Devices}} devices</title>
<style>
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:16px 24px;max-width:2400px;color:#1a202c}
h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:28px 0 8px}h3{font-size:14px;margin:0 0 4px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}.facts td{text-align:left;white-space:normal}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px 24px}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:8px 16px}
svg{display:block;width:100%;height:auto;background:#fff}
.banner{padding:10px 14px;border-radius:6px;margin:8px 0 16px;font-weight:600}
.banner ul{margin:6px 0 0;padding-left:20px;font-weight:400}
.pass{background:#c6f6d5;color:#22543d}.fail{background:#fed7d7;color:#742a2a}
.muted{color:#718096}
@media (max-width:700px){body{padding:8px 10px}.charts,.hists{grid-template-columns:1fr}}
</style></head><body>
<h1>Fleet simulator report</h1>
{{if .Thresholds}}<div class="banner {{if .Failed}}fail{{else}}pass{{end}}" id="thresholds">{{if .Failed}}✗ THRESHOLDS FAILED: {{.Failed}} of {{len .Thresholds}}{{else}}✓ THRESHOLDS PASSED: all {{len .Thresholds}}{{end}}
<ul>{{range .Thresholds}}<li>{{.Line}}</li>{{end}}</ul></div>
{{end}}<p class="muted">{{time .R.Started}} – {{time .R.Ended}} ({{f1 .R.DurationS}} s) against {{.R.Server}}; shards {{join .Shards}}</p>
<div class="scroll"><table class="facts">
<tr><td>Devices</td><td>{{.R.Devices}} ({{if .R.MTLS}}mTLS{{else}}no client certificates{{end}}, {{.R.KeyType}} keys)</td></tr>
<tr><td>Accepted</td><td>{{.R.Accepted}} of {{.R.Devices}}; pending {{.R.Pending}}, failing {{.R.Failing}} at the end</td></tr>
<tr><td>Time until every device was accepted</td><td>{{.TimeToAll}}</td></tr>
<tr><td>Requests</td><td>{{.R.RequestsTotal}}, errors {{.R.ErrorsTotal}}, canceled at stop {{.R.Canceled}}</td></tr>
<tr><td>TLS handshakes</td><td>{{.R.Handshakes.Full}} full, {{.R.Handshakes.Resumed}} resumed</td></tr>
{{if or .R.BytesIn .R.BytesOut}}<tr><td>Bytes</td><td>{{.R.BytesIn}} in, {{.R.BytesOut}} out</td></tr>
{{end}}{{with .R.Storm}}<tr><td>Reconnect storm</td><td>at {{f1 .AtS}} s, {{.Devices}} accepted devices, {{.ConnectionsClosed}} connections cut: {{if .RecoveryS}}all polling again after {{f1 (deref .RecoveryS)}} s{{else}}{{.Recovered}} recovered, not all{{end}}; {{.ConnectionErrorsAfter}} failed exchanges meanwhile</td></tr>
{{end}}<tr><td>Memory</td><td>heap peak {{mib .R.Memory.PeakBytes}}, {{f1 .R.Memory.PerDeviceKiB}} KiB per device{{if .R.Memory.RSSBytes}}; RSS {{mib .R.Memory.RSSBytes}} (peak {{mib .R.Memory.PeakRSSBytes}}), {{f1 .R.Memory.RSSPerDeviceKiB}} KiB per device{{end}}</td></tr>
</table></div>
<h2>Operations</h2>
{{if .Ops}}<div class="scroll"><table id="operations">
<tr><th>operation</th><th>count</th><th>errors</th><th>error rate</th><th>min ms</th><th>mean ms</th><th>p50 ms</th><th>p90 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>req/s</th></tr>
{{range .Ops}}<tr><td>{{.Name}}</td><td>{{.O.Count}}</td><td>{{.O.Errors}}</td><td>{{.Rate}}</td><td>{{f1 .O.MinMs}}</td><td>{{f1 .O.MeanMs}}</td><td>{{f1 .O.P50Ms}}</td><td>{{f1 .O.P90Ms}}</td><td>{{f1 .O.P95Ms}}</td><td>{{f1 .O.P99Ms}}</td><td>{{f1 .O.MaxMs}}</td><td>{{f2 .O.RPS}}</td></tr>
{{end}}</table></div>{{else}}<p class="muted">no requests</p>{{end}}
<h2>Over time</h2>
<div class="charts">{{range .Charts}}<div><h3>{{.Title}}</h3>{{.SVG}}</div>{{end}}</div>
{{if .R.Markers}}<h2>Markers</h2>
<div class="scroll"><table id="markers"><tr><th>at</th><th>event</th><th>detail</th></tr>
{{range .R.Markers}}<tr><td>{{f1 .AtS}} s</td><td style="text-align:left">{{.Kind}}</td><td style="text-align:left">{{.Detail}}</td></tr>
{{end}}</table></div>
{{end}}<h2>Latency histograms</h2>
<p class="muted">One common scale: time on a logarithmic axis, height the share of the operation's requests.</p>
<div class="hists">{{range .Ops}}{{.Chart}}{{else}}<p class="muted">no requests</p>{{end}}</div>
<h2>Deployments</h2>
{{with .R.Deployments}}<div class="scroll"><table class="facts">
<tr><td>Outcomes</td><td>{{.Started}} started: {{.Succeeded}} succeeded, {{.Failed}} failed, {{.Aborted}} aborted, {{.Incomplete}} incomplete; {{.DownloadedBytes}} bytes downloaded</td></tr>
{{if .DownloadSeconds.Count}}<tr><td>Deployment downloads</td><td>{{template "durations" .DownloadSeconds}}; {{.ArtifactBytesPerDevice}} artifact bytes per device</td></tr>
{{end}}{{if .InstallSeconds.Count}}<tr><td>Deployment installs</td><td>{{template "durations" .InstallSeconds}}</td></tr>
{{end}}{{if $.DeployWhy}}<tr><td>Failure reasons</td><td>{{$.DeployWhy}}</td></tr>
{{end}}</table></div>{{end}}
<h2>Failure reasons</h2>
{{if .Failures}}<div class="scroll"><table id="failures"><tr><th>operation</th><th>kind</th><th>count</th></tr>
{{range .Failures}}<tr><td>{{.Op}}</td><td style="text-align:left">{{.Kind}}</td><td>{{.Count}}</td></tr>
{{end}}</table></div>{{else}}<p class="muted">no failed request</p>{{end}}
{{with .R.Run}}<h2>Run parameters</h2>
<div class="scroll"><table class="facts" id="parameters">
<tr><td>Command</td><td>simulator {{.Command}}, version {{.Version}}, {{.GoVersion}}</td></tr>
<tr><td>Host</td><td>{{.Cores}} cores{{if .MemTotalBytes}}, {{mib .MemTotalBytes}} memory{{end}}</td></tr>
<tr><td>Started</td><td>{{time .Started}}</td></tr>
{{range .Flags}}<tr><td>--{{.Name}}</td><td>{{.Value}}</td></tr>
{{end}}</table></div>
{{end}}</body></html>
{{define "durations"}}{{.Count}} devices: p50 {{secs .P50S}}, p90 {{secs .P90S}}, p99 {{secs .P99S}}, max {{secs .MaxS}}{{end}}
`))

type series struct {
	name, color string
	values      []float64
}

// lineChart draws series over time (step seconds per point) as an SVG
// that takes its container's width, with the markers as labelled vertical
// lines; yMax 0 means the largest value; a NaN value leaves a gap.
func lineChart(title string, step, yMax float64, yLabel string, ss []series, markers []Marker) template.HTML {
	n := 0
	for _, s := range ss {
		n = max(n, len(s.values))
		for _, v := range s.values {
			if !math.IsNaN(v) {
				yMax = max(yMax, v)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="100%%" viewBox="0 0 %g %g" preserveAspectRatio="xMidYMid meet" role="img"><title>%s</title>`,
		chartW, chartH, esc(title))
	if n == 0 {
		fmt.Fprintf(&b, `<text x="%g" y="%g" fill="#718096">no samples</text></svg>`, marginL, chartH/2)
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
	}
	xMax := float64(n) * step
	yTicks := niceTicks(yMax)
	yTop := yTicks[len(yTicks)-1]
	pw, ph := chartW-marginL-marginR, chartH-marginT-marginB
	x := func(t float64) float64 { return marginL + pw*t/xMax }
	y := func(v float64) float64 { return marginT + ph*(1-v/yTop) }
	for _, t := range yTicks {
		fmt.Fprintf(&b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="#e2e8f0"/>`, marginL, chartW-marginR, y(t), y(t))
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" font-size="11" text-anchor="end" fill="#4a5568">%s</text>`, marginL-6, y(t)+4, num(t))
	}
	for _, t := range niceTicks(xMax) {
		if t > xMax {
			break
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="11" text-anchor="middle" fill="#4a5568">%ss</text>`, x(t), chartH-marginB+16, num(t))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="11" fill="#4a5568">%s</text>`, marginL, marginT-10, esc(yLabel))
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="11" text-anchor="end" fill="#4a5568">time since start</text>`, chartW-marginR, chartH-4)
	for _, m := range markers {
		if m.AtS > xMax {
			continue
		}
		mx := x(m.AtS)
		label := m.Kind
		if m.Detail != "" {
			label += ": " + m.Detail
		}
		fmt.Fprintf(&b, `<g class="marker"><title>%s at %.1f s</title><line x1="%.1f" x2="%.1f" y1="%g" y2="%g" stroke="%s" stroke-dasharray="4 3"/>`+
			`<text x="%.1f" y="%g" font-size="10" fill="%s">%s</text></g>`,
			esc(label), m.AtS, mx, mx, marginT, chartH-marginB, colorMarker, mx+3, marginT+10, colorMarker, esc(m.Kind))
	}
	legendW := min(110.0, (chartW-marginL-marginR)/float64(max(len(ss), 1)))
	for i, s := range ss {
		var pts strings.Builder
		for j, v := range s.values {
			if math.IsNaN(v) {
				writeLine(&b, s.color, &pts)
				continue
			}
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(float64(j+1)*step), y(v))
		}
		writeLine(&b, s.color, &pts)
		lx := chartW - marginR - float64(len(ss)-i)*legendW
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g" font-size="11">%s</text>`,
			lx, marginT-20, s.color, lx+14, marginT-11, esc(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
}

// writeLine writes the points gathered in pts as one polyline and empties
// pts.
func writeLine(b *strings.Builder, color string, pts *strings.Builder) {
	if pts.Len() > 0 {
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, color, strings.TrimSpace(pts.String()))
		pts.Reset()
	}
}

// histScale is the common scale of the latency histograms: decades lo..hi
// of milliseconds and the largest share of an operation's requests in one
// bucket.
type histScale struct {
	lo, hi float64
	peak   float64
}

// commonScale returns the scale that holds every operation's histogram.
func commonScale(ops []*OpReport) histScale {
	s := histScale{lo: math.Inf(1), hi: math.Inf(-1)}
	for _, o := range ops {
		buckets := o.Histogram.Buckets(4)
		if len(buckets) == 0 {
			continue
		}
		s.lo = min(s.lo, math.Floor(math.Log10(max(buckets[0].Upper.Seconds()*1e3, 1e-3))))
		s.hi = max(s.hi, math.Ceil(math.Log10(buckets[len(buckets)-1].Upper.Seconds()*1e3)))
		for _, bk := range buckets {
			s.peak = max(s.peak, float64(bk.Count)/float64(o.Count))
		}
	}
	if math.IsInf(s.lo, 0) {
		return histScale{lo: 0, hi: 1, peak: 1}
	}
	if s.hi <= s.lo {
		s.hi = s.lo + 1
	}
	return s
}

// histChart draws an operation's latency histogram on the common scale:
// a logarithmic time axis, four buckets per doubling, bar heights the
// share of the operation's requests.
func histChart(name string, o *OpReport, sc histScale) template.HTML {
	var b strings.Builder
	title := fmt.Sprintf("%s latency (%d requests)", name, o.Count)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="100%%" viewBox="0 0 %g %g" role="img"><title>%s</title>`,
		histW, histH, esc(title))
	fmt.Fprintf(&b, `<text x="8" y="16" font-size="12" font-weight="600">%s</text>`, esc(title))
	buckets := o.Histogram.Buckets(4)
	if len(buckets) == 0 {
		fmt.Fprintf(&b, `<text x="8" y="%g" fill="#718096" font-size="12">no requests</text></svg>`, histH/2)
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
	}
	lo, hi := sc.lo, sc.hi
	const l, r, t, bt = 40.0, 10.0, 26.0, 30.0
	pw, ph := histW-l-r, histH-t-bt
	x := func(msv float64) float64 {
		return l + pw*(math.Log10(max(msv, math.Pow(10, lo)))-lo)/(hi-lo)
	}
	for dec := lo; dec <= hi; dec++ {
		anchor := "middle"
		if dec == hi {
			anchor = "end"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%g" y2="%g" stroke="#e2e8f0"/>`, x(math.Pow(10, dec)), x(math.Pow(10, dec)), t, t+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="10" text-anchor="%s" fill="#4a5568">%sms</text>`,
			x(math.Pow(10, dec)), histH-bt+14, anchor, num(math.Pow(10, dec)))
	}
	for _, bk := range buckets {
		x0, x1 := x(bk.Lower.Seconds()*1e3), x(bk.Upper.Seconds()*1e3)
		h := ph * float64(bk.Count) / float64(o.Count) / sc.peak
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s–%s: %d</title></rect>`,
			x0, t+ph-h, max(x1-x0-0.5, 0.5), h, colorAccepted, bk.Lower, bk.Upper, bk.Count)
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="10" text-anchor="end" fill="#4a5568">%s%%</text>`, l-4, t+8, num(sc.peak*100))
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="10" text-anchor="end" fill="#4a5568">p50 %.1f · p99 %.1f ms</text>`,
		histW-r, 16.0, o.P50Ms, o.P99Ms)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
}

// niceTicks returns 0 and about five round tick values reaching at least v.
func niceTicks(v float64) []float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return []float64{0, 1}
	}
	raw := v / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	ticks := []float64{0}
	for t := step; ; t += step {
		ticks = append(ticks, t)
		if t >= v-1e-9 {
			return ticks
		}
	}
}

// num formats an axis value compactly.
func num(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", math.Round(v*1000)/1000)
}

// esc escapes text for SVG.
func esc(s string) string { return template.HTMLEscapeString(s) }
