package fleet

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFleetAdmissionBoundsHandshakes: with MaxHandshakes 2, no more than
// two devices are in a TLS handshake at once even when 30 start together,
// and every device is still accepted (the others wait, they do not fail).
func TestFleetAdmissionBoundsHandshakes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		bound int
		check func(t *testing.T, peak, peakOpen int64)
	}{
		{"bound 2", 2, func(t *testing.T, peak, peakOpen int64) {
			assert.LessOrEqual(t, peak, int64(2))
			// A device's first update check follows its inventory step on
			// the same connection without queueing behind the herd, so the
			// waiting devices do not hold idle connections open.
			assert.LessOrEqual(t, peakOpen, int64(6), "open connections while the herd waits")
		}},
		// The contrast: without a tight bound the same herd overlaps, so
		// the first case passes because of the bound.
		{"bound 1000", 1000, func(t *testing.T, peak, _ int64) { assert.Greater(t, peak, int64(2)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t, 0)
			var now, highest atomic.Int64
			rec.onHello = func() {
				peak(&highest, now.Add(1))
				time.Sleep(150 * time.Millisecond) // a slow handshake: the herd queues, and overlaps without the bound
				now.Add(-1)
			}
			const n = 30
			opts := rec.options(t, n)
			opts.PollInterval = time.Hour
			opts.MaxHandshakes = tc.bound
			f, err := New(opts)
			require.NoError(t, err)
			require.Equal(t, tc.bound, f.MaxHandshakes())
			r := runUntil(t, f, 20*time.Second, func(p Progress) bool { return p.Accepted == n })
			require.Equal(t, n, r.Accepted, "every device is accepted: %s", errorKindsOf(r))
			assert.Zero(t, r.ErrorsTotal, "waiting for admission is not an error")
			tc.check(t, highest.Load(), rec.peakOpen.Load())
		})
	}
}

// errorKindsOf lists r's errors by operation and kind.
func errorKindsOf(r *Report) map[string]map[string]uint64 {
	m := map[string]map[string]uint64{}
	for op, o := range r.Operations {
		if len(o.ErrorsByKind) > 0 {
			m[op] = o.ErrorsByKind
		}
	}
	return m
}

func TestNewRejectsNegativeMaxHandshakes(t *testing.T) {
	rec := newRecorder(t, 0)
	opts := rec.options(t, 1)
	opts.MaxHandshakes = -1
	_, err := New(opts)
	require.ErrorContains(t, err, "MaxHandshakes -1")
}
