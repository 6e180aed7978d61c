package fakemender

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Paths served besides the menderapi ones.
const (
	pathDownloadPrefix  = "/api/devices/v1/deployments/download/"
	pathMgmtDeployments = "/api/management/v1/deployments/deployments/"
	pathFakePrefix      = "/api/management/v1/fake/"
)

// Artifact size bounds for DeploymentSpec.Size.
const (
	MinArtifactSize = 4096      // the Go 3.x client refuses smaller images
	MaxArtifactSize = 256 << 20 // the artifact is held in memory
)

// linkLifetime is how long a download link claims to be valid (§5.1).
const linkLifetime = 24 * time.Hour

// Device deployment statuses set by the server (besides the device ones).
const (
	StatusPending        = "pending"
	StatusNoArtifact     = "noartifact"
	StatusAborted        = "aborted"
	StatusDecommissioned = "decommissioned"
)

// DeploymentSpec describes a deployment for AddDeployment and for
// POST /api/management/v1/fake/deployments.
type DeploymentSpec struct {
	// ArtifactName is the artifact's name, 1..4096 characters.
	ArtifactName string `json:"artifact_name"`
	// DeviceTypes are the compatible device types; at least one.
	DeviceTypes []string `json:"device_types"`
	// Size is the artifact size in bytes of random content; 0 =
	// MinArtifactSize. It must lie in MinArtifactSize..MaxArtifactSize.
	Size int64 `json:"size"`
	// Devices are the target device ids, which must exist; empty = every
	// device, including devices created later.
	Devices []string `json:"devices"`
}

// deployment is one deployment with its artifact and per-device state.
type deployment struct {
	Seq          int64                     `json:"seq"`
	ID           string                    `json:"id"`
	ArtifactID   string                    `json:"artifact_id"`
	ArtifactName string                    `json:"artifact_name"`
	DeviceTypes  []string                  `json:"device_types"`
	Size         int64                     `json:"size"`
	Seed         []byte                    `json:"seed"` // ChaCha8 seed of the content
	Checksum     string                    `json:"checksum"`
	Targets      []string                  `json:"targets,omitempty"`
	Created      time.Time                 `json:"created"`
	Aborted      bool                      `json:"aborted"`
	Devices      map[string]*devDeployment `json:"devices"`
	data         []byte                    // derived from Seed, not persisted
}

// devDeployment is the state of one device in a deployment.
type devDeployment struct {
	Status   string `json:"status"`
	SubState string `json:"substate,omitempty"`
	// ArtifactName and DeviceType are what the device reported on its first
	// next call; a change while active gives 409 (§11.13).
	ArtifactName string                 `json:"artifact_name"`
	DeviceType   string                 `json:"device_type"`
	Created      time.Time              `json:"created"`
	Updated      time.Time              `json:"updated"`
	Log          []menderapi.LogMessage `json:"log,omitempty"`
}

func (d *deployment) targets(devID string) bool {
	return len(d.Targets) == 0 || slices.Contains(d.Targets, devID)
}

// finished reports whether a device deployment status is final.
func finished(st string) bool {
	switch st {
	case menderapi.StatusSuccess, menderapi.StatusFailure, menderapi.StatusAlreadyInstalled,
		StatusNoArtifact, StatusAborted, StatusDecommissioned:
		return true
	}
	return false
}

// artifactData derives the artifact content from its seed.
func artifactData(seed []byte, size int64) []byte {
	var s [32]byte
	copy(s[:], seed)
	buf := make([]byte, size)
	_, _ = mrand.NewChaCha8(s).Read(buf) // never fails
	return buf
}

