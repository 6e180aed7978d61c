package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// TestCheckSendsTierAndUserAgent: mender.conf's DeviceTier reaches the auth
// request, and the agent names itself in User-Agent, through the real
// command (check authenticates like the daemon).
func TestCheckSendsTierAndUserAgent(t *testing.T) {
	serverCA, deviceCA := pkitest.NewCA(t), pkitest.NewCA(t)
	fm, err := fakemender.New(fakemender.Options{AutoAccept: true})
	require.NoError(t, err)
	var mu sync.Mutex
	var agents []string
	var authBodies [][]byte
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		if strings.HasPrefix(r.URL.Path, "/api/") { // not check's reachability probe (GET /)
			agents = append(agents, r.Header.Get("User-Agent"))
		}
		if r.URL.Path == menderapi.PathAuthRequests {
			authBodies = append(authBodies, body)
		}
		mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		fm.ServeHTTP(w, r)
	}))
	srv.TLS = serverCA.MTLSServerConfig(t)
	srv.TLS.ClientCAs = deviceCA.Pool()
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)

	s := newSite(t, srv.URL, serverCA, deviceCA, map[string]any{"DeviceTier": "micro"})
	stdout, stderr, code := s.check(t)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, authBodies)
	req, err := menderapi.ParseAuthRequest(authBodies[0])
	require.NoError(t, err)
	assert.Equal(t, "micro", req.Tier)
	want := "device-agent/" + version + " (" + runtime.GOOS + "/" + runtime.GOARCH + ")"
	require.NotEmpty(t, agents)
	for _, ua := range agents {
		assert.Equal(t, want, ua)
	}
	devs := fm.Devices()
	require.Len(t, devs, 1)
	require.Len(t, devs[0].AuthSets, 1)
	assert.Equal(t, "micro", devs[0].AuthSets[0].Tier)
}
