package fakemender_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func nextGet(artifact, devType string) string {
	q := url.Values{}
	if artifact != "" {
		q.Set("artifact_name", artifact)
	}
	if devType != "" {
		q.Set("device_type", devType)
	}
	return menderapi.PathNextV1 + "?" + q.Encode()
}

func decodeInstructions(t *testing.T, body []byte) menderapi.DeploymentInstructions {
	t.Helper()
	var di menderapi.DeploymentInstructions
	require.NoError(t, json.Unmarshal(body, &di))
	require.NoError(t, di.Validate(), "the Go 3.x client's required fields")
	return di
}

func TestNextParams(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:40")
	long := strings.Repeat("a", 4097)
	tests := []struct {
		name string
		r    req
		want int
	}{
		{"GET both", req{"GET", nextGet("r1", "qemu"), nil, nil}, http.StatusNoContent},
		{"GET no artifact_name", req{"GET", nextGet("", "qemu"), nil, nil}, http.StatusBadRequest},
		{"GET no device_type", req{"GET", nextGet("r1", ""), nil, nil}, http.StatusBadRequest},
		{"GET 4097 characters", req{"GET", nextGet(long, "qemu"), nil, nil}, http.StatusBadRequest},
		{"GET 4096 characters", req{"GET", nextGet(long[1:], "qemu"), nil, nil}, http.StatusNoContent},
		{"POST v1", req{"POST", menderapi.PathNextV1, []byte(`{"artifact_name":"r1","device_type":"qemu"}`), nil}, http.StatusNoContent},
		{"POST v1 flattened provides", req{"POST", menderapi.PathNextV1, []byte(`{"artifact_name":"r1","device_type":"qemu","rootfs-image.version":"r1"}`), nil}, http.StatusNoContent},
		{"POST v1 missing device_type", req{"POST", menderapi.PathNextV1, []byte(`{"artifact_name":"r1"}`), nil}, http.StatusBadRequest},
		{"POST v1 bad JSON", req{"POST", menderapi.PathNextV1, []byte(`{`), nil}, http.StatusBadRequest},
		{"§11.12 v2 is 404 on OSS", req{"POST", menderapi.PathNextV2, []byte(`{"device_provides":{"artifact_name":"r1","device_type":"qemu"}}`), nil}, http.StatusNotFound},
		{"no token", req{"GET", nextGet("r1", "qemu"), nil, map[string]string{"Authorization": ""}}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			if r.hdr == nil {
				r.hdr = bearerHdr(tok)
			}
			rec := do(t, s, r)
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
		})
	}
}

