// Package retry decides when and how long the device agent waits before it
// tries again: exponential backoff with full jitter and a cap, symmetric
// jitter for periodic polls, Retry-After parsing, and one classification of
// HTTP outcomes into what the caller should do next ([Classify]).
//
// Everything here is pure computation over its inputs; waiting itself is left
// to the caller (a select on a timer and ctx.Done()).
package retry

import (
	"math"
	"math/rand/v2"
	"time"
)

// maxDuration is the largest representable time.Duration.
const maxDuration = time.Duration(math.MaxInt64)

// Backoff computes exponential backoff delays with full jitter. The zero value
// always returns 0. A Backoff is a value and holds no state: the caller keeps
// the attempt counter and resets it to 0 after a success.
type Backoff struct {
	// Base is the ceiling of the first attempt (attempt 0). Zero or negative
	// makes every delay 0.
	Base time.Duration
	// Max caps every delay: a delay is always below Max. Zero or negative
	// means no cap beyond the largest time.Duration.
	Max time.Duration
	// Rand returns uniform values in [0, 1). nil means math/rand/v2.Float64.
	// Values outside [0, 1) (a broken source) are clamped. It is called from
	// Delay and must be safe for the caller's concurrency.
	Rand func() float64
}

// Delay returns the delay before retry number attempt (0-based): uniform in
// [0, min(Max, Base·2^attempt)). It is never negative, never above Max, and
// does not overflow for huge attempt values. A negative attempt counts as 0.
func (b Backoff) Delay(attempt int) time.Duration {
	ceil := b.ceiling(attempt)
	if ceil <= 0 {
		return 0
	}
	return scale(ceil, unit(b.Rand))
}

// ceiling returns min(Max, Base·2^attempt), saturating instead of overflowing.
func (b Backoff) ceiling(attempt int) time.Duration {
	if b.Base <= 0 {
		return 0
	}
	limit := b.Max
	if limit <= 0 {
		limit = maxDuration
	}
	if attempt < 0 {
		attempt = 0
	}
	if attempt >= 63 || b.Base > limit>>uint(attempt) {
		return limit
	}
	return min(b.Base<<uint(attempt), limit)
}

// scale returns a uniform value in [0, ceil) for r in [0, 1): r·ceil, kept
// strictly below ceil even where float64 rounding would reach it.
func scale(ceil time.Duration, r float64) time.Duration {
	f := r * float64(ceil)
	if f >= float64(ceil) || f >= float64(maxDuration) {
		return ceil - 1
	}
	if f < 0 {
		return 0
	}
	return time.Duration(f)
}

// unit calls rnd (nil = math/rand/v2) and clamps the result into [0, 1).
func unit(rnd func() float64) float64 {
	if rnd == nil {
		rnd = rand.Float64
	}
	r := rnd()
	switch {
	case r >= 0 && r < 1:
		return r
	case r >= 1:
		return math.Nextafter(1, 0)
	default: // negative or NaN
		return 0
	}
}

// Jitter spreads d uniformly over d·(1 ± frac): with rnd() == 0 it returns
// d·(1-frac), with rnd() == 0.5 exactly d, approaching d·(1+frac) as rnd()
// approaches 1. frac is clamped to [0, 1]; rnd nil means math/rand/v2.Float64.
// The result is never negative and saturates at the largest time.Duration; a
// d of 0 or less returns 0.
func Jitter(d time.Duration, frac float64, rnd func() float64) time.Duration {
	if d <= 0 {
		return 0
	}
	if !(frac > 0) { // also catches NaN
		frac = 0
	}
	frac = min(frac, 1)
	f := float64(d) * (1 + frac*(2*unit(rnd)-1))
	switch {
	case f >= float64(maxDuration):
		return maxDuration
	case f <= 0:
		return 0
	}
	return time.Duration(f)
}
