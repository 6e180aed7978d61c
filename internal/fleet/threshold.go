package fleet

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// ThresholdGrammar describes the --threshold expressions, for help texts
// and error messages.
const ThresholdGrammar = `METRIC OP VALUE, OP one of < <= > >= ==. METRIC is
  OPERATION.STAT   OPERATION auth, inventory, next, status, log or download; STAT min, mean,
                   p50, p90, p95, p99, max (milliseconds), count, errors, rate (errors/count)
                   or rps (count per second of the run)
  requests.count, requests.rps, errors.count, errors.rate (errors/requests),
  accepted.all (seconds until every device was accepted; fails when never),
  accepted.count, accepted.ratio (accepted/devices), memory.rss_per_device_kib,
  deployments.failed, deployments.succeeded, storm.recovery (seconds from the reconnect storm
  until every device it cut polled again; fails when never)
VALUE is a number, with ms, s or m on a time (compared in the stat's unit) or % on a rate or
ratio. Examples: 'auth.p99<500ms' 'errors.rate<1%' 'accepted.all<=2m'`

// Threshold is one parsed --threshold expression.
type Threshold struct {
	// Expr is the expression as given.
	Expr string
	// Metric is the metric name, e.g. "auth.p99".
	Metric string
	// Op is the comparison: <, <=, >, >= or ==.
	Op string
	// Limit is VALUE in the metric's own unit (ms for latencies, seconds
	// for accepted.all, a fraction for rates and ratios).
	Limit float64
}

// ThresholdResult is a threshold checked against a report.
type ThresholdResult struct {
	Expr   string  `json:"expr"`
	Metric string  `json:"metric"`
	Op     string  `json:"op"`
	Limit  float64 `json:"limit"`
	// Observed is the metric's value; null when the report has no data
	// for it.
	Observed *float64 `json:"observed"`
	Pass     bool     `json:"pass"`
	// Reason explains a failure without a value ("no data: ...").
	Reason string `json:"reason,omitempty"`
}

// metricUnit is the unit a metric is measured in.
type metricUnit int

const (
	unitCount    metricUnit = iota // a plain number
	unitMs                         // a time in milliseconds
	unitSeconds                    // a time in seconds
	unitFraction                   // a rate or ratio in [0, 1]
)

// opStats are the stats of OPERATION.STAT and their unit.
var opStatUnits = map[string]metricUnit{
	"min": unitMs, "mean": unitMs, "p50": unitMs, "p90": unitMs, "p95": unitMs, "p99": unitMs, "max": unitMs,
	"count": unitCount, "errors": unitCount, "rate": unitFraction, "rps": unitCount,
}

// fleetMetricUnits are the metrics that are not per operation.
var fleetMetricUnits = map[string]metricUnit{
	"requests.count": unitCount, "requests.rps": unitCount,
	"errors.count": unitCount, "errors.rate": unitFraction,
	"accepted.all": unitSeconds, "accepted.count": unitCount, "accepted.ratio": unitFraction,
	"memory.rss_per_device_kib": unitCount,
	"deployments.failed":        unitCount, "deployments.succeeded": unitCount,
	"storm.recovery": unitSeconds,
}

// unitOf returns the unit of metric, and false for an unknown metric.
func unitOf(metric string) (metricUnit, bool) {
	if u, ok := fleetMetricUnits[metric]; ok {
		return u, true
	}
	op, stat, ok := strings.Cut(metric, ".")
	if !ok || !slices.Contains(Operations, op) {
		return 0, false
	}
	u, ok := opStatUnits[stat]
	return u, ok
}

