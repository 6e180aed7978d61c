package fakemender

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// deviceStatuses are the device deployment statuses the statistics count,
// each present even when zero.
var deviceStatuses = []string{
	menderapi.StatusSuccess, StatusPending, menderapi.StatusDownloading, menderapi.StatusRebooting,
	menderapi.StatusInstalling, menderapi.StatusFailure, StatusNoArtifact, menderapi.StatusAlreadyInstalled,
	StatusAborted, menderapi.StatusPauseBeforeInstalling, menderapi.StatusPauseBeforeRebooting,
	menderapi.StatusPauseBeforeCommitting, StatusDecommissioned,
}

// Deployment is a deployment as the management API shows it.
type Deployment struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	ArtifactName string     `json:"artifact_name"`
	Created      time.Time  `json:"created"`
	Finished     *time.Time `json:"finished,omitempty"`
	// Status is DeploymentPending, DeploymentInProgress or DeploymentFinished.
	Status string `json:"status"`
	// DeviceCount is the number of target devices; for a deployment to
	// every device including later ones, the devices that picked it up.
	DeviceCount int                  `json:"device_count"`
	Artifacts   []string             `json:"artifacts"`
	Type        string               `json:"type"`
	Statistics  DeploymentStatistics `json:"statistics"`
}

// DeploymentStatistics holds the device counts by status.
type DeploymentStatistics struct {
	Status map[string]int `json:"status"`
}

// DeviceDeployment is one device's state in a deployment, as
// GET /api/management/v1/deployments/deployments/{id}/devices lists it.
type DeviceDeployment struct {
	ID       string     `json:"id"`
	Status   string     `json:"status"`
	SubState string     `json:"substate,omitempty"`
	Created  time.Time  `json:"created"`
	Updated  time.Time  `json:"updated"`
	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
	// Log reports whether the device uploaded a deployment log.
	Log bool `json:"log"`
	// Image is the artifact handed to the device; nil for noartifact.
	Image *Image `json:"image,omitempty"`
}

// statistics counts device deployments by status. Target devices that
// have not asked yet count as pending (aborted once the deployment is).
func (d *deployment) statistics() map[string]int {
	m := make(map[string]int, len(deviceStatuses))
	for _, st := range deviceStatuses {
		m[st] = 0
	}
	for _, dd := range d.Devices {
		m[dd.Status]++
	}
	for _, id := range d.Targets {
		if d.Devices[id] == nil {
			if d.Aborted {
				m[StatusAborted]++
			} else {
				m[StatusPending]++
			}
		}
	}
	return m
}

func (d *deployment) view() Deployment {
	n := len(d.Targets)
	if d.Open {
		n = len(d.Devices)
	}
	var fin *time.Time
	if d.Finished != nil {
		t := *d.Finished
		fin = &t
	}
	return Deployment{
		ID: d.ID, Name: d.Name, ArtifactName: d.ArtifactName, Created: d.Created, Finished: fin,
		Status: d.status(), DeviceCount: n, Artifacts: slices.Clone(d.Artifacts), Type: "software",
		Statistics: DeploymentStatistics{Status: d.statistics()},
	}
}

// deviceDeploymentsLocked lists the devices that picked up dep, by id.
func (s *Server) deviceDeploymentsLocked(dep *deployment) []DeviceDeployment {
	out := []DeviceDeployment{}
	for _, id := range sortedKeys(dep.Devices) {
		dd := dep.Devices[id]
		v := DeviceDeployment{
			ID: id, Status: dd.Status, SubState: dd.SubState, Created: dd.Created, Updated: dd.Updated,
			Started: dd.Started, Finished: dd.Finished, Log: len(dd.Log) > 0,
		}
		if a := s.artifacts[dd.ArtifactID]; a != nil {
			im := a.view()
			v.Image = &im
		}
		out = append(out, v)
	}
	return out
}

// Deployments returns every deployment, newest first.
func (s *Server) Deployments() []Deployment {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Deployment{}
	for _, d := range s.newestDeploymentsLocked() {
		out = append(out, d.view())
	}
	return out
}

func (s *Server) newestDeploymentsLocked() []*deployment {
	return slices.SortedFunc(maps.Values(s.deployments), func(a, b *deployment) int {
		return cmp.Or(b.Created.Compare(a.Created), cmp.Compare(b.Seq, a.Seq))
	})
}