func TestNextV2Enabled(t *testing.T) {
	s := newServer(t, fakemender.Options{EnableV2Next: true})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:41")
	depID, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	body := []byte(`{"device_provides":{"artifact_name":"r1","device_type":"qemu"},"update_control_map":true}`)
	rec := do(t, s, req{method: "POST", path: menderapi.PathNextV2, body: body, hdr: bearerHdr(tok)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	assert.Equal(t, depID, decodeInstructions(t, rec.Body.Bytes()).ID)
	rec = do(t, s, req{method: "POST", path: menderapi.PathNextV2, body: []byte(`{"device_provides":{}}`), hdr: bearerHdr(tok)})
	assert.Equal(t, http.StatusBadRequest, rec.Code)
}

// TestDeploymentFlow covers §5: hand-out, repeat while active, statuses,
// already-installed, noartifact, targets and §11.13.
func TestDeploymentFlow(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, devA, tokA := acceptedDevice(t, s, "02:00:00:00:00:42")
	_, devB, tokB := acceptedDevice(t, s, "02:00:00:00:00:43")
	next := func(tok, artifact, devType string) (int, []byte) {
		rec := do(t, s, req{method: "GET", path: nextGet(artifact, devType), hdr: bearerHdr(tok)})
		return rec.Code, rec.Body.Bytes()
	}
	status := func(tok, depID, st string) int {
		return do(t, s, req{method: "PUT", path: menderapi.DeploymentStatusPath(depID), body: mustJSON(t, menderapi.StatusReport{Status: st}), hdr: bearerHdr(tok)}).Code
	}

	code, _ := next(tokA, "r1", "qemu")
	require.Equal(t, http.StatusNoContent, code, "nothing to do")

	_, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}, Devices: []string{"nope"}})
	require.ErrorIs(t, err, fakemender.ErrNotFound)
	depID, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu", "rpi4"}, Devices: []string{devA}})
	require.NoError(t, err)

	code, body := next(tokA, "r1", "qemu")
	require.Equal(t, http.StatusOK, code)
	di := decodeInstructions(t, body)
	assert.Equal(t, depID, di.ID)
	assert.Equal(t, "r2", di.Artifact.ArtifactName)
	assert.Equal(t, []string{"qemu", "rpi4"}, di.Artifact.DeviceTypesCompatible)
	arts := s.Artifacts()
	require.Len(t, arts, 1)
	assert.Equal(t, arts[0].ID, di.Artifact.ID)
	assert.Equal(t, arts[0].Size, di.Artifact.Size)
	assert.Greater(t, di.Artifact.Size, int64(fakemender.MinArtifactSize), "the artifact wraps a MinArtifactSize payload")
	assert.Len(t, di.Artifact.Checksum, 64)
	require.NotNil(t, di.Artifact.Source.Expire)
	assert.Equal(t, "pending", s.DeviceDeploymentStatus(depID, devA))

	code, _ = next(tokB, "r1", "qemu")
	assert.Equal(t, http.StatusNoContent, code, "device B is not targeted")

	for _, st := range []string{"downloading", "installing"} {
		require.Equal(t, http.StatusNoContent, status(tokA, depID, st))
		code, body = next(tokA, "r1", "qemu")
		require.Equal(t, http.StatusOK, code, "same instructions while active")
		assert.Equal(t, di.ID, decodeInstructions(t, body).ID)
	}
	require.Equal(t, http.StatusNoContent, status(tokA, depID, "installing"), "no-op status is 204")
	assert.Equal(t, http.StatusNotFound, status(tokB, depID, "installing"), "not B's deployment")
	assert.Equal(t, http.StatusNotFound, status(tokA, "unknown", "installing"))
	require.Equal(t, http.StatusNoContent, status(tokA, depID, "success"))
	assert.Equal(t, "success", s.DeviceDeploymentStatus(depID, devA))
	code, _ = next(tokA, "r2", "qemu")
	assert.Equal(t, http.StatusNoContent, code, "finished deployments are not handed out again")

	// The same name with overlapping but different device types conflicts.
	_, err = s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}, Size: 10000})
	require.ErrorIs(t, err, fakemender.ErrConflict)

	// A deployment for all devices reusing r2: already-installed for A,
	// noartifact for a wrong device type, and §11.13 for a changed
	// artifact name.
	all, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"rpi4", "qemu"}})
	require.NoError(t, err)
	assert.Len(t, s.Artifacts(), 1, "the artifact with the same name and device types is reused")
	code, _ = next(tokA, "r2", "qemu")
	assert.Equal(t, http.StatusNoContent, code)
	assert.Equal(t, "already-installed", s.DeviceDeploymentStatus(all, devA))

	code, _ = next(tokB, "r1", "beaglebone")
	assert.Equal(t, http.StatusNoContent, code)
	assert.Equal(t, "noartifact", s.DeviceDeploymentStatus(all, devB))

	third, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r3", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	code, _ = next(tokB, "r1", "qemu")
	require.Equal(t, http.StatusOK, code)
	code, _ = next(tokB, "r1-changed", "qemu")
	assert.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "failure", s.DeviceDeploymentStatus(third, devB))
	code, _ = next(tokB, "r1-changed", "qemu")
	assert.Equal(t, http.StatusNoContent, code, "the failed deployment is over")
}

