package client

import (
	"context"
	"encoding/base64"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// jwtSuffix turns the fake server's "token-N" into a three-part token whose
// payload carries exp.
func jwtSuffix(exp int64) string {
	payload := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"sub":"dev","exp":%d}`, exp))
	return "." + payload + ".c2ln"
}

// stateLog collects the snapshots OnState receives.
type stateLog struct {
	mu  sync.Mutex
	all []State
}

func (s *stateLog) add(st State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, st)
}

func (s *stateLog) snapshots() []State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]State(nil), s.all...)
}

func TestStateAfterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		f := newFakeServer(t)
		f.tokenSuffix = jwtSuffix(exp.Unix())
		var states stateLog
		key := newTestKey(t)
		cred := &testCred{Signer: key}
		leaf := newCA(t, "Device CA").issue(t, leafSpec{cn: "dev-1", serial: 0x1a2b}, key.Public())
		cred.set(leaf)
		c, logs := memClient(t, f, func(o *Options) { o.OnState = states.add; o.AuthKey = key; o.TLSCredential = cred })
		start := time.Now()
		runFor(t, c, time.Hour)

		st := c.State()
		assert.True(t, st.Authenticated)
		assert.False(t, st.Pending)
		assert.Equal(t, "https://mender.test", st.Server)
		assert.Equal(t, exp, st.TokenExpiry, "exp claim of the token")
		assert.Equal(t, 1, st.AuthAttempts)
		assert.Equal(t, start.Add(500*time.Millisecond), st.LastAuth, "first contact after 0.5 s (Rand 0.5)")
		assert.Equal(t, start.Add(500*time.Millisecond), st.LastInventory)
		assert.Equal(t, start.Add(500*time.Millisecond+1800*time.Second), st.LastUpdateCheck, "the last of two update checks")
		assert.Nil(t, st.LastError)
		assert.Nil(t, st.Deployment)
		require.NotNil(t, st.Certificate)
		assert.Equal(t, "CN=dev-1,O=Test Devices", st.Certificate.Subject)
		assert.Equal(t, "1a2b", st.Certificate.Serial)
		assert.Equal(t, leaf.NotAfter, st.Certificate.NotAfter)

		// One snapshot after the auth exchange, then one per job attempt:
		// inventory, update check, update check.
		snaps := states.snapshots()
		require.Len(t, snaps, 4)
		assert.Equal(t, 1, snaps[0].AuthAttempts, "the first report follows the first auth exchange")
		assert.True(t, snaps[0].LastInventory.IsZero())
		assert.True(t, snaps[1].Authenticated)
		assert.NotContains(t, logs.String(), f.currentToken(), "the token is never logged")
		assert.NotContains(t, fmt.Sprintf("%+v", snaps), "token-1", "a snapshot never holds the token")
	})
}

func TestStatePendingAndErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeServer(t).on(routeAuth, reply{status: 401})
		c, _ := memClient(t, f, nil)
		start := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { assert.NoError(t, c.Run(ctx)) }()
		time.Sleep(time.Minute) // one 401, next try after 300 s

		st := c.State()
		assert.False(t, st.Authenticated)
		assert.True(t, st.Pending, "the server answered the auth request 401")
		assert.Empty(t, st.Server)
		assert.True(t, st.TokenExpiry.IsZero())
		assert.True(t, st.LastAuth.IsZero())
		require.NotNil(t, st.LastError)
		assert.Equal(t, "inventory", st.LastError.Job)
		assert.Equal(t, start.Add(500*time.Millisecond), st.LastError.At)
		assert.Contains(t, st.LastError.Err, "401")

		// Accepted at the next try: pending clears, the error stays as history.
		time.Sleep(10 * time.Minute)
		st = c.State()
		assert.False(t, st.Pending)
		assert.True(t, st.Authenticated)
		require.NotNil(t, st.LastError)
		assert.True(t, st.LastInventory.After(st.LastError.At))
	})
}

// A deployment the agent cannot install is logged once per deployment id
// at warn, not at every update check, and shows in State until the server
// stops offering it.
func TestStateDeploymentLoggedOncePerID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		other := `{"id":"dep-2","artifact":{"artifact_name":"release-3","source":{"uri":"https://s3.example/b"},"device_types_compatible":["qemux86-64"]}}`
		f := newFakeServer(t).on(routeNextV2,
			reply{status: 200, body: validInstructions},
			reply{status: 200, body: validInstructions},
			reply{status: 200, body: validInstructions},
			reply{status: 200, body: other},
			reply{status: 204},
		)
		c, logs := memClient(t, f, nil)
		runFor(t, c, 3*time.Hour) // six update checks, 1800 s apart

		require.Len(t, f.requests(routeNextV2), 6)
		assert.Equal(t, 1, logs.count(`level=WARN msg="deployment offered, but this agent does not install artifacts (standalone mode)`+
			`: install it with mender-update, or abort the deployment on the server" deployment_id=dep-1 artifact_name=release-2`),
			"dep-1 was offered three times and is logged once:\n%s", logs)
		assert.Equal(t, 1, logs.count("level=WARN msg=\"deployment offered, but this agent does not install artifacts (standalone mode): install it with mender-update, or abort the deployment on the server\" deployment_id=dep-2"))
		assert.Equal(t, 2, logs.count("deployment still offered"), "repeats are debug")
		assert.Nil(t, c.State().Deployment, "the server stopped offering it")
		assert.NotContains(t, logs.String(), "X-Amz-Signature")
	})
}

