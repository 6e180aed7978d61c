package ambassador

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// durationBuckets returns the upper bounds (seconds) of the duration histograms.
func durationBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

// metrics holds the Prometheus metrics of one Ambassador.
type metrics struct {
	handshakeFailures *counterVec
	authRequests      *counterVec
	requests          *counterVec
	preauthDuration   *histogram
	upstreamDuration  *histogram
}

func newMetrics() *metrics {
	return &metrics{
		handshakeFailures: newCounterVec("mtls_handshake_failures_total",
			"TLS handshakes rejected, by reason.", "reason", handshakeReasons()...),
		authRequests: newCounterVec("mtls_auth_requests_total",
			"Device auth requests, by outcome at the ambassador.", "outcome", authOutcomes()...),
		requests: newCounterVec("mtls_requests_total",
			"Device requests answered, by HTTP status code.", "code"),
		preauthDuration: newHistogram("mtls_preauth_duration_seconds",
			"Duration of preauthorization calls to the management API.", durationBuckets()),
		upstreamDuration: newHistogram("mtls_upstream_duration_seconds",
			"Duration of proxied device requests, until the response body is copied.", durationBuckets()),
	}
}

func (m *metrics) handshakeFailure(reason string) { m.handshakeFailures.inc(reason) }
func (m *metrics) authOutcome(outcome string)     { m.authRequests.inc(outcome) }
func (m *metrics) request(code int)               { m.requests.inc(strconv.Itoa(code)) }

// write renders every metric in the Prometheus text exposition format 0.0.4.
func (m *metrics) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	m.handshakeFailures.write(bw)
	m.authRequests.write(bw)
	m.requests.write(bw)
	m.preauthDuration.write(bw)
	m.upstreamDuration.write(bw)
	return bw.Flush()
}

// counterVec is a counter with one label.
type counterVec struct {
	name, help, label string
	mu                sync.Mutex
	values            map[string]uint64
}

// newCounterVec returns a counter; the preset label values start at 0 so
// rate() works before the first event.
func newCounterVec(name, help, label string, preset ...string) *counterVec {
	c := &counterVec{name: name, help: help, label: label, values: make(map[string]uint64)}
	for _, v := range preset {
		c.values[v] = 0
	}
	return c
}

func (c *counterVec) inc(value string) {
	c.mu.Lock()
	c.values[value]++
	c.mu.Unlock()
}

func (c *counterVec) get(value string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.values[value]
}

func (c *counterVec) write(w *bufio.Writer) {
	c.mu.Lock()
	snap := maps.Clone(c.values)
	c.mu.Unlock()
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", c.name, c.help, c.name)
	for _, k := range slices.Sorted(maps.Keys(snap)) {
		fmt.Fprintf(w, "%s{%s=\"%s\"} %d\n", c.name, c.label, escapeLabel(k), snap[k])
	}
}

// histogram is a Prometheus histogram without labels.
type histogram struct {
	name, help string
	bounds     []float64
	mu         sync.Mutex
	counts     []uint64 // per bucket, not cumulative; last is +Inf
	sum        float64
	count      uint64
}

func newHistogram(name, help string, bounds []float64) *histogram {
	return &histogram{name: name, help: help, bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	i, _ := slices.BinarySearch(h.bounds, v) // first bound >= v; le is inclusive
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.count++
	h.mu.Unlock()
}

func (h *histogram) write(w *bufio.Writer) {
	h.mu.Lock()
	counts := slices.Clone(h.counts)
	sum, count := h.sum, h.count
	h.mu.Unlock()
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", h.name, h.help, h.name)
	var cum uint64
	for i, b := range h.bounds {
		cum += counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%s\"} %d\n", h.name, formatFloat(b), cum)
	}
	cum += counts[len(h.bounds)]
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n", h.name, cum)
	fmt.Fprintf(w, "%s_sum %s\n%s_count %d\n", h.name, formatFloat(sum), h.name, count)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// escapeLabel escapes a label value for the text format: backslash, double
// quote and newline.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