// TestStatusAndLogValidation covers §5.2, §5.3, §11.10 and §11.14.
func TestStatusAndLogValidation(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, devID, tok := acceptedDevice(t, s, "02:00:00:00:00:44")
	depID, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)

	statuses := []struct {
		body string
		want int
	}{
		{`{"status":"downloading"}`, http.StatusNoContent},
		{`{"status":"pause_before_installing"}`, http.StatusNoContent},
		{`{"status":"installing","substate":"writing"}`, http.StatusNoContent},
		{`{"status":"pause_before_committing"}`, http.StatusNoContent},
		{`{"status":"rebooting"}`, http.StatusNoContent},
		{`{"status":"pause_before_rebooting"}`, http.StatusNoContent},
		{`{"status":"aborted"}`, http.StatusBadRequest},
		{`{"status":"pending"}`, http.StatusBadRequest},
		{`{"status":"noartifact"}`, http.StatusBadRequest},
		{`{"status":"decommissioned"}`, http.StatusBadRequest},
		{`{"status":""}`, http.StatusBadRequest},
		{`{"status":"installing","substate":"` + strings.Repeat("s", 201) + `"}`, http.StatusBadRequest},
		{`{`, http.StatusBadRequest},
	}
	for _, tt := range statuses {
		t.Run("status "+tt.body[:min(len(tt.body), 40)], func(t *testing.T) {
			rec := do(t, s, req{method: "PUT", path: menderapi.DeploymentStatusPath(depID), body: []byte(tt.body), hdr: bearerHdr(tok)})
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
		})
	}
	assert.Equal(t, "pause_before_rebooting", s.DeviceDeploymentStatus(depID, devID))

	logs := []struct {
		name, body string
		want       int
	}{
		{"ok", `{"messages":[{"timestamp":"2026-01-02T03:04:05.123456789Z","level":"info","message":"Installing"},{"timestamp":"2026-01-02T03:04:09Z","level":"error","message":"exit 1"}]}`, http.StatusNoContent},
		{"empty messages", `{"messages":[]}`, http.StatusBadRequest},
		{"no messages", `{}`, http.StatusBadRequest},
		{"no timestamp", `{"messages":[{"level":"info","message":"m"}]}`, http.StatusBadRequest},
		{"bad timestamp", `{"messages":[{"timestamp":"yesterday","level":"info","message":"m"}]}`, http.StatusBadRequest},
		{"no level", `{"messages":[{"timestamp":"2026-01-02T03:04:05Z","message":"m"}]}`, http.StatusBadRequest},
		{"no message", `{"messages":[{"timestamp":"2026-01-02T03:04:05Z","level":"info"}]}`, http.StatusBadRequest},
		{"bad JSON", `{`, http.StatusBadRequest},
	}
	for _, tt := range logs {
		t.Run("log "+tt.name, func(t *testing.T) {
			rec := do(t, s, req{method: "PUT", path: menderapi.DeploymentLogPath(depID), body: []byte(tt.body), hdr: bearerHdr(tok)})
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
		})
	}
	require.Len(t, s.DeploymentLog(depID, devID), 2)
	assert.Equal(t, "exit 1", s.DeploymentLog(depID, devID)[1].Message)
	okLog := []byte(`{"messages":[{"timestamp":"2026-01-02T03:04:05Z","level":"info","message":"m"}]}`)
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "PUT", path: menderapi.DeploymentLogPath("unknown"), body: okLog, hdr: bearerHdr(tok)}).Code)

	// §11.14: once aborted, status PUTs get 409.
	s.Abort(depID)
	assert.Equal(t, "aborted", s.DeviceDeploymentStatus(depID, devID))
	rec := do(t, s, req{method: "PUT", path: menderapi.DeploymentStatusPath(depID), body: []byte(`{"status":"installing"}`), hdr: bearerHdr(tok)})
	assert.Equal(t, http.StatusConflict, rec.Code)
	assert.Equal(t, http.StatusNoContent, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code, "aborted deployments are not handed out")
}

func TestAbortOverManagementAPI(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, devID, tok := acceptedDevice(t, s, "02:00:00:00:00:45")
	depID, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)

	rec := do(t, s, req{method: "GET", path: "/api/management/v1/deployments/deployments/" + depID + "/devices", hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusOK, rec.Code)
	var dds []fakemender.DeviceDeployment
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &dds))
	require.Len(t, dds, 1)
	assert.Equal(t, devID, dds[0].ID)
	assert.Equal(t, "pending", dds[0].Status)

	abort := func(id, body string) int {
		return do(t, s, req{method: "PUT", path: "/api/management/v1/deployments/deployments/" + id + "/status", body: []byte(body), hdr: bearerHdr(mgmt)}).Code
	}
	assert.Equal(t, http.StatusBadRequest, abort(depID, `{"status":"paused"}`))
	assert.Equal(t, http.StatusNotFound, abort("nope", `{"status":"aborted"}`))
	require.Equal(t, http.StatusNoContent, abort(depID, `{"status":"aborted"}`))
	assert.Equal(t, "aborted", s.DeviceDeploymentStatus(depID, devID))
}

func TestAddDeploymentValidation(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	for name, spec := range map[string]fakemender.DeploymentSpec{
		"no name":         {DeviceTypes: []string{"qemu"}},
		"no device types": {ArtifactName: "a"},
		"empty type":      {ArtifactName: "a", DeviceTypes: []string{""}},
		"too small":       {ArtifactName: "a", DeviceTypes: []string{"qemu"}, Size: 4095},
		"too big":         {ArtifactName: "a", DeviceTypes: []string{"qemu"}, Size: fakemender.MaxArtifactSize + 1},
	} {
		_, err := s.AddDeployment(spec)
		assert.ErrorIs(t, err, fakemender.ErrInvalid, name)
	}
}

