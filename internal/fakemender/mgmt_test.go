package fakemender_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestLogin(t *testing.T) {
	s := newServer(t, fakemender.Options{User: "Ops@Example.com", Password: "pw"})
	tests := []struct {
		name        string
		user, pass  string
		basic       bool
		body        string
		want        int
		wantNoExpir bool
	}{
		{"ok", "ops@example.com", "pw", true, "", http.StatusOK, false},
		{"email is case-insensitive", "OPS@EXAMPLE.COM", "pw", true, "", http.StatusOK, false},
		{"empty JSON body", "ops@example.com", "pw", true, "{}", http.StatusOK, false},
		{"no_expiry", "ops@example.com", "pw", true, `{"no_expiry":true}`, http.StatusOK, true},
		{"wrong password", "ops@example.com", "PW", true, "", http.StatusUnauthorized, false},
		{"wrong user", "root@example.com", "pw", true, "", http.StatusUnauthorized, false},
		{"no Basic header", "", "", false, "", http.StatusUnauthorized, false},
		{"malformed body", "ops@example.com", "pw", true, `{"no_expiry":`, http.StatusBadRequest, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hr := httptest.NewRequestWithContext(t.Context(), "POST", menderapi.PathLogin, strings.NewReader(tt.body))
			if tt.body != "" {
				hr.Header.Set("Content-Type", "application/json")
			}
			if tt.basic {
				hr.SetBasicAuth(tt.user, tt.pass)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, hr)
			require.Equal(t, tt.want, rec.Code, rec.Body.String())
			if tt.want != http.StatusOK {
				errorMsg(t, rec)
				return
			}
			assert.Equal(t, menderapi.ContentTypeJWT, rec.Header().Get("Content-Type"))
			_, claims := decodeJWT(t, rec.Body.String())
			assert.Equal(t, "mender.useradm", claims["iss"])
			assert.NotContains(t, claims, "mender.device")
			_, hasExp := claims["exp"]
			assert.Equal(t, !tt.wantNoExpir, hasExp)
			// The token opens the management API.
			list := do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices, hdr: bearerHdr(rec.Body.String())})
			assert.Equal(t, http.StatusOK, list.Code)
		})
	}
}

func TestManagementNeedsUserToken(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, devTok := acceptedDevice(t, s, "02:00:00:00:00:20")
	paths := []string{
		menderapi.PathDevauthDevices,
		menderapi.PathDevauthDevices + "/count",
		menderapi.PathInventoryMgmtPrefix + "x",
		"/api/management/v1/fake/stats",
	}
	for _, p := range paths {
		for name, hdr := range map[string]map[string]string{"none": nil, "device token": bearerHdr(devTok), "garbage": bearerHdr("x.y.z")} {
			rec := do(t, s, req{method: "GET", path: p, hdr: hdr})
			assert.Equal(t, http.StatusUnauthorized, rec.Code, "%s with %s", p, name)
		}
	}
}

func preauth(t *testing.T, s http.Handler, mgmt string, body any) *httptest.ResponseRecorder {
	t.Helper()
	return do(t, s, req{method: "POST", path: menderapi.PathDevauthDevices, body: mustJSON(t, body), hdr: bearerHdr(mgmt)})
}

