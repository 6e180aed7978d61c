package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestInventoryPayload(t *testing.T) {
	ca := newCA(t, "Device CA")
	key := newTestKey(t)
	leaf := ca.issue(t, leafSpec{cn: "device-1", serial: 0xABCDEF12, notAfter: time.Date(2036, 5, 4, 3, 2, 1, 0, time.UTC)}, &key.PublicKey)
	cred := &testCred{Signer: key}
	cred.set(leaf, ca.cert)

	f := newFakeServer(t)
	c, _ := memClient(t, f, func(o *Options) {
		o.AuthKey = key
		o.TLSCredential = cred
		o.Inventory = staticIdentity(menderapi.Attributes{
			"ipv4_eth0":     {"192.168.1.20/24", "10.0.0.2/8"},
			"mem_total_kB":  {"3884088"},
			"device_type":   {"spoofed-by-script"},
			"artifact_name": {"spoofed-by-script"},
			"no_values":     {},
			"":              {"nameless"},
		})
	})
	c.SetArtifactName("release-7")
	require.NoError(t, c.SendInventory(t.Context()))

	reqs := f.requests(routeInvPut)
	require.Len(t, reqs, 1)
	assert.Equal(t, menderapi.ContentTypeJSON, reqs[0].header.Get("Content-Type"))
	want := `[
	 {"name":"artifact_name","value":"release-7"},
	 {"name":"device_type","value":"qemux86-64"},
	 {"name":"ipv4_eth0","value":["192.168.1.20/24","10.0.0.2/8"]},
	 {"name":"mem_total_kB","value":"3884088"},
	 {"name":"mender_client_version","value":"0.1.0"},
	 {"name":"mtls_cert_not_after","value":"2036-05-04T03:02:01Z"},
	 {"name":"mtls_cert_serial","value":"abcdef12"},
	 {"name":"mtls_cert_subject","value":"CN=device-1,O=Test Devices"},
	 {"name":"no_values","value":[]}
	]`
	assert.JSONEq(t, want, string(reqs[0].body))
}

func TestInventoryWithoutCredentialOrScripts(t *testing.T) {
	f := newFakeServer(t)
	c, _ := memClient(t, f, func(o *Options) { o.ArtifactName = ""; o.ClientVersion = "" })
	require.NoError(t, c.SendInventory(t.Context()))
	reqs := f.requests(routeInvPut)
	require.Len(t, reqs, 1)
	assert.JSONEq(t, `[{"name":"artifact_name","value":"unknown"},{"name":"device_type","value":"qemux86-64"},
		{"name":"mender_client_version","value":"unknown"}]`, string(reqs[0].body))
}

func TestInventoryMethodFallback(t *testing.T) {
	tests := []struct {
		name        string
		put, patch  []reply
		wantErr     int // expected APIError status, 0 = success
		wantMethods []string
	}{
		{name: "PUT accepted", wantMethods: []string{"PUT"}},
		{name: "405 falls back to PATCH", put: []reply{{status: 405}}, wantMethods: []string{"PUT", "PATCH"}},
		{name: "PATCH failing too", put: []reply{{status: 405}}, patch: []reply{{status: 400, body: `{"error":"bad value"}`}},
			wantErr: 400, wantMethods: []string{"PUT", "PATCH"}},
		{name: "other errors do not fall back", put: []reply{{status: 400, body: `{"error":"too many attributes"}`}},
			wantErr: 400, wantMethods: []string{"PUT"}},
		{name: "204 is not success for inventory", put: []reply{{status: 204}}, wantErr: 204, wantMethods: []string{"PUT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t).on(routeInvPut, tt.put...).on(routeInvPat, tt.patch...)
			c, _ := memClient(t, f, nil)
			err := c.SendInventory(t.Context())
			if tt.wantErr == 0 {
				require.NoError(t, err)
			} else {
				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.wantErr, ae.StatusCode)
				assert.Equal(t, OpInventory, ae.Op)
			}
			var methods []string
			var bodies []string
			for _, r := range f.requests("") {
				if r.path == menderapi.PathInventoryAttributes {
					methods = append(methods, r.method)
					bodies = append(bodies, string(r.body))
				}
			}
			assert.Equal(t, tt.wantMethods, methods)
			if len(bodies) == 2 {
				assert.Equal(t, bodies[0], bodies[1], "PATCH resends the same attributes")
			}
		})
	}
}