// TestDownload covers the artifact link: no JWT (§11.15), Content-Length,
// Range and 416.
func TestDownload(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:46")
	_, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}, Size: 5000})
	require.NoError(t, err)
	rec := do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
	require.Equal(t, http.StatusOK, rec.Code)
	di := decodeInstructions(t, rec.Body.Bytes())
	u, err := url.Parse(di.Artifact.Source.URI)
	require.NoError(t, err)
	assert.Equal(t, "http://example.com", u.Scheme+"://"+u.Host, "derived from the request")
	data, err := s.ArtifactBytes(di.Artifact.ID)
	require.NoError(t, err)
	require.Len(t, data, int(di.Artifact.Size))
	sum := sha256.Sum256(data)
	assert.Equal(t, hex.EncodeToString(sum[:]), di.Artifact.Checksum)
	art, err := artifact.Read(bytes.NewReader(data), artifact.ReadOptions{})
	require.NoError(t, err, "a real artifact")
	assert.Equal(t, "r2", art.Name)
	assert.Equal(t, []string{"qemu"}, art.DeviceTypes)
	assert.Equal(t, "single-file", art.Payload.Type)
	require.Len(t, art.Payload.Files, 4)
	assert.Equal(t, []string{"dest_dir", "filename", "permissions", "r2.bin"},
		[]string{art.Payload.Files[0].Name, art.Payload.Files[1].Name, art.Payload.Files[2].Name, art.Payload.Files[3].Name})
	assert.Equal(t, int64(5000), art.Payload.Files[3].Size)
	n := len(data)
	end := strconv.Itoa(n)

	get := func(rng string) *httptest.ResponseRecorder {
		hdr := map[string]string{}
		if rng != "" {
			hdr["Range"] = rng
		}
		return do(t, s, req{method: "GET", path: u.RequestURI(), hdr: hdr})
	}
	tests := []struct {
		rng          string
		want         int
		wantRange    string
		wantFrom, to int
	}{
		{"", http.StatusOK, "", 0, n},
		{"bytes=1000-", http.StatusPartialContent, fmt.Sprintf("bytes 1000-%d/%d", n-1, n), 1000, n},
		{"bytes=10-19", http.StatusPartialContent, "bytes 10-19/" + end, 10, 20},
		{"bytes=-1", http.StatusPartialContent, fmt.Sprintf("bytes %d-%d/%d", n-1, n-1, n), n - 1, n},
		{"bytes=" + end + "-", http.StatusRequestedRangeNotSatisfiable, "bytes */" + end, 0, 0},
		{"bytes=20-10", http.StatusRequestedRangeNotSatisfiable, "", 0, 0},
		{"bytes=x-", http.StatusRequestedRangeNotSatisfiable, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run("range "+tt.rng, func(t *testing.T) {
			rec := get(tt.rng)
			require.Equal(t, tt.want, rec.Code)
			assert.Equal(t, tt.wantRange, rec.Header().Get("Content-Range"))
			if tt.want == http.StatusRequestedRangeNotSatisfiable {
				return
			}
			assert.Equal(t, strconv.Itoa(tt.to-tt.wantFrom), rec.Header().Get("Content-Length"))
			assert.Equal(t, data[tt.wantFrom:tt.to], rec.Body.Bytes())
		})
	}
	head := do(t, s, req{method: "HEAD", path: u.RequestURI()})
	assert.Equal(t, http.StatusOK, head.Code)
	assert.Equal(t, end, head.Header().Get("Content-Length"))
	assert.Equal(t, "application/vnd.mender-artifact", head.Header().Get("Content-Type"))
	assert.Equal(t, `attachment; filename=r2.mender`, head.Header().Get("Content-Disposition"))
	assert.Empty(t, head.Body.Bytes())
	assert.NotEmpty(t, head.Header().Get(menderapi.HeaderRequestID))

	s.SetArtifactBaseURL("https://cdn.example.net/")
	rec = do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
	require.Equal(t, http.StatusOK, rec.Code)
	u2, err := url.Parse(decodeInstructions(t, rec.Body.Bytes()).Artifact.Source.URI)
	require.NoError(t, err)
	assert.Equal(t, "https://cdn.example.net", u2.Scheme+"://"+u2.Host)
}
