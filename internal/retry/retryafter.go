package retry

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseRetryAfter parses a Retry-After header value, either delta-seconds
// ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT", or the obsolete
// RFC 850 and asctime forms), into a wait measured from now.
//
// It returns false for an empty, negative or malformed value, and for a date
// that is not after now: a device whose clock runs ahead must fall back to its
// own backoff rather than retry in a tight loop. "0" is valid and returns
// (0, true). A delta too large for time.Duration saturates at the largest
// Duration; callers clamp to their own ceiling.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(maxDuration/time.Second) { // only overflow fails here
			return maxDuration, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// isDigits reports whether s is 1*DIGIT, the delta-seconds grammar (no sign,
// no spaces, no fraction).
func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