func TestInventoryScriptError(t *testing.T) {
	f := newFakeServer(t)
	c, _ := memClient(t, f, func(o *Options) {
		o.Inventory = func(context.Context) (menderapi.Attributes, error) { return nil, errors.New("script crashed") }
	})
	err := c.SendInventory(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "inventory: collect attributes: script crashed")
	assert.Empty(t, f.requests(""))
}

const validInstructions = `{"id":"dep-1","artifact":{"id":"a-1","artifact_name":"release-2",
	"source":{"uri":"https://s3.example/art?X-Amz-Signature=abc","expire":"2026-01-02T03:04:05Z"},
	"device_types_compatible":["qemux86-64"]}}`

func TestCheckUpdate(t *testing.T) {
	tests := []struct {
		name       string
		v2, v1     []reply
		wantDep    string // deployment id, "" = none
		wantErr    string // substring, "" = none
		wantStatus int    // APIError status when set
		wantRoutes []string
	}{
		{name: "v2 instructions", v2: []reply{{status: 200, body: validInstructions}},
			wantDep: "dep-1", wantRoutes: []string{routeNextV2}},
		{name: "v2 nothing to do", v2: []reply{{status: 204}}, wantRoutes: []string{routeNextV2}},
		{name: "v2 404 falls back to v1 GET, nothing to do", wantRoutes: []string{routeNextV2, routeNextV1}},
		{name: "v2 404 falls back to v1 GET with instructions", v1: []reply{{status: 200, body: validInstructions}},
			wantDep: "dep-1", wantRoutes: []string{routeNextV2, routeNextV1}},
		{name: "v2 500 is final", v2: []reply{{status: 500, body: `{"error":"internal error"}`}},
			wantStatus: 500, wantRoutes: []string{routeNextV2}},
		{name: "v1 409 mid-deployment change", v1: []reply{{status: 409, body: `{"error":"conflict"}`}},
			wantStatus: 409, wantRoutes: []string{routeNextV2, routeNextV1}},
		{name: "instructions without source uri are invalid", v2: []reply{{status: 200,
			body: `{"id":"d","artifact":{"artifact_name":"r","source":{},"device_types_compatible":["x"]}}`}},
			wantErr: "invalid deployment instructions", wantRoutes: []string{routeNextV2}},
		{name: "instructions without device types are invalid", v2: []reply{{status: 200,
			body: `{"id":"d","artifact":{"artifact_name":"r","source":{"uri":"https://x/y"}}}`}},
			wantErr: "device_types_compatible", wantRoutes: []string{routeNextV2}},
		{name: "malformed JSON", v2: []reply{{status: 200, body: `{"id":`}},
			wantErr: "decode deployment instructions", wantRoutes: []string{routeNextV2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t).on(routeNextV2, tt.v2...).on(routeNextV1, tt.v1...)
			c, _ := memClient(t, f, nil)
			c.SetArtifactName("release 1&2")
			d, err := c.CheckUpdate(t.Context())
			switch {
			case tt.wantStatus != 0:
				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.wantStatus, ae.StatusCode)
				assert.Equal(t, OpNext, ae.Op)
				assert.Nil(t, d)
			case tt.wantErr != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Nil(t, d)
			case tt.wantDep == "":
				require.NoError(t, err)
				assert.Nil(t, d, "204 means nothing to do: nil, nil")
			default:
				require.NoError(t, err)
				require.NotNil(t, d)
				assert.Equal(t, tt.wantDep, d.ID)
				assert.Equal(t, "release-2", d.Artifact.ArtifactName)
			}
			var routes []string
			for _, r := range f.requests("") {
				if r.path != menderapi.PathAuthRequests {
					routes = append(routes, r.method+" "+r.path)
				}
			}
			assert.Equal(t, tt.wantRoutes, routes)

			v2 := f.requests(routeNextV2)
			require.Len(t, v2, 1)
			assert.JSONEq(t, `{"device_provides":{"artifact_name":"release 1&2","device_type":"qemux86-64"}}`, string(v2[0].body))
			assert.Equal(t, menderapi.ContentTypeJSON, v2[0].header.Get("Content-Type"))
			if v1 := f.requests(routeNextV1); len(v1) == 1 {
				q, err := url.ParseQuery(v1[0].query)
				require.NoError(t, err)
				assert.Equal(t, url.Values{"artifact_name": {"release 1&2"}, "device_type": {"qemux86-64"}}, q,
					"v1 GET needs both parameters")
				assert.Empty(t, v1[0].body)
				assert.Equal(t, "Bearer token-1", v1[0].header.Get("Authorization"))
			}
		})
	}
}

