package fleet

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exactQuantile is the rank-ceil(q·n) order statistic, the definition
// Histogram.Quantile estimates.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := max(int(math.Ceil(q*float64(len(sorted)))), 1)
	return sorted[rank-1]
}

func TestHistogramQuantilesWithinRelativeError(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name string
		gen  func() time.Duration
	}{
		{"uniform 1..100ms", func() time.Duration { return time.Millisecond + time.Duration(r.Int64N(int64(99*time.Millisecond))) }},
		{"log-normal around 20ms", func() time.Duration {
			return time.Duration(float64(20*time.Millisecond) * math.Exp(r.NormFloat64()))
		}},
		{"heavy tail up to 10 minutes", func() time.Duration {
			return time.Duration(float64(time.Millisecond)/math.Pow(1-r.Float64(), 1.5)) % (10 * time.Minute)
		}},
		{"sub-microsecond and tiny", func() time.Duration { return time.Duration(r.Int64N(3000)) }},
		{"constant", func() time.Duration { return 42 * time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			samples := make([]time.Duration, 5000)
			for i := range samples {
				samples[i] = tt.gen()
				h.Record(samples[i])
			}
			slices.Sort(samples)
			require.Equal(t, uint64(len(samples)), h.Count())
			assert.Equal(t, samples[len(samples)-1], h.Max(), "max is exact")
			assert.Equal(t, samples[0], h.Min(), "min is exact")
			for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.99, 0.999, 1} {
				want := exactQuantile(samples, q)
				got := h.Quantile(q)
				if want <= histMin {
					assert.LessOrEqual(t, got, histMin, "q=%v: values up to 1µs share bucket 0", q)
					continue
				}
				rel := math.Abs(float64(got-want)) / float64(want)
				assert.LessOrEqual(t, rel, HistogramRelativeError+1e-9, "q=%v: got %v, exact %v", q, got, want)
			}
		})
	}
}

func TestHistogramKnownValues(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}}
	for _, tt := range tests {
		assert.InEpsilon(t, float64(tt.want), float64(h.Quantile(tt.q)), HistogramRelativeError, "q=%v", tt.q)
	}
	assert.Equal(t, 100*time.Millisecond, h.Quantile(1), "the top quantile is clamped to the exact max")
	assert.Equal(t, 50500*time.Microsecond, h.Mean(), "mean is exact")
}

func TestHistogramEmptyAndNegative(t *testing.T) {
	var h Histogram
	assert.Zero(t, h.Quantile(0.5))
	assert.Zero(t, h.Mean())
	assert.Empty(t, h.Buckets(1))
	h.Record(-time.Second)
	assert.Equal(t, time.Duration(0), h.Max(), "negative durations count as 0")
	assert.Equal(t, uint64(1), h.Count())
}

func TestHistogramMergeIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var all, a, b Histogram
	for i := range 3000 {
		d := time.Duration(r.Int64N(int64(2 * time.Second)))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(nil)
	m.Merge(&Histogram{})
	assert.Equal(t, all, m, "merging the parts gives exactly the histogram of the whole")
}

func TestHistogramJSONRoundTrip(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{0, 500 * time.Nanosecond, 3 * time.Millisecond, 3 * time.Millisecond, 2 * time.Hour} {
		h.Record(d)
	}
	b, err := json.Marshal(&h)
	require.NoError(t, err)
	var back Histogram
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, h, back)
	assert.Contains(t, string(b), `"schema":"`+HistogramSchema+`"`)
}

func TestHistogramUnmarshalRefusesBadInput(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"other schema", `{"schema":"linear","count":0,"buckets":[]}`, "schema"},
		{"index out of range", `{"schema":"` + HistogramSchema + `","count":1,"buckets":[[99999,1]]}`, "out of range"},
		{"count mismatch", `{"schema":"` + HistogramSchema + `","count":5,"buckets":[[3,1]]}`, "count is 5"},
		{"min above max", `{"schema":"` + HistogramSchema + `","count":1,"min_ns":2,"max_ns":1,"buckets":[[3,1]]}`, "inconsistent"},
		{"wrong field type", `{"schema":5}`, "histogram"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			assert.ErrorContains(t, json.Unmarshal([]byte(tt.in), &h), tt.want)
		})
	}
}

func TestHistogramBucketsGroupAndCover(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{time.Microsecond / 2, 10 * time.Millisecond, 11 * time.Millisecond, time.Second} {
		h.Record(d)
	}
	for _, group := range []int{1, 4, 16} {
		bs := h.Buckets(group)
		var n uint64
		for i, b := range bs {
			n += b.Count
			assert.Less(t, b.Lower, b.Upper)
			if i > 0 {
				assert.LessOrEqual(t, bs[i-1].Upper, b.Lower, "buckets are ordered and disjoint")
			}
		}
		assert.Equal(t, h.Count(), n, "group %d covers every duration", group)
	}
	for _, b := range h.Buckets(1) {
		if b.Count == 2 {
			assert.True(t, b.Lower < 10*time.Millisecond && b.Upper >= 11*time.Millisecond, "10ms and 11ms share a native bucket")
		}
	}
}
