package retry

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

var refNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func retryAfterCases() []struct {
	name   string
	v      string
	want   time.Duration
	wantOK bool
} {
	return []struct {
		name   string
		v      string
		want   time.Duration
		wantOK bool
	}{
		{"delta seconds", "120", 120 * time.Second, true},
		{"zero", "0", 0, true},
		{"surrounding spaces", "  7 ", 7 * time.Second, true},
		{"leading zeros", "007", 7 * time.Second, true},
		{"huge delta saturates", "99999999999999999999999", maxDuration, true},
		{"just above the duration range saturates", "9223372037", maxDuration, true},
		{"IMF-fixdate", refNow.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"RFC 850 date", refNow.Add(time.Hour).Format(time.RFC850), time.Hour, true},
		{"asctime date", refNow.Add(2 * time.Minute).Format(time.ANSIC), 2 * time.Minute, true},
		{"date in the past", refNow.Add(-time.Minute).Format(http.TimeFormat), 0, false},
		{"date equal to now", refNow.Format(http.TimeFormat), 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+5", 0, false},
		{"fraction", "1.5", 0, false},
		{"empty", "", 0, false},
		{"spaces only", "   ", 0, false},
		{"garbage", "soon", 0, false},
		{"digits then text", "10s", 0, false},
		{"inner space", "1 0", 0, false},
	}
}

func TestParseRetryAfter(t *testing.T) {
	for _, tt := range retryAfterCases() {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseRetryAfter(tt.v, refNow)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, tt := range retryAfterCases() {
		f.Add(tt.v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseRetryAfter(v, refNow)
		if !ok {
			assert.Zero(t, d, "a rejected value must not carry a wait")
			return
		}
		assert.GreaterOrEqual(t, d, time.Duration(0), "an accepted wait is never negative")
		if d > 0 && d < maxDuration && d%time.Second == 0 {
			// Whole seconds: reformatting as delta-seconds must give the same wait.
			again, ok2 := ParseRetryAfter(strconv.FormatInt(int64(d/time.Second), 10), refNow)
			assert.True(t, ok2)
			assert.Equal(t, d, again)
		}
	})
}
