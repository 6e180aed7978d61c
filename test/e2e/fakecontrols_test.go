package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// TestFakeControlsAsDocumented performs, with net/http against a real
// `simulator serve` started with its default credentials, the calls that the
// README's "Test controls and device management with curl" section shows
// with curl, in the same order and with the same bodies, and checks the
// answers the README states. Change both together.
func TestFakeControlsAsDocumented(t *testing.T) {
	fc := startFakeControlsServe(t)

	// Log in: HTTP Basic with the default user, the raw JWT back.
	login := fc.do(t, http.MethodPost, menderapi.PathLogin, "", "", func(r *http.Request) {
		r.SetBasicAuth("admin@example.com", "mender-test")
	})
	require.Equal(t, http.StatusOK, login.status, "login with the documented default credentials: %s", login.body)
	assert.Equal(t, menderapi.ContentTypeJWT, login.header.Get("Content-Type"))
	token := login.body
	require.Len(t, strings.Split(token, "."), 3, "the login answer is a bare JWT")

	t.Run("faults", func(t *testing.T) {
		// 503 with Retry-After: 5 for the next 2 inventory requests.
		r := fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults",
			`{"path_prefix":"/api/devices/v1/inventory","status":503,"retry_after_s":5,"count":2}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		for i := range 2 {
			r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes, "[]", menderapi.ContentTypeJSON, nil)
			assert.Equal(t, http.StatusServiceUnavailable, r.status, "request %d gets the fault", i+1)
			assert.Equal(t, "5", r.header.Get("Retry-After"))
			assert.Equal(t, "fault injected: service unavailable", fcError(t, r))
		}
		r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes, "[]", menderapi.ContentTypeJSON, nil)
		assert.Equal(t, http.StatusUnauthorized, r.status, "after count requests the fault is gone; no device token here")

		// Stats count the three inventory requests and the two faults.
		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/fake/stats", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var st struct {
			Requests      map[string]int            `json:"requests"`
			ByStatus      map[string]int            `json:"by_status"`
			ByRouteStatus map[string]map[string]int `json:"by_route_status"`
			FaultsApplied int                       `json:"faults_applied"`
			AuthRequests  []json.RawMessage         `json:"auth_requests"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.body), &st), r.body)
		assert.Equal(t, 3, st.Requests["inventory"])
		assert.Equal(t, map[string]int{"503": 2, "401": 1}, st.ByRouteStatus["inventory"])
		assert.Equal(t, 2, st.FaultsApplied)
		assert.Equal(t, 2, st.ByStatus["503"])

		// A delay, a dropped connection and an unlimited fault, then clear them all.
		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults",
			`{"path_prefix":"/api/devices/","delay_ms":300,"count":1}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		start := time.Now()
		r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes, "[]", menderapi.ContentTypeJSON, nil)
		assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "delay_ms holds the request")
		assert.Equal(t, http.StatusUnauthorized, r.status, "a delay alone does not change the answer")

		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults",
			`{"path_prefix":"/api/devices/v1/authentication","drop":true,"count":1}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		_, err := fc.try(http.MethodPost, menderapi.PathAuthRequests, "{}", menderapi.ContentTypeJSON, nil)
		require.Error(t, err, "drop closes the connection without an answer")
		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults",
			`{"path_prefix":"/api/devices/v1/authentication","drop":true,"fail_rate":1}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		for range 2 {
			_, err = fc.try(http.MethodPost, menderapi.PathAuthRequests, "{}", menderapi.ContentTypeJSON, nil)
			require.Error(t, err, "fail_rate 1 drops every matching request, with no count")
		}
		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/fake/stats", "")
		require.NoError(t, json.Unmarshal([]byte(r.body), &st), r.body)
		assert.Equal(t, 3, st.ByRouteStatus["auth"]["0"], "a dropped request is counted with status 0")

		// A fault that neither answers, delays nor drops is refused.
		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults", `{"path_prefix":"/api/devices/","count":1}`)
		require.Equal(t, http.StatusBadRequest, r.status, r.body)
		assert.Contains(t, fcError(t, r), "give status, delay_ms or drop")
		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/fake/stats", "")
		require.NoError(t, json.Unmarshal([]byte(r.body), &st), r.body)
		assert.Equal(t, 6, st.FaultsApplied, "503 twice, the delay, three drops")

		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults",
			`{"path_prefix":"/api/devices/","status":500}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		for range 2 {
			r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes, "[]", menderapi.ContentTypeJSON, nil)
			assert.Equal(t, http.StatusInternalServerError, r.status, "count 0 means every matching request")
		}
		r = fc.mgmt(t, token, http.MethodDelete, "/api/management/v1/fake/faults", "")
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes, "[]", menderapi.ContentTypeJSON, nil)
		assert.Equal(t, http.StatusUnauthorized, r.status, "DELETE removed every fault")
		_, err = fc.try(http.MethodPost, menderapi.PathAuthRequests, "{}", menderapi.ContentTypeJSON, nil)
		assert.NoError(t, err, "DELETE removed the fail_rate drop too")

		// Bad control bodies are refused with a message naming the field.
		for _, tt := range []struct{ body, want string }{
			{`{"status":700}`, "status must be 0 or 200..599"},
			{`{"fail_rate":2,"status":503}`, "fail_rate must be in 0..1"},
			{`{"path":"/api/devices/","status":503}`, `unknown field "path"`},
		} {
			r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/faults", tt.body)
			assert.Equal(t, http.StatusBadRequest, r.status, tt.body)
			assert.Contains(t, fcError(t, r), tt.want, tt.body)
		}
		r = fc.do(t, http.MethodGet, "/api/management/v1/fake/stats", "", "", nil)
		assert.Equal(t, http.StatusUnauthorized, r.status, "the controls need the management token")
	})

	// A device knocks: it stays pending until accepted.
	dev := newFakeControlsDevice(t, "02:00:00:00:00:01")
	r := dev.auth(t, fc)
	require.Equal(t, http.StatusUnauthorized, r.status, r.body)

	var devID string
	t.Run("devices and inventory", func(t *testing.T) {
		r := fc.mgmt(t, token, http.MethodGet, menderapi.PathDevauthDevices+"?status=pending", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var devs []menderapi.Device
		require.NoError(t, json.Unmarshal([]byte(r.body), &devs), r.body)
		require.Len(t, devs, 1)
		assert.Equal(t, map[string]any{"mac": "02:00:00:00:00:01"}, devs[0].IdentityData)
		require.Len(t, devs[0].AuthSets, 1)
		assert.Equal(t, menderapi.DevStatusPending, devs[0].AuthSets[0].Status)
		devID = devs[0].ID

		r = fc.mgmt(t, token, http.MethodGet, menderapi.PathDevauthDevices+"/count?status=pending", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		assert.JSONEq(t, `{"count":1}`, r.body)

		r = fc.mgmt(t, token, http.MethodPut,
			menderapi.PathDevauthDevices+"/"+devID+"/auth/"+devs[0].AuthSets[0].ID+"/status", `{"status":"accepted"}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)

		r = dev.auth(t, fc)
		require.Equal(t, http.StatusOK, r.status, "accepted device gets its token: %s", r.body)
		dev.token = r.body
		r = fc.do(t, http.MethodPut, menderapi.PathInventoryAttributes,
			`[{"name":"device_type","value":"raspberrypi4"},{"name":"artifact_name","value":"release-1"}]`,
			menderapi.ContentTypeJSON, dev.bearer)
		require.Equal(t, http.StatusOK, r.status, r.body)

		r = fc.mgmt(t, token, http.MethodGet, menderapi.PathInventoryMgmtPrefix+devID, "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var inv menderapi.InventoryDevice
		require.NoError(t, json.Unmarshal([]byte(r.body), &inv), r.body)
		assert.Equal(t, devID, inv.ID)
		assert.Equal(t, []menderapi.InventoryMgmtAttribute{
			{Name: "artifact_name", Value: "release-1", Scope: "inventory"},
			{Name: "device_type", Value: "raspberrypi4", Scope: "inventory"},
			{Name: "mac", Value: "02:00:00:00:00:01", Scope: "identity"},
			{Name: "status", Value: "accepted", Scope: "system"},
		}, inv.Attributes)
	})
	require.NotEmpty(t, devID, "the device subtest found the device")
	require.NotEmpty(t, dev.token, "the device subtest authenticated the device")

	t.Run("deployments", func(t *testing.T) {
		r := fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/deployments",
			`{"artifact_name":"release-2","device_types":["raspberrypi4"]}`)
		require.Equal(t, http.StatusCreated, r.status, r.body)
		var created struct {
			ID string `json:"id"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.body), &created), r.body)
		require.NotEmpty(t, created.ID)

		// The device is handed the deployment on its next poll.
		r = fc.do(t, http.MethodGet, menderapi.PathNextV1+"?artifact_name=release-1&device_type=raspberrypi4", "", "", dev.bearer)
		require.Equal(t, http.StatusOK, r.status, r.body)
		var instr menderapi.DeploymentInstructions
		require.NoError(t, json.Unmarshal([]byte(r.body), &instr), r.body)
		assert.Equal(t, created.ID, instr.ID)
		assert.Equal(t, "release-2", instr.Artifact.ArtifactName)

		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/deployments/deployments/"+created.ID+"/devices", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var dds []struct{ ID, Status string }
		require.NoError(t, json.Unmarshal([]byte(r.body), &dds), r.body)
		require.Len(t, dds, 1)
		assert.Equal(t, devID, dds[0].ID)
		assert.Equal(t, "pending", dds[0].Status)

		r = fc.mgmt(t, token, http.MethodPut, "/api/management/v1/deployments/deployments/"+created.ID+"/status", `{"status":"aborted"}`)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		r = fc.do(t, http.MethodPut, menderapi.DeploymentStatusPath(created.ID), `{"status":"downloading"}`, menderapi.ContentTypeJSON, dev.bearer)
		assert.Equal(t, http.StatusConflict, r.status, "an aborted deployment answers 409 to status reports")

		for _, tt := range []struct{ body, want string }{
			{`{"artifact_name":"release-3","device_type":["raspberrypi4"]}`, `unknown field "device_type"`},
			{`{"artifact_name":"release-3","device_types":["raspberrypi4"],"devices":["no-such-device"]}`, "not found"},
			{`{"artifact_name":"release-3","device_types":["raspberrypi4"],"size":100}`, "want 4096.."},
		} {
			r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/fake/deployments", tt.body)
			assert.Equal(t, http.StatusBadRequest, r.status, tt.body)
			assert.Contains(t, fcError(t, r), tt.want, tt.body)
		}
	})

	t.Run("artifacts and deployments", func(t *testing.T) {
		// Upload a real artifact as a multipart form, as curl -F does.
		var art bytes.Buffer
		require.NoError(t, artifact.Write(&art, artifact.WriteOptions{
			Name: "release-3", DeviceTypes: []string{"raspberrypi4"}, Type: "single-file",
			Files: []artifact.InputFile{artifact.FileFromBytes("hello.txt", []byte("hello\n"))},
		}))
		var form bytes.Buffer
		mw := multipart.NewWriter(&form)
		require.NoError(t, mw.WriteField("description", "first try"))
		fw, err := mw.CreateFormFile("artifact", "release-3.mender")
		require.NoError(t, err)
		_, err = fw.Write(art.Bytes())
		require.NoError(t, err)
		require.NoError(t, mw.Close())
		bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
		r := fc.do(t, http.MethodPost, "/api/management/v1/deployments/artifacts", form.String(), mw.FormDataContentType(), bearer)
		require.Equal(t, http.StatusCreated, r.status, r.body)
		artID := strings.TrimPrefix(r.header.Get("Location"), "/api/management/v1/deployments/artifacts/")
		require.Len(t, artID, 36, "Location: %q", r.header.Get("Location"))

		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/deployments/artifacts/list?per_page=10", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var arts []struct{ ID, Name, Description string }
		require.NoError(t, json.Unmarshal([]byte(r.body), &arts), r.body)
		assert.Equal(t, "2", r.header.Get("X-Total-Count"), "release-2 from the fake control and release-3")
		require.Len(t, arts, 2)
		assert.Contains(t, arts, struct{ ID, Name, Description string }{artID, "release-3", "first try"})

		r = fc.mgmt(t, token, http.MethodPost, "/api/management/v1/deployments/deployments",
			`{"name":"try release-3","artifact_name":"release-3","all_devices":true}`)
		require.Equal(t, http.StatusCreated, r.status, r.body)
		depID := strings.TrimPrefix(r.header.Get("Location"), "/api/management/v1/deployments/deployments/")
		require.Len(t, depID, 36, "Location: %q", r.header.Get("Location"))

		// The device gets the artifact and downloads it through the signed link.
		r = fc.do(t, http.MethodGet, menderapi.PathNextV1+"?artifact_name=release-1&device_type=raspberrypi4", "", "", dev.bearer)
		require.Equal(t, http.StatusOK, r.status, r.body)
		var instr menderapi.DeploymentInstructions
		require.NoError(t, json.Unmarshal([]byte(r.body), &instr), r.body)
		assert.Equal(t, depID, instr.ID)
		assert.Equal(t, artID, instr.Artifact.ID)
		require.True(t, strings.HasPrefix(instr.Artifact.Source.URI, fc.url+"/api/devices/v1/deployments/download/"+artID+"?"), instr.Artifact.Source.URI)
		r = fc.do(t, http.MethodGet, strings.TrimPrefix(instr.Artifact.Source.URI, fc.url), "", "", nil)
		require.Equal(t, http.StatusOK, r.status)
		assert.Equal(t, art.String(), r.body, "the stored artifact, byte for byte")

		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/deployments/deployments?status=inprogress", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var deps []struct{ ID, Name, Status string }
		require.NoError(t, json.Unmarshal([]byte(r.body), &deps), r.body)
		assert.Equal(t, []struct{ ID, Name, Status string }{{depID, "try release-3", "inprogress"}}, deps)

		r = fc.do(t, http.MethodPut, menderapi.DeploymentStatusPath(depID), `{"status":"success"}`, menderapi.ContentTypeJSON, dev.bearer)
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/deployments/deployments/"+depID+"/statistics", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var stats map[string]int
		require.NoError(t, json.Unmarshal([]byte(r.body), &stats), r.body)
		assert.Equal(t, 1, stats["success"])
		assert.Equal(t, 0, stats["pending"])
		r = fc.mgmt(t, token, http.MethodGet, "/api/management/v1/deployments/deployments/"+depID, "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		assert.Contains(t, r.body, `"status":"finished"`)
	})

	t.Run("auth outcomes, preauthorize, decommission", func(t *testing.T) {
		r := fc.mgmt(t, token, http.MethodGet, "/api/management/v1/fake/stats", "")
		require.Equal(t, http.StatusOK, r.status, r.body)
		var st struct {
			AuthRequests []struct {
				RequestID string `json:"request_id"`
				DeviceID  string `json:"device_id"`
				Key       string `json:"key"`
				Status    int    `json:"status"`
				Outcome   string `json:"outcome"`
			} `json:"auth_requests"`
			AuthRequestsDropped int `json:"auth_requests_dropped"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.body), &st), r.body)
		var mine []string
		for _, a := range st.AuthRequests {
			if a.DeviceID == devID {
				mine = append(mine, a.Outcome)
				assert.True(t, strings.HasPrefix(a.Key, "sha256:"), "keys appear as fingerprints: %q", a.Key)
				assert.NotEmpty(t, a.RequestID)
			}
		}
		assert.Equal(t, []string{"pending", "accepted"}, mine)
		assert.Zero(t, st.AuthRequestsDropped)

		other := newFakeControlsDevice(t, "02:00:00:00:00:02")
		pub, err := menderapi.MarshalPublicKeyPEM(other.key.Public())
		require.NoError(t, err)
		js, err := json.Marshal(menderapi.PreauthRequest{IdentityData: map[string]any{"mac": other.mac}, PubKey: pub})
		require.NoError(t, err)
		r = fc.mgmt(t, token, http.MethodPost, menderapi.PathDevauthDevices, string(js))
		require.Equal(t, http.StatusCreated, r.status, r.body)
		assert.True(t, strings.HasPrefix(r.header.Get("Location"), "devices/"), "Location: %q", r.header.Get("Location"))
		r = fc.mgmt(t, token, http.MethodPost, menderapi.PathDevauthDevices, string(js))
		assert.Equal(t, http.StatusConflict, r.status, "the identity exists now: %s", r.body)
		r = other.auth(t, fc)
		assert.Equal(t, http.StatusOK, r.status, "a preauthorized device is accepted at its first auth request: %s", r.body)

		r = fc.mgmt(t, token, http.MethodDelete, menderapi.PathDevauthDevices+"/"+devID, "")
		require.Equal(t, http.StatusNoContent, r.status, r.body)
		r = fc.mgmt(t, token, http.MethodGet, menderapi.PathDevauthDevices+"/"+devID, "")
		assert.Equal(t, http.StatusNotFound, r.status, "decommissioned")
	})
}

// fcServe is a `simulator serve` started with its default credentials.
type fcServe struct {
	url  string
	http *http.Client
}

// startFakeControlsServe runs `simulator serve` without --user/--password,
// so the README's default login is what is tested.
func startFakeControlsServe(t *testing.T) *fcServe {
	t.Helper()
	p := start(t, nil, bins.simulator, "serve", "--dir", t.TempDir(), "--listen", "127.0.0.1:0")
	require.Eventually(t, func() bool { return strings.Contains(p.stdout.String(), "  CA:") || p.exited() },
		30*time.Second, 20*time.Millisecond, "simulator serve did not print its URL")
	require.False(t, p.exited(), "simulator serve exited: %s", p.stderr)
	out := p.stdout.String()
	assert.Contains(t, out, "management:  user admin@example.com, password mender-test", "the defaults the README documents")
	fc := &fcServe{}
	var ca string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 {
			switch f[0] {
			case "URL:":
				fc.url = f[1]
			case "CA:":
				ca = f[1]
			}
		}
	}
	require.NotEmpty(t, fc.url, "serve output: %s", out)
	caPEM, err := os.ReadFile(ca)
	require.NoError(t, err, "serve prints the CA path")
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(caPEM))
	fc.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		// A fresh connection per request, as each curl invocation has, so a
		// dropped connection cannot affect the next call.
		DisableKeepAlives: true,
	}}
	return fc
}

// fcResponse is what a test reads of an answer.
type fcResponse struct {
	status int
	header http.Header
	body   string
}

// try performs one request; edit, if not nil, adjusts it (credentials).
func (fc *fcServe) try(method, path, body, contentType string, edit func(*http.Request)) (fcResponse, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, fc.url+path, rd)
	if err != nil {
		return fcResponse{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := fc.http.Do(req)
	if err != nil {
		return fcResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fcResponse{resp.StatusCode, resp.Header, string(b)}, err
}

func (fc *fcServe) do(t *testing.T, method, path, body, contentType string, edit func(*http.Request)) fcResponse {
	t.Helper()
	r, err := fc.try(method, path, body, contentType, edit)
	require.NoError(t, err, "%s %s", method, path)
	return r
}

// mgmt is a management call with the login token, JSON body when not empty.
func (fc *fcServe) mgmt(t *testing.T, token, method, path, body string) fcResponse {
	t.Helper()
	ct := ""
	if body != "" {
		ct = menderapi.ContentTypeJSON
	}
	return fc.do(t, method, path, body, ct, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) })
}

// fcError returns the "error" field of a Mender JSON error body.
func fcError(t *testing.T, r fcResponse) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &e), "error body: %s", r.body)
	return e.Error
}

// fcDevice is a device speaking the device API with its own key.
type fcDevice struct {
	key   *ecdsa.PrivateKey
	mac   string
	token string
}

func newFakeControlsDevice(t *testing.T, mac string) *fcDevice {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return &fcDevice{key: k, mac: mac}
}

// auth sends a signed auth request.
func (d *fcDevice) auth(t *testing.T, fc *fcServe) fcResponse {
	t.Helper()
	body, err := menderapi.BuildAuthRequest(`{"mac":"`+d.mac+`"}`, d.key.Public(), "")
	require.NoError(t, err)
	sig, err := menderapi.Sign(d.key, body)
	require.NoError(t, err)
	return fc.do(t, http.MethodPost, menderapi.PathAuthRequests, string(body), menderapi.ContentTypeJSON,
		func(r *http.Request) { r.Header.Set(menderapi.HeaderSignature, sig) })
}

// bearer adds the device token.
func (d *fcDevice) bearer(r *http.Request) { r.Header.Set("Authorization", "Bearer "+d.token) }
