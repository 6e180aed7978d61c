package ambassador

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// runInBubble starts a.Run in the current synctest bubble and returns a
// stop function that cancels it and checks that it returned nil.
func runInBubble(t *testing.T, a *Ambassador) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() {
		cancel()
		assert.NoError(t, <-done, "Run returns nil once its context is done")
	}
}

func (f *fakeUpstream) loginGaps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < len(f.loginTimes); i++ {
		gaps = append(gaps, f.loginTimes[i].Sub(f.loginTimes[i-1]))
	}
	return gaps
}

func TestLoginFailingAtStartBacksOffThenBecomesReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newFakeUpstream()
		up.loginStatus = http.StatusInternalServerError
		a := newOfflineAmbassador(t, up, nil)
		stop := runInBubble(t, a)

		synctest.Wait()
		require.Equal(t, 1, up.counts().logins, "login is attempted at once")
		code, body := status(t, a)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, "not_ready", body.Status)
		assert.Contains(t, body.Reason, "upstream answered 500 (login backend broken)", "status says why")

		for i := 0; i < 200 && up.counts().logins < 9; i++ {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		gaps := up.loginGaps()
		require.Len(t, gaps, 8)
		for i, g := range gaps {
			d := min(time.Second<<i, 30*time.Second)
			assert.GreaterOrEqual(t, g, d/2, "wait before attempt %d", i+2)
			assert.Less(t, g, d, "wait before attempt %d", i+2)
		}
		code, _ = status(t, a)
		assert.Equal(t, http.StatusServiceUnavailable, code, "still not ready while login fails")

		up.set(func(f *fakeUpstream) { f.loginStatus = 0 })
		time.Sleep(30 * time.Second)
		synctest.Wait()
		code, body = status(t, a)
		assert.Equal(t, http.StatusOK, code, "ready after the upstream recovers: %+v", body)
		assert.Equal(t, "ready", body.Status)
		assert.Equal(t, uint64(1), a.Stats().Logins)
		assert.Equal(t, uint64(9), a.Stats().LoginFailures)
		stop()
	})
}

func TestLoginFailureReasons(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(o *Options, up *fakeUpstream)
		want   string
	}{
		{name: "wrong password", mutate: func(o *Options, _ *fakeUpstream) { o.Password = "wrong" },
			want: "management login rejected: upstream answered 401 (unauthorized); check the management user and password"},
		{name: "upstream unreachable", mutate: func(o *Options, _ *fakeUpstream) {
			o.Transport = failingTransport{}
		}, want: "upstream unavailable"},
		{name: "token already expired", mutate: func(_ *Options, up *fakeUpstream) { up.tokenTTL = -time.Hour },
			want: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				up := newFakeUpstream()
				a := newOfflineAmbassador(t, up, func(o *Options) { tt.mutate(o, up) })
				stop := runInBubble(t, a)
				synctest.Wait()
				code, body := status(t, a)
				assert.Equal(t, http.StatusServiceUnavailable, code)
				assert.Contains(t, body.Reason, tt.want)
				assert.NotContains(t, body.Reason, testPassword, "the password never appears")
				stop()
			})
		})
	}
}

type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("dial tcp 192.0.2.1:443: connect: connection refused")
}

func TestTokenRefreshAt80PercentOfLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newFakeUpstream()
		up.tokenTTL = 100 * time.Second
		a := newOfflineAmbassador(t, up, nil)
		stop := runInBubble(t, a)
		synctest.Wait()
		require.Equal(t, 1, up.counts().logins)

		time.Sleep(79 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, up.counts().logins, "no refresh before 80% of the lifetime")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Equal(t, 2, up.counts().logins, "refreshed at 80% of the lifetime")
		assert.Equal(t, []time.Duration{80 * time.Second}, up.loginGaps())

		// The refresh fails from now on: the old token is used until it
		// expires, then /status reports the failure.
		up.set(func(f *fakeUpstream) { f.loginStatus = http.StatusServiceUnavailable })
		time.Sleep(79 * time.Second)
		synctest.Wait()
		code, _ := status(t, a)
		assert.Equal(t, http.StatusOK, code, "the current token is still valid")
		time.Sleep(22 * time.Second)
		synctest.Wait()
		code, body := status(t, a)
		assert.Equal(t, http.StatusServiceUnavailable, code, "the token expired and no new one was obtained")
		assert.Contains(t, body.Reason, "upstream answered 503")
		stop()
	})
}

