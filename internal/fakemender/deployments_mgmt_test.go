package fakemender_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

const pathDeployments = "/api/management/v1/deployments/deployments"

func postDeployment(t *testing.T, s http.Handler, mgmt, path string, body any) *httptest.ResponseRecorder {
	t.Helper()
	return do(t, s, req{method: "POST", path: path, body: mustJSON(t, body), hdr: bearerHdr(mgmt)})
}

// createDeployment creates a deployment over the API and returns its id.
func createDeployment(t *testing.T, s http.Handler, mgmt string, body any) string {
	t.Helper()
	rec := postDeployment(t, s, mgmt, pathDeployments, body)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	loc := rec.Header().Get("Location")
	require.True(t, strings.HasPrefix(loc, pathDeployments+"/"), "Location %q", loc)
	assert.Empty(t, rec.Body.String())
	return strings.TrimPrefix(loc, pathDeployments+"/")
}

func deviceStatus(t *testing.T, s http.Handler, tok, depID, st string) int {
	t.Helper()
	return do(t, s, req{method: "PUT", path: menderapi.DeploymentStatusPath(depID), body: mustJSON(t, menderapi.StatusReport{Status: st}), hdr: bearerHdr(tok)}).Code
}

func getDeployment(t *testing.T, s http.Handler, mgmt, id string) fakemender.Deployment {
	t.Helper()
	var d fakemender.Deployment
	require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathDeployments+"/"+id, &d).Code)
	return d
}

