package client

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// TestAuthenticateSignsExactBytes runs the auth request over real TLS for
// each key type and checks what the server received byte for byte.
func TestAuthenticateSignsExactBytes(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tests := []struct {
		name string
		key  crypto.Signer
	}{
		{"RSA", rsaKey},
		{"ECDSA P-256", newTestKey(t)},
		{"Ed25519", edKey},
	}
	ca := newCA(t, "Server CA")
	ident := menderapi.Attributes{"mac": {"52:54:00:ab:cd:ef"}, "serial": {"A1", "B2"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t)
			srv := startTLSServer(t, f, ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), nil)
			opts, logs := baseOptions(tt.key, srv.URL)
			opts.RootCAs = ca.pool
			opts.TenantToken = "  tenant.jwt.value \n"
			opts.Identity = staticIdentity(ident)
			c, err := New(opts)
			require.NoError(t, err)

			require.NoError(t, c.Authenticate(t.Context()))
			require.Empty(t, f.authErrs, "the server must verify the signature over the raw body")
			reqs := f.requests(routeAuth)
			require.Len(t, reqs, 1)
			r := reqs[0]

			parsed, err := menderapi.VerifyAuthRequest(r.body, r.header.Get(menderapi.HeaderSignature))
			require.NoError(t, err)
			assert.True(t, menderapi.PublicKeysEqual(tt.key.Public(), parsed.Key), "pubkey must be the AuthKey")
			want, err := menderapi.BuildAuthRequestTier(ident.IdentityJSON(), tt.key.Public(), "tenant.jwt.value", menderapi.TierStandard)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(r.body), "body must be menderapi.BuildAuthRequestTier's bytes, unchanged")
			assert.Equal(t, `{"mac":"52:54:00:ab:cd:ef","serial":["A1","B2"]}`, parsed.IDData)
			assert.Equal(t, menderapi.ContentTypeJSON, r.header.Get("Content-Type"))
			assert.Equal(t, "Bearer tenant.jwt.value", r.header.Get("Authorization"), "tenant token, trimmed")
			assert.Equal(t, "token-1", c.Token())
			assert.NotContains(t, logs.String(), "tenant.jwt.value", "the tenant token must never be logged")
			assert.NotContains(t, logs.String(), "token-1", "the device token must never be logged")
			assert.Contains(t, logs.String(), menderapi.Fingerprint(tt.key.Public()), "the key is logged by fingerprint")
		})
	}
}

// TestTokenKeptVerbatim checks that the 200 body becomes the token without
// any trimming, and that a token that cannot be sent is dropped with a
// permanent error that does not contain it.
func TestTokenKeptVerbatim(t *testing.T) {
	f := newFakeServer(t)
	f.tokenSuffix = "\n"
	c, logs := memClient(t, f, nil)
	require.NoError(t, c.Authenticate(t.Context()))
	assert.Equal(t, "token-1\n", c.Token(), "the auth body is the token, byte for byte")

	err := c.SendInventory(t.Context())
	require.Error(t, err)
	assert.True(t, retry.IsPermanent(err))
	assert.Contains(t, err.Error(), "control characters")
	assert.NotContains(t, err.Error(), "token-1")
	assert.Empty(t, c.Token(), "an unusable token is dropped so the next call authenticates again")
	assert.Empty(t, f.requests(routeInvPut), "the request must not be sent with a broken header")
	assert.NotContains(t, logs.String(), "token-1")
}

func TestAuthenticatePending(t *testing.T) {
	f := newFakeServer(t).on(routeAuth, reply{status: 401, body: `{"error":"dev auth: unauthorized","request_id":"r-42"}`})
	c, _ := memClient(t, f, nil)
	err := c.Authenticate(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrPending)
	assert.NotErrorIs(t, err, ErrUnauthorized)
	assert.NotErrorIs(t, err, ErrNoServer, "the server answered")
	var ae *APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, OpAuth, ae.Op)
	assert.Equal(t, 401, ae.StatusCode)
	assert.Equal(t, "r-42", ae.RequestID)
	assert.Equal(t, "dev auth: unauthorized", ae.Message)
	assert.Empty(t, c.Token())
	assert.Equal(t, retry.DecisionPending, decide(err))
}

func TestAuthenticateEmptyBodyRefused(t *testing.T) {
	f := newFakeServer(t).on(routeAuth, reply{status: 200})
	c, _ := memClient(t, f, nil)
	err := c.Authenticate(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "empty token")
	assert.Empty(t, c.Token())
}

