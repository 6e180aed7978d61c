package ambassador

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// statusBody is the JSON answer of GET /status.
type statusBody struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// StatusHandler returns the probe handler, meant for a separate plain-HTTP
// listener that needs no client certificate:
//
//   - GET /status answers 200 {"status":"ready"} when the ambassador holds an
//     unexpired management token and the upstream answered its last call, and
//     503 {"status":"not_ready","reason":"..."} otherwise;
//   - GET /metrics serves the Prometheus text exposition format.
func (a *Ambassador) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		body := statusBody{Status: "ready"}
		code := http.StatusOK
		if reason := a.notReadyReason(); reason != "" {
			body = statusBody{Status: "not_ready", Reason: reason}
			code = http.StatusServiceUnavailable
		}
		w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(menderapi.HeaderContentType, "text/plain; version=0.0.4; charset=utf-8")
		_ = a.metrics.write(w)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not found: use GET /status or GET /metrics", "")
	})
	return mux
}

// notReadyReason returns why the ambassador is not ready, or "".
func (a *Ambassador) notReadyReason() string {
	m := a.mgmtSnapshot()
	now := a.now()
	switch {
	case m.usable(now):
	case m.lastErr != nil:
		return fmt.Sprintf("no management token: %v", m.lastErr)
	case m.token != "":
		return "management token expired; waiting for a new login"
	default:
		return "no management token yet; login pending"
	}
	if err := a.upstreamError(); err != nil {
		return fmt.Sprintf("upstream unavailable: %v", err)
	}
	return ""
}
