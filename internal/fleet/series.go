package fleet

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Series is the run over time in more detail than [Timeline]: per step,
// every operation's count, errors by kind and latency quantiles, the
// device states and the bytes exchanged. It has the same step as the
// timeline and the same bound on points (neighbours merge and the step
// doubles), and merges exactly across shards.
type Series struct {
	// StepS is the time between points in seconds.
	StepS float64 `json:"step_s"`
	// Points are in time order; point i covers (i·StepS, (i+1)·StepS] from
	// the start. The last one may be shorter.
	Points []SeriesPoint `json:"points"`
}

// SeriesPoint is one step of a [Series].
type SeriesPoint struct {
	// Accepted, Pending and Failing count devices at the end of the step
	// (as Report's fields of the same names do at the end of the run).
	Accepted int `json:"accepted"`
	Pending  int `json:"pending"`
	Failing  int `json:"failing"`
	// Conns is the number of open device connections at the end of the
	// step, Waiting the devices waiting for a connection slot; absent when
	// 0.
	Conns   int `json:"conns,omitempty"`
	Waiting int `json:"waiting,omitempty"`
	// BytesIn and BytesOut are the bytes read from and written to the
	// devices' connections during the step; absent when never counted.
	BytesIn  uint64 `json:"bytes_in,omitempty"`
	BytesOut uint64 `json:"bytes_out,omitempty"`
	// Ops holds the operations that finished an exchange during the step,
	// keyed as Report.Operations.
	Ops map[string]*OpPoint `json:"ops,omitempty"`
}

// OpPoint is one operation during one step.
type OpPoint struct {
	// Count and Errors count the exchanges that finished in the step.
	Count  uint64 `json:"count"`
	Errors uint64 `json:"errors"`
	// ErrorsByKind splits Errors as OpReport.ErrorsByKind does.
	ErrorsByKind map[string]uint64 `json:"errors_by_kind,omitempty"`
	// P50Ms, P95Ms and P99Ms are latency quantiles in milliseconds within
	// HistogramRelativeError, derived from Histogram.
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	// Histogram holds the step's latencies (the JSON form of [Histogram]).
	Histogram *SparseHistogram `json:"histogram"`
}

// fillStats derives the quantiles from the histogram.
func (o *OpPoint) fillStats() {
	if o.Histogram == nil {
		o.Histogram = &SparseHistogram{}
	}
	h := o.Histogram.Histogram()
	o.P50Ms, o.P95Ms, o.P99Ms = ms(h.Quantile(0.5)), ms(h.Quantile(0.95)), ms(h.Quantile(0.99))
}

// SparseHistogram holds what a [Histogram] holds, keeping only the
// non-empty buckets: a step of a series has few, and a full Histogram
// (about 4 KiB) per operation and step would make a long run's series
// weigh tens of megabytes. Its JSON form is Histogram's.
type SparseHistogram struct {
	idx         []uint16
	counts      []uint64
	count       uint64
	sum, lo, hi time.Duration
}

// sparseOf returns the non-empty buckets of h.
func sparseOf(h *Histogram) *SparseHistogram {
	s := &SparseHistogram{count: h.count, sum: h.sum, lo: h.min, hi: h.max}
	for i, c := range h.counts {
		if c > 0 {
			s.idx = append(s.idx, uint16(i))
			s.counts = append(s.counts, c)
		}
	}
	return s
}

// Histogram returns the full histogram.
func (s *SparseHistogram) Histogram() *Histogram {
	h := &Histogram{count: s.count, sum: s.sum, min: s.lo, max: s.hi}
	for i, b := range s.idx {
		h.counts[b] += s.counts[i]
	}
	return h
}

// Count returns the number of durations.
func (s *SparseHistogram) Count() uint64 { return s.count }

// Merge adds o's durations to s.
func (s *SparseHistogram) Merge(o *SparseHistogram) {
	if o == nil || o.count == 0 {
		return
	}
	h := s.Histogram()
	h.Merge(o.Histogram())
	*s = *sparseOf(h)
}

