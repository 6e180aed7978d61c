package fleet

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseRate parses an arrival rate "N/s" (devices per second) or "N/m"
// (per minute) with N a positive number, e.g. "500/s" or "90/m", and
// returns devices per second.
func ParseRate(s string) (float64, error) {
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	v, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
	per := map[string]float64{"s": 1, "m": 60}[strings.TrimSpace(unit)]
	if !ok || err != nil || per == 0 || !(v > 0) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: %w: want N/s or N/m with N > 0, e.g. 500/s", s, ErrInvalid)
	}
	return v / per, nil
}

// startDelay returns when the device at position i of n starts, from the
// start of the run: at a constant arrival rate (device i arrives at
// i/rate, an open model: arrivals do not wait for earlier devices), or
// evenly over the ramp plus the client's own first-contact delay (under
// one second). Arrivals get no extra delay: the rate is the schedule.
func (f *Fleet) startDelay(d *device, i, n int) time.Duration {
	if r := f.opts.ArrivalRate; r > 0 {
		return time.Duration(float64(i) / r * float64(time.Second))
	}
	return time.Duration(float64(f.opts.Ramp)*float64(i)/float64(n)) + d.c.FirstContactDelay()
}