func TestPreauthorize(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d := newDevice(t, "02:00:00:00:00:21")
	pub, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
	require.NoError(t, err)
	ident := map[string]any{"mac": "02:00:00:00:00:21"}

	rec := preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: ident, PubKey: pub})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	assert.Empty(t, rec.Body.String())
	dev := deviceByMAC(t, s, "02:00:00:00:00:21")
	assert.Equal(t, "devices/"+dev.ID, rec.Header().Get("Location"))
	assert.Equal(t, menderapi.DevStatusPreauthorized, dev.Status)

	// The device authenticates at once.
	rec = d.auth(t, s)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	assert.Equal(t, menderapi.DevStatusAccepted, deviceByMAC(t, s, "02:00:00:00:00:21").Status)

	// 409 with the Device JSON for an existing identity, whatever the key.
	other := newDevice(t, "02:00:00:00:00:21")
	otherPub, err := menderapi.MarshalPublicKeyPEM(other.key.Public())
	require.NoError(t, err)
	rec = preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: ident, PubKey: otherPub})
	require.Equal(t, http.StatusConflict, rec.Code)
	var got menderapi.Device
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	assert.Equal(t, dev.ID, got.ID)
	assert.Equal(t, menderapi.DevStatusAccepted, got.Status)

	// force upserts a preauthorized set for the new key (key rotation).
	rec = preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: ident, PubKey: otherPub, Force: true})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	assert.NotEqual(t, "devices/"+dev.ID, rec.Header().Get("Location"), "force answers a fresh id (deviceauth quirk)")
	assert.Equal(t, http.StatusOK, other.auth(t, s).Code)
	sets := deviceByMAC(t, s, "02:00:00:00:00:21").AuthSets
	require.Len(t, sets, 2)
	assert.Equal(t, menderapi.DevStatusRejected, sets[0].Status, "accepting the new key rejects the old one")
	assert.Equal(t, menderapi.DevStatusAccepted, sets[1].Status)
}

// TestPreauthPendingDevice covers §11.17: a device that registered without
// the ambassador stays pending until decommissioned or force-preauthorized.
func TestPreauthPendingDevice(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d := newDevice(t, "02:00:00:00:00:22")
	pub, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
	require.NoError(t, err)
	ident := map[string]any{"mac": "02:00:00:00:00:22"}

	require.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code)
	assert.Equal(t, http.StatusConflict, preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: ident, PubKey: pub}).Code)
	assert.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "409 leaves the set pending")
	assert.Equal(t, http.StatusCreated, preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: ident, PubKey: pub, Force: true}).Code)
	assert.Equal(t, http.StatusOK, d.auth(t, s).Code)
}

func TestPreauthValidation(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	pub, err := menderapi.MarshalPublicKeyPEM(newKey(t, "ed25519").Public())
	require.NoError(t, err)
	pkcs1 := "-----BEGIN RSA PUBLIC KEY-----\nMAoCAwEAAQIDAQAB\n-----END RSA PUBLIC KEY-----\n"
	tests := []struct {
		name string
		body string
	}{
		{"identity_data as a string (§11.6)", fmt.Sprintf(`{"identity_data":"{\"mac\":\"x\"}","pubkey":%q}`, pub)},
		{"empty identity_data", fmt.Sprintf(`{"identity_data":{},"pubkey":%q}`, pub)},
		{"missing identity_data", fmt.Sprintf(`{"pubkey":%q}`, pub)},
		{"missing pubkey", `{"identity_data":{"mac":"x"}}`},
		{"PKCS#1 pubkey (§11.5)", fmt.Sprintf(`{"identity_data":{"mac":"x"},"pubkey":%q}`, pkcs1)},
		{"not a PEM", `{"identity_data":{"mac":"x"},"pubkey":"hello"}`},
		{"malformed JSON", `{"identity_data":`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, s, req{method: "POST", path: menderapi.PathDevauthDevices, body: []byte(tt.body), hdr: bearerHdr(mgmt)})
			assert.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
			assert.NotEmpty(t, errorMsg(t, rec).Error)
		})
	}
	assert.Empty(t, s.Devices())
}