func TestAuthenticateIdentityErrors(t *testing.T) {
	tests := []struct {
		name      string
		identity  func() (menderapi.Attributes, error)
		wantPerm  bool
		wantInErr string
	}{
		{"identity script fails", func() (menderapi.Attributes, error) { return nil, errors.New("exit status 1") }, false, "collect identity: exit status 1"},
		{"identity is empty", func() (menderapi.Attributes, error) { return menderapi.Attributes{}, nil }, true, "identity has no attributes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t)
			c, _ := memClient(t, f, func(o *Options) {
				o.Identity = func(ctx context.Context) (menderapi.Attributes, error) { return tt.identity() }
			})
			err := c.Authenticate(t.Context())
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantInErr)
			assert.Equal(t, tt.wantPerm, retry.IsPermanent(err))
			assert.Empty(t, f.requests(""), "nothing is sent without an identity")
		})
	}
}

// TestDeviceCall401 covers §8.1: on 401 drop the token, authenticate again
// and retry that one request once.
func TestDeviceCall401(t *testing.T) {
	tests := []struct {
		name        string
		auth        []reply
		inventory   []reply
		wantErr     error
		wantAuth    int
		wantInv     int
		wantTokenNo string // token the last inventory request carried
	}{
		{name: "one 401 then success", inventory: []reply{{status: 401}},
			wantAuth: 2, wantInv: 2, wantTokenNo: "Bearer token-2"},
		{name: "401 twice gives up after one retry", inventory: []reply{{status: 401}, {status: 401}},
			wantErr: ErrUnauthorized, wantAuth: 2, wantInv: 2, wantTokenNo: "Bearer token-2"},
		{name: "re-authentication pending", auth: []reply{{status: 200, body: "token-A"}, {status: 401}},
			inventory: []reply{{status: 401}}, wantErr: ErrPending, wantAuth: 2, wantInv: 1, wantTokenNo: "Bearer token-A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t).on(routeAuth, tt.auth...).on(routeInvPut, tt.inventory...)
			if len(tt.auth) > 0 {
				f.token = "token-A" // the scripted token is the valid one
			}
			c, _ := memClient(t, f, nil)
			err := c.SendInventory(t.Context())
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
			assert.Len(t, f.requests(routeAuth), tt.wantAuth)
			inv := f.requests(routeInvPut)
			require.Len(t, inv, tt.wantInv)
			assert.Equal(t, tt.wantTokenNo, inv[len(inv)-1].header.Get("Authorization"))
			if errors.Is(err, ErrUnauthorized) {
				assert.Empty(t, c.Token(), "a token refused twice is dropped, so the next call authenticates first")
			}
		})
	}
}

// TestLazyAuthSharedByConcurrentCalls checks that concurrent calls without
// a token authenticate once.
func TestLazyAuthSharedByConcurrentCalls(t *testing.T) {
	f := newFakeServer(t)
	c, _ := memClient(t, f, nil)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = c.ReportStatus(t.Context(), "dep-1", menderapi.StatusDownloading) })
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
	assert.Len(t, f.requests(routeAuth), 1, "one authentication serves all waiting calls")
	assert.Len(t, f.requests("PUT "+menderapi.DeploymentStatusPath("dep-1")), 8)
}

// TestFailoverRealNetwork: the first server is down (nothing listens), the
// second authenticates and then serves the API.
func TestFailoverRealNetwork(t *testing.T) {
	ca := newCA(t, "Server CA")
	cert := ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	down := startTLSServer(t, http.NotFoundHandler(), cert, nil)
	downURL := down.URL
	down.Close()
	f := newFakeServer(t)
	up := startTLSServer(t, f, cert, nil)

	var mu sync.Mutex
	var seenEvents []Event
	opts, _ := baseOptions(newTestKey(t), downURL, up.URL+"/")
	opts.RootCAs = ca.pool
	opts.Observer = func(e Event) { mu.Lock(); seenEvents = append(seenEvents, e); mu.Unlock() }
	c, err := New(opts)
	require.NoError(t, err)

	require.NoError(t, c.SendInventory(t.Context()))
	assert.Equal(t, up.URL, c.currentServer(), "the server that authenticated serves the API")
	assert.Len(t, f.requests(routeAuth), 1)
	assert.Len(t, f.requests(routeInvPut), 1)

	mu.Lock()
	events := slices.Clone(seenEvents)
	mu.Unlock()
	require.Len(t, events, 3)
	assert.Equal(t, Event{Op: OpAuth, Server: downURL}, Event{Op: events[0].Op, Server: events[0].Server})
	assert.Error(t, events[0].Err)
	assert.Zero(t, events[0].Status)
	assert.Equal(t, []any{OpAuth, up.URL, 200}, []any{events[1].Op, events[1].Server, events[1].Status})
	assert.Equal(t, []any{OpInventory, up.URL, 200}, []any{events[2].Op, events[2].Server, events[2].Status})
	assert.NoError(t, events[2].Err)

	// Every server down: ErrNoServer, a transport failure to back off from.
	up.Close()
	closeIdle(c)
	c.dropSession(c.Token())
	err = c.Authenticate(t.Context())
	require.ErrorIs(t, err, ErrNoServer)
	assert.Equal(t, retry.DecisionBackoff, decide(err))
}

