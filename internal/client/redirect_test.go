package client

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// plainSink is a plain-HTTP listener that counts every connection and
// request it gets. It stands for an attacker-chosen cleartext redirect
// target: it must receive nothing. Behind it is a working fake Mender, so a
// client that followed the redirect would succeed there (and get a token
// over plaintext).
type plainSink struct {
	*httptest.Server
	f     *fakeServer
	conns atomic.Int32
	reqs  atomic.Int32
}

func newPlainSink(t *testing.T) *plainSink {
	t.Helper()
	p := &plainSink{f: newFakeServer(t)}
	p.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.reqs.Add(1)
		p.f.ServeHTTP(w, r)
	}))
	p.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			p.conns.Add(1)
		}
	}
	p.Start()
	t.Cleanup(p.Close)
	return p
}

func (p *plainSink) assertUntouched(t *testing.T) {
	t.Helper()
	assert.Zero(t, p.conns.Load(), "nothing may connect to the cleartext redirect target")
	assert.Zero(t, p.reqs.Load(), "no request may reach the cleartext redirect target")
	for _, r := range p.f.requests("") {
		assert.Empty(t, r.header.Get("Authorization"), "the JWT or tenant token leaked in cleartext to %s %s", r.method, r.path)
	}
}

// TestAPICallsDoNotFollowRedirects: a TLS server answers an API call with a
// redirect to a plain-HTTP listener. The agent must not follow it (no
// connection to the listener, so neither the tenant token nor the JWT nor
// the inventory leaks in cleartext, and no token is taken from plaintext);
// the error names the Location and how to fix the configuration, and is
// classified permanent (retrying soon cannot help).
func TestAPICallsDoNotFollowRedirects(t *testing.T) {
	ca := newCA(t, "Server CA")
	cert := ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	statusPath := menderapi.DeploymentStatusPath("dep-1")
	logPath := menderapi.DeploymentLogPath("dep-1")
	tests := []struct {
		name  string
		route string // answered with the redirect
		path  string
		op    string
		call  func(ctx context.Context, c *Client) error
	}{
		{"auth request", routeAuth, menderapi.PathAuthRequests, OpAuth,
			func(ctx context.Context, c *Client) error { return c.Authenticate(ctx) }},
		{"inventory", routeInvPut, menderapi.PathInventoryAttributes, OpInventory,
			func(ctx context.Context, c *Client) error { return c.SendInventory(ctx) }},
		{"next v2", routeNextV2, menderapi.PathNextV2, OpNext,
			func(ctx context.Context, c *Client) error { _, err := c.CheckUpdate(ctx); return err }},
		{"next v1", routeNextV1, menderapi.PathNextV1, OpNext,
			func(ctx context.Context, c *Client) error { _, err := c.CheckUpdate(ctx); return err }},
		{"status", "PUT " + statusPath, statusPath, OpStatus,
			func(ctx context.Context, c *Client) error { return c.ReportStatus(ctx, "dep-1", "downloading") }},
		{"log", "PUT " + logPath, logPath, OpLog,
			func(ctx context.Context, c *Client) error {
				return c.UploadLog(ctx, "dep-1", []menderapi.LogMessage{{Level: "info", Message: "m"}})
			}},
	}
	for _, tt := range tests {
		for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
			t.Run(fmt.Sprintf("%s %d", tt.name, code), func(t *testing.T) {
				plain := newPlainSink(t)
				target := plain.URL + tt.path
				f := newFakeServer(t).on(tt.route, reply{status: code,
					header: map[string]string{"Location": target + "?X-Secret=leak"}})
				srv := startTLSServer(t, f, cert, nil)
				opts, logs := baseOptions(newTestKey(t), srv.URL)
				opts.RootCAs = ca.pool
				opts.TenantToken = "tenant-secret"
				c, err := New(opts)
				require.NoError(t, err)

				err = tt.call(t.Context(), c)
				plain.assertUntouched(t)
				require.Error(t, err, "a redirect must not be followed to success")

				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.op, ae.Op)
				assert.Equal(t, code, ae.StatusCode)
				assert.Equal(t, target, ae.Location, "Location without its query")
				msg := err.Error()
				assert.Contains(t, msg, fmt.Sprintf("server answered %d redirect to %s;", code, target), "the error names the Location")
				assert.Contains(t, msg, "the agent does not follow redirects on API calls: set ServerURL to the final address")
				assert.NotContains(t, msg, "\n", "one-line error")
				for _, secret := range []string{"leak", "tenant-secret", "token-1"} {
					assert.NotContains(t, msg, secret)
					assert.NotContains(t, logs.String(), secret)
				}
				assert.Equal(t, retry.DecisionPermanent, decide(err), "a redirect is a configuration error: retry at the slow poll interval")
				assert.Contains(t, hint(err), "ServerURL")
				if tt.op == OpAuth {
					assert.Empty(t, c.Token(), "no token may come from a redirect target")
				}
				assert.Len(t, f.requests(tt.route), 1, "the redirecting call is sent once")
			})
		}
	}
}

