package fleet

import (
	"fmt"
	"html/template"
	"io"
	"math"
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
)

// WriteHTML writes the report as one self-contained HTML page: the summary,
// the per-operation table and inline SVG plots (accepted devices over
// time, requests and errors per second over time, one latency histogram
// per operation). It needs no network and no script to view.
func (r *Report) WriteHTML(w io.Writer) error {
	tl := r.Timeline
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
	data := htmlData{R: r}
	data.AcceptedChart = lineChart("Accepted devices", tl.StepS, float64(r.Devices), "devices",
		[]series{{"accepted", colorAccepted, accepted}})
	data.RateChart = lineChart("Requests per second", tl.StepS, 0, "per second",
		[]series{{"requests/s", colorRequests, rps}, {"errors/s", colorErrors, eps}})
	for _, name := range r.OperationNames() {
		o := r.Operations[name]
		data.Ops = append(data.Ops, htmlOp{Name: name, O: o, Kinds: kinds(o.ErrorsByKind), Chart: histChart(name, o)})
	}
	if r.TimeToAllAcceptedS != nil {
		data.TimeToAll = fmt.Sprintf("%.1f s", *r.TimeToAllAcceptedS)
	} else {
		data.TimeToAll = fmt.Sprintf("not reached (%d of %d accepted)", r.Accepted, r.Devices)
	}
	for _, s := range r.Shards {
		data.Shards = append(data.Shards, s.Shard)
	}
	if err := pageTemplate.Execute(w, data); err != nil {
		return fmt.Errorf("render HTML report: %w", err)
	}
	return nil
}

type htmlData struct {
	R                        *Report
	TimeToAll                string
	Shards                   []string
	AcceptedChart, RateChart template.HTML
	Ops                      []htmlOp
}

type htmlOp struct {
	Name  string
	O     *OpReport
	Kinds string
	Chart template.HTML
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"mib":  func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) },
	"f1":   func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"time": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"join": func(s []string) string { return strings.Join(s, ", ") },
	"secs": seconds,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Fleet simulator report: {{.R.Devices}} devices</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:760px;color:#1a202c}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:right}
