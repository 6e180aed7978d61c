package ambassador

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// statusBody is the JSON answer of GET /status.
type statusBody struct {
	Status string     `json:"status"`
	Reason string     `json:"reason,omitempty"`
	Limits limitsBody `json:"limits"`
}

// limitsBody reports the connection bounds and how often they refused.
type limitsBody struct {
	MaxConns             int64       `json:"max_conns"`
	ConnCeiling          int64       `json:"conn_ceiling"`
	OpenConns            int64       `json:"open_conns"`
	MaxHandshakes        int         `json:"max_handshakes"`
	HandshakesInProgress int64       `json:"handshakes_in_progress"`
	FilesSoft            uint64      `json:"files_soft"`
	FilesHard            uint64      `json:"files_hard"`
	Refused              refusedBody `json:"refused"`
	IdleTimeoutS         float64     `json:"idle_timeout_s"`
}

// refusedBody counts the connections refused by each bound since New.
type refusedBody struct {
	ConnLimit503        uint64 `json:"conn_limit_503"`
	ConnCeilingClosed   uint64 `json:"conn_ceiling_closed"`
	HandshakeWaitClosed uint64 `json:"handshake_wait_closed"`
	AcceptErrors        uint64 `json:"accept_errors"`
}

func (l *connLimits) status() limitsBody {
	return limitsBody{
		MaxConns:             l.max,
		ConnCeiling:          l.ceiling,
		OpenConns:            l.open.Load(),
		MaxHandshakes:        cap(l.slots),
		HandshakesInProgress: l.handshaking.Load(),
		FilesSoft:            l.filesSoft,
		FilesHard:            l.filesHard,
		Refused: refusedBody{
			ConnLimit503:        l.shed.Load(),
			ConnCeilingClosed:   l.overCeiling.Load(),
			HandshakeWaitClosed: l.handshakeWait.Load(),
			AcceptErrors:        l.acceptErrors.Load(),
		},
		IdleTimeoutS: l.idle.Seconds(),
	}
}

// StatusHandler returns the probe handler, meant for a separate plain-HTTP
// listener that needs no client certificate:
//
//   - GET /status answers 200 {"status":"ready"} when the ambassador holds an
//     unexpired management token and the upstream answered its last call, and
//     503 {"status":"not_ready","reason":"..."} otherwise; both carry a
//     "limits" object with the connection bounds, the connections and
//     handshakes open, the open-file limits and the refusal counts;
//   - GET /metrics serves the Prometheus exposition format (client_golang),
//     Go runtime and process metrics included.
func (a *Ambassador) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		body := statusBody{Status: "ready", Limits: a.conns.status()}
		code := http.StatusOK
		if reason := a.notReadyReason(); reason != "" {
			body.Status, body.Reason = "not_ready", reason
			code = http.StatusServiceUnavailable
		}
		w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	mux.Handle("GET /metrics", a.metrics.handler())
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