// newDeploymentRequest is the body of POST .../deployments/deployments and
// .../deployments/group/{name}. Unknown fields are ignored, as Mender does.
type newDeploymentRequest struct {
	Name              string   `json:"name"`
	ArtifactName      string   `json:"artifact_name"`
	Devices           []string `json:"devices"`
	AllDevices        bool     `json:"all_devices"`
	ForceInstallation bool     `json:"force_installation"`
}

// decodeNewDeployment reads and checks the common fields; it answers 400
// itself and reports false on failure.
func decodeNewDeployment(w http.ResponseWriter, r *http.Request, rc *reqCtx) (newDeploymentRequest, bool) {
	var nd newDeploymentRequest
	body, ok := readBody(w, r, rc)
	if !ok {
		return nd, false
	}
	if err := json.Unmarshal(body, &nd); err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, "failed to decode deployment: "+err.Error(), rc.id)
		return nd, false
	}
	for field, v := range map[string]string{"name": nd.Name, "artifact_name": nd.ArtifactName} {
		if n := utf8.RuneCountInString(v); n < 1 || n > 4096 {
			menderapi.WriteError(w, http.StatusBadRequest, field+": required, 1..4096 characters", rc.id)
			return nd, false
		}
	}
	return nd, true
}

// handleCreateDeployment is POST /api/management/v1/deployments/deployments:
// devices XOR all_devices (accepted devices now). 201 with Location; 400
// for a bad body or no device; 422 when no artifact has the name.
func (s *Server) handleCreateDeployment(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	nd, ok := decodeNewDeployment(w, r, rc)
	if !ok {
		return
	}
	if (len(nd.Devices) > 0) == nd.AllDevices {
		menderapi.WriteError(w, http.StatusBadRequest, "give either devices (a non-empty list of device ids) or all_devices true, not both", rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	targets := nd.Devices
	if nd.AllDevices {
		targets = s.acceptedDevicesLocked(func(*device) bool { return true })
		if len(targets) == 0 {
			menderapi.WriteError(w, http.StatusBadRequest, "all_devices: no accepted device found", rc.id)
			return
		}
	} else {
		for _, id := range targets {
			if s.devices[id] == nil {
				menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("devices: device %s not found", id), rc.id)
				return
			}
		}
	}
	s.createDeployment(w, rc, nd, targets)
}

// handleCreateGroupDeployment is POST .../deployments/group/{name}: the
// accepted devices whose system attribute group is name.
func (s *Server) handleCreateGroupDeployment(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	nd, ok := decodeNewDeployment(w, r, rc)
	if !ok {
		return
	}
	if len(nd.Devices) > 0 || nd.AllDevices {
		menderapi.WriteError(w, http.StatusBadRequest, "a group deployment takes neither devices nor all_devices", rc.id)
		return
	}
	group := rc.params["name"]
	s.mu.Lock()
	defer s.mu.Unlock()
	targets := s.acceptedDevicesLocked(func(d *device) bool { return d.Group == group })
	if len(targets) == 0 {
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("group %q: no accepted device found", group), rc.id)
		return
	}
	s.createDeployment(w, rc, nd, targets)
}

// acceptedDevicesLocked returns the ids of accepted devices that keep
// passes, in creation order.
func (s *Server) acceptedDevicesLocked(keep func(*device) bool) []string {
	var out []string
	for _, d := range s.sortedDevicesLocked() {
		if d.status() == menderapi.DevStatusAccepted && keep(d) {
			out = append(out, d.ID)
		}
	}
	return out
}

