package retry

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func constRand(v float64) func() float64 { return func() float64 { return v } }

// almostOne is the largest float64 below 1, the top of [0, 1).
var almostOne = math.Nextafter(1, 0)

func TestBackoffDelayExact(t *testing.T) {
	tests := []struct {
		name    string
		b       Backoff
		attempt int
		want    time.Duration
	}{
		{"rand 0 is always 0", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(0)}, 3, 0},
		{"half of attempt 0", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(0.5)}, 0, 500 * time.Millisecond},
		{"doubles per attempt", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(0.5)}, 3, 4 * time.Second},
		{"capped at Max", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(0.5)}, 10, 30 * time.Second},
		{"negative attempt counts as 0", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(0.5)}, -7, 500 * time.Millisecond},
		{"zero Base gives 0", Backoff{Max: time.Minute, Rand: constRand(0.9)}, 5, 0},
		{"negative Base gives 0", Backoff{Base: -time.Second, Max: time.Minute, Rand: constRand(0.9)}, 5, 0},
		{"rand near 1 stays below the ceiling", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(almostOne)}, 2, 4*time.Second - 1},
		{"rand 1 (broken source) is clamped below the ceiling", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(1)}, 2, 4*time.Second - 1},
		{"negative rand is clamped to 0", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(-3)}, 2, 0},
		{"NaN rand is clamped to 0", Backoff{Base: time.Second, Max: time.Minute, Rand: constRand(math.NaN())}, 2, 0},
		// float64 steps are 1024ns near 2^63, so the top value is 2^63-1024.
		{"no Max saturates instead of overflowing", Backoff{Base: time.Second, Rand: constRand(almostOne)}, 200, maxDuration - 1023},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.b.Delay(tt.attempt))
		})
	}
}

// TestBackoffDelayBounds checks the properties that must hold for every
// configuration, attempt and random value: 0 <= d, d < ceiling, d < Max.
func TestBackoffDelayBounds(t *testing.T) {
	configs := []struct {
		name string
		base time.Duration
		max  time.Duration
	}{
		{"mender default", 7500 * time.Millisecond, 300 * time.Second},
		{"tiny", time.Nanosecond, 3 * time.Nanosecond},
		{"base above max", time.Hour, time.Minute},
		{"huge base, no max", maxDuration / 3, 0},
		{"huge base and max", maxDuration, maxDuration},
		{"one second, no max", time.Second, 0},
	}
	attempts := []int{0, 1, 2, 5, 30, 62, 63, 64, 1000, math.MaxInt, math.MinInt}
	rands := []float64{0, 0.25, 0.5, 0.999, almostOne, 1, 7, -1, math.NaN(), math.Inf(1)}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			limit := c.max
			if limit <= 0 {
				limit = maxDuration
			}
			for _, a := range attempts {
				for _, r := range rands {
					d := Backoff{Base: c.base, Max: c.max, Rand: constRand(r)}.Delay(a)
					assert.GreaterOrEqual(t, d, time.Duration(0), "attempt %d rand %v", a, r)
					assert.Less(t, d, limit, "attempt %d rand %v must stay below Max", a, r)
				}
			}
		})
	}
}

func TestBackoffDelayGrowsThenCaps(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 20 * time.Second, Rand: constRand(almostOne)}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 20 * time.Second, 20 * time.Second}
	for i, ceil := range want {
		d := b.Delay(i)
		assert.Less(t, d, ceil, "attempt %d", i)
		assert.GreaterOrEqual(t, d, ceil-ceil/1000, "attempt %d: rand≈1 should land at the ceiling", i)
	}
}

func TestBackoffDelayDefaultRand(t *testing.T) {
	b := Backoff{Base: time.Second, Max: time.Minute}
	seen := map[time.Duration]bool{}
	for range 50 {
		d := b.Delay(4)
		require.GreaterOrEqual(t, d, time.Duration(0))
		require.Less(t, d, 16*time.Second)
		seen[d] = true
	}
	assert.Greater(t, len(seen), 1, "nil Rand must draw random values (full jitter), not a constant")
}

func TestJitter(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		frac float64
		r    float64
		want time.Duration
	}{
		{"rand 0 is the low edge", 100 * time.Second, 0.1, 0, 90 * time.Second},
		{"rand 0.5 is the centre", 100 * time.Second, 0.1, 0.5, 100 * time.Second},
		{"rand 0.75", 100 * time.Second, 0.1, 0.75, 105 * time.Second},
		{"zero frac is exact", 100 * time.Second, 0, 0.9, 100 * time.Second},
		{"negative frac counts as 0", 100 * time.Second, -0.5, 0.9, 100 * time.Second},
		{"NaN frac counts as 0", 100 * time.Second, math.NaN(), 0.9, 100 * time.Second},
		{"frac above 1 is clamped to 1", 100 * time.Second, 5, 0, 0},
		{"zero duration", 0, 0.5, 0.7, 0},
		{"negative duration", -time.Second, 0.5, 0.7, 0},
		{"saturates at max duration", maxDuration, 1, almostOne, maxDuration},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Jitter(tt.d, tt.frac, constRand(tt.r)))
		})
	}
}

func TestJitterBounds(t *testing.T) {
	for _, frac := range []float64{0.01, 0.1, 0.5, 1} {
		for _, r := range []float64{0, 0.3, 0.5, almostOne, 2, -2} {
			d := Jitter(time.Hour, frac, constRand(r))
			lo := time.Duration(float64(time.Hour) * (1 - frac))
			hi := time.Duration(float64(time.Hour) * (1 + frac))
			assert.GreaterOrEqual(t, d, lo, "frac %v rand %v", frac, r)
			assert.LessOrEqual(t, d, hi, "frac %v rand %v", frac, r)
		}
	}
	got := map[time.Duration]bool{}
	for range 50 {
		got[Jitter(time.Hour, 0.1, nil)] = true
	}
	assert.Greater(t, len(got), 1, "nil rnd must draw random values")
}
