package fakemender

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Auth request outcomes recorded in Stats.AuthRequests.
const (
	OutcomeAccepted         = "accepted"          // 200 with a token
	OutcomePending          = "pending"           // 401, auth set pending
	OutcomeRejected         = "rejected"          // 401, auth set rejected
	OutcomeBadRequest       = "bad_request"       // 400 from parsing or validation
	OutcomeMissingSignature = "missing_signature" // 400, no X-MEN-Signature
	OutcomeBadSignature     = "bad_signature"     // 401, signature does not verify
	OutcomeRefused          = "refused"           // anything else: fault, 413, 415, ...
)

// device is deviceauth's device plus its inventory.
type device struct {
	Seq          int64          `json:"seq"`
	ID           string         `json:"id"`
	IdentityData map[string]any `json:"identity_data"`
	IdentityHash string         `json:"identity_hash"`
	CreatedTS    time.Time      `json:"created_ts"`
	UpdatedTS    time.Time      `json:"updated_ts"`
	CheckInTime  *time.Time     `json:"check_in_time,omitempty"`
	AuthSets     []*authSet     `json:"auth_sets"`
	// Inventory holds the inventory-scope attributes by name.
	Inventory        map[string]invAttr `json:"inventory,omitempty"`
	InventoryUpdated time.Time          `json:"inventory_updated"`
	// Group is the system-scope group attribute; "" = none.
	Group string `json:"group,omitempty"`
}

// authSet is one (identity, normalized key, tier) combination of a device,
// as hosted Mender keys auth sets since device tiers (a device that changes
// its tier gets a new pending set).
type authSet struct {
	ID     string    `json:"id"`
	PubKey string    `json:"pubkey"`
	Status string    `json:"status"`
	TS     time.Time `json:"ts"`
	// Tier is the device tier of the set. "" only for a set preauthorized
	// without a tier (or stored by an older version): it matches an auth
	// request of any tier and takes that request's tier.
	Tier string `json:"tier,omitempty"`
}

func (d *device) authSet(id string) *authSet {
	for _, as := range d.AuthSets {
		if as.ID == id {
			return as
		}
	}
	return nil
}

// authSetFor returns the auth set of key pubPEM for tier: the set with that
// exact tier, else one without a tier. tier "" matches a set of any tier.
func (d *device) authSetFor(pubPEM, tier string) *authSet {
	var loose *authSet
	for _, as := range d.AuthSets {
		switch {
		case as.PubKey != pubPEM:
		case as.Tier == tier && tier != "":
			return as
		case loose == nil && (as.Tier == "" || tier == ""):
			loose = as
		}
	}
	return loose
}

// status is the device status: accepted if any auth set is, else
// preauthorized, else pending, else rejected; noauth without auth sets.
func (d *device) status() string {
	if len(d.AuthSets) == 0 {
		return menderapi.DevStatusNoAuth
	}
	for _, st := range []string{menderapi.DevStatusAccepted, menderapi.DevStatusPreauthorized, menderapi.DevStatusPending} {
		for _, as := range d.AuthSets {
			if as.Status == st {
				return st
			}
		}
	}
	return menderapi.DevStatusRejected
}

// view returns a deep copy in the devauth management API shape.
func (d *device) view() menderapi.Device {
	out := menderapi.Device{
		ID: d.ID, IdentityData: maps.Clone(d.IdentityData), Status: d.status(),
		CreatedTS: d.CreatedTS, UpdatedTS: d.UpdatedTS, AuthSets: []menderapi.AuthSet{},
	}
	if d.CheckInTime != nil {
		t := *d.CheckInTime
		out.CheckInTime = &t
	}
	for _, as := range d.AuthSets {
		out.AuthSets = append(out.AuthSets, menderapi.AuthSet{
			ID: as.ID, IdentityData: maps.Clone(d.IdentityData), PubKey: as.PubKey, TS: as.TS, Status: as.Status,
			Tier: as.Tier,
		})
	}
	return out
}

// newDeviceLocked creates and indexes a device. Called with s.mu held.
func (s *Server) newDeviceLocked(ident map[string]any, hash string) *device {
	now := s.now()
	s.seq++
	d := &device{Seq: s.seq, ID: newUUID(), IdentityData: ident, IdentityHash: hash, CreatedTS: now, UpdatedTS: now}
	s.devices[d.ID] = d
	s.byHash[hash] = d.ID
	return d
}

// addAuthSetLocked appends a new auth set. Called with s.mu held.
func (s *Server) addAuthSetLocked(d *device, pubPEM, tier, status string) *authSet {
	now := s.now()
	as := &authSet{ID: newUUID(), PubKey: pubPEM, Status: status, TS: now, Tier: tier}
	d.AuthSets = append(d.AuthSets, as)
	d.UpdatedTS = now
	return as
}

