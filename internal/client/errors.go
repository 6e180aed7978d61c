package client

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinel errors; callers branch on them with errors.Is.
var (
	// ErrPending means the server answered the auth request with 401: the
	// device is pending (or rejected) and must be accepted or preauthorized.
	ErrPending = errors.New("device is not accepted by the server")
	// ErrAborted means a status report got 409: the deployment was aborted
	// (or the device decommissioned); stop working on it.
	ErrAborted = errors.New("deployment was aborted")
	// ErrNoServer means no server is configured, or none answered the auth
	// request at all (every one failed at the transport level).
	ErrNoServer = errors.New("no server reachable")
	// ErrUnauthorized means a device API call got 401 again after a fresh
	// authentication.
	ErrUnauthorized = errors.New("server refused the device token")
)

// APIError is an unexpected HTTP answer from the Mender server.
//
// errors.Is(err, ErrPending) holds for a 401 to the auth request,
// ErrUnauthorized for a 401 to any other call, and ErrAborted for a 409 to a
// status report.
type APIError struct {
	// Op is the operation: auth, inventory, next, status, log or download.
	Op string
	// StatusCode is the HTTP status code.
	StatusCode int
	// RequestID is the server's request id (X-MEN-RequestID or the body's
	// request_id), "" when absent.
	RequestID string
	// Message is the server's error text (the JSON "error" field, or the
	// trimmed start of the body).
	Message string
	// RetryAfter is the server's Retry-After on a 429 or 5xx answer, 0 when
	// absent, zero or unusable.
	RetryAfter time.Duration
	// Location is where a 3xx answer to an API call redirects, resolved
	// against the request URL and without user info, query or fragment; ""
	// for other answers, downloads, or a missing or unusable Location. API
	// calls never follow redirects (set the server URL to the final address).
	Location string
}

// Error describes the answer without any secret (no token, no key).
func (e *APIError) Error() string {
	s := fmt.Sprintf("%s: server answered %d %s", e.Op, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Location != "" {
		s = fmt.Sprintf("%s: server answered %d redirect to %s; the agent does not follow redirects on API calls: set ServerURL to the final address",
			e.Op, e.StatusCode, e.Location)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RequestID != "" {
		s += " (request_id " + e.RequestID + ")"
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// Is reports whether the answer means ErrPending, ErrUnauthorized or
// ErrAborted (see [APIError]).
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrPending:
		return e.Op == OpAuth && e.StatusCode == http.StatusUnauthorized
	case ErrUnauthorized:
		return e.Op != OpAuth && e.StatusCode == http.StatusUnauthorized
	case ErrAborted:
		return e.Op == OpStatus && e.StatusCode == http.StatusConflict
	}
	return false
}