func TestCreateDeployment(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, devA, _ := acceptedDevice(t, s, "02:00:00:00:00:80")
	_, devB, _ := acceptedDevice(t, s, "02:00:00:00:00:81")
	pending := newDevice(t, "02:00:00:00:00:82")
	require.Equal(t, http.StatusUnauthorized, pending.auth(t, s).Code)
	_, err := s.UploadArtifact(bytes.NewReader(buildArtifact(t, "r2", []string{"qemu"}, "single-file", artifact.Gzip, 100)), "")
	require.NoError(t, err)
	require.Equal(t, http.StatusNoContent, do(t, s, req{method: "PUT", path: "/api/management/v1/inventory/devices/" + devB + "/group", body: []byte(`{"group":"lab"}`), hdr: bearerHdr(mgmt)}).Code)

	tests := []struct {
		name    string
		path    string
		body    map[string]any
		want    int
		msg     string
		targets []string
	}{
		{"devices", pathDeployments, map[string]any{"name": "d1", "artifact_name": "r2", "devices": []string{devA}}, http.StatusCreated, "", []string{devA}},
		{"all devices", pathDeployments, map[string]any{"name": "d2", "artifact_name": "r2", "all_devices": true, "extra": 1}, http.StatusCreated, "", []string{devA, devB}},
		{"group", pathDeployments + "/group/lab", map[string]any{"name": "d3", "artifact_name": "r2"}, http.StatusCreated, "", []string{devB}},
		{"empty group", pathDeployments + "/group/nobody", map[string]any{"name": "d4", "artifact_name": "r2"}, http.StatusBadRequest, "no accepted device", nil},
		{"group with devices", pathDeployments + "/group/lab", map[string]any{"name": "d4", "artifact_name": "r2", "devices": []string{devA}}, http.StatusBadRequest, "neither", nil},
		{"both", pathDeployments, map[string]any{"name": "d4", "artifact_name": "r2", "devices": []string{devA}, "all_devices": true}, http.StatusBadRequest, "not both", nil},
		{"neither", pathDeployments, map[string]any{"name": "d4", "artifact_name": "r2"}, http.StatusBadRequest, "not both", nil},
		{"unknown device", pathDeployments, map[string]any{"name": "d4", "artifact_name": "r2", "devices": []string{"nope"}}, http.StatusBadRequest, "device nope not found", nil},
		{"no name", pathDeployments, map[string]any{"artifact_name": "r2", "all_devices": true}, http.StatusBadRequest, "name", nil},
		{"no artifact name", pathDeployments, map[string]any{"name": "d4", "all_devices": true}, http.StatusBadRequest, "artifact_name", nil},
		{"unknown artifact", pathDeployments, map[string]any{"name": "d4", "artifact_name": "r9", "all_devices": true}, http.StatusUnprocessableEntity, `no artifact named "r9"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := postDeployment(t, s, mgmt, tt.path, tt.body)
			require.Equal(t, tt.want, rec.Code, rec.Body.String())
			if tt.want != http.StatusCreated {
				assert.Contains(t, errorMsg(t, rec).Error, tt.msg)
				return
			}
			id := strings.TrimPrefix(rec.Header().Get("Location"), pathDeployments+"/")
			d := getDeployment(t, s, mgmt, id)
			assert.Equal(t, tt.body["name"], d.Name)
			assert.Equal(t, "r2", d.ArtifactName)
			assert.Equal(t, fakemender.DeploymentPending, d.Status)
			assert.Equal(t, len(tt.targets), d.DeviceCount)
			assert.Equal(t, len(tt.targets), d.Statistics.Status["pending"])
			assert.Equal(t, "software", d.Type)
			assert.Len(t, d.Artifacts, 1)
			assert.Nil(t, d.Finished)
		})
	}
	rec := postDeployment(t, s, mgmt, pathDeployments, map[string]any{"name": strings.Repeat("n", 4097), "artifact_name": "r2", "all_devices": true})
	assert.Equal(t, http.StatusBadRequest, rec.Code, "name over 4096 characters")
	assert.Equal(t, http.StatusNotFound, getJSON(t, s, mgmt, pathDeployments+"/nope", nil).Code)
}

// TestNextPicksArtifact: among same-named artifacts the one compatible
// with the device type; noartifact; already-installed; force.
func TestNextPicksArtifact(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, devQ, tokQ := acceptedDevice(t, s, "02:00:00:00:00:83")
	_, devR, tokR := acceptedDevice(t, s, "02:00:00:00:00:84")
	_, devX, tokX := acceptedDevice(t, s, "02:00:00:00:00:85")
	upload := func(types []string, size int) fakemender.Image {
		im, err := s.UploadArtifact(bytes.NewReader(buildArtifact(t, "r2", types, "single-file", artifact.None, size)), "")
		require.NoError(t, err)
		return im
	}
	qemu := upload([]string{"qemu"}, 9000)
	rpi := upload([]string{"rpi4", "rpi5"}, 5000)
	_, err := s.UploadArtifact(bytes.NewReader(buildArtifact(t, "r2", []string{"rpi5", "x"}, "single-file", artifact.None, 100)), "")
	require.ErrorIs(t, err, fakemender.ErrConflict, "rpi5 is taken for r2")

	depID := createDeployment(t, s, mgmt, map[string]any{"name": "d", "artifact_name": "r2", "devices": []string{devQ, devR, devX}})
	assert.ElementsMatch(t, []string{qemu.ID, rpi.ID}, getDeployment(t, s, mgmt, depID).Artifacts)
	next := func(tok, name, devType string) *httptest.ResponseRecorder {
		return do(t, s, req{method: "GET", path: nextGet(name, devType), hdr: bearerHdr(tok)})
	}
	rec := next(tokQ, "r1", "qemu")
	require.Equal(t, http.StatusOK, rec.Code)
	di := decodeInstructions(t, rec.Body.Bytes())
	assert.Equal(t, qemu.ID, di.Artifact.ID)
	assert.Equal(t, qemu.Size, di.Artifact.Size)
	assert.Equal(t, []string{"qemu"}, di.Artifact.DeviceTypesCompatible)

	rec = next(tokR, "r1", "rpi5")
	require.Equal(t, http.StatusOK, rec.Code)
	di = decodeInstructions(t, rec.Body.Bytes())
	assert.Equal(t, rpi.ID, di.Artifact.ID)
	assert.Equal(t, rpi.Size, di.Artifact.Size)
	data, err := s.ArtifactBytes(rpi.ID)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	assert.Equal(t, hex.EncodeToString(sum[:]), di.Artifact.Checksum, "checksum of the whole artifact file")

	assert.Equal(t, http.StatusNoContent, next(tokX, "r1", "bbb").Code)
	assert.Equal(t, "noartifact", s.DeviceDeploymentStatus(depID, devX))

	// already-installed unless forced.
	dep2 := createDeployment(t, s, mgmt, map[string]any{"name": "d2", "artifact_name": "r2", "devices": []string{devX}})
	assert.Equal(t, http.StatusNoContent, next(tokX, "r2", "rpi4").Code)
	assert.Equal(t, "already-installed", s.DeviceDeploymentStatus(dep2, devX))
	assert.Equal(t, fakemender.DeploymentFinished, getDeployment(t, s, mgmt, dep2).Status)

	dep3 := createDeployment(t, s, mgmt, map[string]any{"name": "d3", "artifact_name": "r2", "devices": []string{devX}, "force_installation": true})
	rec = next(tokX, "r2", "rpi4")
	require.Equal(t, http.StatusOK, rec.Code, "forced")
	di = decodeInstructions(t, rec.Body.Bytes())
	assert.Equal(t, dep3, di.ID)
	assert.Equal(t, rpi.ID, di.Artifact.ID)
}

// TestDeploymentLifecycle: statuses, statistics, devices, logs, abort.
func TestDeploymentLifecycle(t *testing.T) {
	clk := newClock()
	s := newServer(t, fakemender.Options{Now: clk.Now})
	mgmt := login(t, s)
	_, devA, tokA := acceptedDevice(t, s, "02:00:00:00:00:86")
	_, devB, tokB := acceptedDevice(t, s, "02:00:00:00:00:87")
	im, err := s.UploadArtifact(bytes.NewReader(buildArtifact(t, "r2", []string{"qemu"}, "single-file", artifact.Gzip, 100)), "")
	require.NoError(t, err)
	depID := createDeployment(t, s, mgmt, map[string]any{"name": "rollout", "artifact_name": "r2", "all_devices": true})
	stats := func() map[string]int {
		var m map[string]int
		require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathDeployments+"/"+depID+"/statistics", &m).Code)
		return m
	}
	st := stats()
	assert.Len(t, st, 13, "every status, zeros included: %v", st)
	assert.Equal(t, 2, st["pending"])
	assert.Equal(t, 0, st["success"])
	assert.Contains(t, st, "pause_before_committing")

	clk.Advance(time.Second)
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tokA)}).Code)
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tokB)}).Code)
	assert.Equal(t, fakemender.DeploymentInProgress, getDeployment(t, s, mgmt, depID).Status)

	for _, step := range []struct {
		tok, status string
	}{{tokA, "downloading"}, {tokA, "installing"}, {tokA, "rebooting"}, {tokA, "success"}, {tokB, "downloading"}, {tokB, "failure"}} {
		clk.Advance(time.Second)
		require.Equal(t, http.StatusNoContent, deviceStatus(t, s, step.tok, depID, step.status), step.status)
	}
	st = stats()
	assert.Equal(t, 1, st["success"])
	assert.Equal(t, 1, st["failure"])
	assert.Equal(t, 0, st["pending"])
	assert.Equal(t, 0, st["downloading"])

	assert.Equal(t, http.StatusConflict, deviceStatus(t, s, tokA, depID, "installing"), "no way back from success")
	assert.Equal(t, http.StatusNoContent, deviceStatus(t, s, tokA, depID, "success"), "a repeated final status is a no-op")

	d := getDeployment(t, s, mgmt, depID)
	assert.Equal(t, fakemender.DeploymentFinished, d.Status)
	require.NotNil(t, d.Finished)
	assert.Equal(t, clk.Now(), *d.Finished)
	assert.Equal(t, 2, d.DeviceCount)
	assert.Equal(t, 1, d.Statistics.Status["failure"])

	// Device deployments, with the image and the log flag.
	logBody := `{"messages":[{"timestamp":"2026-01-02T03:04:05.5Z","level":"info","message":"Installing"},{"timestamp":"2026-01-02T03:04:09Z","level":"error","message":"exit 1"}]}`
	require.Equal(t, http.StatusNoContent, do(t, s, req{method: "PUT", path: menderapi.DeploymentLogPath(depID), body: []byte(logBody), hdr: bearerHdr(tokB)}).Code)
	var dds []fakemender.DeviceDeployment
	require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathDeployments+"/"+depID+"/devices", &dds).Code)
	require.Len(t, dds, 2)
	byID := map[string]fakemender.DeviceDeployment{dds[0].ID: dds[0], dds[1].ID: dds[1]}
	a, b := byID[devA], byID[devB]
	assert.Equal(t, "success", a.Status)
	assert.False(t, a.Log)
	assert.True(t, b.Log)
	require.NotNil(t, a.Image)
	assert.Equal(t, im.ID, a.Image.ID)
	require.NotNil(t, a.Started)
	require.NotNil(t, a.Finished)
	assert.True(t, a.Finished.After(*a.Started))

	rec := getJSON(t, s, mgmt, pathDeployments+"/"+depID+"/devices/list?status=failure", &dds)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Len(t, dds, 1)
	assert.Equal(t, devB, dds[0].ID)
	assert.Equal(t, "1", rec.Header().Get("X-Total-Count"))
	rec = getJSON(t, s, mgmt, pathDeployments+"/"+depID+"/devices/list?per_page=1", &dds)
	require.Len(t, dds, 1)
	assert.Equal(t, "2", rec.Header().Get("X-Total-Count"))
	assert.Contains(t, rec.Header().Get("Link"), `rel="next"`)
	assert.Equal(t, http.StatusBadRequest, getJSON(t, s, mgmt, pathDeployments+"/"+depID+"/devices/list?status=bogus", nil).Code)

	rec = do(t, s, req{method: "GET", path: pathDeployments + "/" + depID + "/devices/" + devB + "/log", hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "text/plain; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Equal(t, "2026-01-02T03:04:05.5Z info: Installing\n2026-01-02T03:04:09Z error: exit 1\n", rec.Body.String())
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "GET", path: pathDeployments + "/" + depID + "/devices/" + devA + "/log", hdr: bearerHdr(mgmt)}).Code)

	// Abort: 204 on an active deployment, 422 once finished.
	abort := func(id string) int {
		return do(t, s, req{method: "PUT", path: pathDeployments + "/" + id + "/status", body: []byte(`{"status":"aborted"}`), hdr: bearerHdr(mgmt)}).Code
	}
	assert.Equal(t, http.StatusUnprocessableEntity, abort(depID), "already finished")
	other := createDeployment(t, s, mgmt, map[string]any{"name": "second", "artifact_name": "r2", "devices": []string{devA, devB}})
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tokA)}).Code)
	require.Equal(t, http.StatusNoContent, abort(other))
	d = getDeployment(t, s, mgmt, other)
	assert.Equal(t, fakemender.DeploymentFinished, d.Status)
	assert.Equal(t, 2, d.Statistics.Status["aborted"], "the active device and the one that never asked")
	assert.Equal(t, http.StatusUnprocessableEntity, abort(other))
	assert.Equal(t, http.StatusNotFound, abort("nope"))

	// The list: newest first, status and search filters, paging.
	var list []fakemender.Deployment
	rec = getJSON(t, s, mgmt, pathDeployments, &list)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Len(t, list, 2)
	assert.Equal(t, []string{"second", "rollout"}, []string{list[0].Name, list[1].Name})
	assert.Equal(t, "2", rec.Header().Get("X-Total-Count"))
	getJSON(t, s, mgmt, pathDeployments+"?search=roll", &list)
	require.Len(t, list, 1)
	assert.Equal(t, depID, list[0].ID)
	getJSON(t, s, mgmt, pathDeployments+"?status=inprogress", &list)
	assert.Empty(t, list)
	rec = getJSON(t, s, mgmt, pathDeployments+"?status=finished&per_page=1&page=2", &list)
	require.Len(t, list, 1)
	assert.Equal(t, "rollout", list[0].Name)
	assert.Contains(t, rec.Header().Get("Link"), `rel="prev"`)
	assert.Equal(t, http.StatusBadRequest, getJSON(t, s, mgmt, pathDeployments+"?status=done", nil).Code)
	assert.Len(t, s.Deployments(), 2)
}

// TestOpenDeploymentStatus: a fake-control deployment for every device
// stays inprogress once picked up, until aborted.
func TestOpenDeploymentStatus(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:88")
	depID, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	assert.Equal(t, fakemender.DeploymentPending, getDeployment(t, s, mgmt, depID).Status)
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)
	require.Equal(t, http.StatusNoContent, deviceStatus(t, s, tok, depID, "success"))
	d := getDeployment(t, s, mgmt, depID)
	assert.Equal(t, fakemender.DeploymentInProgress, d.Status, "later devices may still come")
	assert.Equal(t, 1, d.DeviceCount)
	s.Abort(depID)
	assert.Equal(t, fakemender.DeploymentFinished, getDeployment(t, s, mgmt, depID).Status)
}

func TestInventoryList(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	var ids []string
	for i := range 5 {
		_, id, tok := acceptedDevice(t, s, "02:00:00:00:01:0"+strconv.Itoa(i))
		ids = append(ids, id)
		dt := "qemu"
		if i%2 == 1 {
			dt = "rpi4"
		}
		body := `[{"name":"device_type","value":"` + dt + `"},{"name":"n","value":` + strconv.Itoa(i) + `},{"name":"tags","value":["a","t` + strconv.Itoa(i) + `"]}]`
		require.Equal(t, http.StatusOK, do(t, s, req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(body), hdr: bearerHdr(tok)}).Code)
	}
	require.NoError(t, s.SetGroup(ids[3], "lab"))
	assert.ErrorIs(t, s.SetGroup(ids[3], "bad group!"), fakemender.ErrInvalid)
	assert.ErrorIs(t, s.SetGroup("nope", "lab"), fakemender.ErrNotFound)
	sorted := append([]string(nil), ids...)
	slices.Sort(sorted)

	list := func(q string) ([]menderapi.InventoryDevice, *httptest.ResponseRecorder) {
		var out []menderapi.InventoryDevice
		rec := getJSON(t, s, mgmt, "/api/management/v1/inventory/devices"+q, &out)
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return out, rec
	}
	idsOf := func(ds []menderapi.InventoryDevice) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	got, rec := list("")
	assert.Equal(t, sorted, idsOf(got), "sorted by id")
	assert.Equal(t, "5", rec.Header().Get("X-Total-Count"))
	got, rec = list("?per_page=2&page=2")
	assert.Equal(t, sorted[2:4], idsOf(got))
	assert.Contains(t, rec.Header().Get("Link"), `rel="prev"`)
	assert.Contains(t, rec.Header().Get("Link"), `rel="next"`)
	assert.Contains(t, rec.Header().Get("Link"), `page=3&per_page=2>; rel="last"`)

	got, _ = list("?group=lab")
	assert.Equal(t, []string{ids[3]}, idsOf(got))
	assert.Contains(t, got[0].Attributes, menderapi.InventoryMgmtAttribute{Name: "group", Value: "lab", Scope: "system"})
	got, rec = list("?device_type=rpi4")
	assert.ElementsMatch(t, []string{ids[1], ids[3]}, idsOf(got))
	assert.Equal(t, "2", rec.Header().Get("X-Total-Count"))
	got, _ = list("?n=eq:2")
	assert.Equal(t, []string{ids[2]}, idsOf(got), "numbers match their decimal form")
	got, _ = list("?tags=t4")
	assert.Equal(t, []string{ids[4]}, idsOf(got), "arrays match an element")
	got, _ = list("?identity/mac=02:00:00:00:01:00&device_type=qemu")
	assert.Equal(t, []string{ids[0]}, idsOf(got))
	got, _ = list("?device_type=rpi4&group=nope")
	assert.Empty(t, got)
	for _, q := range []string{"?per_page=501", "?page=0", "?bogus/x=1"} {
		assert.Equal(t, http.StatusBadRequest, getJSON(t, s, mgmt, "/api/management/v1/inventory/devices"+q, nil).Code, q)
	}
	assert.Equal(t, http.StatusBadRequest, do(t, s, req{method: "PUT", path: "/api/management/v1/inventory/devices/" + ids[0] + "/group", body: []byte(`{"group":"a b"}`), hdr: bearerHdr(mgmt)}).Code)
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "PUT", path: "/api/management/v1/inventory/devices/nope/group", body: []byte(`{"group":"lab"}`), hdr: bearerHdr(mgmt)}).Code)
}