// setAuthSetStatusLocked changes an auth set's status as deviceauth does:
// accepting one set rejects the device's other accepted sets; a set that
// leaves "accepted" loses its token record. Called with s.mu held.
func (s *Server) setAuthSetStatusLocked(d *device, as *authSet, status string) {
	if status == menderapi.DevStatusAccepted {
		for _, other := range d.AuthSets {
			if other != as && other.Status == menderapi.DevStatusAccepted {
				other.Status = menderapi.DevStatusRejected
				delete(s.tokens, other.ID)
			}
		}
	} else {
		delete(s.tokens, as.ID)
	}
	as.Status = status
	d.UpdatedTS = s.now()
}

// removeDeviceLocked deletes a device, its tokens and its index entry, and
// marks its active deployments decommissioned. Called with s.mu held.
func (s *Server) removeDeviceLocked(d *device) {
	for _, as := range d.AuthSets {
		delete(s.tokens, as.ID)
	}
	delete(s.devices, d.ID)
	delete(s.byHash, d.IdentityHash)
	s.decommissionDeploymentsLocked(d.ID)
}

// handleAuthRequest is POST auth_requests (§2.2): parse, validate the tier
// (as hosted Mender does; absent means standard), signature header, verify
// over the raw bytes, then the auth set state machine on (identity, key,
// tier).
func (s *Server) handleAuthRequest(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	req, err := menderapi.ParseAuthRequest(body)
	if err != nil {
		rc.authOutcome = OutcomeBadRequest
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
		return
	}
	rc.authHash = req.IdentityHash
	rc.authKeyPrint = menderapi.Fingerprint(req.Key)
	if req.Tier != "" && !menderapi.ValidTier(req.Tier) {
		rc.authOutcome = OutcomeBadRequest
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("%v: tier %q: must be standard, micro or system", menderapi.ErrBadRequest, req.Tier), rc.id)
		return
	}
	tier := req.EffectiveTier()
	sig := r.Header.Get(menderapi.HeaderSignature)
	if sig == "" {
		rc.authOutcome = OutcomeMissingSignature
		menderapi.WriteError(w, http.StatusBadRequest, menderapi.ErrMissingSignature.Error(), rc.id)
		return
	}
	if err := menderapi.Verify(req.Key, body, sig); err != nil {
		rc.authOutcome = OutcomeBadSignature
		s.log.Info("auth request signature refused", "key", rc.authKeyPrint, "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusUnauthorized, menderapi.ErrBadSignature.Error(), rc.id)
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	d := s.devices[s.byHash[req.IdentityHash]]
	if d == nil {
		d = s.newDeviceLocked(req.Identity, req.IdentityHash)
		changed = true
	}
	rc.authDevID = d.ID
	as := d.authSetFor(req.NormalizedPubKey, tier)
	if as != nil && as.Tier == "" {
		as.Tier = tier
		changed = true
	}
	switch {
	case as == nil:
		as = s.addAuthSetLocked(d, req.NormalizedPubKey, tier, menderapi.DevStatusPending)
		if s.opts.AutoAccept {
			s.setAuthSetStatusLocked(d, as, menderapi.DevStatusAccepted)
		}
		changed = true
	case as.Status == menderapi.DevStatusPreauthorized:
		s.setAuthSetStatusLocked(d, as, menderapi.DevStatusAccepted)
		changed = true
	}
	if as.Status != menderapi.DevStatusAccepted {
		rc.authOutcome = OutcomePending
		if as.Status == menderapi.DevStatusRejected {
			rc.authOutcome = OutcomeRejected
		}
		if changed && !s.mutatedLocked(w, rc) {
			return
		}
		s.log.Info("auth request unauthorized", "device_id", d.ID, "key", rc.authKeyPrint, "tier", tier, "auth_set", as.Status, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusUnauthorized, "dev auth: unauthorized", rc.id)
		return
	}
	tok, err := s.issueDeviceTokenLocked(d.ID, as.ID)
	if err != nil {
		s.log.Error("issue device token", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	if !s.mutatedLocked(w, rc) {
		return
	}
	rc.authOutcome = OutcomeAccepted
	s.log.Info("auth request accepted", "device_id", d.ID, "key", rc.authKeyPrint, "tier", tier, "token", menderapi.TokenFingerprint(tok), "request_id", rc.id)
	w.Header().Set(menderapi.HeaderContentType, menderapi.ContentTypeJWT)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(tok))
}

// Accept accepts the device's pending auth set (the newest one when there
// are several; accepting one rejects the device's other accepted sets, as
// deviceauth does). It wraps ErrNotFound for an unknown device and
// ErrNoPending when nothing is pending.
func (s *Server) Accept(deviceID string) error {
	if err := s.ensure(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[deviceID]
	if d == nil {
		return fmt.Errorf("accept device %s: %w", deviceID, ErrNotFound)
	}
	for _, as := range slices.Backward(d.AuthSets) {
		if as.Status == menderapi.DevStatusPending {
			s.setAuthSetStatusLocked(d, as, menderapi.DevStatusAccepted)
			return s.saveLocked()
		}
	}
	return fmt.Errorf("accept device %s: %w", deviceID, ErrNoPending)
}

// Devices returns a copy of every device in creation order, in the devauth
// management API shape.
func (s *Server) Devices() []menderapi.Device {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]menderapi.Device, 0, len(s.devices))
	for _, d := range s.sortedDevicesLocked() {
		out = append(out, d.view())
	}
	return out
}

func (s *Server) sortedDevicesLocked() []*device {
	ds := slices.Collect(maps.Values(s.devices))
	slices.SortFunc(ds, func(a, b *device) int { return cmp.Compare(a.Seq, b.Seq) })
	return ds
}

// validDeviceStatus reports whether st is a device status filter value.
func validDeviceStatus(st string) bool {
	switch st {
	case menderapi.DevStatusPending, menderapi.DevStatusAccepted, menderapi.DevStatusRejected,
		menderapi.DevStatusPreauthorized, menderapi.DevStatusNoAuth:
		return true
	}
	return false
}

// filterDevicesLocked applies the status and id filters of the listing.
func (s *Server) filterDevicesLocked(status string, ids []string) []*device {
	var out []*device
	for _, d := range s.sortedDevicesLocked() {
		if status != "" && d.status() != status {
			continue
		}
		if len(ids) > 0 && !slices.Contains(ids, d.ID) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// handleListDevices is GET devauth devices with status/id filters and paging.
func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	q := r.URL.Query()
	pg, ok := parsePagingOrFail(w, r, rc)
	if !ok {
		return
	}
	status := q.Get("status")
	if status != "" && !validDeviceStatus(status) {
		menderapi.WriteError(w, http.StatusBadRequest, "invalid status query: want pending, accepted, rejected, preauthorized or noauth", rc.id)
		return
	}
	s.mu.Lock()
	all := s.filterDevicesLocked(status, q["id"])
	views := make([]menderapi.Device, 0, len(all))
	for _, d := range all {
		views = append(views, d.view())
	}
	s.mu.Unlock()
	writePage(w, r, pg, views)
}

// handleCountDevices is GET devices/count?status=.
func (s *Server) handleCountDevices(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	status := r.URL.Query().Get("status")
	if status != "" && !validDeviceStatus(status) {
		menderapi.WriteError(w, http.StatusBadRequest, "invalid status query: want pending, accepted, rejected, preauthorized or noauth", rc.id)
		return
	}
	s.mu.Lock()
	n := len(s.filterDevicesLocked(status, nil))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]int{"count": n})
}