// AddDeployment creates a deployment of a new random artifact and returns
// its id. Errors wrap ErrInvalid for a bad spec and ErrNotFound for an
// unknown target device.
func (s *Server) AddDeployment(spec DeploymentSpec) (string, error) {
	if err := s.ensure(); err != nil {
		return "", err
	}
	if n := utf8.RuneCountInString(spec.ArtifactName); n < 1 || n > 4096 {
		return "", fmt.Errorf("deployment artifact_name: %w: want 1..4096 characters", ErrInvalid)
	}
	if len(spec.DeviceTypes) == 0 || slices.Contains(spec.DeviceTypes, "") {
		return "", fmt.Errorf("deployment device_types: %w: want at least one non-empty device type", ErrInvalid)
	}
	if spec.Size == 0 {
		spec.Size = MinArtifactSize
	}
	if spec.Size < MinArtifactSize || spec.Size > MaxArtifactSize {
		return "", fmt.Errorf("deployment size %d: %w: want %d..%d bytes", spec.Size, ErrInvalid, MinArtifactSize, MaxArtifactSize)
	}
	seed := make([]byte, 32)
	_, _ = rand.Read(seed) // crypto/rand.Read never fails (Go ≥ 1.24)
	data := artifactData(seed, spec.Size)
	sum := sha256.Sum256(data)

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range spec.Devices {
		if s.devices[id] == nil {
			return "", fmt.Errorf("deployment devices: device %s: %w", id, ErrNotFound)
		}
	}
	s.seq++
	dep := &deployment{
		Seq: s.seq, ID: newUUID(), ArtifactID: newUUID(), ArtifactName: spec.ArtifactName,
		DeviceTypes: slices.Clone(spec.DeviceTypes), Size: spec.Size, Seed: seed,
		Checksum: hex.EncodeToString(sum[:]), Targets: slices.Clone(spec.Devices),
		Created: s.now(), Devices: map[string]*devDeployment{}, data: data,
	}
	s.deployments[dep.ID] = dep
	s.artifacts[dep.ArtifactID] = dep
	if err := s.saveLocked(); err != nil {
		return "", err
	}
	s.log.Info("deployment created", "deployment_id", dep.ID, "artifact_name", dep.ArtifactName, "size", dep.Size)
	return dep.ID, nil
}

// DeviceDeploymentStatus returns the device's status in the deployment
// ("pending", "downloading", ..., "already-installed", "noartifact",
// "aborted"), or "" when the device has not been handed it.
func (s *Server) DeviceDeploymentStatus(depID, devID string) string {
	if s.ensure() != nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if dep := s.deployments[depID]; dep != nil {
		if dd := dep.Devices[devID]; dd != nil {
			return dd.Status
		}
	}
	return ""
}

// Abort aborts the deployment: active device deployments become "aborted",
// later status PUTs get 409 and next no longer hands it out. Unknown ids are
// ignored (and logged).
func (s *Server) Abort(depID string) {
	if s.ensure() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.abortLocked(depID); err != nil {
		s.log.Warn("abort deployment", "deployment_id", depID, "err", err)
	}
}

func (s *Server) abortLocked(depID string) error {
	dep := s.deployments[depID]
	if dep == nil {
		return fmt.Errorf("deployment %s: %w", depID, ErrNotFound)
	}
	dep.Aborted = true
	now := s.now()
	for _, dd := range dep.Devices {
		if !finished(dd.Status) {
			dd.Status, dd.Updated = StatusAborted, now
		}
	}
	return s.saveLocked()
}

// decommissionDeploymentsLocked ends the device's active deployments.
func (s *Server) decommissionDeploymentsLocked(devID string) {
	now := s.now()
	for _, dep := range s.deployments {
		if dd := dep.Devices[devID]; dd != nil && !finished(dd.Status) {
			dd.Status, dd.Updated = StatusDecommissioned, now
		}
	}
}

// SetArtifactBaseURL sets the scheme://host[:port] that source.uri starts
// with. Default (""): derived from the request's Host, X-Forwarded-Host and
// X-Forwarded-Proto headers and TLS state.
func (s *Server) SetArtifactBaseURL(u string) {
	if s.ensure() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.artifactBaseURL = strings.TrimSuffix(u, "/")
}

// baseURLLocked returns the artifact base URL for r.
func (s *Server) baseURLLocked(r *http.Request) string {
	if s.artifactBaseURL != "" {
		return s.artifactBaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		scheme = p
	}
	host := r.Host
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		host = h
	}
	return scheme + "://" + host
}

// validNextParam checks artifact_name and device_type (1..4096 characters).
func validNextParam(v string) bool {
	n := utf8.RuneCountInString(v)
	return n >= 1 && n <= 4096
}

func (s *Server) handleNextV1Get(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	q := r.URL.Query()
	s.next(w, r, rc, q.Get("artifact_name"), q.Get("device_type"))
}

func (s *Server) handleNextV1Post(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var req menderapi.NextRequestV1
	if err := json.Unmarshal(body, &req); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode device provides: "+err.Error(), rc.id)
		return
	}
	s.next(w, r, rc, req.ArtifactName, req.DeviceType)
}

// handleNextV2 exists only with EnableV2Next; the OSS server answers 404 so
// that clients fall back to v1 (§11.12). The gateway checks the JWT first,
// so a request without a valid token gets 401 either way.
func (s *Server) handleNextV2(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	if !s.opts.EnableV2Next {
		menderapi.WriteError(w, http.StatusNotFound, "not found", rc.id)
		return
	}
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var req menderapi.NextRequestV2
	if err := json.Unmarshal(body, &req); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode device provides: "+err.Error(), rc.id)
		return
	}
	s.next(w, r, rc, req.DeviceProvides["artifact_name"], req.DeviceProvides["device_type"])
}