// TestAuthRedirectFailsOverToNextServer: a server that redirects the auth
// request is skipped like one that refuses it; the next server
// authenticates, and the redirect target gets nothing.
func TestAuthRedirectFailsOverToNextServer(t *testing.T) {
	ca := newCA(t, "Server CA")
	cert := ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	plain := newPlainSink(t)
	redirecting := newFakeServer(t).on(routeAuth, reply{status: http.StatusTemporaryRedirect,
		header: map[string]string{"Location": plain.URL + menderapi.PathAuthRequests}})
	good := newFakeServer(t)
	srvA := startTLSServer(t, redirecting, cert, nil)
	srvB := startTLSServer(t, good, cert, nil)
	opts, _ := baseOptions(newTestKey(t), srvA.URL, srvB.URL)
	opts.RootCAs = ca.pool
	c, err := New(opts)
	require.NoError(t, err)

	require.NoError(t, c.SendInventory(t.Context()))
	assert.Equal(t, srvB.URL, c.Server())
	assert.Len(t, good.requests(routeInvPut), 1)
	plain.assertUntouched(t)
}

// TestAPIRedirectNotFollowedWithCallerHTTPClient: the policy also holds
// when the caller supplies Options.HTTPClient (fleet simulator, tests),
// without modifying the caller's client.
func TestAPIRedirectNotFollowedWithCallerHTTPClient(t *testing.T) {
	f := newFakeServer(t).on(routeInvPut, reply{status: http.StatusTemporaryRedirect,
		header: map[string]string{"Location": "https://evil.test" + menderapi.PathInventoryAttributes}})
	evil := newFakeServer(t)
	hc := &http.Client{Transport: newMemTransport(map[string]*fakeServer{"mender.test": f, "evil.test": evil})}
	c, _ := memClient(t, f, func(o *Options) { o.HTTPClient = hc })

	err := c.SendInventory(t.Context())
	assert.Empty(t, evil.requests(""), "the redirect target must get nothing")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "redirect to https://evil.test"+menderapi.PathInventoryAttributes)
	assert.Nil(t, hc.CheckRedirect, "the caller's http.Client must not be modified")
}

// redirector answers /hop/N with a 307 to /hop/N-1 on itself, and /hop/1
// with a 307 to target; it records every request's Range and Authorization.
type redirector struct {
	target string

	mu     sync.Mutex
	paths  []string
	ranges []string
	auth   []string
}

func (rd *redirector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rd.mu.Lock()
	rd.paths = append(rd.paths, r.URL.Path)
	rd.ranges = append(rd.ranges, r.Header.Get("Range"))
	rd.auth = append(rd.auth, r.Header.Get("Authorization"))
	rd.mu.Unlock()
	n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/"))
	if err != nil || n < 1 {
		http.NotFound(w, r)
		return
	}
	loc := rd.target
	if n > 1 {
		loc = fmt.Sprintf("/hop/%d?X-Amz-Signature=hopsecret", n-1)
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusTemporaryRedirect)
}

func (rd *redirector) seen() (paths, ranges, auth []string) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.paths, rd.ranges, rd.auth
}