// handleGetDevice is GET devices/{id}.
func (s *Server) handleGetDevice(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	d := s.devices[rc.params["id"]]
	var v menderapi.Device
	if d != nil {
		v = d.view()
	}
	s.mu.Unlock()
	if d == nil {
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// handleDecommission is DELETE devices/{id}: the device, its auth sets and
// tokens are gone; its next auth request re-creates it.
func (s *Server) handleDecommission(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[rc.params["id"]]
	if d == nil {
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
		return
	}
	s.removeDeviceLocked(d)
	if !s.mutatedLocked(w, rc) {
		return
	}
	s.log.Info("device decommissioned", "device_id", d.ID, "request_id", rc.id)
	w.WriteHeader(http.StatusNoContent)
}

// lookupAuthSetLocked finds devices/{id}/auth/{aid}; it answers 404 itself.
func (s *Server) lookupAuthSetLocked(w http.ResponseWriter, rc *reqCtx) (*device, *authSet) {
	d := s.devices[rc.params["id"]]
	if d == nil {
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
		return nil, nil
	}
	as := d.authSet(rc.params["aid"])
	if as == nil {
		menderapi.WriteError(w, http.StatusNotFound, "authentication set not found", rc.id)
		return nil, nil
	}
	return d, as
}

// handleDeleteAuthSet is DELETE devices/{id}/auth/{aid}. Dismissing the only
// auth set of a preauthorized device deletes the device too.
func (s *Server) handleDeleteAuthSet(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, as := s.lookupAuthSetLocked(w, rc)
	if as == nil {
		return
	}
	if d.status() == menderapi.DevStatusPreauthorized && len(d.AuthSets) == 1 {
		s.removeDeviceLocked(d)
	} else {
		delete(s.tokens, as.ID)
		d.AuthSets = slices.DeleteFunc(d.AuthSets, func(x *authSet) bool { return x == as })
		d.UpdatedTS = s.now()
	}
	if s.mutatedLocked(w, rc) {
		w.WriteHeader(http.StatusNoContent)
	}
}

// handleGetAuthSetStatus is GET devices/{id}/auth/{aid}/status.
func (s *Server) handleGetAuthSetStatus(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	_, as := s.lookupAuthSetLocked(w, rc)
	var st string
	if as != nil {
		st = as.Status
	}
	s.mu.Unlock()
	if as != nil {
		writeJSON(w, http.StatusOK, menderapi.StatusUpdate{Status: st})
	}
}

// handlePutAuthSetStatus is PUT devices/{id}/auth/{aid}/status with
// accepted, rejected or pending.
func (s *Server) handlePutAuthSetStatus(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var su menderapi.StatusUpdate
	if err := json.Unmarshal(body, &su); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode status data: "+err.Error(), rc.id)
		return
	}
	switch su.Status {
	case menderapi.DevStatusAccepted, menderapi.DevStatusRejected, menderapi.DevStatusPending:
	default:
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("incorrect device status %q: want accepted, rejected or pending", su.Status), rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, as := s.lookupAuthSetLocked(w, rc)
	if as == nil {
		return
	}
	s.setAuthSetStatusLocked(d, as, su.Status)
	if !s.mutatedLocked(w, rc) {
		return
	}
	s.log.Info("auth set status changed", "device_id", d.ID, "auth_set_id", as.ID, "status", su.Status, "request_id", rc.id)
	w.WriteHeader(http.StatusNoContent)
}

// handleRevokeToken is DELETE tokens/{jti}.
func (s *Server) handleRevokeToken(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	jti := rc.params["jti"]
	if _, ok := s.tokens[jti]; !ok {
		menderapi.WriteError(w, http.StatusNotFound, "token not found", rc.id)
		return
	}
	delete(s.tokens, jti)
	if s.mutatedLocked(w, rc) {
		w.WriteHeader(http.StatusNoContent)
	}
}

// preauthBody is the preauth request with identity_data kept raw so that a
// non-object is a validation error, not silently dropped. Tier is this fake's
// extension (the open-source API has none): "" preauthorizes the key for
// whatever tier the device then sends.
type preauthBody struct {
	IdentityData json.RawMessage `json:"identity_data"`
	PubKey       string          `json:"pubkey"`
	Force        bool            `json:"force"`
	Tier         string          `json:"tier"`
}

// handlePreauth is POST devauth devices (§4.2): 201 with Location, 409 with
// the Device JSON when the identity exists, force upserts a preauthorized
// auth set (an auth set with the same key that is already accepted stays
// accepted, so forcing never locks a working device out).
func (s *Server) handlePreauth(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var pb preauthBody
	if err := json.Unmarshal(body, &pb); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode preauthorization request: "+err.Error(), rc.id)
		return
	}
	var ident map[string]any
	if err := json.Unmarshal(pb.IdentityData, &ident); err != nil || len(ident) == 0 {
		menderapi.WriteError(w, http.StatusBadRequest, "identity_data: must be a non-empty JSON object", rc.id)
		return
	}
	if pb.PubKey == "" {
		menderapi.WriteError(w, http.StatusBadRequest, "pubkey: cannot be blank", rc.id)
		return
	}
	if pb.Tier != "" && !menderapi.ValidTier(pb.Tier) {
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("tier %q: must be standard, micro or system, or left out", pb.Tier), rc.id)
		return
	}
	key, err := menderapi.ParsePublicKeyPEM(pb.PubKey)
	if err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "pubkey: "+err.Error(), rc.id)
		return
	}
	norm, err := menderapi.MarshalPublicKeyPEM(key)
	if err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "pubkey: "+err.Error(), rc.id)
		return
	}
	_, hash := menderapi.CanonicalIdentityObject(ident)

	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[s.byHash[hash]]
	location := ""
	switch {
	case d == nil:
		d = s.newDeviceLocked(ident, hash)
		s.addAuthSetLocked(d, norm, pb.Tier, menderapi.DevStatusPreauthorized)
		location = d.ID
	case !pb.Force:
		writeJSON(w, http.StatusConflict, d.view())
		return
	default:
		if as := d.authSetFor(norm, pb.Tier); as == nil {
			s.addAuthSetLocked(d, norm, pb.Tier, menderapi.DevStatusPreauthorized)
		} else if as.Status != menderapi.DevStatusAccepted {
			s.setAuthSetStatusLocked(d, as, menderapi.DevStatusPreauthorized)
			if pb.Tier != "" {
				as.Tier = pb.Tier
			}
		}
		location = newUUID() // deviceauth quirk: a fresh id, not the device's
	}
	if !s.mutatedLocked(w, rc) {
		return
	}
	s.log.Info("device preauthorized", "device_id", d.ID, "key", menderapi.Fingerprint(key), "force", pb.Force, "request_id", rc.id)
	w.Header().Set("Location", "devices/"+location)
	w.WriteHeader(http.StatusCreated)
}