// MarshalJSON writes the form of [Histogram.MarshalJSON].
func (s *SparseHistogram) MarshalJSON() ([]byte, error) { return s.Histogram().MarshalJSON() }

// UnmarshalJSON reads the form of [Histogram.MarshalJSON], with its checks.
func (s *SparseHistogram) UnmarshalJSON(b []byte) error {
	var h Histogram
	if err := json.Unmarshal(b, &h); err != nil {
		return err
	}
	*s = *sparseOf(&h)
	return nil
}

// seriesGauges are the device and connection counts of a series point.
type seriesGauges struct{ pending, failing, conns, waiting int }

// mergePoint adds b, the later point, to a: counts and histograms add up,
// the device and connection counts are b's.
func mergePoint(a *SeriesPoint, b SeriesPoint) {
	a.Accepted, a.Pending, a.Failing, a.Conns, a.Waiting = b.Accepted, b.Pending, b.Failing, b.Conns, b.Waiting
	addPoint(a, b)
}

// addPoint adds b's counts, bytes and histograms to a.
func addPoint(a *SeriesPoint, b SeriesPoint) {
	a.BytesIn += b.BytesIn
	a.BytesOut += b.BytesOut
	for name, o := range b.Ops {
		if a.Ops == nil {
			a.Ops = map[string]*OpPoint{}
		}
		m := a.Ops[name]
		if m == nil {
			m = &OpPoint{Histogram: &SparseHistogram{}}
			a.Ops[name] = m
		}
		m.Count += o.Count
		m.Errors += o.Errors
		for k, v := range o.ErrorsByKind {
			if m.ErrorsByKind == nil {
				m.ErrorsByKind = map[string]uint64{}
			}
			m.ErrorsByKind[k] += v
		}
		m.Histogram.Merge(o.Histogram)
	}
}

// clonePoint returns a deep copy of p.
func clonePoint(p SeriesPoint) SeriesPoint {
	out := p
	out.Ops = nil
	addPoint(&out, SeriesPoint{Ops: p.Ops})
	out.BytesIn, out.BytesOut = p.BytesIn, p.BytesOut
	return out
}

// seriesBuf is a bounded series of points base·factor apart: each point
// merges factor samples; when maxTimelinePoints are reached, neighbouring
// points are merged and the step doubles.
type seriesBuf struct {
	base   time.Duration
	factor int
	points []SeriesPoint
	acc    SeriesPoint
	accN   int
}

func (t *seriesBuf) add(p SeriesPoint) {
	if t.factor == 0 {
		t.factor = 1
	}
	mergePoint(&t.acc, p)
	t.accN++
	if t.accN < t.factor {
		return
	}
	t.points = append(t.points, t.acc)
	t.acc, t.accN = SeriesPoint{}, 0
	if len(t.points) >= maxTimelinePoints {
		half := make([]SeriesPoint, 0, maxTimelinePoints)
		for i := 0; i+1 < len(t.points); i += 2 {
			a := t.points[i]
			mergePoint(&a, t.points[i+1])
			half = append(half, a)
		}
		t.points = half
		t.factor *= 2
	}
}

// snapshot returns the series with a partly filled last step included and
// the quantiles filled.
func (t *seriesBuf) snapshot() *Series {
	s := &Series{StepS: (t.base * time.Duration(max(t.factor, 1))).Seconds()}
	for _, p := range t.points {
		s.Points = append(s.Points, clonePoint(p))
	}
	if t.accN > 0 {
		s.Points = append(s.Points, clonePoint(t.acc))
	}
	s.fillStats()
	return s
}

// timelineOf derives the report's timeline from the series: the accepted
// devices, and the exchanges and errors of every operation, per step.
func timelineOf(s *Series) Timeline {
	n := len(s.Points)
	tl := Timeline{StepS: s.StepS, Accepted: make([]int, n), Requests: make([]uint64, n), Errors: make([]uint64, n)}
	for i, p := range s.Points {
		tl.Accepted[i] = p.Accepted
		for _, o := range p.Ops {
			tl.Requests[i] += o.Count
			tl.Errors[i] += o.Errors
		}
	}
	return tl
}