// TestDownloadRedirects: artifact links may redirect (S3, CDNs) at most 3
// times and only from https to https; a refused redirect is final (not
// resumed), the cleartext target gets nothing, and Range still reaches the
// final server when a cut transfer resumes through the redirect.
func TestDownloadRedirects(t *testing.T) {
	data := bytes.Repeat([]byte("artifact"), 40_000)
	ca := newCA(t, "Storage CA")
	cert := ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	tests := []struct {
		name          string
		hops          int
		plainTarget   bool // the last hop redirects to a plain-HTTP listener
		cuts          []int
		wantErr       string
		wantHopPaths  int
		wantArtRanges []string
	}{
		{name: "one https redirect followed", hops: 1, wantHopPaths: 1, wantArtRanges: []string{""}},
		{name: "three https redirects followed", hops: 3, wantHopPaths: 3, wantArtRanges: []string{""}},
		{name: "four redirects refused", hops: 4, wantHopPaths: 4,
			wantErr: "artifact downloads follow at most 3 redirects"},
		{name: "https to http refused", hops: 1, plainTarget: true, wantHopPaths: 1,
			wantErr: "artifact downloads follow redirects only from https to https"},
		{name: "https to http refused after an https hop", hops: 2, plainTarget: true, wantHopPaths: 2,
			wantErr: "artifact downloads follow redirects only from https to https"},
		{name: "resume through a redirect keeps Range", hops: 1, cuts: []int{100_000}, wantHopPaths: 2,
			wantArtRanges: []string{"", "bytes=100000-"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := &artifactServer{artifactConfig: artifactConfig{cuts: tt.cuts}, data: data}
			art := startTLSServer(t, as, cert, nil)
			plain := newPlainSink(t)
			rd := &redirector{target: art.URL + "/bucket/artifact.mender?X-Amz-Signature=s3cr3t"}
			if tt.plainTarget {
				rd.target = plain.URL + "/bucket/artifact.mender?X-Amz-Signature=s3cr3t"
			}
			hops := startTLSServer(t, rd, cert, nil)
			opts, logs := baseOptions(newTestKey(t), "https://mender.test")
			opts.RootCAs = ca.pool
			opts.Rand = constRand(0)
			c, err := New(opts)
			require.NoError(t, err)

			var buf bytes.Buffer
			n, err := c.Download(t.Context(), fmt.Sprintf("%s/hop/%d?X-Amz-Signature=firstsig", hops.URL, tt.hops), &buf)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Zero(t, n)
				assert.True(t, retry.IsPermanent(err), "a refused redirect is final, not a transfer to resume")
			} else {
				require.NoError(t, err)
				assert.True(t, bytes.Equal(data, buf.Bytes()), "downloaded bytes must equal the artifact")
			}
			plain.assertUntouched(t)
			paths, hopRanges, hopAuth := rd.seen()
			assert.Len(t, paths, tt.wantHopPaths, "a refused redirect must not be retried or resumed")
			hdrs, ranges := as.requests()
			assert.Equal(t, tt.wantArtRanges, ranges)
			if tt.cuts != nil {
				assert.Equal(t, []string{"", "bytes=100000-"}, hopRanges, "the resume asks the original link with Range")
			}
			for _, h := range hdrs {
				assert.Empty(t, h.Get("Authorization"), "no Authorization may reach the redirect target")
			}
			for _, a := range hopAuth {
				assert.Empty(t, a, "the artifact link is fetched without Authorization")
			}
			for _, secret := range []string{"s3cr3t", "hopsecret", "firstsig"} {
				if err != nil {
					assert.NotContains(t, err.Error(), secret, "presigned queries must not leak into errors")
				}
				assert.NotContains(t, logs.String(), secret, "presigned queries must not be logged")
			}
		})
	}
}

// TestFollowDownloadRedirect checks the download redirect policy on its
// own, including what an end-to-end test cannot provoke: an Authorization
// header copied onto a same-host redirect is dropped.
func TestFollowDownloadRedirect(t *testing.T) {
	get := func(u string) *http.Request { return httptest.NewRequest(http.MethodGet, u, nil) }
	tests := []struct {
		name    string
		via     []string
		to      string
		wantErr string
	}{
		{name: "https to https, same host", via: []string{"https://s3.test/a"}, to: "https://s3.test/b"},
		{name: "https to https, other host", via: []string{"https://cdn.test/a"}, to: "https://s3.test/b?sig=x"},
		{name: "third redirect", via: []string{"https://a.test/", "https://b.test/", "https://c.test/"}, to: "https://d.test/"},
		{name: "fourth redirect", via: []string{"https://a.test/", "https://b.test/", "https://c.test/", "https://d.test/"},
			to: "https://e.test/x?sig=secret", wantErr: "refused redirect number 4 (to https://e.test/x): artifact downloads follow at most 3 redirects"},
		{name: "https to http", via: []string{"https://a.test/"}, to: "http://b.test/x?sig=secret",
			wantErr: "refused redirect from https to http://b.test/x: artifact downloads follow redirects only from https to https"},
		{name: "http to https", via: []string{"http://a.test/"}, to: "https://b.test/x",
			wantErr: "refused redirect from http to https://b.test/x"},
		{name: "http to http", via: []string{"http://a.test/"}, to: "http://a.test/y",
			wantErr: "refused redirect from http to http://a.test/y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := get(tt.to)
			req.Header.Set("Authorization", "Bearer jwt")
			req.Header.Set("Range", "bytes=10-")
			var via []*http.Request
			for _, u := range tt.via {
				via = append(via, get(u))
			}
			err := followDownloadRedirect(req, via)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.NotContains(t, err.Error(), "secret", "the target's query must not be in the error")
				return
			}
			require.NoError(t, err)
			assert.Empty(t, req.Header.Get("Authorization"), "Authorization is never sent to a redirect target")
			assert.Equal(t, "bytes=10-", req.Header.Get("Range"), "Range must survive the redirect so a resume works")
		})
	}
}