func TestDeviceListing(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	var ids []string
	for i := range 7 {
		mac := fmt.Sprintf("02:00:00:00:01:%02d", i)
		d := newDevice(t, mac)
		require.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code)
		id := deviceByMAC(t, s, mac).ID
		ids = append(ids, id)
		if i%2 == 0 {
			require.NoError(t, s.Accept(id))
		}
	}
	list := func(query string) ([]menderapi.Device, *httptest.ResponseRecorder) {
		rec := do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices + query, hdr: bearerHdr(mgmt)})
		var out []menderapi.Device
		if rec.Code == http.StatusOK {
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
		}
		return out, rec
	}
	idsOf := func(ds []menderapi.Device) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	tests := []struct {
		name      string
		query     string
		want      []string
		wantLinks []string
	}{
		{"all", "", ids, []string{`rel="first"`}},
		{"accepted", "?status=accepted", []string{ids[0], ids[2], ids[4], ids[6]}, nil},
		{"pending", "?status=pending", []string{ids[1], ids[3], ids[5]}, nil},
		{"by id", "?id=" + ids[3] + "&id=" + ids[5], []string{ids[3], ids[5]}, nil},
		{"page 1", "?per_page=3", ids[0:3], []string{`rel="first"`, `rel="next"`}},
		{"page 2", "?per_page=3&page=2", ids[3:6], []string{`rel="first"`, `rel="prev"`, `rel="next"`}},
		{"page 3", "?per_page=3&page=3", ids[6:], []string{`rel="first"`, `rel="prev"`}},
		{"past the end", "?per_page=3&page=9", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, rec := list(tt.query)
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			assert.Equal(t, tt.want, idsOf(ds))
			link := rec.Header().Get("Link")
			for _, l := range tt.wantLinks {
				assert.Contains(t, link, l)
			}
			if tt.wantLinks != nil && !slices.Contains(tt.wantLinks, `rel="next"`) {
				assert.NotContains(t, link, `rel="next"`)
			}
		})
	}
	for _, q := range []string{"?per_page=501", "?per_page=0", "?page=0", "?page=x", "?status=bogus"} {
		_, rec := list(q)
		assert.Equal(t, http.StatusBadRequest, rec.Code, q)
	}

	count := func(q string) int {
		rec := do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices + "/count" + q, hdr: bearerHdr(mgmt)})
		require.Equal(t, http.StatusOK, rec.Code)
		var c struct{ Count int }
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &c))
		return c.Count
	}
	assert.Equal(t, 7, count(""))
	assert.Equal(t, 4, count("?status=accepted"))
	assert.Equal(t, 3, count("?status=pending"))
	assert.Equal(t, 0, count("?status=rejected"))

	rec := do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices + "/" + ids[1], hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusOK, rec.Code)
	var dev menderapi.Device
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &dev))
	assert.Equal(t, ids[1], dev.ID)
	assert.Equal(t, menderapi.DevStatusPending, dev.Status)
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices + "/nope", hdr: bearerHdr(mgmt)}).Code)
}