td:first-child,th:first-child{text-align:left}.facts td{text-align:left}
svg{display:block;margin:6px 0;background:#fff}.hists{display:flex;flex-wrap:wrap;gap:8px}
.muted{color:#718096}
</style></head><body>
<h1>Fleet simulator report</h1>
<p class="muted">{{time .R.Started}} – {{time .R.Ended}} ({{f1 .R.DurationS}} s) against {{.R.Server}}; shards {{join .Shards}}</p>
<table class="facts">
<tr><td>Devices</td><td>{{.R.Devices}} ({{if .R.MTLS}}mTLS{{else}}no client certificates{{end}}, {{.R.KeyType}} keys)</td></tr>
<tr><td>Accepted</td><td>{{.R.Accepted}} of {{.R.Devices}}; pending {{.R.Pending}}, failing {{.R.Failing}} at the end</td></tr>
<tr><td>Time until every device was accepted</td><td>{{.TimeToAll}}</td></tr>
<tr><td>Requests</td><td>{{.R.RequestsTotal}}, errors {{.R.ErrorsTotal}}, canceled at stop {{.R.Canceled}}</td></tr>
<tr><td>TLS handshakes</td><td>{{.R.Handshakes.Full}} full, {{.R.Handshakes.Resumed}} resumed</td></tr>
<tr><td>Memory</td><td>peak {{mib .R.Memory.PeakBytes}}, {{f1 .R.Memory.PerDeviceKiB}} KiB per device</td></tr>
<tr><td>Deployments</td><td>{{.R.Deployments.Started}} started: {{.R.Deployments.Succeeded}} succeeded, {{.R.Deployments.Failed}} failed, {{.R.Deployments.Aborted}} aborted, {{.R.Deployments.Incomplete}} incomplete; {{.R.Deployments.DownloadedBytes}} bytes downloaded</td></tr>
{{with .R.Deployments}}{{if .DownloadSeconds.Count}}<tr><td>Deployment downloads</td><td>{{template "durations" .DownloadSeconds}}; {{.ArtifactBytesPerDevice}} artifact bytes per device</td></tr>
{{end}}{{if .InstallSeconds.Count}}<tr><td>Deployment installs</td><td>{{template "durations" .InstallSeconds}}</td></tr>
{{end}}{{end}}</table>
<h2>Operations</h2>
<table>
<tr><th>operation</th><th>count</th><th>errors</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>errors by kind</th></tr>
{{range .Ops}}<tr><td>{{.Name}}</td><td>{{.O.Count}}</td><td>{{.O.Errors}}</td><td>{{f1 .O.P50Ms}}</td><td>{{f1 .O.P90Ms}}</td><td>{{f1 .O.P99Ms}}</td><td>{{f1 .O.MaxMs}}</td><td>{{.Kinds}}</td></tr>
{{end}}</table>
<h2>Accepted devices over time</h2>
{{.AcceptedChart}}
<h2>Requests per second over time</h2>
{{.RateChart}}
<h2>Latency histograms</h2>
<div class="hists">{{range .Ops}}{{.Chart}}{{end}}</div>
</body></html>
{{define "durations"}}{{.Count}} devices: p50 {{secs .P50S}}, p90 {{secs .P90S}}, p99 {{secs .P99S}}, max {{secs .MaxS}}{{end}}
`))

type series struct {
	name, color string
	values      []float64
}

// lineChart draws series over time (step seconds per point) as an SVG;
// yMax 0 means the largest value.
func lineChart(title string, step, yMax float64, yLabel string, ss []series) template.HTML {
	n := 0
	for _, s := range ss {
		n = max(n, len(s.values))
		for _, v := range s.values {
			yMax = max(yMax, v)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" role="img"><title>%s</title>`,
		chartW, chartH, chartW, chartH, esc(title))
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
	for i, s := range ss {
		var pts strings.Builder
		for j, v := range s.values {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(float64(j+1)*step), y(v))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.color, strings.TrimSpace(pts.String()))
		lx := chartW - marginR - float64(len(ss)-i)*110
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g" font-size="11">%s</text>`,
			lx, marginT-20, s.color, lx+14, marginT-11, esc(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
}

// histChart draws an operation's latency histogram with a logarithmic
// time axis, four buckets per doubling.
func histChart(name string, o *OpReport) template.HTML {
	var b strings.Builder
	title := fmt.Sprintf("%s latency (%d requests)", name, o.Count)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" role="img"><title>%s</title>`,
		histW, histH, histW, histH, esc(title))
	fmt.Fprintf(&b, `<text x="8" y="16" font-size="12" font-weight="600">%s</text>`, esc(title))
	buckets := o.Histogram.Buckets(4)
	if len(buckets) == 0 {
		fmt.Fprintf(&b, `<text x="8" y="%g" fill="#718096" font-size="12">no requests</text></svg>`, histH/2)
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped text
	}
	lo := math.Floor(math.Log10(max(buckets[0].Upper.Seconds()*1e3, 1e-3)))
	hi := math.Ceil(math.Log10(buckets[len(buckets)-1].Upper.Seconds() * 1e3))
	if hi <= lo {
		hi = lo + 1
	}
	var peak uint64
	for _, bk := range buckets {
		peak = max(peak, bk.Count)
	}
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
		h := ph * float64(bk.Count) / float64(peak)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s–%s: %d</title></rect>`,
			x0, t+ph-h, max(x1-x0-0.5, 0.5), h, colorAccepted, bk.Lower, bk.Upper, bk.Count)
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="10" text-anchor="end" fill="#4a5568">%d</text>`, l-4, t+8, peak)
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
