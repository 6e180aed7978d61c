package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Layout of [Histogram]: bucket 0 holds durations up to histMin; bucket
// i ≥ 1 holds (histMin·2^((i-1)/16), histMin·2^(i/16)]; the last bucket also
// takes everything larger (about 71 minutes and up).
const (
	histPerOctave = 16
	histMin       = time.Microsecond
	histOctaves   = 32
	histBuckets   = histPerOctave*histOctaves + 1
	// HistogramSchema names the bucket layout in JSON; histograms merge only
	// when their schemas are equal.
	HistogramSchema = "log2/16 from 1us"
)

// HistogramRelativeError bounds the relative error of [Histogram.Quantile]
// against the exact order statistic of the recorded durations:
// 2^(1/32) - 1, about 2.2 %.
var HistogramRelativeError = math.Exp2(1.0/(2*histPerOctave)) - 1

// ErrIncompatible means two reports or histograms cannot be merged.
var ErrIncompatible = errors.New("incompatible reports")

// Histogram counts durations in fixed logarithmic buckets (16 per
// doubling, from 1 µs to about 71 min), so its memory is constant however
// many durations it records, quantiles have a bounded relative error
// ([HistogramRelativeError]) and two histograms merge exactly by adding
// counts. Minimum, maximum and sum are kept exactly. The zero value is
// empty and ready; a Histogram is not safe for concurrent use.
type Histogram struct {
	counts   [histBuckets]uint64
	count    uint64
	sum      time.Duration
	min, max time.Duration
}

// bucketOf returns the bucket index of d.
func bucketOf(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	i := int(math.Ceil(histPerOctave * math.Log2(float64(d)/float64(histMin))))
	return min(max(i, 1), histBuckets-1)
}

// bucketUpper returns the upper bound of bucket i.
func bucketUpper(i int) time.Duration {
	return time.Duration(float64(histMin) * math.Exp2(float64(i)/histPerOctave))
}

// Record adds one duration; negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(d)]++
	if h.count == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.count++
	h.sum += d
}

// Count returns the number of recorded durations.
func (h *Histogram) Count() uint64 { return h.count }

// Max returns the largest recorded duration, 0 when empty.
func (h *Histogram) Max() time.Duration { return h.max }

// Min returns the smallest recorded duration, 0 when empty.
func (h *Histogram) Min() time.Duration { return h.min }

// Mean returns the mean recorded duration, 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.count == 0 {
		return 0
	}
	return h.sum / time.Duration(h.count)
}

// Quantile returns an estimate of the q-quantile (0 ≤ q ≤ 1): the value
// whose rank is ceil(q·count) (at least 1) among the recorded durations,
// within HistogramRelativeError of it (the geometric middle of its bucket,
// clamped to the recorded minimum and maximum; ranks 1 and count give the
// exact minimum and maximum). It returns 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.count == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := max(uint64(math.Ceil(q*float64(h.count))), 1)
	switch rank {
	case 1:
		return h.min // the smallest and largest order statistics are exact
	case h.count:
		return h.max
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum < rank {
			continue
		}
		mid := histMin
		if i > 0 {
			mid = time.Duration(float64(histMin) * math.Exp2((float64(i)-0.5)/histPerOctave))
		}
		return min(max(mid, h.min), h.max)
	}
	return h.max // unreachable: the counts add up to count
}

// Merge adds every duration recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.count == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.count == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.count += o.count
	h.sum += o.sum
}

// HistogramBucket is one non-empty bucket: durations in (Lower, Upper].
type HistogramBucket struct {
	Lower, Upper time.Duration
	Count        uint64
}

// Buckets returns the non-empty buckets in increasing order, grouped by
// group consecutive buckets (1 = the native 16 per doubling, 4 = 4 per
// doubling); group must divide 16 and values below 1 are treated as 1.
func (h *Histogram) Buckets(group int) []HistogramBucket {
	group = max(group, 1)
	var out []HistogramBucket
	for i := 0; i < histBuckets; {
		// Bucket 0 stands alone; groups then start at 1, 1+group, ...
		end := i + 1
		if i > 0 {
			end = min(i+group, histBuckets)
		}
		var n uint64
		for _, c := range h.counts[i:end] {
			n += c
		}
		if n > 0 {
			lower := time.Duration(0)
			if i > 0 {
				lower = bucketUpper(i - 1)
			}
			out = append(out, HistogramBucket{Lower: lower, Upper: bucketUpper(end - 1), Count: n})
		}
		i = end
	}
	return out
}

// histogramJSON is the JSON form: sparse [index, count] pairs.
type histogramJSON struct {
	Schema  string      `json:"schema"`
	Count   uint64      `json:"count"`
	SumNs   int64       `json:"sum_ns"`
	MinNs   int64       `json:"min_ns"`
	MaxNs   int64       `json:"max_ns"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON encodes the schema, count, the exact sum, minimum and maximum
// in nanoseconds and the non-empty buckets as [index, count] pairs.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	j := histogramJSON{Schema: HistogramSchema, Count: h.count, SumNs: int64(h.sum), MinNs: int64(h.min), MaxNs: int64(h.max),
		Buckets: [][2]uint64{}}
	for i, c := range h.counts {
		if c > 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON wrote; it refuses another schema,
// a bucket index out of range and counts that do not add up.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var j histogramJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("histogram: %w", err)
	}
	if j.Schema != HistogramSchema {
		return fmt.Errorf("histogram schema %q: %w: this simulator reads %q", j.Schema, ErrIncompatible, HistogramSchema)
	}
	var n Histogram
	var total uint64
	for _, p := range j.Buckets {
		if p[0] >= histBuckets {
			return fmt.Errorf("histogram bucket index %d: out of range 0..%d", p[0], histBuckets-1)
		}
		n.counts[p[0]] += p[1]
		total += p[1]
	}
	if total != j.Count {
		return fmt.Errorf("histogram: buckets hold %d durations but count is %d", total, j.Count)
	}
	n.count = j.Count
	n.sum, n.min, n.max = time.Duration(j.SumNs), time.Duration(j.MinNs), time.Duration(j.MaxNs)
	if n.min > n.max || n.min < 0 || n.sum < 0 {
		return fmt.Errorf("histogram: min_ns %d, max_ns %d and sum_ns %d are inconsistent", j.MinNs, j.MaxNs, j.SumNs)
	}
	*h = n
	return nil
}

// ms converts d to milliseconds rounded to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
