package fakemender_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestFaultStatusAndCount(t *testing.T) {
	type step struct {
		r          req
		want       int
		retryAfter string
	}
	inv := req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[]`)}
	next := req{method: "GET", path: nextGet("r1", "qemu")}
	tests := []struct {
		name  string
		fault fakemender.Fault
		steps []step
	}{
		{"count 2 then normal", fakemender.Fault{PathPrefix: menderapi.PathNextV1, Status: 503, Count: 2}, []step{
			{next, 503, ""}, {next, 503, ""}, {next, 204, ""}, {next, 204, ""},
		}},
		{"429 with Retry-After rounded up", fakemender.Fault{PathPrefix: menderapi.PathNextV1, Status: 429, RetryAfter: 1500 * time.Millisecond, Count: 1}, []step{
			{next, 429, "2"}, {next, 204, ""},
		}},
		{"503 with Retry-After", fakemender.Fault{Status: 503, RetryAfter: 30 * time.Second, Count: 1}, []step{
			{next, 503, "30"}, {next, 204, ""},
		}},
		{"no Retry-After on 500", fakemender.Fault{Status: 500, RetryAfter: time.Second, Count: 1}, []step{
			{next, 500, ""},
		}},
		{"method filter", fakemender.Fault{Method: "put", Status: 500}, []step{
			{next, 204, ""}, {inv, 500, ""}, {next, 204, ""}, {inv, 500, ""},
		}},
		{"path prefix filter", fakemender.Fault{PathPrefix: "/api/devices/v1/inventory", Status: 502}, []step{
			{next, 204, ""}, {inv, 502, ""},
		}},
		{"unlimited", fakemender.Fault{Status: 500}, []step{
			{next, 500, ""}, {inv, 500, ""}, {next, 500, ""},
		}},
		{"fail rate 1 ignores count", fakemender.Fault{Status: 500, Count: 1, FailRate: 1}, []step{
			{next, 500, ""}, {next, 500, ""}, {next, 500, ""},
		}},
		{"delay-only fault handles normally", fakemender.Fault{Delay: time.Millisecond}, []step{
			{next, 204, ""},
		}},
		{"status out of range is ignored", fakemender.Fault{Status: 42}, []step{
			{next, 204, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, fakemender.Options{})
			_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:50")
			s.AddFault(tt.fault)
			injected := 0
			for i, st := range tt.steps {
				r := st.r
				r.hdr = bearerHdr(tok)
				rec := do(t, s, r)
				require.Equal(t, st.want, rec.Code, "step %d: %s", i, rec.Body.String())
				assert.Equal(t, st.retryAfter, rec.Header().Get("Retry-After"), "step %d", i)
				if st.want >= 500 || st.want == 429 {
					injected++
					e := errorMsg(t, rec)
					assert.True(t, strings.HasPrefix(e.Error, "fault injected"), e.Error)
					assert.Equal(t, rec.Header().Get(menderapi.HeaderRequestID), e.RequestID)
				}
			}
			if tt.fault.Delay == 0 {
				assert.Equal(t, injected, s.Stats().FaultsApplied)
			}
		})
	}
}

func TestFaultFailRate(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:51")
	s.AddFault(fakemender.Fault{PathPrefix: menderapi.PathNextV1, Status: 503, FailRate: 0.5})
	codes := map[int]int{}
	for range 200 {
		codes[do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code]++
	}
	// Each outcome has probability 2^-200 of never happening.
	assert.Positive(t, codes[503])
	assert.Positive(t, codes[204])
	assert.Equal(t, 200, codes[503]+codes[204])
	s.ClearFaults()
	assert.Equal(t, http.StatusNoContent, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)
}

func TestFaultsSpareControlEndpoints(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	s.AddFault(fakemender.Fault{Status: 500})
	assert.Equal(t, http.StatusInternalServerError, do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices, hdr: bearerHdr(mgmt)}).Code)
	assert.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: "/api/management/v1/fake/stats", hdr: bearerHdr(mgmt)}).Code)
	assert.Equal(t, http.StatusNoContent, do(t, s, req{method: "DELETE", path: "/api/management/v1/fake/faults", hdr: bearerHdr(mgmt)}).Code)
	assert.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices, hdr: bearerHdr(mgmt)}).Code)
}

func TestFaultDelayRespectsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newServer(t, fakemender.Options{})
		_, id, tok := acceptedDevice(t, s, "02:00:00:00:00:52")
		s.AddFault(fakemender.Fault{PathPrefix: menderapi.PathInventoryAttributes, Delay: 10 * time.Second})
		put := req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[{"name":"a","value":"1"}]`), hdr: bearerHdr(tok)}

		start := time.Now()
		rec := do(t, s, put)
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, 10*time.Second, time.Since(start), "the request waits for the delay")
		assert.Equal(t, map[string]any{"a": "1"}, s.Inventory(id))

		// A client that gives up after 3 s: the handler returns then and
		// does not handle the request.
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		hr := httptest.NewRequestWithContext(ctx, "PUT", put.path, strings.NewReader(`[{"name":"b","value":"2"}]`))
		hr.Header.Set("Content-Type", "application/json")
		hr.Header.Set("Authorization", "Bearer "+tok)
		start = time.Now()
		s.ServeHTTP(httptest.NewRecorder(), hr)
		assert.Equal(t, 3*time.Second, time.Since(start))
		assert.Equal(t, map[string]any{"a": "1"}, s.Inventory(id), "a cancelled request is not handled")
		assert.Equal(t, 1, s.Stats().ByRouteStatus[fakemender.RouteInventory][0], "counted as no response")
	})
}