func TestStateDeploymentWhileOffered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeServer(t).on(routeNextV2, reply{status: 200, body: validInstructions}, reply{status: 200, body: validInstructions})
		var offered int
		c, logs := memClient(t, f, func(o *Options) {
			o.OnDeployment = func(context.Context, *menderapi.DeploymentInstructions) { offered++ }
		})
		start := time.Now()
		runFor(t, c, time.Hour) // two checks, both offering dep-1
		d := c.State().Deployment
		require.NotNil(t, d)
		assert.Equal(t, "dep-1", d.ID)
		assert.Equal(t, "release-2", d.ArtifactName)
		assert.Equal(t, start.Add(500*time.Millisecond), d.Since, "first offered at the first check")
		assert.Equal(t, 2, offered, "OnDeployment still gets every check")
		assert.Equal(t, 1, logs.count(`level=INFO msg="deployment offered"`), "with an installer (OnDeployment) it is info, once")
		assert.Zero(t, logs.count("does not install"))
	})
}

// Stop ends Run between attempts: at once while waiting, and after the job
// in flight otherwise; Run after Stop returns at once.
func TestStop(t *testing.T) {
	t.Run("while waiting", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeServer(t)
			c, _ := memClient(t, f, nil)
			done := make(chan error, 1)
			go func() { done <- c.Run(t.Context()) }()
			time.Sleep(10 * time.Minute)
			n := len(f.requests(""))
			stopped := time.Now()
			c.Stop()
			c.Stop() // idempotent
			synctest.Wait()
			select {
			case err := <-done:
				require.NoError(t, err)
			default:
				require.FailNow(t, "Run did not return after Stop")
			}
			assert.Equal(t, stopped, time.Now(), "no timer waited")
			assert.Len(t, f.requests(""), n, "no request after Stop")
			require.NoError(t, c.Run(t.Context()), "Run after Stop returns at once")
			assert.Len(t, f.requests(""), n)
		})
	})
	t.Run("during a job", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeServer(t)
			release := make(chan struct{})
			inInventory := make(chan struct{}, 1)
			c, _ := memClient(t, f, func(o *Options) {
				o.Inventory = func(ctx context.Context) (menderapi.Attributes, error) {
					inInventory <- struct{}{}
					<-release
					return menderapi.Attributes{"a": {"b"}}, nil
				}
			})
			done := make(chan error, 1)
			go func() { done <- c.Run(t.Context()) }()
			<-inInventory // the first inventory job is in flight
			c.Stop()
			synctest.Wait()
			select {
			case <-done:
				require.FailNow(t, "Run returned before the job in flight finished")
			default:
			}
			time.Sleep(5 * time.Second)
			close(release)
			synctest.Wait()
			select {
			case err := <-done:
				require.NoError(t, err)
			default:
				require.FailNow(t, "Run did not return after the job finished")
			}
			assert.Len(t, f.requests(routeInvPut), 1, "the job in flight completed its request")
			assert.Empty(t, f.requests(routeNextV2), "no new job started after Stop")
			assert.False(t, c.State().LastInventory.IsZero())
		})
	})
}

func TestTokenExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name  string
		token string
		want  time.Time
	}{
		{"jwt", "h." + enc(`{"exp":1893456000}`) + ".s", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"padded base64", "h." + base64.URLEncoding.EncodeToString([]byte(`{"exp":1893456000,"x":1}`)) + ".s", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"fractional exp", "h." + enc(`{"exp":1893456000.7}`) + ".s", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"opaque token", "token-1", time.Time{}},
		{"no exp", "h." + enc(`{"sub":"x"}`) + ".s", time.Time{}},
		{"exp not a number", "h." + enc(`{"exp":"soon"}`) + ".s", time.Time{}},
		{"negative exp", "h." + enc(`{"exp":-5}`) + ".s", time.Time{}},
		{"absurd exp", "h." + enc(`{"exp":1e300}`) + ".s", time.Time{}},
		{"bad base64", "h.%%%.s", time.Time{}},
		{"four parts", "a.b.c.d", time.Time{}},
		{"empty", "", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tokenExpiry(tt.token))
		})
	}
}

func FuzzTokenExpiry(f *testing.F) {
	f.Add("h." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1893456000}`)) + ".s")
	f.Add("token-1")
	f.Add("a..b")
	f.Fuzz(func(t *testing.T, token string) {
		exp := tokenExpiry(token)
		if !exp.IsZero() {
			require.True(t, exp.After(time.Unix(0, 0)), "an expiry is after 1970")
			require.True(t, exp.Year() <= 9999)
		}
	})
}
