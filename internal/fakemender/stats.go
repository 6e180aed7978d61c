package fakemender

import (
	"maps"
	"net/http"
	"slices"
	"time"
)

// MaxAuthRecords is how many auth request outcomes Stats keeps at most; when
// the list is full the older half is dropped (and counted in
// AuthRequestsDropped).
const MaxAuthRecords = 10000

// Stats counts the requests the server saw. Status 0 stands for requests
// that got no response: dropped by a fault, or cancelled during a fault's
// delay.
type Stats struct {
	// Requests counts requests per route key (RouteAuth, RouteInventory,
	// RouteNext, RouteStatus, RouteLog, RouteDownload, RouteMgmt,
	// RouteOther).
	Requests map[string]int `json:"requests"`
	// ByStatus counts responses per HTTP status code.
	ByStatus map[int]int `json:"by_status"`
	// ByRouteStatus counts responses per route key and status code.
	ByRouteStatus map[string]map[int]int `json:"by_route_status"`
	// FaultsApplied counts requests a fault applied to.
	FaultsApplied int `json:"faults_applied"`
	// AuthRequests holds the outcome of every auth request, oldest first,
	// at most MaxAuthRecords.
	AuthRequests []AuthRecord `json:"auth_requests"`
	// AuthRequestsDropped counts outcomes dropped from AuthRequests.
	AuthRequestsDropped int `json:"auth_requests_dropped"`
}

// AuthRecord is the outcome of one auth request.
type AuthRecord struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	// DeviceID is empty when the request failed before the device lookup.
	DeviceID string `json:"device_id,omitempty"`
	// IdentityHash and Key (a menderapi.Fingerprint) are empty when the
	// body did not parse.
	IdentityHash string `json:"identity_hash,omitempty"`
	Key          string `json:"key,omitempty"`
	Status       int    `json:"status"`
	// Outcome is one of the Outcome* constants.
	Outcome string `json:"outcome"`
}

func newStats() Stats {
	return Stats{Requests: map[string]int{}, ByStatus: map[int]int{}, ByRouteStatus: map[string]map[int]int{}}
}

// record counts one finished request.
func (s *Server) record(key string, status int, r *http.Request, rc *reqCtx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats
	st.Requests[key]++
	st.ByStatus[status]++
	if st.ByRouteStatus[key] == nil {
		st.ByRouteStatus[key] = map[int]int{}
	}
	st.ByRouteStatus[key][status]++
	if key == RouteAuth {
		out := rc.authOutcome
		if out == "" {
			out = OutcomeRefused
		}
		if len(st.AuthRequests) >= MaxAuthRecords {
			// Drop the older half at once: amortised O(1) per request,
			// where dropping one record at a time copied the whole slice.
			n := len(st.AuthRequests) - MaxAuthRecords/2
			st.AuthRequests = slices.Delete(st.AuthRequests, 0, n)
			st.AuthRequestsDropped += n
		}
		st.AuthRequests = append(st.AuthRequests, AuthRecord{
			Time: s.now(), RequestID: rc.id, DeviceID: rc.authDevID, IdentityHash: rc.authHash,
			Key: rc.authKeyPrint, Status: status, Outcome: out,
		})
	}
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", status, "request_id", rc.id)
}

// Stats returns a copy of the request counters.
func (s *Server) Stats() Stats {
	if s.ensure() != nil {
		return newStats()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.stats
	out.Requests = maps.Clone(s.stats.Requests)
	out.ByStatus = maps.Clone(s.stats.ByStatus)
	out.ByRouteStatus = make(map[string]map[int]int, len(s.stats.ByRouteStatus))
	for k, v := range s.stats.ByRouteStatus {
		out.ByRouteStatus[k] = maps.Clone(v)
	}
	out.AuthRequests = slices.Clone(s.stats.AuthRequests)
	return out
}