// next answers a next call (§5.1): 409 when an active deployment sees a
// different artifact_name/device_type, 200 with the same instructions while
// active, else the oldest deployment not yet handed to the device: 204 when
// its device type does not match (noartifact) or its artifact is installed
// (already-installed), 200 otherwise; 204 when nothing is left.
func (s *Server) next(w http.ResponseWriter, r *http.Request, rc *reqCtx, artifactName, deviceType string) {
	if !validNextParam(artifactName) || !validNextParam(deviceType) {
		menderapi.WriteError(w, http.StatusBadRequest, "artifact_name and device_type are required, each 1..4096 characters", rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	deps := slices.SortedFunc(maps.Values(s.deployments), func(a, b *deployment) int { return cmp.Compare(a.Seq, b.Seq) })
	now := s.now()
	for _, dep := range deps {
		dd := dep.Devices[rc.devID]
		if dd == nil || finished(dd.Status) {
			continue
		}
		if dd.ArtifactName != artifactName || dd.DeviceType != deviceType {
			dd.Status, dd.Updated = menderapi.StatusFailure, now
			if !s.mutatedLocked(w, rc) {
				return
			}
			s.log.Info("device changed provides during deployment", "device_id", rc.devID, "deployment_id", dep.ID, "request_id", rc.id)
			menderapi.WriteError(w, http.StatusConflict, "the device reported a different artifact_name or device_type during an active deployment", rc.id)
			return
		}
		s.writeInstructionsLocked(w, r, dep, now)
		return
	}
	for _, dep := range deps {
		if dep.Aborted || !dep.targets(rc.devID) || dep.Devices[rc.devID] != nil {
			continue
		}
		dd := &devDeployment{Status: StatusPending, ArtifactName: artifactName, DeviceType: deviceType, Created: now, Updated: now}
		dep.Devices[rc.devID] = dd
		switch {
		case !slices.Contains(dep.DeviceTypes, deviceType):
			dd.Status = StatusNoArtifact
		case artifactName == dep.ArtifactName:
			dd.Status = menderapi.StatusAlreadyInstalled
		}
		if !s.mutatedLocked(w, rc) {
			return
		}
		if dd.Status != StatusPending {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		s.log.Info("deployment handed out", "device_id", rc.devID, "deployment_id", dep.ID, "request_id", rc.id)
		s.writeInstructionsLocked(w, r, dep, now)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) writeInstructionsLocked(w http.ResponseWriter, r *http.Request, dep *deployment, now time.Time) {
	expire := now.Add(linkLifetime).UTC().Truncate(time.Second)
	uri := s.baseURLLocked(r) + pathDownloadPrefix + dep.ArtifactID + "?expires=" + strconv.FormatInt(expire.Unix(), 10)
	writeJSON(w, http.StatusOK, menderapi.DeploymentInstructions{
		ID: dep.ID,
		Artifact: menderapi.DeploymentArtifact{
			ID: dep.ArtifactID, ArtifactName: dep.ArtifactName,
			Source:                menderapi.ArtifactSource{URI: uri, Expire: &expire},
			DeviceTypesCompatible: slices.Clone(dep.DeviceTypes),
			Size:                  dep.Size, Checksum: dep.Checksum,
		},
	})
}

// maxSubStateLen is the longest substate a status report may carry.
const maxSubStateLen = 200

// handleDeploymentStatus is PUT .../deployments/{id}/status (§5.2): 204;
// 400 for a status outside the nine device values; 404 unknown; 409 once
// aborted or decommissioned.
func (s *Server) handleDeploymentStatus(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var rep menderapi.StatusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode status report: "+err.Error(), rc.id)
		return
	}
	if !menderapi.ValidDeviceStatus(rep.Status) {
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("status %q is not a device deployment status", rep.Status), rc.id)
		return
	}
	if utf8.RuneCountInString(rep.SubState) > maxSubStateLen {
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("substate longer than %d characters", maxSubStateLen), rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dep, dd := s.devDeploymentLocked(rc.params["id"], rc.devID)
	if dd == nil {
		menderapi.WriteError(w, http.StatusNotFound, "deployment not found for this device", rc.id)
		return
	}
	if dep.Aborted || dd.Status == StatusAborted || dd.Status == StatusDecommissioned {
		menderapi.WriteError(w, http.StatusConflict, "deployment aborted", rc.id)
		return
	}
	if dd.Status != rep.Status || dd.SubState != rep.SubState {
		dd.Status, dd.SubState, dd.Updated = rep.Status, rep.SubState, s.now()
		if !s.mutatedLocked(w, rc) {
			return
		}
	}
	s.log.Debug("deployment status", "device_id", rc.devID, "deployment_id", dep.ID, "status", rep.Status, "request_id", rc.id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) devDeploymentLocked(depID, devID string) (*deployment, *devDeployment) {
	dep := s.deployments[depID]
	if dep == nil {
		return nil, nil
	}
	dd := dep.Devices[devID]
	if dd == nil {
		return nil, nil
	}
	return dep, dd
}

// handleDeploymentLog is PUT .../deployments/{id}/log (§5.3).
func (s *Server) handleDeploymentLog(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var lg menderapi.DeploymentLog
	if err := json.Unmarshal(body, &lg); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode deployment log: "+err.Error(), rc.id)
		return
	}
	if len(lg.Messages) == 0 {
		menderapi.WriteError(w, http.StatusBadRequest, "messages: cannot be empty", rc.id)
		return
	}
	for i, m := range lg.Messages {
		if m.Timestamp.IsZero() || m.Level == "" || m.Message == "" {
			menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("messages[%d]: timestamp, level and message are required", i), rc.id)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, dd := s.devDeploymentLocked(rc.params["id"], rc.devID)
	if dd == nil {
		menderapi.WriteError(w, http.StatusNotFound, "deployment not found for this device", rc.id)
		return
	}
	dd.Log = append(dd.Log, lg.Messages...)
	if s.mutatedLocked(w, rc) {
		w.WriteHeader(http.StatusNoContent)
	}
}

// DeploymentLog returns the log lines the device uploaded for the deployment.
func (s *Server) DeploymentLog(depID, devID string) []menderapi.LogMessage {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dd := s.devDeploymentLocked(depID, devID); dd != nil {
		return slices.Clone(dd.Log)
	}
	return nil
}

// handleDownload serves the artifact without a JWT, like a presigned link:
// Content-Length, Range (206 with Content-Range), 416 for bad ranges.
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	s.mu.Lock()
	dep := s.artifacts[rc.params["id"]]
	s.mu.Unlock()
	if dep == nil {
		menderapi.WriteError(w, http.StatusNotFound, "artifact not found", rc.id)
		return
	}
	w.Header().Set(menderapi.HeaderContentType, "application/vnd.mender-artifact")
	// dep.data is immutable once the deployment exists.
	http.ServeContent(w, r, "", dep.Created, bytes.NewReader(dep.data))
}

// ArtifactData returns the content served for the deployment's artifact
// (nil for an unknown deployment); callers must not modify it.
func (s *Server) ArtifactData(depID string) []byte {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if dep := s.deployments[depID]; dep != nil {
		return dep.data
	}
	return nil
}

// handleMgmtDeploymentStatus is the management abort:
// PUT /api/management/v1/deployments/deployments/{id}/status {"status":"aborted"}.
func (s *Server) handleMgmtDeploymentStatus(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var su menderapi.StatusUpdate
	if err := json.Unmarshal(body, &su); err != nil || su.Status != StatusAborted {
		menderapi.WriteError(w, http.StatusBadRequest, `body must be {"status":"aborted"}`, rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deployments[rc.params["id"]] == nil {
		menderapi.WriteError(w, http.StatusNotFound, "deployment not found", rc.id)
		return
	}
	if err := s.abortLocked(rc.params["id"]); err != nil {
		s.log.Error("save state", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// DeviceDeployment is one device's state in a deployment, as
// GET /api/management/v1/deployments/deployments/{id}/devices lists it.
type DeviceDeployment struct {
	ID       string    `json:"id"`
	Status   string    `json:"status"`
	SubState string    `json:"substate,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// handleMgmtDeploymentDevices lists the devices handed the deployment.
func (s *Server) handleMgmtDeploymentDevices(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	dep := s.deployments[rc.params["id"]]
	var out []DeviceDeployment
	if dep != nil {
		out = []DeviceDeployment{}
		for _, id := range sortedKeys(dep.Devices) {
			dd := dep.Devices[id]
			out = append(out, DeviceDeployment{ID: id, Status: dd.Status, SubState: dd.SubState, Created: dd.Created, Updated: dd.Updated})
		}
	}
	s.mu.Unlock()
	if dep == nil {
		menderapi.WriteError(w, http.StatusNotFound, "deployment not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