func (s *Series) fillStats() {
	for _, p := range s.Points {
		for _, o := range p.Ops {
			o.fillStats()
		}
	}
}

// check refuses a series whose histograms do not match their counts.
func (s *Series) check() error {
	for i, p := range s.Points {
		for name, o := range p.Ops {
			if o == nil {
				return fmt.Errorf("series point %d: operation %s: null", i, name)
			}
			if o.Histogram == nil {
				o.Histogram = &SparseHistogram{}
			}
			if o.Histogram.Count() != o.Count {
				return fmt.Errorf("series point %d: operation %s: count %d but its histogram holds %d: the file was edited or truncated",
					i, name, o.Count, o.Histogram.Count())
			}
		}
	}
	return nil
}

// mergeSeries rebins every report's series to step (a multiple of each
// series' own step) and adds them up point by point, aligned on each
// shard's start; a shorter series keeps contributing its last device
// states. Reports without a series are left out; nil when none has one.
func mergeSeries(reports []*Report, step float64) (*Series, error) {
	var all [][]SeriesPoint
	n := 0
	for i, r := range reports {
		s := r.Series
		if s == nil || len(s.Points) == 0 {
			continue
		}
		ratio := step / s.StepS
		k := int(math.Round(ratio))
		if s.StepS <= 0 || k < 1 || math.Abs(ratio-float64(k)) > 1e-6 {
			return nil, fmt.Errorf("merge: report #%d: series step %vs does not divide %vs: %w", i+1, s.StepS, step, ErrIncompatible)
		}
		var pts []SeriesPoint
		for j := 0; j < len(s.Points); j += k {
			var p SeriesPoint
			for x := j; x < min(j+k, len(s.Points)); x++ {
				mergePoint(&p, s.Points[x])
			}
			pts = append(pts, p)
		}
		all = append(all, pts)
		n = max(n, len(pts))
	}
	if len(all) == 0 {
		return nil, nil
	}
	out := &Series{StepS: step, Points: make([]SeriesPoint, n)}
	for _, pts := range all {
		for j := range n {
			src := pts[min(j, len(pts)-1)]
			out.Points[j].Accepted += src.Accepted
			out.Points[j].Pending += src.Pending
			out.Points[j].Failing += src.Failing
			out.Points[j].Conns += src.Conns
			out.Points[j].Waiting += src.Waiting
			if j < len(pts) {
				addPoint(&out.Points[j], src)
			}
		}
	}
	out.fillStats()
	return out, nil
}

// errorKinds returns every error kind in the series, sorted.
func (s *Series) errorKinds() []string {
	set := map[string]bool{}
	for _, p := range s.Points {
		for _, o := range p.Ops {
			for k := range o.ErrorsByKind {
				set[k] = true
			}
		}
	}
	return sortedKeys(set)
}

func sortedKeys(m map[string]bool) []string {
	return slices.Sorted(maps.Keys(m))
}

// procStatus reads fields of /proc/self/status given in kB and returns
// them in bytes; missing fields (not Linux) are absent from the map.
func procStatus(fields ...string) map[string]uint64 {
	return readKB("/proc/self/status", fields...)
}

// hostMemory returns MemTotal from /proc/meminfo in bytes, 0 when unknown.
func hostMemory() uint64 { return readKB("/proc/meminfo", "MemTotal")["MemTotal"] }

// readKB reads "Name:   123 kB" lines of a /proc file.
func readKB(path string, fields ...string) map[string]uint64 {
	out := map[string]uint64{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range fields {
			if name != want {
				continue
			}
			v, unit, _ := strings.Cut(strings.TrimSpace(rest), " ")
			n, err := strconv.ParseUint(v, 10, 64)
			if err == nil && (unit == "kB" || unit == "") {
				if unit == "kB" {
					n *= 1024
				}
				out[name] = n
			}
		}
	}
	return out
}
