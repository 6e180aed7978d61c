// Package metrics writes the Prometheus text exposition format (version
// 0.0.4) by hand, so that the ambassador and the fleet simulator can serve
// /metrics without a third-party client library.
//
// [Writer] is the low-level encoder (HELP and TYPE lines, samples with
// escaped labels, histogram bucket series). [CounterVec] and [Histogram] are
// small concurrency-safe metrics built on it. A metric family is written
// with one HELP/TYPE header followed by its samples; callers that keep
// several labelled series of one family write the header once and then each
// series.
package metrics

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

// Metric types for [Writer.Header].
const (
	TypeCounter   = "counter"
	TypeGauge     = "gauge"
	TypeHistogram = "histogram"
)

// ContentType is the Content-Type of the text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Label is one label pair of a sample.
type Label struct {
	Name, Value string
}

// Writer encodes metric families in the text format. Write errors are
// sticky and reported by Flush. A Writer is not safe for concurrent use.
type Writer struct {
	bw *bufio.Writer
}

// NewWriter returns a Writer that buffers into w; call Flush at the end.
func NewWriter(w io.Writer) *Writer { return &Writer{bw: bufio.NewWriter(w)} }

// Header writes the HELP and TYPE lines of a family.
func (w *Writer) Header(name, help, typ string) {
	fmt.Fprintf(w.bw, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

// Sample writes one sample line.
func (w *Writer) Sample(name string, labels []Label, v float64) {
	w.bw.WriteString(name)
	writeLabels(w.bw, labels, "", "")
	w.bw.WriteByte(' ')
	w.bw.WriteString(FormatFloat(v))
	w.bw.WriteByte('\n')
}

// Histogram writes the _bucket, _sum and _count series of one histogram.
// bounds are the finite upper bounds in increasing order; counts holds the
// observations per bucket (not cumulative), len(bounds)+1 values, the last
// one for +Inf.
func (w *Writer) Histogram(name string, labels []Label, bounds []float64, counts []uint64, sum float64) {
	var cum uint64
	for i := range len(bounds) + 1 {
		if i < len(counts) {
			cum += counts[i]
		}
		le := "+Inf"
		if i < len(bounds) {
			le = FormatFloat(bounds[i])
		}
		w.bw.WriteString(name + "_bucket")
		writeLabels(w.bw, labels, "le", le)
		w.bw.WriteString(" " + strconv.FormatUint(cum, 10) + "\n")
	}
	w.Sample(name+"_sum", labels, sum)
	w.Sample(name+"_count", labels, float64(cum))
}

// Flush writes buffered data and returns the first write error.
func (w *Writer) Flush() error { return w.bw.Flush() }

func writeLabels(bw *bufio.Writer, labels []Label, extraName, extraValue string) {
	if len(labels) == 0 && extraName == "" {
		return
	}
	bw.WriteByte('{')
	for i, l := range labels {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString(l.Name + `="` + EscapeLabel(l.Value) + `"`)
	}
	if extraName != "" {
		if len(labels) > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString(extraName + `="` + EscapeLabel(extraValue) + `"`)
	}
	bw.WriteByte('}')
}

// FormatFloat formats a sample value: the shortest representation, with
// +Inf, -Inf and NaN spelled as the format wants.
func FormatFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	case math.IsNaN(f):
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

// EscapeLabel escapes a label value: backslash, double quote and newline.
func EscapeLabel(s string) string { return labelEscaper.Replace(s) }

func escapeHelp(s string) string { return helpEscaper.Replace(s) }

// CounterVec is a counter family with one label. It is safe for concurrent
// use.
type CounterVec struct {
	name, help, label string
	mu                sync.Mutex
	values            map[string]uint64
}

// NewCounterVec returns a counter family; the preset label values start at
// 0 so that rate() works before the first event.
func NewCounterVec(name, help, label string, preset ...string) *CounterVec {
	c := &CounterVec{name: name, help: help, label: label, values: make(map[string]uint64)}
	for _, v := range preset {
		c.values[v] = 0
	}
	return c
}

// Inc adds one to the series with the label value.
func (c *CounterVec) Inc(value string) { c.Add(value, 1) }

// Add adds n to the series with the label value.
func (c *CounterVec) Add(value string, n uint64) {
	c.mu.Lock()
	c.values[value] += n
	c.mu.Unlock()
}

// Get returns the current value of the series with the label value.
func (c *CounterVec) Get(value string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.values[value]
}

// Write writes the family, series sorted by label value.
func (c *CounterVec) Write(w *Writer) {
	c.mu.Lock()
	snap := maps.Clone(c.values)
	c.mu.Unlock()
	w.Header(c.name, c.help, TypeCounter)
	for _, k := range slices.Sorted(maps.Keys(snap)) {
		w.Sample(c.name, []Label{{c.label, k}}, float64(snap[k]))
	}
}

// Histogram is a histogram with fixed bucket bounds. It is safe for
// concurrent use.
type Histogram struct {
	name, help string
	bounds     []float64
	mu         sync.Mutex
	counts     []uint64 // per bucket, not cumulative; last is +Inf
	sum        float64
}

// NewHistogram returns a histogram with the given finite upper bounds,
// which must be sorted in increasing order. Bounds are inclusive (le).
func NewHistogram(name, help string, bounds []float64) *Histogram {
	return &Histogram{name: name, help: help, bounds: slices.Clone(bounds), counts: make([]uint64, len(bounds)+1)}
}

// Observe records one value; NaN is ignored.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	i, _ := slices.BinarySearch(h.bounds, v) // first bound >= v; le is inclusive
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.mu.Unlock()
}

// Snapshot returns the bounds, the per-bucket counts (the last for +Inf)
// and the sum of the observations.
func (h *Histogram) Snapshot() (bounds []float64, counts []uint64, sum float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bounds, slices.Clone(h.counts), h.sum
}

// Write writes the family header and the histogram without labels.
func (h *Histogram) Write(w *Writer) {
	w.Header(h.name, h.help, TypeHistogram)
	bounds, counts, sum := h.Snapshot()
	w.Histogram(h.name, nil, bounds, counts, sum)
}