func TestAuthSetStatusAPI(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d := newDevice(t, "02:00:00:00:00:23")
	require.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code)
	dev := deviceByMAC(t, s, "02:00:00:00:00:23")
	aid := dev.AuthSets[0].ID
	statusPath := func(dev, aid string) string {
		return menderapi.PathDevauthDevices + "/" + dev + "/auth/" + aid + "/status"
	}
	tests := []struct {
		name, dev, aid, body string
		want                 int
		wantStatus           string
	}{
		{"accept", dev.ID, aid, `{"status":"accepted"}`, http.StatusNoContent, "accepted"},
		{"back to pending", dev.ID, aid, `{"status":"pending"}`, http.StatusNoContent, "pending"},
		{"reject", dev.ID, aid, `{"status":"rejected"}`, http.StatusNoContent, "rejected"},
		{"preauthorized is not settable", dev.ID, aid, `{"status":"preauthorized"}`, http.StatusBadRequest, "rejected"},
		{"bogus status", dev.ID, aid, `{"status":"ok"}`, http.StatusBadRequest, "rejected"},
		{"bad JSON", dev.ID, aid, `{`, http.StatusBadRequest, "rejected"},
		{"unknown device", "nope", aid, `{"status":"accepted"}`, http.StatusNotFound, "rejected"},
		{"unknown auth set", dev.ID, "nope", `{"status":"accepted"}`, http.StatusNotFound, "rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, s, req{method: "PUT", path: statusPath(tt.dev, tt.aid), body: []byte(tt.body), hdr: bearerHdr(mgmt)})
			require.Equal(t, tt.want, rec.Code, rec.Body.String())
			rec = do(t, s, req{method: "GET", path: statusPath(dev.ID, aid), hdr: bearerHdr(mgmt)})
			require.Equal(t, http.StatusOK, rec.Code)
			assert.JSONEq(t, `{"status":"`+tt.wantStatus+`"}`, rec.Body.String())
		})
	}
	assert.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "rejected device gets 401")

	// Dismissing an auth set: 204, then 404.
	del := func(dev, aid string) int {
		return do(t, s, req{method: "DELETE", path: menderapi.PathDevauthDevices + "/" + dev + "/auth/" + aid, hdr: bearerHdr(mgmt)}).Code
	}
	assert.Equal(t, http.StatusNoContent, del(dev.ID, aid))
	assert.Equal(t, http.StatusNotFound, del(dev.ID, aid))
	assert.Equal(t, menderapi.DevStatusNoAuth, deviceByMAC(t, s, "02:00:00:00:00:23").Status)
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "DELETE", path: menderapi.PathDevauthDevices + "/nope", hdr: bearerHdr(mgmt)}).Code)

	// Dismissing the only set of a preauthorized device deletes the device.
	pub, err := menderapi.MarshalPublicKeyPEM(newKey(t, "ed25519").Public())
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: map[string]any{"mac": "p"}, PubKey: pub}).Code)
	pre := deviceByMAC(t, s, "p")
	assert.Equal(t, http.StatusNoContent, del(pre.ID, pre.AuthSets[0].ID))
	assert.Len(t, s.Devices(), 1)
}

