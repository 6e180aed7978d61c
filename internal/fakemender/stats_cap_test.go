package fakemender

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// The auth record list stays bounded and every request is accounted for,
// either kept or counted as dropped.
func TestAuthRecordsBounded(t *testing.T) {
	s, err := New(Options{})
	require.NoError(t, err)
	total := MaxAuthRecords + MaxAuthRecords/2 + 7
	for range total {
		req := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, strings.NewReader(`{`))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		require.Equal(t, http.StatusBadRequest, rec.Code)
	}
	st := s.Stats()
	assert.LessOrEqual(t, len(st.AuthRequests), MaxAuthRecords)
	assert.Equal(t, total, len(st.AuthRequests)+st.AuthRequestsDropped)
	assert.Equal(t, total, st.Requests[RouteAuth])
}
