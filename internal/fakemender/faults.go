package fakemender

import (
	"errors"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Fault makes matching requests fail. Faults never apply to the test
// control endpoints under /api/management/v1/fake/, so a harness can always
// clear them. When several faults match a request, the first added one that
// fires applies.
type Fault struct {
	// PathPrefix selects requests whose URL path starts with it; "" = every path.
	PathPrefix string
	// Method selects the HTTP method (case-insensitive); "" = any.
	Method string
	// Count is how many matching requests the fault applies to, after which
	// it is removed; 0 = unlimited. Ignored when FailRate is set.
	Count int
	// Status is answered with a Mender JSON error body; 0 = no status (the
	// request is handled normally after Delay, or dropped with Drop).
	Status int
	// RetryAfter, with Status 429 or 503, sets Retry-After to this duration
	// rounded up to whole seconds; 0 = no header.
	RetryAfter time.Duration
	// Delay is waited before handling; a request whose context ends during
	// the wait gets no response and is not handled.
	Delay time.Duration
	// Drop closes the connection without a response (hijacking it; on
	// HTTP/2 the stream is reset). Through a ResponseWriter that cannot be
	// hijacked and is not served by net/http, the request gets 503 instead.
	Drop bool
	// FailRate in 0..1 applies the fault to this random fraction of matching
	// requests instead of the first Count; 0 = use Count.
	FailRate float64
}

// faultEntry is an installed fault with its remaining count (0 = unlimited).
type faultEntry struct {
	Fault
	remaining int
}

// AddFault installs f. Out-of-range values are clamped, not refused:
// FailRate to 0..1, negative Count, Delay and RetryAfter to 0; a Status
// outside 200..599 is ignored (the HTTP control endpoint refuses these with
// 400 instead). A fault left with no Status, Delay or Drop is not installed.
func (s *Server) AddFault(f Fault) {
	if s.ensure() != nil {
		return
	}
	f.FailRate = min(max(f.FailRate, 0), 1)
	f.Count = max(f.Count, 0)
	f.Delay = max(f.Delay, 0)
	f.RetryAfter = max(f.RetryAfter, 0)
	if f.Status < 200 || f.Status > 599 {
		f.Status = 0
	}
	if f.Status == 0 && f.Delay == 0 && !f.Drop {
		s.log.Debug("fault ignored: no status, delay or drop", "path_prefix", f.PathPrefix)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &faultEntry{Fault: f, remaining: f.Count})
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	if s.ensure() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// pickFault returns the fault that applies to r, if any, consuming one use.
func (s *Server) pickFault(r *http.Request) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if !strings.HasPrefix(r.URL.Path, f.PathPrefix) || (f.Method != "" && !strings.EqualFold(f.Method, r.Method)) {
			continue
		}
		if f.FailRate > 0 {
			if mrand.Float64() >= f.FailRate {
				continue
			}
		} else if f.remaining > 0 {
			f.remaining--
			if f.remaining == 0 {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
		}
		s.stats.FaultsApplied++
		return f.Fault, true
	}
	return Fault{}, false
}

// applyFault runs the matching fault; it reports true when the request has
// been answered (or dropped) and must not be handled.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, rc *reqCtx) bool {
	f, ok := s.pickFault(r)
	if !ok {
		return false
	}
	s.log.Debug("fault injected", "path", r.URL.Path, "status", f.Status, "delay", f.Delay, "drop", f.Drop, "request_id", rc.id)
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	if f.Drop {
		s.drop(w, r, rc)
		return true
	}
	if f.Status == 0 {
		return false
	}
	if f.RetryAfter > 0 && (f.Status == http.StatusTooManyRequests || f.Status == http.StatusServiceUnavailable) {
		w.Header().Set(menderapi.HeaderRetryAfter, strconv.FormatInt(int64(math.Ceil(f.RetryAfter.Seconds())), 10))
	}
	menderapi.WriteError(w, f.Status, "fault injected: "+strings.ToLower(http.StatusText(f.Status)), rc.id)
	return true
}

// drop closes the connection without a response. The request is counted
// (as no response) before the close, so a client that sees the connection
// end also finds it in Stats.
func (s *Server) drop(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		rc.record(0)
		_ = conn.Close()
		return
	}
	if errors.Is(err, http.ErrNotSupported) && r.Context().Value(http.ServerContextKey) != nil {
		// HTTP/2 cannot hijack; http.ErrAbortHandler is net/http's sentinel
		// for "abort this response": the server recovers it silently and
		// resets the stream, which is what a drop means there.
		panic(http.ErrAbortHandler)
	}
	menderapi.WriteError(w, http.StatusServiceUnavailable, "fault injected: connection drop needs a hijackable connection", rc.id)
}
