package fakemender_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// TestInventoryValidation covers §6 and §11.10/§11.11.
func TestInventoryValidation(t *testing.T) {
	many := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`{"name":"a%d","value":"v"}`, i)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	tests := []struct {
		name string
		body string
		want int
		// wantInv is the resulting inventory on success.
		wantInv map[string]any
	}{
		{"string", `[{"name":"device_type","value":"qemu"}]`, http.StatusOK, map[string]any{"device_type": "qemu"}},
		{"number", `[{"name":"mem","value":3884088}]`, http.StatusOK, map[string]any{"mem": 3884088.0}},
		{"string array", `[{"name":"ip","value":["a","b"]}]`, http.StatusOK, map[string]any{"ip": []string{"a", "b"}}},
		{"number array", `[{"name":"n","value":[1,2.5]}]`, http.StatusOK, map[string]any{"n": []float64{1, 2.5}}},
		{"empty array", `[{"name":"e","value":[]}]`, http.StatusOK, map[string]any{"e": []string{}}},
		{"with description and scope", `[{"name":"a","value":"b","description":"d","scope":"system"}]`, http.StatusOK, map[string]any{"a": "b"}},
		{"empty list", `[]`, http.StatusOK, map[string]any{}},
		{"100 attributes", many(100), http.StatusOK, nil},
		{"101 attributes", many(101), http.StatusBadRequest, nil},
		{"boolean", `[{"name":"a","value":true}]`, http.StatusBadRequest, nil},
		{"null", `[{"name":"a","value":null}]`, http.StatusBadRequest, nil},
		{"missing value", `[{"name":"a"}]`, http.StatusBadRequest, nil},
		{"object", `[{"name":"a","value":{"b":1}}]`, http.StatusBadRequest, nil},
		{"mixed array", `[{"name":"a","value":["x",1]}]`, http.StatusBadRequest, nil},
		{"array of booleans", `[{"name":"a","value":[true]}]`, http.StatusBadRequest, nil},
		{"nested array", `[{"name":"a","value":[["x"]]}]`, http.StatusBadRequest, nil},
		{"empty name", `[{"name":"","value":"x"}]`, http.StatusBadRequest, nil},
		{"name of 1025 characters", `[{"name":"` + strings.Repeat("n", 1025) + `","value":"x"}]`, http.StatusBadRequest, nil},
		{"name of 1024 characters", `[{"name":"` + strings.Repeat("n", 1024) + `","value":"x"}]`, http.StatusOK, map[string]any{strings.Repeat("n", 1024): "x"}},
		{"object body", `{"name":"a","value":"x"}`, http.StatusBadRequest, nil},
		{"malformed", `[{"name":`, http.StatusBadRequest, nil},
	}
	for _, method := range []string{"PUT", "PATCH"} {
		for _, tt := range tests {
			t.Run(method+" "+tt.name, func(t *testing.T) {
				s := newServer(t, fakemender.Options{})
				_, id, tok := acceptedDevice(t, s, "02:00:00:00:00:30")
				rec := do(t, s, req{method: method, path: menderapi.PathInventoryAttributes, body: []byte(tt.body), hdr: bearerHdr(tok)})
				require.Equal(t, tt.want, rec.Code, rec.Body.String())
				if tt.want != http.StatusOK {
					assert.NotEmpty(t, errorMsg(t, rec).Error)
					assert.Empty(t, s.Inventory(id))
					return
				}
				assert.Empty(t, rec.Body.String(), "200 with an empty body")
				if tt.wantInv != nil {
					assert.Equal(t, tt.wantInv, s.Inventory(id))
				}
			})
		}
	}
}

func TestInventoryPutReplacesPatchUpserts(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, id, tok := acceptedDevice(t, s, "02:00:00:00:00:31")
	send := func(method, body string) int {
		return do(t, s, req{method: method, path: menderapi.PathInventoryAttributes, body: []byte(body), hdr: bearerHdr(tok)}).Code
	}
	require.Equal(t, http.StatusOK, send("PUT", `[{"name":"a","value":"1"},{"name":"b","value":"2"}]`))
	assert.Equal(t, map[string]any{"a": "1", "b": "2"}, s.Inventory(id))
	require.Equal(t, http.StatusOK, send("PATCH", `[{"name":"b","value":"3"},{"name":"c","value":"4"}]`))
	assert.Equal(t, map[string]any{"a": "1", "b": "3", "c": "4"}, s.Inventory(id))
	require.Equal(t, http.StatusOK, send("PUT", `[{"name":"z","value":"9"}]`))
	assert.Equal(t, map[string]any{"z": "9"}, s.Inventory(id))

	// PATCH may not push the total over the limit.
	var parts []string
	for i := range 100 {
		parts = append(parts, fmt.Sprintf(`{"name":"p%d","value":"v"}`, i))
	}
	assert.Equal(t, http.StatusBadRequest, send("PATCH", "["+strings.Join(parts, ",")+"]"))
	assert.Equal(t, map[string]any{"z": "9"}, s.Inventory(id))

	// The accessor returns a copy.
	require.Equal(t, http.StatusOK, send("PUT", `[{"name":"l","value":["x"]}]`))
	s.Inventory(id)["l"].([]string)[0] = "mutated"
	assert.Equal(t, []string{"x"}, s.Inventory(id)["l"])
	assert.Nil(t, s.Inventory("unknown"))
}

func TestInventoryMethodsAndAuth(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:32")
	for _, m := range []string{"GET", "POST", "DELETE"} {
		rec := do(t, s, req{method: m, path: menderapi.PathInventoryAttributes, body: []byte(`[]`), hdr: bearerHdr(tok)})
		assert.Equal(t, http.StatusMethodNotAllowed, rec.Code, m)
		assert.Equal(t, "PATCH, PUT", rec.Header().Get("Allow"))
	}
	mgmt := login(t, s)
	rec := do(t, s, req{method: "PUT", path: menderapi.PathInventoryAttributes, body: []byte(`[]`), hdr: bearerHdr(mgmt)})
	assert.Equal(t, http.StatusUnauthorized, rec.Code, "a token without mender.device is refused")
}