func TestTokenWithoutExpIsNotRefreshedOnATimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newFakeUpstream()
		a := newOfflineAmbassador(t, up, func(o *Options) {
			o.Transport = handlerTransport{h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				up.mu.Lock()
				up.loginTimes = append(up.loginTimes, time.Now())
				up.mu.Unlock()
				_, _ = w.Write([]byte("opaque-token"))
			})}
		})
		stop := runInBubble(t, a)
		synctest.Wait()
		time.Sleep(30 * 24 * time.Hour)
		synctest.Wait()
		assert.Equal(t, 1, up.counts().logins, "an opaque token is not refreshed on a timer")
		code, _ := status(t, a)
		assert.Equal(t, http.StatusOK, code)
		stop()
	})
}

func TestJWTExpiry(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name    string
		tok     string
		want    time.Time
		wantErr bool
	}{
		{name: "exp", tok: fakeJWT(time.Unix(1767225600, 0), 1), want: time.Unix(1767225600, 0)},
		{name: "padded payload", tok: "x." + base64.URLEncoding.EncodeToString([]byte(`{"exp":1700000000}`)) + ".s",
			want: time.Unix(1700000000, 0)},
		{name: "float exp", tok: "x." + enc([]byte(`{"exp":1700000000.5}`)) + ".s", want: time.Unix(1700000000, 0)},
		{name: "two parts", tok: "x.y", wantErr: true},
		{name: "bad base64", tok: "x.!!!.s", wantErr: true},
		{name: "not JSON", tok: "x." + enc([]byte("nope")) + ".s", wantErr: true},
		{name: "no exp", tok: "x." + enc([]byte(`{"iss":"a"}`)) + ".s", wantErr: true},
		{name: "string exp", tok: "x." + enc([]byte(`{"exp":"1700000000"}`)) + ".s", wantErr: true},
		{name: "negative exp", tok: "x." + enc([]byte(`{"exp":-5}`)) + ".s", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := jwtExpiry(tt.tok)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.True(t, tt.want.Equal(got), "want %v, got %v", tt.want, got)
		})
	}
}

func TestRefreshTimeAndBackoff(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	assert.Equal(t, t0.Add(80*time.Second), refreshTime(t0, t0.Add(100*time.Second)))
	assert.Equal(t, t0.Add(7*24*time.Hour*8/10), refreshTime(t0, t0.Add(7*24*time.Hour)))
	assert.True(t, refreshTime(t0, time.Time{}).IsZero(), "no exp, no timed refresh")

	for failures := 1; failures <= 12; failures++ {
		d := min(time.Second<<(failures-1), 30*time.Second)
		for range 50 {
			got := loginBackoff(failures)
			require.GreaterOrEqual(t, got, d/2, "failures=%d", failures)
			require.Less(t, got, d, "failures=%d", failures)
		}
	}
}

func TestPreauthCacheBounds(t *testing.T) {
	c := newPreauthCache(time.Minute, 100)
	t0 := time.Unix(1_000_000, 0)
	c.put("a", t0)
	assert.True(t, c.hit("a", t0.Add(59*time.Second)))
	assert.False(t, c.hit("a", t0.Add(time.Minute)), "expired at the TTL")
	assert.False(t, c.hit("a", t0), "an expired entry is removed")

	c.put("b", t0)
	c.forget("b")
	assert.False(t, c.hit("b", t0))

	for i := range 100 {
		c.put(strconv.Itoa(i), t0)
	}
	assert.True(t, c.hit("0", t0), "the oldest entry, used again, becomes the newest")
	for i := range 50 {
		c.put("new"+strconv.Itoa(i), t0)
	}
	assert.Equal(t, 100, c.len(), "the cache is bounded")
	assert.True(t, c.hit("0", t0), "a recently used entry survives a flood of new ones")
	assert.True(t, c.hit("99", t0), "so do the newer half")
	assert.False(t, c.hit("1", t0), "the least recently used are dropped first, one at a time")
	assert.True(t, c.hit("new49", t0))
}