// createDeployment finishes both create handlers. Called with s.mu held.
func (s *Server) createDeployment(w http.ResponseWriter, rc *reqCtx, nd newDeploymentRequest, targets []string) {
	dep, err := s.createDeploymentLocked(nd.Name, nd.ArtifactName, targets, false, nd.ForceInstallation)
	switch {
	case errors.Is(err, errNoArtifact):
		menderapi.WriteError(w, http.StatusUnprocessableEntity, fmt.Sprintf("no artifact named %q: upload one first", nd.ArtifactName), rc.id)
		return
	case err != nil:
		s.log.Error("create deployment", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	w.Header().Set("Location", pathMgmtDeployments+dep.ID)
	w.WriteHeader(http.StatusCreated)
}

// handleListDeployments is GET .../deployments/deployments: status and
// search (name substring) filters, paged, newest first.
func (s *Server) handleListDeployments(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	pg, ok := parsePagingOrFail(w, r, rc)
	if !ok {
		return
	}
	q := r.URL.Query()
	status, search := q.Get("status"), q.Get("search")
	switch status {
	case "", DeploymentPending, DeploymentInProgress, DeploymentFinished:
	default:
		menderapi.WriteError(w, http.StatusBadRequest, "invalid status query: want pending, inprogress or finished", rc.id)
		return
	}
	s.mu.Lock()
	out := []Deployment{}
	for _, d := range s.newestDeploymentsLocked() {
		if (status == "" || d.status() == status) && strings.Contains(d.Name, search) {
			out = append(out, d.view())
		}
	}
	s.mu.Unlock()
	writePage(w, r, pg, out)
}

// mgmtDeployment looks up the {id} deployment and runs f with s.mu held;
// 404 when unknown.
func (s *Server) mgmtDeployment(w http.ResponseWriter, rc *reqCtx, f func(*deployment)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dep := s.deployments[rc.params["id"]]
	if dep == nil {
		menderapi.WriteError(w, http.StatusNotFound, "deployment not found", rc.id)
		return
	}
	f(dep)
}

// handleGetDeployment is GET .../deployments/{id}.
func (s *Server) handleGetDeployment(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mgmtDeployment(w, rc, func(dep *deployment) { writeJSON(w, http.StatusOK, dep.view()) })
}

// handleDeploymentStatistics is GET .../deployments/{id}/statistics: a
// flat map of every device status to its count.
func (s *Server) handleDeploymentStatistics(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mgmtDeployment(w, rc, func(dep *deployment) { writeJSON(w, http.StatusOK, dep.statistics()) })
}

// handleMgmtDeploymentDevices is GET .../deployments/{id}/devices: the
// devices that picked the deployment up.
func (s *Server) handleMgmtDeploymentDevices(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mgmtDeployment(w, rc, func(dep *deployment) { writeJSON(w, http.StatusOK, s.deviceDeploymentsLocked(dep)) })
}

// handleMgmtDeploymentDevicesPaged is GET .../deployments/{id}/devices/list
// with paging and a status filter.
func (s *Server) handleMgmtDeploymentDevicesPaged(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	pg, ok := parsePagingOrFail(w, r, rc)
	if !ok {
		return
	}
	status := r.URL.Query().Get("status")
	if status != "" && !slices.Contains(deviceStatuses, status) {
		menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("invalid status query %q: want one of %s", status, strings.Join(deviceStatuses, ", ")), rc.id)
		return
	}
	s.mgmtDeployment(w, rc, func(dep *deployment) {
		all := s.deviceDeploymentsLocked(dep)
		if status != "" {
			all = slices.DeleteFunc(all, func(d DeviceDeployment) bool { return d.Status != status })
		}
		writePage(w, r, pg, all)
	})
}

// handleMgmtDeviceLog is GET .../deployments/{id}/devices/{devid}/log: the
// uploaded log as text, one "TIMESTAMP LEVEL: MESSAGE" line per message.
func (s *Server) handleMgmtDeviceLog(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mgmtDeployment(w, rc, func(dep *deployment) {
		dd := dep.Devices[rc.params["devid"]]
		if dd == nil || len(dd.Log) == 0 {
			menderapi.WriteError(w, http.StatusNotFound, "no deployment log for this device", rc.id)
			return
		}
		var b strings.Builder
		for _, m := range dd.Log {
			fmt.Fprintf(&b, "%s %s: %s\n", m.Timestamp.UTC().Format(time.RFC3339Nano), m.Level, m.Message)
		}
		w.Header().Set(menderapi.HeaderContentType, "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(b.String()))
	})
}

// handleMgmtDeploymentStatus is the management abort:
// PUT .../deployments/{id}/status {"status":"aborted"} → 204; 400 for any
// other body; 404; 422 when the deployment already finished.
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
	s.mgmtDeployment(w, rc, func(dep *deployment) {
		if dep.status() == DeploymentFinished {
			menderapi.WriteError(w, http.StatusUnprocessableEntity, "deployment already finished", rc.id)
			return
		}
		if err := s.abortLocked(dep.ID); err != nil {
			s.log.Error("save state", "err", err, "request_id", rc.id)
			menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