func TestReportStatus(t *testing.T) {
	statusRoute := "PUT " + menderapi.DeploymentStatusPath("dep-1")
	tests := []struct {
		name       string
		status     string
		id         string
		script     []reply
		wantAbort  bool
		wantStatus int
		wantErr    string
		wantSent   bool
	}{
		{name: "204 accepted", status: menderapi.StatusInstalling, id: "dep-1", wantSent: true},
		{name: "409 means aborted", status: menderapi.StatusSuccess, id: "dep-1", script: []reply{{status: 409}},
			wantAbort: true, wantStatus: 409, wantSent: true},
		{name: "404 is an API error, not an abort", status: menderapi.StatusFailure, id: "dep-1",
			script: []reply{{status: 404, body: `{"error":"deployment not found"}`}}, wantStatus: 404, wantSent: true},
		{name: "200 is not the expected 204", status: menderapi.StatusSuccess, id: "dep-1",
			script: []reply{{status: 200}}, wantStatus: 200, wantSent: true},
		{name: "status a device may not send", status: "aborted", id: "dep-1", wantErr: `"aborted" is not a status`},
		{name: "empty deployment id", status: menderapi.StatusSuccess, id: "", wantErr: "deployment id is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t).on(statusRoute, tt.script...)
			c, _ := memClient(t, f, nil)
			err := c.ReportStatus(t.Context(), tt.id, tt.status)
			switch {
			case tt.wantErr != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
			case tt.wantStatus != 0:
				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.wantStatus, ae.StatusCode)
				assert.Equal(t, tt.wantAbort, errors.Is(err, ErrAborted))
			default:
				require.NoError(t, err)
			}
			sent := f.requests(statusRoute)
			if !tt.wantSent {
				assert.Empty(t, f.requests(""), "invalid input must not reach the server")
				return
			}
			require.Len(t, sent, 1)
			assert.JSONEq(t, `{"status":"`+tt.status+`"}`, string(sent[0].body))
			assert.Equal(t, menderapi.ContentTypeJSON, sent[0].header.Get("Content-Type"))
		})
	}
}

func TestReportStatusEscapesID(t *testing.T) {
	f := newFakeServer(t).on("PUT "+menderapi.PathDeploymentsPrefix+"a/b/status", reply{status: 204})
	c, _ := memClient(t, f, nil)
	require.NoError(t, c.ReportStatus(t.Context(), "a/b", menderapi.StatusSuccess))
	reqs := f.requests("")
	require.Len(t, reqs, 2)
	assert.Equal(t, menderapi.PathDeploymentsPrefix+"a/b/status", reqs[1].path)
}

func TestUploadLog(t *testing.T) {
	logRoute := "PUT " + menderapi.DeploymentLogPath("dep-1")
	ts := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	msgs := []menderapi.LogMessage{{Timestamp: ts, Level: "info", Message: "Installing artifact"},
		{Timestamp: ts.Add(4 * time.Second), Level: "error", Message: "Update module exited with 1"}}
	tests := []struct {
		name       string
		msgs       []menderapi.LogMessage
		script     []reply
		wantStatus int
		wantErr    string
	}{
		{name: "204 accepted", msgs: msgs},
		{name: "413 too large", msgs: msgs, script: []reply{{status: 413}}, wantStatus: 413},
		{name: "empty log refused locally", wantErr: "no messages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t).on(logRoute, tt.script...)
			c, _ := memClient(t, f, nil)
			err := c.UploadLog(t.Context(), "dep-1", tt.msgs)
			switch {
			case tt.wantErr != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Empty(t, f.requests(""))
				return
			case tt.wantStatus != 0:
				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.wantStatus, ae.StatusCode)
				assert.Equal(t, OpLog, ae.Op)
			default:
				require.NoError(t, err)
			}
			sent := f.requests(logRoute)
			require.Len(t, sent, 1)
			var got menderapi.DeploymentLog
			require.NoError(t, json.Unmarshal(sent[0].body, &got))
			assert.Equal(t, msgs, got.Messages)
		})
	}
}
