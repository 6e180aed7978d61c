package fakemender

import (
	"cmp"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Paths served besides the menderapi ones.
const (
	pathDownloadPrefix  = "/api/devices/v1/deployments/download/"
	pathMgmtDeployments = "/api/management/v1/deployments/deployments/"
	pathFakePrefix      = "/api/management/v1/fake/"
)

// Payload size bounds for DeploymentSpec.Size.
const (
	MinArtifactSize = 4096      // the Go 3.x client refuses smaller images
	MaxArtifactSize = 256 << 20 // keeps generated artifacts reasonable
)

// Device deployment statuses set by the server (besides the device ones).
const (
	StatusPending        = "pending"
	StatusNoArtifact     = "noartifact"
	StatusAborted        = "aborted"
	StatusDecommissioned = "decommissioned"
)

// Deployment statuses (Deployment.Status).
const (
	DeploymentPending    = "pending"
	DeploymentInProgress = "inprogress"
	DeploymentFinished   = "finished"
)

// Payload of the artifacts AddDeployment generates: a single-file update
// module payload installing NAME.bin into fakeDestDir.
const (
	fakePayloadType = "single-file"
	fakeDestDir     = "/tmp/fake-mender"
)

// DeploymentSpec describes a deployment for AddDeployment and for
// POST /api/management/v1/fake/deployments.
type DeploymentSpec struct {
	// ArtifactName is the artifact's name, 1..4096 characters.
	ArtifactName string `json:"artifact_name"`
	// DeviceTypes are the compatible device types; at least one.
	DeviceTypes []string `json:"device_types"`
	// Size is the length in bytes of the random payload file; 0 =
	// MinArtifactSize. It must lie in MinArtifactSize..MaxArtifactSize.
	// The artifact around it is a little larger.
	Size int64 `json:"size"`
	// Devices are the target device ids, which must exist; empty = every
	// device, including devices created later.
	Devices []string `json:"devices"`
}

// deployment is one deployment and its per-device state.
type deployment struct {
	Seq          int64    `json:"seq"`
	ID           string   `json:"id"`
	Name         string   `json:"name"`
	ArtifactName string   `json:"artifact_name"`
	Artifacts    []string `json:"artifacts"` // ids of every artifact named ArtifactName at creation
	Targets      []string `json:"targets,omitempty"`
	// Open means every device, including devices created later (the fake
	// control's deployment without devices). It never finishes by itself.
	Open     bool                      `json:"open,omitempty"`
	Force    bool                      `json:"force_installation,omitempty"`
	Created  time.Time                 `json:"created"`
	Finished *time.Time                `json:"finished,omitempty"`
	Aborted  bool                      `json:"aborted"`
	Devices  map[string]*devDeployment `json:"devices"`
}

// devDeployment is the state of one device in a deployment.
type devDeployment struct {
	Status   string `json:"status"`
	SubState string `json:"substate,omitempty"`
	// ArtifactName and DeviceType are what the device reported on its first
	// next call; a change while active gives 409 (§11.13).
	ArtifactName string `json:"artifact_name"`
	DeviceType   string `json:"device_type"`
	// ArtifactID is the artifact handed out; "" for noartifact.
	ArtifactID string                 `json:"artifact_id,omitempty"`
	Created    time.Time              `json:"created"`
	Updated    time.Time              `json:"updated"`
	Started    *time.Time             `json:"started,omitempty"`  // first status past pending
	Finished   *time.Time             `json:"finished,omitempty"` // reached a final status
	Log        []menderapi.LogMessage `json:"log,omitempty"`
}

// setStatus changes the status, stamping Started and Finished.
func (dd *devDeployment) setStatus(st string, now time.Time) {
	dd.Status, dd.Updated = st, now
	if st != StatusPending && dd.Started == nil && st != StatusNoArtifact && st != menderapi.StatusAlreadyInstalled {
		dd.Started = &now
	}
	if finished(st) && dd.Finished == nil {
		dd.Finished = &now
	}
}

func (d *deployment) targets(devID string) bool {
	return d.Open || slices.Contains(d.Targets, devID)
}

// status is pending until a device picked the deployment up, finished once
// aborted or once every target device finished, else inprogress. An open
// deployment has no fixed target list: it stays inprogress until aborted.
func (d *deployment) status() string {
	switch {
	case d.Aborted:
		return DeploymentFinished
	case len(d.Devices) == 0:
		return DeploymentPending
	case d.Open:
		return DeploymentInProgress
	}
	for _, id := range d.Targets {
		if dd := d.Devices[id]; dd == nil || !finished(dd.Status) {
			return DeploymentInProgress
		}
	}
	return DeploymentFinished
}

// markFinished stamps Finished once the deployment is finished.
func (d *deployment) markFinished(now time.Time) {
	if d.Finished == nil && d.status() == DeploymentFinished {
		d.Finished = &now
	}
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

// errNoArtifact means no artifact has the deployment's artifact name.
var errNoArtifact = errors.New("no artifact with that name")

// errStoreStopped ends an artifact generator whose output is not read.
var errStoreStopped = errors.New("artifact store stopped reading")

// AddDeployment creates a deployment of a generated single-file artifact
// named spec.ArtifactName with a random payload of spec.Size bytes and
// returns its id. A stored artifact of that name with the same device types
// is reused. Errors wrap ErrInvalid for a bad spec, ErrNotFound for an
// unknown target device and ErrConflict when a stored artifact of that name
// has other but overlapping device types.
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
	s.mu.Lock()
	reuse, err := s.reusableArtifactLocked(spec)
	s.mu.Unlock()
	if err != nil {
		return "", err
	}
	if !reuse {
		if _, err := s.generateArtifact(spec); err != nil {
			return "", err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkDevicesLocked(spec.Devices); err != nil {
		return "", err
	}
	dep, err := s.createDeploymentLocked(spec.ArtifactName, spec.ArtifactName, slices.Clone(spec.Devices), len(spec.Devices) == 0, false)
	if err != nil {
		return "", err
	}
	return dep.ID, nil
}

// reusableArtifactLocked checks the spec's devices and reports whether a
// stored artifact has the spec's name and device types.
func (s *Server) reusableArtifactLocked(spec DeploymentSpec) (bool, error) {
	if err := s.checkDevicesLocked(spec.Devices); err != nil {
		return false, err
	}
	want := slices.Sorted(slices.Values(spec.DeviceTypes))
	want = slices.Compact(want)
	reuse := false
	for _, a := range s.artifacts {
		if a.Name != spec.ArtifactName {
			continue
		}
		have := slices.Compact(slices.Sorted(slices.Values(a.DeviceTypesCompatible)))
		switch {
		case slices.Equal(have, want):
			reuse = true
		case overlaps(have, want):
			return false, fmt.Errorf("deployment artifact %q: %w: a stored artifact of that name has device types %v", spec.ArtifactName, ErrConflict, a.DeviceTypesCompatible)
		}
	}
	return reuse, nil
}

func (s *Server) checkDevicesLocked(ids []string) error {
	for _, id := range ids {
		if s.devices[id] == nil {
			return fmt.Errorf("deployment devices: device %s: %w", id, ErrNotFound)
		}
	}
	return nil
}

// payloadFileName makes the payload file name from the artifact name: the
// characters an artifact file name allows, at most 100 in all.
func payloadFileName(artifactName string) string {
	b := []byte(artifactName)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ','
		if !ok {
			b[i] = '_'
		}
	}
	return string(b[:min(len(b), 96)]) + ".bin"
}

// generateArtifact writes a single-file artifact for spec into the store,
// streaming: the payload is regenerated from a seed whenever it is read.
func (s *Server) generateArtifact(spec DeploymentSpec) (Image, error) {
	var seed [32]byte
	_, _ = rand.Read(seed[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	name := payloadFileName(spec.ArtifactName)
	payload := artifact.InputFile{Name: name, Mode: 0o644, Size: spec.Size, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(io.LimitReader(mrand.NewChaCha8(seed), spec.Size)), nil
	}}
	opts := artifact.WriteOptions{
		Name: spec.ArtifactName, DeviceTypes: slices.Clone(spec.DeviceTypes), Type: fakePayloadType,
		Files: []artifact.InputFile{
			artifact.FileFromBytes("dest_dir", []byte(fakeDestDir+"\n")),
			artifact.FileFromBytes("filename", []byte(name+"\n")),
			artifact.FileFromBytes("permissions", []byte("0644\n")),
			payload,
		},
		ModTime: s.now(),
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := artifact.Write(pw, opts)
		pw.CloseWithError(err)
		done <- err
	}()
	img, err := s.storeArtifact(pr, uploadOpts{description: "generated by the fake backend", size: -1})
	pr.CloseWithError(errStoreStopped)
	if werr := <-done; werr != nil && !errors.Is(werr, errStoreStopped) {
		return Image{}, fmt.Errorf("generate artifact %q: %w", spec.ArtifactName, werr)
	}
	if err != nil {
		return Image{}, fmt.Errorf("generate artifact %q: %w", spec.ArtifactName, err)
	}
	return img, nil
}

// createDeploymentLocked stores a new deployment of every artifact named
// artifactName; errNoArtifact when there is none. Called with s.mu held.
func (s *Server) createDeploymentLocked(name, artifactName string, targets []string, open, force bool) (*deployment, error) {
	var ids []string
	for _, a := range s.sortedArtifactsLocked() {
		if a.Name == artifactName {
			ids = append(ids, a.ID)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("deployment artifact_name %q: %w", artifactName, errNoArtifact)
	}
	s.seq++
	dep := &deployment{
		Seq: s.seq, ID: newUUID(), Name: name, ArtifactName: artifactName, Artifacts: ids,
		Targets: uniq(targets), Open: open, Force: force, Created: s.now().UTC(),
		Devices: map[string]*devDeployment{},
	}
	s.deployments[dep.ID] = dep
	if err := s.saveLocked(); err != nil {
		delete(s.deployments, dep.ID)
		return nil, err
	}
	s.log.Info("deployment created", "deployment_id", dep.ID, "artifact_name", dep.ArtifactName, "artifacts", len(ids), "devices", len(dep.Targets), "all_devices", open)
	return dep, nil
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
	now := s.now().UTC()
	for _, dd := range dep.Devices {
		if !finished(dd.Status) {
			dd.setStatus(StatusAborted, now)
		}
	}
	dep.markFinished(now)
	return s.saveLocked()
}

// decommissionDeploymentsLocked ends the device's active deployments,
// including those that list it but it never picked up.
func (s *Server) decommissionDeploymentsLocked(devID string) {
	now := s.now().UTC()
	for _, dep := range s.deployments {
		dd := dep.Devices[devID]
		if dd == nil && !dep.Aborted && slices.Contains(dep.Targets, devID) {
			dd = &devDeployment{Status: StatusPending, Created: now, Updated: now}
			dep.Devices[devID] = dd
		}
		if dd != nil && !finished(dd.Status) {
			dd.setStatus(StatusDecommissioned, now)
		}
		dep.markFinished(now)
	}
}

// uniq returns ids without repeats, in first-seen order.
func uniq(ids []string) []string {
	var out []string
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
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
// active, else the oldest deployment not yet handed to the device. Its
// artifact is the smallest (then newest) of the deployment's artifacts
// compatible with the device type: none gives noartifact and 204; one with
// the name the device runs gives already-installed and 204 unless the
// deployment forces installation; otherwise 200. 204 when nothing is left.
func (s *Server) next(w http.ResponseWriter, r *http.Request, rc *reqCtx, artifactName, deviceType string) {
	if !validNextParam(artifactName) || !validNextParam(deviceType) {
		menderapi.WriteError(w, http.StatusBadRequest, "artifact_name and device_type are required, each 1..4096 characters", rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	deps := slices.SortedFunc(maps.Values(s.deployments), func(a, b *deployment) int { return cmp.Compare(a.Seq, b.Seq) })
	now := s.now().UTC()
	for _, dep := range deps {
		dd := dep.Devices[rc.devID]
		if dd == nil || finished(dd.Status) {
			continue
		}
		if dd.ArtifactName != artifactName || dd.DeviceType != deviceType {
			dd.setStatus(menderapi.StatusFailure, now)
			dep.markFinished(now)
			if !s.mutatedLocked(w, rc) {
				return
			}
			s.log.Info("device changed provides during deployment", "device_id", rc.devID, "deployment_id", dep.ID, "request_id", rc.id)
			menderapi.WriteError(w, http.StatusConflict, "the device reported a different artifact_name or device_type during an active deployment", rc.id)
			return
		}
		s.writeInstructionsLocked(w, r, rc, dep, dd)
		return
	}
	for _, dep := range deps {
		if dep.Aborted || !dep.targets(rc.devID) || dep.Devices[rc.devID] != nil {
			continue
		}
		dd := &devDeployment{Status: StatusPending, ArtifactName: artifactName, DeviceType: deviceType, Created: now, Updated: now}
		dep.Devices[rc.devID] = dd
		a := s.pickArtifactLocked(dep, deviceType)
		switch {
		case a == nil:
			dd.setStatus(StatusNoArtifact, now)
		case !dep.Force && artifactName == a.Name:
			dd.ArtifactID = a.ID
			dd.setStatus(menderapi.StatusAlreadyInstalled, now)
		default:
			dd.ArtifactID = a.ID
		}
		dep.markFinished(now)
		if !s.mutatedLocked(w, rc) {
			return
		}
		if dd.Status != StatusPending {
			s.log.Info("deployment skipped", "device_id", rc.devID, "deployment_id", dep.ID, "status", dd.Status, "request_id", rc.id)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		s.log.Info("deployment handed out", "device_id", rc.devID, "deployment_id", dep.ID, "artifact_id", a.ID, "request_id", rc.id)
		s.writeInstructionsLocked(w, r, rc, dep, dd)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// pickArtifactLocked returns the smallest (on a tie the newest) of the
// deployment's artifacts compatible with deviceType; nil when none is.
func (s *Server) pickArtifactLocked(dep *deployment, deviceType string) *storedArtifact {
	var best *storedArtifact
	for _, id := range dep.Artifacts {
		a := s.artifacts[id]
		if a == nil || !slices.Contains(a.DeviceTypesCompatible, deviceType) {
			continue
		}
		if best == nil || a.Size < best.Size || a.Size == best.Size && a.Seq > best.Seq {
			best = a
		}
	}
	return best
}

func (s *Server) writeInstructionsLocked(w http.ResponseWriter, r *http.Request, rc *reqCtx, dep *deployment, dd *devDeployment) {
	a := s.artifacts[dd.ArtifactID]
	if a == nil {
		s.log.Error("artifact of an active deployment is gone", "deployment_id", dep.ID, "artifact_id", dd.ArtifactID, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	uri, expire := s.downloadLinkLocked(r, a.ID)
	writeJSON(w, http.StatusOK, menderapi.DeploymentInstructions{
		ID: dep.ID,
		Artifact: menderapi.DeploymentArtifact{
			ID: a.ID, ArtifactName: a.Name,
			Source:                menderapi.ArtifactSource{URI: uri, Expire: &expire},
			DeviceTypesCompatible: slices.Clone(a.DeviceTypesCompatible),
			Size:                  a.Size, Checksum: a.Checksum,
		},
	})
}

// maxSubStateLen is the longest substate a status report may carry.
const maxSubStateLen = 200

// handleDeploymentStatus is PUT .../deployments/{id}/status (§5.2): 204;
// 400 for a status outside the nine device values; 404 unknown; 409 once
// aborted or decommissioned, and for a change after a final status (a
// repeat of the final status is a 204 no-op, so retries stay harmless).
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
	if finished(dd.Status) && dd.Status != rep.Status {
		menderapi.WriteError(w, http.StatusConflict, fmt.Sprintf("deployment already finished for this device with status %s", dd.Status), rc.id)
		return
	}
	if dd.Status != rep.Status || dd.SubState != rep.SubState {
		now := s.now().UTC()
		dd.SubState = rep.SubState
		dd.setStatus(rep.Status, now)
		dep.markFinished(now)
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