func TestLRU(t *testing.T) {
	c := newLRU[string, int](2)
	c.put("a", 1)
	c.put("b", 2)
	_, _ = c.get("a")
	c.put("c", 3) // evicts b, the least recently used
	_, ok := c.get("b")
	assert.False(t, ok)
	v, ok := c.get("a")
	assert.True(t, ok)
	assert.Equal(t, 1, v)
	c.put("a", 10)
	v, _ = c.get("a")
	assert.Equal(t, 10, v, "put replaces")
	c.remove("a")
	c.remove("zz")
	assert.Equal(t, 1, c.len())
	assert.Equal(t, 1, newLRU[int, int](0).max, "a bound below one is one")
}

func TestDeviceRequestsDoNotHammerAFailingLogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newFakeUpstream()
		up.loginStatus = http.StatusInternalServerError
		ca := newTestCA(t, "Device CA")
		caFile := writeFile(t, filepath.Join(t.TempDir(), "ca.pem"), ca.pem())
		a := newOfflineAmbassador(t, up, func(o *Options) { o.ClientCAFiles = []string{caFile} })
		cert, key := ca.issue(t, leafOpts{cn: "dev"})
		send := func() *httptest.ResponseRecorder {
			body, sig := authBody(t, testIDData, key)
			r := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, bytes.NewReader(body))
			r.Header.Set(menderapi.HeaderSignature, sig)
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
			w := httptest.NewRecorder()
			a.Handler().ServeHTTP(w, r)
			return w
		}
		for range 5 {
			w := send()
			assert.Equal(t, http.StatusBadGateway, w.Code)
			assert.Contains(t, w.Body.String(), "management login failed")
		}
		assert.Equal(t, 1, up.counts().logins, "a burst of auth requests makes one login attempt")
		assert.Zero(t, up.counts().device, "nothing forwarded without preauthorization")

		time.Sleep(time.Second)
		assert.Equal(t, http.StatusBadGateway, send().Code)
		assert.Equal(t, 2, up.counts().logins, "the next attempt comes after a second")

		up.set(func(f *fakeUpstream) { f.loginStatus = 0 })
		time.Sleep(time.Second)
		w := send()
		assert.Equal(t, http.StatusOK, w.Code, "body %s", w.Body)
		assert.Equal(t, 3, up.counts().logins)
	})
}

func TestReloadLoopPollsForChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bl := writeFile(t, filepath.Join(t.TempDir(), "blacklist"), nil)
		a := newOfflineAmbassador(t, newFakeUpstream(), func(o *Options) {
			o.BlacklistFile = bl
			o.ReloadInterval = 2 * time.Second
		})
		stop := runInBubble(t, a)
		step := func(d time.Duration) { time.Sleep(d); synctest.Wait() }

		step(10 * time.Second)
		assert.Zero(t, a.Stats().Reloads, "unchanged files are not reloaded")

		writeFile(t, bl, []byte("ABC\n"))
		step(2 * time.Second)
		assert.Equal(t, uint64(1), a.Stats().Reloads, "a changed file is reloaded at the next poll")
		assert.Contains(t, a.trust.Load().blacklist, "abc")

		writeFile(t, bl, []byte("zz\n"))
		step(2 * time.Second)
		assert.Equal(t, uint64(2), a.Stats().Reloads)
		assert.Equal(t, uint64(1), a.Stats().ReloadFailures)
		assert.Contains(t, a.trust.Load().blacklist, "abc", "a broken file keeps the previous blacklist")

		step(10 * time.Second)
		assert.Equal(t, uint64(2), a.Stats().Reloads, "a broken file is not re-read until it changes again")
		stop()
	})
}
