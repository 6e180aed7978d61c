package client

import (
	"context"
	"crypto/x509"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// runFor runs c.Run inside a synctest bubble for d of fake time, cancels it,
// and requires that Run returns at once (no fake time passing) with nil.
func runFor(t *testing.T, c *Client, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	time.Sleep(d)
	cancelled := time.Now()
	cancel()
	synctest.Wait()
	select {
	case err := <-done:
		require.NoError(t, err)
	default:
		require.FailNow(t, "Run did not return after its context was cancelled")
	}
	assert.Equal(t, cancelled, time.Now(), "Run must return without waiting for any timer")
}

func gaps(reqs []seen) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(reqs); i++ {
		out = append(out, reqs[i].at.Sub(reqs[i-1].at))
	}
	return out
}

// TestRunSchedule drives the daemon loop with fake time and checks the exact
// waits between attempts. With Rand fixed at 0.5 every jittered interval is
// exact and a backoff delay is half its ceiling: the ceilings start at
// min(300s, 60s)/8 = 7.5s, so the delays are 3.75s, 7.5s, 15s, 30s, ...
func TestRunSchedule(t *testing.T) {
	x509Err := x509.UnknownAuthorityError{}
	tests := []struct {
		name    string
		rand    float64
		script  map[string][]reply
		watch   string
		want    []time.Duration
		runFor  time.Duration
		wantLog string
	}{
		{
			name: "backoff grows and resets after success",
			rand: 0.5,
			script: map[string][]reply{routeInvPut: {
				{status: 500}, {status: 500}, {status: 502}, {status: 503}, {status: 200}, {status: 500},
			}},
			watch:   routeInvPut,
			want:    []time.Duration{3750 * time.Millisecond, 7500 * time.Millisecond, 15 * time.Second, 30 * time.Second, 8 * time.Hour, 3750 * time.Millisecond},
			runFor:  9 * time.Hour,
			wantLog: "request failed, will retry",
		},
		{
			name: "Retry-After honoured exactly, capped at 1h",
			rand: 0, // also makes the first contact immediate, so dates are whole seconds
			script: map[string][]reply{routeInvPut: {
				{status: 429, header: map[string]string{"Retry-After": "120"}},
				{status: 503, retryAfter: 90 * time.Second},
				{status: 429, header: map[string]string{"Retry-After": "7200"}},
			}},
			watch:   routeInvPut,
			want:    []time.Duration{120 * time.Second, 90 * time.Second, time.Hour},
			runFor:  2 * time.Hour,
			wantLog: "server asked to retry later",
		},
		{
			name:    "pending device waits the retry poll interval",
			rand:    0.5,
			script:  map[string][]reply{routeAuth: {{status: 401}, {status: 401}}},
			watch:   routeAuth,
			want:    []time.Duration{300 * time.Second, 300 * time.Second},
			runFor:  11 * time.Minute,
			wantLog: "device is not accepted yet",
		},
		{
			name:    "permanent API error waits the update poll interval",
			rand:    0.5,
			script:  map[string][]reply{routeInvPut: {{status: 400, body: `{"error":"bad attribute"}`}}},
			watch:   routeInvPut,
			want:    []time.Duration{1800 * time.Second},
			runFor:  time.Hour,
			wantLog: "the server refused the request as malformed",
		},
		{
			name:    "certificate error waits the update poll interval",
			rand:    0.5,
			script:  map[string][]reply{routeAuth: {{err: x509Err}, {err: x509Err}}},
			watch:   routeAuth,
			want:    []time.Duration{1800 * time.Second, 1800 * time.Second},
			runFor:  2 * time.Hour,
			wantLog: "set ServerCertificate",
		},
		{
			name: "transport errors back off",
			rand: 0.5,
			script: map[string][]reply{routeAuth: {
				{err: io.ErrUnexpectedEOF}, {err: io.ErrUnexpectedEOF}, {err: io.ErrUnexpectedEOF},
			}},
			watch:  routeAuth,
			want:   []time.Duration{3750 * time.Millisecond, 7500 * time.Millisecond, 15 * time.Second},
			runFor: time.Minute,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeServer(t)
				for route, rs := range tt.script {
					f.on(route, rs...)
				}
				c, logs := memClient(t, f, func(o *Options) { o.Rand = constRand(tt.rand) })
				start := time.Now()
				runFor(t, c, tt.runFor)

				reqs := f.requests(tt.watch)
				require.Greater(t, len(reqs), len(tt.want), "too few attempts")
				wantFirst := time.Duration(tt.rand * float64(time.Second))
				assert.Equal(t, wantFirst, reqs[0].at.Sub(start), "first contact after the sub-second spread")
				assert.Equal(t, tt.want, gaps(reqs)[:len(tt.want)])
				if tt.wantLog != "" {
					assert.Contains(t, logs.String(), tt.wantLog)
				}
				assert.NotContains(t, logs.String(), "token-1", "the token is never logged")
			})
		})
	}
}

