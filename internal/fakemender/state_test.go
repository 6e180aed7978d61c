package fakemender_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// TestStatePathSurvivesRestart builds state on one server and checks that a
// second New on the same file keeps devices accepted, tokens valid,
// inventory, deployments and the artifact bytes.
func TestStatePathSurvivesRestart(t *testing.T) {
	for _, alg := range []string{fakemender.AlgEdDSA, fakemender.AlgRS256} {
		t.Run(alg, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			clk := newClock()
			s1 := newServer(t, fakemender.Options{StatePath: path, SigningAlg: alg, Now: clk.Now})
			mgmt := login(t, s1)
			d, devID, tok := acceptedDevice(t, s1, "02:00:00:00:00:60")
			require.Equal(t, http.StatusOK, do(t, s1, req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[{"name":"n","value":[1,2]},{"name":"s","value":"x"}]`), hdr: bearerHdr(tok)}).Code)
			pending := newDevice(t, "02:00:00:00:00:61")
			require.Equal(t, http.StatusUnauthorized, pending.auth(t, s1).Code)
			depID, err := s1.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, do(t, s1, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)
			require.Equal(t, http.StatusNoContent, do(t, s1, req{method: "PUT", path: menderapi.DeploymentStatusPath(depID), body: []byte(`{"status":"downloading"}`), hdr: bearerHdr(tok)}).Code)

			fi, err := os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the file holds the JWT private key")

			s2 := newServer(t, fakemender.Options{StatePath: path, Now: clk.Now})
			assert.JSONEq(t, string(mustJSON(t, s1.Devices())), string(mustJSON(t, s2.Devices())))
			assert.Equal(t, s1.Inventory(devID), s2.Inventory(devID))
			assert.Equal(t, map[string]any{"n": []float64{1, 2}, "s": "x"}, s2.Inventory(devID))
			assert.Equal(t, "downloading", s2.DeviceDeploymentStatus(depID, devID))
			arts := s1.Artifacts()
			require.Len(t, arts, 1)
			assert.Equal(t, arts, s2.Artifacts())
			b1, err := s1.ArtifactBytes(arts[0].ID)
			require.NoError(t, err)
			b2, err := s2.ArtifactBytes(arts[0].ID)
			require.NoError(t, err)
			assert.Equal(t, b1, b2)
			assert.FileExists(t, filepath.Join(filepath.Dir(path), "artifacts", arts[0].ID+".mender"), "artifacts live next to the state file")

			// Tokens from the first process keep working.
			rec := do(t, s2, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
			require.Equal(t, http.StatusOK, rec.Code, "device token survives")
			assert.Equal(t, depID, decodeInstructions(t, rec.Body.Bytes()).ID)
			assert.Equal(t, http.StatusOK, do(t, s2, req{method: "GET", path: menderapi.PathDevauthDevices, hdr: bearerHdr(mgmt)}).Code, "management token survives")
			rec = d.auth(t, s2)
			require.Equal(t, http.StatusOK, rec.Code, "the device stays accepted")
			hdr, _ := decodeJWT(t, rec.Body.String())
			assert.Equal(t, alg, hdr["alg"], "the stored key keeps its algorithm")
			assert.Equal(t, http.StatusUnauthorized, pending.auth(t, s2).Code, "the pending device stays pending")

			// Mutations on the second server persist as well.
			require.NoError(t, s2.Accept(deviceByMAC(t, s2, "02:00:00:00:00:61").ID))
			s3 := newServer(t, fakemender.Options{StatePath: path})
			assert.Equal(t, http.StatusOK, pending.auth(t, s3).Code)
		})
	}
}

func TestStatePathErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
	}{
		{"not JSON", "{"},
		{"wrong version", `{"version":99}`},
		{"bad key", `{"version":2,"signing_key":"AAAA"}`},
		{"version 1 of the state file", `{"version":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".json")
			require.NoError(t, os.WriteFile(path, []byte(tt.content), 0o600))
			_, err := fakemender.New(fakemender.Options{StatePath: path})
			require.Error(t, err)
			assert.Contains(t, err.Error(), path, "the error names the file")
		})
	}
	_, err := fakemender.New(fakemender.Options{StatePath: filepath.Join(dir, "missing-dir", "state.json")})
	assert.Error(t, err, "an unwritable state path fails at New")
}

// TestConcurrentDevices runs many devices at once against a real listener,
// with persistence on, under -race.
func TestConcurrentDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := newServer(t, fakemender.Options{StatePath: path})
	srv := newHTTPServer(t, s)
	_, err := s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r2", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)

	const n = 12
	type dev struct {
		mac  string
		auth req // the same signed request, sent twice
	}
	devs := make([]dev, n)
	for i := range devs {
		mac := fmt.Sprintf("02:00:00:00:02:%02d", i)
		devs[i] = dev{mac: mac, auth: newDevice(t, mac).authReq(t)}
	}
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Go(func() {
			if code, _ := srv.send(t, d.auth); !assert.Equal(t, http.StatusUnauthorized, code) {
				return
			}
			var id string
			for _, dev := range s.Devices() {
				if dev.IdentityData["mac"] == d.mac {
					id = dev.ID
				}
			}
			if !assert.NoError(t, s.Accept(id)) {
				return
			}
			code, tok := srv.send(t, d.auth)
			if !assert.Equal(t, http.StatusOK, code) {
				return
			}
			code, _ = srv.send(t, req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[{"name":"mac","value":"` + d.mac + `"}]`), hdr: bearerHdr(tok)})
			assert.Equal(t, http.StatusOK, code)
			code, _ = srv.send(t, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
			assert.Equal(t, http.StatusOK, code)
		})
		wg.Go(func() {
			_ = s.Stats()
			_ = s.Devices()
		})
	}
	wg.Wait()

	got := s.Devices()
	require.Len(t, got, n)
	for _, d := range got {
		assert.Equal(t, menderapi.DevStatusAccepted, d.Status)
		assert.Equal(t, map[string]any{"mac": d.IdentityData["mac"]}, s.Inventory(d.ID))
	}
	st := s.Stats()
	assert.Equal(t, 2*n, st.Requests[fakemender.RouteAuth])
	assert.Equal(t, n, st.ByRouteStatus[fakemender.RouteNext][http.StatusOK])
	reloaded := newServer(t, fakemender.Options{StatePath: path})
	assert.Len(t, reloaded.Devices(), n, "the last save holds every device")
}