// ParseThreshold parses "METRIC OP VALUE" (see [ThresholdGrammar]);
// spaces around the parts are allowed. Its errors say what is wrong and
// how to write it; the caller names the flag and the expression.
func ParseThreshold(expr string) (Threshold, error) {
	t := Threshold{Expr: expr}
	i := strings.IndexAny(expr, "<>=")
	if i < 0 {
		return t, fmt.Errorf("no comparison: write METRIC OP VALUE with OP one of < <= > >= ==, e.g. 'auth.p99<500ms'")
	}
	t.Metric = strings.TrimSpace(expr[:i])
	rest := expr[i:]
	for _, op := range []string{"<=", ">=", "==", "<", ">"} {
		if strings.HasPrefix(rest, op) {
			t.Op, rest = op, rest[len(op):]
			break
		}
	}
	if t.Op == "" {
		return t, fmt.Errorf("%q is no comparison: use one of < <= > >= ==", rest[:1])
	}
	if t.Metric == "" {
		return t, fmt.Errorf("no metric before %s: e.g. 'auth.p99<500ms'", t.Op)
	}
	unit, ok := unitOf(t.Metric)
	if !ok {
		return t, fmt.Errorf("unknown metric %q: use OPERATION.STAT (e.g. auth.p99, next.rate) or one of %s",
			t.Metric, strings.Join(slices.Sorted(maps.Keys(fleetMetricUnits)), ", "))
	}
	v := strings.TrimSpace(rest)
	if v == "" {
		return t, fmt.Errorf("no value after %s: e.g. %s%s%s", t.Op, t.Metric, t.Op, example(unit))
	}
	num, suffix := v, ""
	for _, u := range []string{"ms", "s", "m", "%"} {
		if strings.HasSuffix(v, u) {
			num, suffix = strings.TrimSpace(strings.TrimSuffix(v, u)), u
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return t, fmt.Errorf("value %q is not a number (with an optional unit ms, s, m or %%): e.g. %s%s%s",
			v, t.Metric, t.Op, example(unit))
	}
	switch {
	case suffix == "":
		t.Limit = f
	case suffix == "%" && unit == unitFraction:
		t.Limit = f / 100
	case suffix != "%" && (unit == unitMs || unit == unitSeconds):
		scale := map[string]float64{"ms": 1, "s": 1e3, "m": 60e3}[suffix]
		if unit == unitSeconds {
			scale /= 1e3
		}
		t.Limit = f * scale
	default:
		return t, fmt.Errorf("unit %q does not fit %s: e.g. %s%s%s", suffix, t.Metric, t.Metric, t.Op, example(unit))
	}
	return t, nil
}

// example returns a sample VALUE for a unit.
func example(u metricUnit) string {
	switch u {
	case unitMs:
		return "500ms"
	case unitSeconds:
		return "120s"
	case unitFraction:
		return "0.01 (or 1%)"
	}
	return "100"
}

// EvaluateThresholds checks every threshold against r and stores the
// results in r.Thresholds; it returns how many failed.
func (r *Report) EvaluateThresholds(ts []Threshold) int {
	r.Thresholds = make([]ThresholdResult, 0, len(ts))
	failed := 0
	for _, t := range ts {
		res := ThresholdResult{Expr: t.Expr, Metric: t.Metric, Op: t.Op, Limit: t.Limit}
		v, reason := r.metricValue(t.Metric)
		if reason != "" {
			res.Reason = reason
		} else {
			res.Observed = &v
			res.Pass = compare(v, t.Op, t.Limit)
		}
		if !res.Pass {
			failed++
		}
		r.Thresholds = append(r.Thresholds, res)
	}
	return failed
}

// FailedThresholds returns the number of failed thresholds in r.
func (r *Report) FailedThresholds() int {
	n := 0
	for _, t := range r.Thresholds {
		if !t.Pass {
			n++
		}
	}
	return n
}

func compare(v float64, op string, limit float64) bool {
	switch op {
	case "<":
		return v < limit
	case "<=":
		return v <= limit
	case ">":
		return v > limit
	case ">=":
		return v >= limit
	case "==":
		return v == limit
	}
	return false
}

// metricValue returns the value of a metric in its unit, or a reason why
// the report has none.
func (r *Report) metricValue(metric string) (float64, string) {
	perSecond := func(n uint64) (float64, string) {
		if r.DurationS <= 0 {
			return 0, "no data: the run has no duration"
		}
		return float64(n) / r.DurationS, ""
	}
	switch metric {
	case "requests.count":
		return float64(r.RequestsTotal), ""
	case "requests.rps":
		return perSecond(r.RequestsTotal)
	case "errors.count":
		return float64(r.ErrorsTotal), ""
	case "errors.rate":
		if r.RequestsTotal == 0 {
			return 0, "no data: no request finished"
		}
		return float64(r.ErrorsTotal) / float64(r.RequestsTotal), ""
	case "accepted.all":
		if r.TimeToAllAcceptedS == nil {
			return 0, fmt.Sprintf("no data: never, %d of %d devices accepted", r.Accepted, r.Devices)
		}
		return *r.TimeToAllAcceptedS, ""
	case "accepted.count":
		return float64(r.Accepted), ""
	case "accepted.ratio":
		if r.Devices == 0 {
			return 0, "no data: no device"
		}
		return float64(r.Accepted) / float64(r.Devices), ""
	case "memory.rss_per_device_kib":
		if r.Memory.RSSPerDeviceKiB == 0 {
			return 0, "no data: the resident set size was not measured"
		}
		return r.Memory.RSSPerDeviceKiB, ""
	case "deployments.failed":
		return float64(r.Deployments.Failed), ""
	case "deployments.succeeded":
		return float64(r.Deployments.Succeeded), ""
	case "storm.recovery":
		switch {
		case r.Storm == nil:
			return 0, "no data: the run had no reconnect storm"
		case r.Storm.RecoveryS == nil:
			return 0, fmt.Sprintf("no data: never, %d of %d devices recovered", r.Storm.Recovered, r.Storm.Devices)
		}
		return *r.Storm.RecoveryS, ""
	}
	op, stat, _ := strings.Cut(metric, ".")
	o := r.Operations[op]
	if o == nil || o.Count == 0 || o.Histogram == nil {
		return 0, fmt.Sprintf("no data: no %s request finished", op)
	}
	h := o.Histogram
	switch stat {
	case "count":
		return float64(o.Count), ""
	case "errors":
		return float64(o.Errors), ""
	case "rate":
		return float64(o.Errors) / float64(o.Count), ""
	case "rps":
		return perSecond(o.Count)
	case "min":
		return ms(h.Min()), ""
	case "mean":
		return ms(h.Mean()), ""
	case "max":
		return ms(h.Max()), ""
	case "p50", "p90", "p95", "p99":
		q, _ := strconv.ParseFloat(stat[1:], 64)
		return ms(h.Quantile(q / 100)), ""
	}
	return 0, fmt.Sprintf("no data: unknown metric %s", metric)
}

// formatObserved writes a result's observed value with its unit.
func (t ThresholdResult) formatObserved() string {
	if t.Observed == nil {
		return "-"
	}
	return formatInUnit(t.Metric, *t.Observed)
}

// formatInUnit writes v in metric's unit.
func formatInUnit(metric string, v float64) string {
	u, _ := unitOf(metric)
	s := strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
	switch u {
	case unitMs:
		return s + "ms"
	case unitSeconds:
		return s + "s"
	case unitFraction:
		return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
	}
	return s
}

// Line is the result as one line: "✓ auth.p99<500ms: 12.3ms" or
// "✗ ...: ... (limit 500ms)".
func (t ThresholdResult) Line() string {
	mark, tail := "✓ PASS", ""
	if !t.Pass {
		mark = "✗ FAIL"
		tail = " (limit " + formatInUnit(t.Metric, t.Limit) + ")"
	}
	obs := "observed " + t.formatObserved()
	if t.Reason != "" {
		obs = t.Reason
	}
	return fmt.Sprintf("%s  %s: %s%s", mark, t.Expr, obs, tail)
}