// TestRunOrder checks the start-up order: inventory first (it triggers the
// first authentication), then the update check, then the two schedules.
func TestRunOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeServer(t)
		c, _ := memClient(t, f, nil)
		start := time.Now()
		runFor(t, c, 2*time.Hour)

		var routes []string
		for _, r := range f.requests("")[:4] {
			routes = append(routes, r.method+" "+r.path)
		}
		assert.Equal(t, []string{routeAuth, routeInvPut, routeNextV2, routeNextV1}, routes)

		var checks []time.Duration
		for _, r := range f.requests(routeNextV2) {
			checks = append(checks, r.at.Sub(start))
		}
		half := 500 * time.Millisecond
		assert.Equal(t, []time.Duration{half, half + 1800*time.Second, half + 3600*time.Second, half + 5400*time.Second}, checks,
			"update checks every UpdatePollInterval")
		assert.Len(t, f.requests(routeInvPut), 1, "next inventory only after InventoryPollInterval (8h)")
		assert.Len(t, f.requests(routeAuth), 1, "the token is reused")
	})
}

// TestRunPendingDoesNotDoubleAuth: while pending, only the inventory
// schedule knocks; update checks start after the device is accepted.
func TestRunPendingDoesNotDoubleAuth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeServer(t).on(routeAuth, reply{status: 401}, reply{status: 401})
		c, _ := memClient(t, f, nil)
		runFor(t, c, 20*time.Minute)
		assert.Len(t, f.requests(routeAuth), 3, "one auth request per retry poll interval")
		inv, next := f.requests(routeInvPut), f.requests(routeNextV2)
		require.NotEmpty(t, inv)
		require.NotEmpty(t, next)
		assert.False(t, next[0].at.Before(inv[0].at), "the update check follows the first inventory")
	})
}

