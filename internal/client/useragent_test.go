package client

import (
	"bytes"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// TestEveryRequestCarriesUserAgent sends each kind of request over real TLS
// (auth, inventory, update check, status, log, and an artifact download
// that goes through one https redirect) and checks the User-Agent that
// arrived on the wire for every one of them.
func TestEveryRequestCarriesUserAgent(t *testing.T) {
	ca := newCA(t, "Server CA")
	f := newFakeServer(t)
	data := bytes.Repeat([]byte("artifact"), 1000)
	art := &artifactServer{data: data}
	var mu sync.Mutex
	var downloads []string // "path User-Agent" of every download request
	mux := http.NewServeMux()
	mux.Handle("/api/", f)
	mux.HandleFunc("/redirect/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		downloads = append(downloads, r.URL.Path+" "+r.Header.Get("User-Agent"))
		mu.Unlock()
		http.Redirect(w, r, "/bucket/artifact.mender", http.StatusFound)
	})
	mux.HandleFunc("/bucket/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		downloads = append(downloads, r.URL.Path+" "+r.Header.Get("User-Agent"))
		mu.Unlock()
		art.ServeHTTP(w, r)
	})
	srv := startTLSServer(t, mux, ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), nil)

	opts, _ := baseOptions(newTestKey(t), srv.URL)
	opts.RootCAs = ca.pool
	opts.UserAgent = UserAgent("1.2.3")
	c, err := New(opts)
	require.NoError(t, err)
	want := "device-agent/1.2.3 (" + runtime.GOOS + "/" + runtime.GOARCH + ")"
	require.Equal(t, want, opts.UserAgent)

	ctx := t.Context()
	ops := []struct {
		name  string
		route string
		call  func() error
	}{
		{"auth", routeAuth, func() error { return c.Authenticate(ctx) }},
		{"inventory", routeInvPut, func() error { return c.SendInventory(ctx) }},
		{"next v2 and v1", "", func() error { _, err := c.CheckUpdate(ctx); return err }},
		{"status", "PUT " + menderapi.DeploymentStatusPath("dep-1"),
			func() error { return c.ReportStatus(ctx, "dep-1", menderapi.StatusInstalling) }},
		{"log", "PUT " + menderapi.DeploymentLogPath("dep-1"), func() error {
			return c.UploadLog(ctx, "dep-1", []menderapi.LogMessage{{Level: "info", Message: "installing"}})
		}},
	}
	for _, op := range ops {
		require.NoError(t, op.call(), op.name)
		if op.route != "" {
			assert.Len(t, f.requests(op.route), 1, "%s reached the server once", op.name)
		}
	}
	assert.Len(t, f.requests(routeNextV2), 1, "the update check tried v2")
	assert.Len(t, f.requests(routeNextV1), 1, "and fell back to v1")
	all := f.requests("")
	require.Len(t, all, 6)
	for _, r := range all {
		assert.Equal(t, want, r.header.Get("User-Agent"), "%s %s", r.method, r.path)
	}

	var buf bytes.Buffer
	n, err := c.Download(ctx, srv.URL+"/redirect/artifact?X-Amz-Signature=x", &buf)
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), n)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"/redirect/artifact " + want, "/bucket/artifact.mender " + want}, downloads,
		"the download and the request after its redirect carry the User-Agent")
}

func TestUserAgent(t *testing.T) {
	platform := " (" + runtime.GOOS + "/" + runtime.GOARCH + ")"
	assert.Equal(t, "device-agent/v1.0.0"+platform, UserAgent("v1.0.0"))
	assert.Equal(t, "device-agent/unknown"+platform, UserAgent(""))

	f := newFakeServer(t)
	c, _ := memClient(t, f, nil) // UserAgent left empty
	require.NoError(t, c.Authenticate(t.Context()))
	reqs := f.requests(routeAuth)
	require.Len(t, reqs, 1)
	assert.Equal(t, "device-agent/unknown"+platform, reqs[0].header.Get("User-Agent"), "the default names the agent, never Go-http-client")

	f = newFakeServer(t)
	c, _ = memClient(t, f, func(o *Options) { o.UserAgent = "mender-fleet-simulator/2" })
	require.NoError(t, c.Authenticate(t.Context()))
	assert.Equal(t, "mender-fleet-simulator/2", f.requests(routeAuth)[0].header.Get("User-Agent"), "a caller's value is sent as is")
}

// TestDeviceTierInAuthRequest: the auth body carries the configured tier in
// Mender 5.1's layout, standard when none is configured.
func TestDeviceTierInAuthRequest(t *testing.T) {
	tests := []struct{ tier, want string }{
		{"", menderapi.TierStandard},
		{menderapi.TierStandard, menderapi.TierStandard},
		{menderapi.TierMicro, menderapi.TierMicro},
		{menderapi.TierSystem, menderapi.TierSystem},
	}
	for _, tt := range tests {
		t.Run("tier "+tt.tier, func(t *testing.T) {
			f := newFakeServer(t)
			key := newTestKey(t)
			c, _ := memClient(t, f, func(o *Options) { o.DeviceTier = tt.tier; o.AuthKey = key })
			require.NoError(t, c.Authenticate(t.Context()))
			reqs := f.requests(routeAuth)
			require.Len(t, reqs, 1)
			req, err := menderapi.VerifyAuthRequest(reqs[0].body, reqs[0].header.Get(menderapi.HeaderSignature))
			require.NoError(t, err)
			assert.Equal(t, tt.want, req.Tier)
			want, err := menderapi.BuildAuthRequestTier(testIdentity.IdentityJSON(), key.Public(), "", tt.want)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(reqs[0].body))
			assert.True(t, strings.HasSuffix(string(reqs[0].body), `"tier":"`+tt.want+`"}`), "tier is the last key, as Mender 5.1 sends it")
		})
	}
}

func TestNewRejectsBadTierAndUserAgent(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Options)
		wantErr string
	}{
		{"unknown tier", func(o *Options) { o.DeviceTier = "gold" }, `DeviceTier is "gold": use standard, micro or system`},
		{"tier is case-sensitive", func(o *Options) { o.DeviceTier = "Micro" }, `DeviceTier is "Micro"`},
		{"user agent with a newline", func(o *Options) { o.UserAgent = "agent\r\nX-Evil: 1" }, "UserAgent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, _ := baseOptions(newTestKey(t), "https://mender.test")
			tt.mutate(&opts)
			_, err := New(opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}