func TestInventoryManagementView(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, id, tok := acceptedDevice(t, s, "02:00:00:00:00:24")
	rec := do(t, s, req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[{"name":"device_type","value":"qemu"},{"name":"ips","value":["10.0.0.1","10.0.0.2"]}]`), hdr: bearerHdr(tok)})
	require.Equal(t, http.StatusOK, rec.Code)

	rec = do(t, s, req{method: "GET", path: menderapi.PathInventoryMgmtPrefix + id, hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var inv menderapi.InventoryDevice
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &inv))
	assert.Equal(t, id, inv.ID)
	assert.Equal(t, []menderapi.InventoryMgmtAttribute{
		{Name: "device_type", Value: "qemu", Scope: "inventory"},
		{Name: "ips", Value: []any{"10.0.0.1", "10.0.0.2"}, Scope: "inventory"},
		{Name: "mac", Value: "02:00:00:00:00:24", Scope: "identity"},
		{Name: "status", Value: "accepted", Scope: "system"},
	}, inv.Attributes)
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "GET", path: menderapi.PathInventoryMgmtPrefix + "nope", hdr: bearerHdr(mgmt)}).Code)
}

// TestCommonMiddleware covers request ids, body limits, Content-Type
// (§11.8), unknown routes and methods.
func TestCommonMiddleware(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:25")
	auth := newDevice(t, "02:00:00:00:00:26").authReq(t)
	dev := bearerHdr(tok)
	with := func(h map[string]string, kv ...string) map[string]string {
		out := maps.Clone(h)
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	big := bytes.Repeat([]byte(" "), menderapi.MaxBodySize+1)
	tests := []struct {
		name string
		r    req
		want int
	}{
		{"auth text/plain", req{auth.method, auth.path, auth.body, with(auth.hdr, "Content-Type", "text/plain")}, http.StatusUnsupportedMediaType},
		{"auth JSON with charset", req{auth.method, auth.path, auth.body, with(auth.hdr, "Content-Type", "application/json; charset=utf-8")}, http.StatusUnauthorized},
		{"auth unparsable Content-Type", req{auth.method, auth.path, auth.body, with(auth.hdr, "Content-Type", "application/json; =")}, http.StatusBadRequest},
		{"auth missing Content-Type", req{auth.method, auth.path, auth.body, with(auth.hdr, "Content-Type", "")}, http.StatusBadRequest},
		{"status text/plain", req{"PUT", menderapi.DeploymentStatusPath("x"), []byte(`{"status":"success"}`), with(dev, "Content-Type", "text/plain")}, http.StatusUnsupportedMediaType},
		{"log text/plain", req{"PUT", menderapi.DeploymentLogPath("x"), []byte(`{}`), with(dev, "Content-Type", "text/plain")}, http.StatusUnsupportedMediaType},
		{"inventory text/plain", req{"PUT", menderapi.PathInventoryAttributes, []byte(`[]`), with(dev, "Content-Type", "text/plain")}, http.StatusUnsupportedMediaType},
		{"POST next text/plain", req{"POST", menderapi.PathNextV1, []byte(`{}`), with(dev, "Content-Type", "text/plain")}, http.StatusUnsupportedMediaType},
		{"body over 1 MiB", req{"PUT", menderapi.PathInventoryAttributes, big, dev}, http.StatusRequestEntityTooLarge},
		{"auth body over 1 MiB", req{auth.method, auth.path, big, auth.hdr}, http.StatusRequestEntityTooLarge},
		{"unknown path", req{"GET", "/api/devices/v1/nothing", nil, nil}, http.StatusNotFound},
		{"trailing slash", req{"POST", menderapi.PathAuthRequests + "/", auth.body, auth.hdr}, http.StatusNotFound},
		{"GET auth_requests", req{"GET", menderapi.PathAuthRequests, nil, nil}, http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, s, tt.r)
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
			id := rec.Header().Get(menderapi.HeaderRequestID)
			assert.NotEmpty(t, id)
			assert.Equal(t, id, errorMsg(t, rec).RequestID)
		})
	}

	// A body without Content-Length that grows past the limit is cut at 1 MiB.
	hr := httptest.NewRequestWithContext(t.Context(), "PUT", menderapi.PathInventoryAttributes, bytes.NewReader(big))
	hr.ContentLength = -1
	hr.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, hr)
	assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)

	// An incoming request id is kept.
	rec = do(t, s, req{method: "GET", path: "/nope", hdr: map[string]string{menderapi.HeaderRequestID: "abc-123"}})
	assert.Equal(t, "abc-123", rec.Header().Get(menderapi.HeaderRequestID))
	assert.Equal(t, "abc-123", errorMsg(t, rec).RequestID)
	// Success responses carry one too.
	rec = do(t, s, req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: dev})
	require.Equal(t, http.StatusNoContent, rec.Code)
	assert.NotEmpty(t, rec.Header().Get(menderapi.HeaderRequestID))
}

func TestZeroValueServer(t *testing.T) {
	var s fakemender.Server
	d := newDevice(t, "02:00:00:00:00:27")
	require.Equal(t, http.StatusUnauthorized, d.auth(t, &s).Code)
	require.Len(t, s.Devices(), 1)
	require.NoError(t, s.Accept(s.Devices()[0].ID))
	rec := d.auth(t, &s)
	require.Equal(t, http.StatusOK, rec.Code)
	hdr, _ := decodeJWT(t, rec.Body.String())
	assert.Equal(t, "EdDSA", hdr["alg"])
	assert.NotEmpty(t, login(t, &s))
}

func TestNewRejectsBadOptions(t *testing.T) {
	for name, o := range map[string]fakemender.Options{
		"alg":      {SigningAlg: "HS256"},
		"lifetime": {TokenLifetime: -1},
	} {
		_, err := fakemender.New(o)
		assert.ErrorIs(t, err, fakemender.ErrInvalid, name)
	}
}