// TestFailoverSelection checks server choice: a 401 or transport error
// moves on to the next server, and after a transport error on the API
// server the next authentication starts again from the first.
func TestFailoverSelection(t *testing.T) {
	a, b := newFakeServer(t), newFakeServer(t)
	tr := newMemTransport(map[string]*fakeServer{"a.test": a, "b.test": b})
	opts, _ := baseOptions(newTestKey(t), "a.test", "https://b.test")
	opts.HTTPClient = &http.Client{Transport: tr}
	c, err := New(opts)
	require.NoError(t, err)
	ctx := t.Context()

	// a answers 401 (pending there): b authenticates and serves the API.
	a.on(routeAuth, reply{status: 401})
	require.NoError(t, c.SendInventory(ctx))
	assert.Equal(t, "https://b.test", c.currentServer())
	assert.Len(t, b.requests(routeInvPut), 1)

	// b stays in use while it works, even though a is fine again.
	require.NoError(t, c.SendInventory(ctx))
	assert.Len(t, b.requests(routeInvPut), 2)
	assert.Len(t, a.requests(routeAuth), 1)

	// A transport error on b drops the session...
	tr.setDown("b.test", true)
	err = c.SendInventory(ctx)
	require.Error(t, err)
	assert.Equal(t, retry.DecisionBackoff, decide(err))
	assert.Empty(t, c.Token())
	// ...and the next call authenticates from the first server again.
	tr.setDown("b.test", false)
	require.NoError(t, c.SendInventory(ctx))
	assert.Equal(t, "https://a.test", c.currentServer())
	assert.Len(t, a.requests(routeAuth), 2)
	assert.Len(t, a.requests(routeInvPut), 1)
}

func TestObserverSeesEveryExchange(t *testing.T) {
	f := newFakeServer(t).on(routeInvPut, reply{status: 401})
	var ops []string
	var statuses []int
	c, _ := memClient(t, f, func(o *Options) {
		o.Observer = func(e Event) { ops = append(ops, e.Op); statuses = append(statuses, e.Status) }
	})
	require.NoError(t, c.SendInventory(t.Context()))
	assert.Equal(t, []string{OpAuth, OpInventory, OpAuth, OpInventory}, ops)
	assert.Equal(t, []int{200, 401, 200, 200}, statuses)
}

func TestAPIErrorMessage(t *testing.T) {
	e := &APIError{Op: OpNext, StatusCode: 429, RequestID: "abc", Message: "slow down", RetryAfter: 30e9}
	assert.Equal(t, "next: server answered 429 Too Many Requests: slow down (request_id abc) (retry after 30s)", e.Error())
	e = &APIError{Op: OpAuth, StatusCode: 307, Location: "http://mender.example/api", RequestID: "r1"}
	assert.Equal(t, "auth: server answered 307 redirect to http://mender.example/api; the agent does not follow redirects on API calls: set ServerURL to the final address (request_id r1)", e.Error())
	e = &APIError{Op: OpStatus, StatusCode: 409}
	assert.Equal(t, "status: server answered 409 Conflict", e.Error())
	assert.ErrorIs(t, e, ErrAborted)
	assert.NotErrorIs(t, &APIError{Op: OpLog, StatusCode: 409}, ErrAborted)
	assert.ErrorIs(t, &APIError{Op: OpLog, StatusCode: 401}, ErrUnauthorized)
	assert.NotErrorIs(t, &APIError{Op: OpLog, StatusCode: 401}, ErrPending)
}