// TestRunFleetJitter starts 100 clients at the same instant and checks that
// they do not poll together.
func TestRunFleetJitter(t *testing.T) {
	tests := []struct {
		name         string
		rand         func(i int) func() float64
		wantDistinct int // distinct instants of the second update check
	}{
		{"same fixed randomness polls in lockstep", func(int) func() float64 { return constRand(0.5) }, 1},
		{"different seeds spread the fleet", func(i int) func() float64 {
			return rand.New(rand.NewPCG(uint64(i)+1, 0x5eed)).Float64
		}, 100},
	}
	key := newTestKey(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const n = 100
				ctx, cancel := context.WithCancel(t.Context())
				servers := make([]*fakeServer, n)
				var running atomic.Int32
				for i := range n {
					servers[i] = newFakeServer(t)
					c, _ := memClient(t, servers[i], func(o *Options) { o.AuthKey = key; o.Rand = tt.rand(i) })
					running.Add(1)
					go func() {
						defer running.Add(-1)
						assert.NoError(t, c.Run(ctx))
					}()
				}
				start := time.Now()
				time.Sleep(time.Hour)
				cancel()
				synctest.Wait()
				require.Zero(t, running.Load(), "every Run must return after cancel")

				firsts, seconds := map[time.Duration]bool{}, map[time.Duration]bool{}
				var lo, hi time.Duration
				for i, f := range servers {
					checks := f.requests(routeNextV2)
					require.GreaterOrEqual(t, len(checks), 2, "client %d", i)
					firsts[checks[0].at.Sub(start)] = true
					seconds[checks[1].at.Sub(start)] = true
					gap := checks[1].at.Sub(checks[0].at)
					assert.GreaterOrEqual(t, gap, 1620*time.Second, "jitter stays within -10%%")
					assert.LessOrEqual(t, gap, 1980*time.Second, "jitter stays within +10%%")
					if i == 0 || gap < lo {
						lo = gap
					}
					hi = max(hi, gap)
				}
				assert.Len(t, seconds, tt.wantDistinct)
				assert.Len(t, firsts, tt.wantDistinct, "first contact is spread too")
				if tt.wantDistinct > 1 {
					assert.Greater(t, hi-lo, 120*time.Second, "the fleet spreads over most of the ±10%% window")
				}
			})
		})
	}
}

func TestRunCancel(t *testing.T) {
	tests := []struct {
		name   string
		after  time.Duration
		script map[string][]reply
	}{
		{"during the first-contact delay", 100 * time.Millisecond, nil},
		{"between polls", 10 * time.Minute, nil},
		{"while pending", 2 * time.Minute, map[string][]reply{routeAuth: {{status: 401}}}},
		{"while backing off", 2 * time.Second, map[string][]reply{routeInvPut: {{status: 500}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeServer(t)
				for route, rs := range tt.script {
					f.on(route, rs...)
				}
				c, _ := memClient(t, f, nil)
				runFor(t, c, tt.after) // fails unless Run returns at once; synctest fails on leaked goroutines
			})
		})
	}
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := memClient(t, newFakeServer(t), nil)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait()
		err := c.Run(ctx)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "already running")
		cancel()
		require.NoError(t, <-done)
	})
}

func TestRunReportsDeployment(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeServer(t).on(routeNextV2, reply{status: 200, body: validInstructions})
		var got []*menderapi.DeploymentInstructions
		c, logs := memClient(t, f, func(o *Options) {
			o.OnDeployment = func(_ context.Context, d *menderapi.DeploymentInstructions) { got = append(got, d) }
		})
		runFor(t, c, time.Minute)
		require.Len(t, got, 1)
		assert.Equal(t, "dep-1", got[0].ID)
		assert.Contains(t, logs.String(), "deployment_id=dep-1")
		assert.Contains(t, logs.String(), "artifact_name=release-2")
		assert.NotContains(t, logs.String(), "X-Amz-Signature", "the presigned link is not logged")
	})
}

// TestRunRealNetworkCancel runs the loop against a real TLS server and
// checks that it stops promptly on cancel.
func TestRunRealNetworkCancel(t *testing.T) {
	ca := newCA(t, "Server CA")
	f := newFakeServer(t)
	srv := startTLSServer(t, f, ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), nil)
	opts, _ := baseOptions(newTestKey(t), srv.URL)
	opts.RootCAs = ca.pool
	opts.Rand = constRand(0)
	c, err := New(opts)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	require.Eventually(t, func() bool { return len(f.requests(routeNextV1)) == 1 }, 10*time.Second, 10*time.Millisecond,
		"inventory and the first update check must happen")
	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		require.FailNow(t, "Run did not return after cancel")
	}
	routes := []string{}
	for _, r := range f.requests("") {
		routes = append(routes, r.method+" "+r.path)
	}
	assert.Equal(t, []string{routeAuth, routeInvPut, routeNextV2, routeNextV1}, routes)
}
