package fleet

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzHistogramJSON feeds arbitrary bytes to the histogram decoder (report
// files come from other processes): it either refuses them or yields a
// histogram whose quantiles are ordered and within its range, and which
// encodes back to an equal histogram.
func FuzzHistogramJSON(f *testing.F) {
	var h Histogram
	for _, d := range []time.Duration{0, time.Microsecond, 3 * time.Millisecond, time.Hour} {
		h.Record(d)
	}
	seed, _ := json.Marshal(&h)
	f.Add(seed)
	f.Add([]byte(`{"schema":"` + HistogramSchema + `","count":1,"min_ns":5,"max_ns":5,"sum_ns":5,"buckets":[[0,1]]}`))
	f.Add([]byte(`{"schema":"` + HistogramSchema + `","count":2,"buckets":[[512,1],[512,1]]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Histogram
		if json.Unmarshal(data, &h) != nil {
			return
		}
		prev := time.Duration(-1)
		for _, q := range []float64{0, 0.25, 0.5, 0.9, 0.99, 1} {
			v := h.Quantile(q)
			if v < prev {
				t.Fatalf("quantile %v = %v below the previous %v", q, v, prev)
			}
			if h.Count() > 0 && (v < h.Min() || v > h.Max()) {
				t.Fatalf("quantile %v = %v outside [%v, %v]", q, v, h.Min(), h.Max())
			}
			prev = v
		}
		out, err := json.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		var back Histogram
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if back != h {
			t.Fatal("round trip changed the histogram")
		}
	})
}

// FuzzParseFlags checks the flag value parsers: no panic, and what parses
// prints back to something that parses to the same value.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{"0/1", "3/4", "02", "02:4d", "k=v", "g=a|b", "", "=", "1/0", "ff-ff-ff-ff-ff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if sh, err := ParseShard(s); err == nil {
			back, err := ParseShard(sh.String())
			if err != nil || back != sh {
				t.Fatalf("shard %q -> %v -> %v, %v", s, sh, back, err)
			}
			lo, hi := sh.Range(1000)
			if lo < 0 || hi < lo || hi > 1000 {
				t.Fatalf("shard %v range %d..%d", sh, lo, hi)
			}
		}
		if p, err := ParseMACPrefix(s); err == nil {
			back, err := ParseMACPrefix(p.String())
			if err != nil || back.String() != p.String() {
				t.Fatalf("prefix %q -> %v -> %v, %v", s, p, back, err)
			}
			if c := p.Capacity(); c > 0 && len(p.MAC(c-1)) != 17 {
				t.Fatalf("prefix %v: MAC %q", p, p.MAC(c-1))
			}
		}
		if a, err := ParseAttribute(s, true); err == nil && (a.Key == "" || len(a.Values) == 0) {
			t.Fatalf("attribute %q parsed to %+v", s, a)
		}
	})
}
