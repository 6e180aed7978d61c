package fakemender

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// handleLogin is POST useradm auth/login (§4.1): Basic auth, email
// lowercased; optional {"no_expiry": bool} body; 200 with the raw JWT.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	email, pass, ok := r.BasicAuth()
	if !ok {
		menderapi.WriteError(w, http.StatusUnauthorized, "invalid or missing Basic authorization header", rc.id)
		return
	}
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var opts struct {
		NoExpiry bool `json:"no_expiry"`
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &opts); err != nil {
			menderapi.WriteError(w, http.StatusBadRequest, "failed to decode login options: "+err.Error(), rc.id)
			return
		}
	}
	email = strings.ToLower(email)
	userOK := subtle.ConstantTimeCompare([]byte(email), []byte(strings.ToLower(s.opts.User))) == 1
	passOK := subtle.ConstantTimeCompare([]byte(pass), []byte(s.opts.Password)) == 1
	if !userOK || !passOK {
		s.log.Info("management login refused", "user", email, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusUnauthorized, "unauthorized", rc.id)
		return
	}
	s.mu.Lock()
	tok, err := s.issueUserTokenLocked(email, opts.NoExpiry)
	s.mu.Unlock()
	if err != nil {
		s.log.Error("issue management token", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJWT)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(tok))
}

// FaultJSON is the body of POST /api/management/v1/fake/faults: a Fault
// with snake_case fields, the delay in milliseconds and Retry-After in
// seconds.
type FaultJSON struct {
	PathPrefix  string  `json:"path_prefix"`
	Method      string  `json:"method"`
	Count       int     `json:"count"`
	Status      int     `json:"status"`
	RetryAfterS int     `json:"retry_after_s"`
	DelayMS     int     `json:"delay_ms"`
	Drop        bool    `json:"drop"`
	FailRate    float64 `json:"fail_rate"`
}

// Fault converts the JSON form, refusing out-of-range values.
func (f FaultJSON) Fault() (Fault, error) {
	var errs []error
	if f.Count < 0 {
		errs = append(errs, errors.New("count must be ≥ 0"))
	}
	if f.Status != 0 && (f.Status < 200 || f.Status > 599) {
		errs = append(errs, errors.New("status must be 0 or 200..599"))
	}
	if f.RetryAfterS < 0 || f.DelayMS < 0 {
		errs = append(errs, errors.New("retry_after_s and delay_ms must be ≥ 0"))
	}
	if f.FailRate < 0 || f.FailRate > 1 {
		errs = append(errs, errors.New("fail_rate must be in 0..1"))
	}
	if f.Status == 0 && f.DelayMS == 0 && !f.Drop {
		errs = append(errs, errors.New("give status, delay_ms or drop: a fault without one would do nothing"))
	}
	if err := errors.Join(errs...); err != nil {
		return Fault{}, fmt.Errorf("fault: %w: %w", ErrInvalid, err)
	}
	return Fault{
		PathPrefix: f.PathPrefix, Method: f.Method, Count: f.Count, Status: f.Status,
		RetryAfter: time.Duration(f.RetryAfterS) * time.Second, Delay: time.Duration(f.DelayMS) * time.Millisecond,
		Drop: f.Drop, FailRate: f.FailRate,
	}, nil
}

// decodeStrict decodes a control body, refusing unknown fields so that
// typos in test harnesses fail loudly.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// handleFakeAddFault is POST /api/management/v1/fake/faults → 204.
func (s *Server) handleFakeAddFault(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var fj FaultJSON
	if err := decodeStrict(body, &fj); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "decode fault: "+err.Error(), rc.id)
		return
	}
	f, err := fj.Fault()
	if err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
		return
	}
	s.AddFault(f)
	w.WriteHeader(http.StatusNoContent)
}

// handleFakeClearFaults is DELETE /api/management/v1/fake/faults → 204.
func (s *Server) handleFakeClearFaults(w http.ResponseWriter, _ *http.Request, _ *reqCtx) {
	s.ClearFaults()
	w.WriteHeader(http.StatusNoContent)
}

// handleFakeStats is GET /api/management/v1/fake/stats → 200 Stats.
func (s *Server) handleFakeStats(w http.ResponseWriter, _ *http.Request, _ *reqCtx) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// handleFakeAddDeployment is POST /api/management/v1/fake/deployments with
// a DeploymentSpec → 201 {"id": ...}; 400 for a bad spec or unknown device.
func (s *Server) handleFakeAddDeployment(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var spec DeploymentSpec
	if err := decodeStrict(body, &spec); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "decode deployment: "+err.Error(), rc.id)
		return
	}
	id, err := s.AddDeployment(spec)
	switch {
	case errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound):
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
		return
	case err != nil:
		s.log.Error("add deployment", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": id})
}