func TestFaultDrop(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:53")
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	client := srv.Client()
	get := func() (*http.Response, error) {
		r, err := http.NewRequestWithContext(t.Context(), "GET", srv.URL+nextGet("r1", "qemu"), nil)
		require.NoError(t, err)
		r.Header.Set("Authorization", "Bearer "+tok)
		return client.Do(r)
	}
	s.AddFault(fakemender.Fault{PathPrefix: menderapi.PathNextV1, Drop: true, Count: 1})
	resp, err := get()
	if err == nil {
		_ = resp.Body.Close()
	}
	require.Error(t, err, "the connection is closed without a response")
	resp, err = get()
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	assert.Equal(t, 1, s.Stats().ByRouteStatus[fakemender.RouteNext][0])

	// Through a ResponseWriter that cannot be hijacked: 503.
	s.AddFault(fakemender.Fault{Drop: true, Count: 1})
	assert.Equal(t, http.StatusServiceUnavailable, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)
}

// TestControlOverHTTP drives faults, stats and deployments through the
// /api/management/v1/fake/ endpoints, as an end-to-end test of a separate
// process would.
func TestControlOverHTTP(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	_, devID, tok := acceptedDevice(t, s, "02:00:00:00:00:54")
	ctl := func(method, path, body string) *httptest.ResponseRecorder {
		return do(t, s, req{method: method, path: "/api/management/v1/fake/" + path, body: []byte(body), hdr: bearerHdr(mgmt)})
	}
	for _, bad := range []string{
		`{"status":42}`, `{"count":-1}`, `{"fail_rate":1.5}`, `{"delay_ms":-5}`, `{"retry_after":3}`, `{`,
	} {
		assert.Equal(t, http.StatusBadRequest, ctl("POST", "faults", bad).Code, bad)
	}
	require.Equal(t, http.StatusNoContent, ctl("POST", "faults", `{"path_prefix":"/api/devices/v1/deployments","method":"GET","count":1,"status":429,"retry_after_s":7}`).Code)
	rec := do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Equal(t, "7", rec.Header().Get("Retry-After"))
	require.Equal(t, http.StatusNoContent, ctl("POST", "faults", `{"status":500}`).Code)
	require.Equal(t, http.StatusNoContent, ctl("DELETE", "faults", "").Code)
	assert.Equal(t, http.StatusNoContent, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)

	assert.Equal(t, http.StatusBadRequest, ctl("POST", "deployments", `{"artifact_name":"r2"}`).Code)
	assert.Equal(t, http.StatusBadRequest, ctl("POST", "deployments", `{"artifact_name":"r2","device_types":["qemu"],"devices":["nope"]}`).Code)
	assert.Equal(t, http.StatusBadRequest, ctl("POST", "deployments", `{"artifact":"r2"}`).Code, "unknown fields are refused")
	rec = ctl("POST", "deployments", `{"artifact_name":"r2","device_types":["qemu"],"size":8192,"devices":["`+devID+`"]}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	var created struct{ ID string }
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &created))
	rec = do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)})
	require.Equal(t, http.StatusOK, rec.Code)
	di := decodeInstructions(t, rec.Body.Bytes())
	assert.Equal(t, created.ID, di.ID)
	assert.Equal(t, s.Artifacts()[0].Size, di.Artifact.Size)
	assert.Equal(t, int64(8192), s.Artifacts()[0].Updates[0].Files[3].Size, "size is the payload file's")

	rec = ctl("GET", "stats", "")
	require.Equal(t, http.StatusOK, rec.Code)
	var st fakemender.Stats
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &st))
	assert.Equal(t, 2, st.Requests[fakemender.RouteAuth])
	assert.Equal(t, 3, st.Requests[fakemender.RouteNext])
	assert.Equal(t, 1, st.ByRouteStatus[fakemender.RouteNext][429])
	assert.Equal(t, 1, st.FaultsApplied)
	require.Len(t, st.AuthRequests, 2)
	assert.Equal(t, fakemender.OutcomePending, st.AuthRequests[0].Outcome)
	assert.Equal(t, fakemender.OutcomeAccepted, st.AuthRequests[1].Outcome)
	assert.Equal(t, devID, st.AuthRequests[1].DeviceID)
	assert.True(t, strings.HasPrefix(st.AuthRequests[1].Key, "sha256:"))
}

func TestStatsAuthOutcomes(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	d := newDevice(t, "02:00:00:00:00:55")
	r := d.authReq(t)
	do(t, s, r)                                                                                                                                       // pending
	do(t, s, req{method: r.method, path: r.path, body: r.body})                                                                                       // missing signature
	do(t, s, req{method: r.method, path: r.path, body: r.body, hdr: map[string]string{menderapi.HeaderSignature: "AAAA"}})                            // bad signature
	do(t, s, req{method: r.method, path: r.path, body: []byte(`{}`), hdr: r.hdr})                                                                     // bad request
	do(t, s, req{method: r.method, path: r.path, body: r.body, hdr: map[string]string{menderapi.HeaderSignature: "x", "Content-Type": "text/plain"}}) // refused
	var got []string
	var codes []int
	for _, a := range s.Stats().AuthRequests {
		got = append(got, a.Outcome)
		codes = append(codes, a.Status)
	}
	assert.Equal(t, []string{
		fakemender.OutcomePending, fakemender.OutcomeMissingSignature, fakemender.OutcomeBadSignature,
		fakemender.OutcomeBadRequest, fakemender.OutcomeRefused,
	}, got)
	assert.Equal(t, []int{401, 400, 401, 400, 415}, codes)
	assert.Equal(t, 5, s.Stats().Requests[fakemender.RouteAuth])
	assert.Equal(t, 2, s.Stats().ByStatus[401])
}

func TestFaultControlRefusesAFaultThatDoesNothing(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	rec := do(t, s, req{method: "POST", path: "/api/management/v1/fake/faults", hdr: bearerHdr(mgmt),
		body: []byte(`{"path_prefix":"/api/devices/","count":3}`)})
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), "give status, delay_ms or drop")
	rec = do(t, s, req{method: "POST", path: "/api/management/v1/fake/faults", hdr: bearerHdr(mgmt),
		body: []byte(`{"path_prefix":"/api/devices/","count":3,"status":503}`)})
	assert.Equal(t, http.StatusNoContent, rec.Code)
}
