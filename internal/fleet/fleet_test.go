package fleet

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// deviceRoutes maps report operations to the backend's route keys.
var deviceRoutes = map[string]string{
	client.OpAuth: fakemender.RouteAuth, client.OpInventory: fakemender.RouteInventory, client.OpNext: fakemender.RouteNext,
	client.OpStatus: fakemender.RouteStatus, client.OpLog: fakemender.RouteLog, client.OpDownload: fakemender.RouteDownload,
}

// assertMatchesBackend checks the report's per-operation counts against
// what the backend saw: equal, up to the exchanges canceled at the stop
// (the backend may have answered those). Through an ambassador, auth
// requests it refused itself never reach the backend and are not compared.
func assertMatchesBackend(t *testing.T, r *Report, st fakemender.Stats, viaAmbassador bool) {
	t.Helper()
	var canceledSlack uint64
	for op, route := range deviceRoutes {
		if viaAmbassador && op == client.OpAuth {
			continue
		}
		o := r.Operations[op]
		seen := uint64(st.Requests[route])
		assert.GreaterOrEqual(t, seen, o.Count, "%s: the backend saw every reported exchange", op)
		canceledSlack += seen - min(seen, o.Count)
		for code, n := range st.ByRouteStatus[route] {
			if code >= 500 {
				got := o.ErrorsByKind["http_"+itoa(code)]
				assert.LessOrEqual(t, got, uint64(n), "%s: %d answers reported", op, code)
				assert.GreaterOrEqual(t, got+r.Canceled, uint64(n), "%s: every %d answer is reported", op, code)
			}
		}
	}
	assert.LessOrEqual(t, canceledSlack, r.Canceled, "only exchanges canceled at the stop are missing from the report")
}

func TestFleet500DevicesThroughAmbassador(t *testing.T) {
	if testing.Short() {
		t.Skip("500 devices with mTLS")
	}
	env := newEnv(t, true)
	const n = 500
	opts := env.fastOptions(env.creds(t, n, true))
	opts.PollInterval, opts.InventoryInterval = 2*time.Second, 5*time.Second
	opts.Ramp = time.Second
	f, err := New(opts)
	require.NoError(t, err)
	r := runUntil(t, f, 120*time.Second, func(p Progress) bool { return p.Accepted == n && p.Requests >= 4*n })

	assert.Equal(t, n, r.Devices)
	assert.Equal(t, n, r.Accepted, "every device accepted through the ambassador")
	require.NotNil(t, r.TimeToAllAcceptedS)
	assert.Positive(t, *r.TimeToAllAcceptedS)
	assert.Zero(t, r.ErrorsTotal, "no errors: %s", errorKinds(r))
	assert.Zero(t, r.Pending)
	assert.True(t, r.MTLS)
	assert.Equal(t, "ecdsa-p256", r.KeyType)
	assert.GreaterOrEqual(t, r.Handshakes.Full, uint64(n), "each device makes at least one full handshake")
	assert.Equal(t, uint64(n), r.Operations[client.OpAuth].Count, "one auth per device: tokens are kept")
	assert.Positive(t, r.Operations[client.OpInventory].Count)
	assert.Positive(t, r.Operations[client.OpNext].P99Ms)
	assert.Greater(t, r.Memory.PeakBytes, r.Memory.BaselineBytes)
	assertMatchesBackend(t, r, env.backend.Stats(), env.viaAmbassador)

	devs := env.backend.Devices()
	require.Len(t, devs, n, "no two devices share an identity")
	keys := map[string]bool{}
	for _, d := range devs {
		assert.Equal(t, menderapi.DevStatusAccepted, d.Status)
		require.Len(t, d.AuthSets, 1)
		keys[d.AuthSets[0].PubKey] = true
	}
	assert.Len(t, keys, n, "every device has its own key")
}

func TestFleetWithoutMTLSOwnKeysIdentityAndInventory(t *testing.T) {
	env := newEnv(t, false)
	const n = 12
	opts := env.fastOptions(env.creds(t, n, false))
	opts.MACPrefix = MACPrefix{0x02, 0x77}
	opts.IdentityAttrs = []Attribute{{"site", []string{"lab"}}}
	opts.InventoryAttrs = []Attribute{{"group", []string{"g1", "g2", "g3"}}}
	opts.DisableKeepAlives = true
	opts.DeviceType, opts.ArtifactName = "rpi4", "release-7"
	f, err := New(opts)
	require.NoError(t, err)
	r := runUntil(t, f, 30*time.Second, func(p Progress) bool {
		if p.Accepted < n || p.Requests < 5*n {
			return false
		}
		for _, d := range env.backend.Devices() {
			if env.backend.Inventory(d.ID)["artifact_name"] == nil {
				return false // this device's first inventory is still on its way
			}
		}
		return true
	})

	assert.False(t, r.MTLS)
	assert.Equal(t, n, r.Accepted)
	assert.Zero(t, r.ErrorsTotal)
	assert.Equal(t, uint64(n), r.Handshakes.Full, "only each device's first connection is a full handshake")
	conns := r.Handshakes.Full + r.Handshakes.Resumed
	assert.GreaterOrEqual(t, conns, r.RequestsTotal, "without keep-alive every exchange opens a connection")
	assert.LessOrEqual(t, conns, r.RequestsTotal+r.Canceled)
	assertMatchesBackend(t, r, env.backend.Stats(), env.viaAmbassador)

	devs := env.backend.Devices()
	require.Len(t, devs, n)
	for _, d := range devs {
		mac, _ := d.IdentityData["mac"].(string)
		require.True(t, strings.HasPrefix(mac, "02:77:00:00:00:"), "MAC %q from the prefix and the index", mac)
		assert.Equal(t, "lab", d.IdentityData["site"])
		inv := env.backend.Inventory(d.ID)
		var idx int
		_, err := fmtSscanHex(mac[len(mac)-2:], &idx)
		require.NoError(t, err)
		assert.Equal(t, []string{"g1", "g2", "g3"}[idx%3], inv["group"], "device %d", idx)
		assert.Equal(t, "rpi4", inv["device_type"])
		assert.Equal(t, "release-7", inv["artifact_name"])
		assert.Equal(t, ClientVersion, inv["mender_client_version"])
	}
}

func TestFleetCountsInjectedFaultsAndLatency(t *testing.T) {
	env := newEnv(t, false)
	env.backend.AddFault(fakemender.Fault{PathPrefix: menderapi.PathInventoryAttributes, Status: 503, Count: 7})
	env.backend.AddFault(fakemender.Fault{PathPrefix: menderapi.PathNextV1, Status: 500, Count: 4})
	const delay = 150 * time.Millisecond
	env.backend.AddFault(fakemender.Fault{PathPrefix: menderapi.PathNextV2, Delay: delay, FailRate: 1})
	const n = 5
	f, err := New(env.fastOptions(env.creds(t, n, false)))
	require.NoError(t, err)
	r := runUntil(t, f, 60*time.Second, func(p Progress) bool { return p.Accepted == n && p.Errors >= 11 && p.Requests >= 60 })

	st := env.backend.Stats()
	inv := r.Operations[client.OpInventory]
	assert.Equal(t, uint64(7), inv.ErrorsByKind["http_503"], "every injected inventory 503 is counted")
	assert.Equal(t, uint64(7), inv.Errors)
	assert.Equal(t, uint64(4), r.Operations[client.OpNext].ErrorsByKind["http_500"])
	assert.Equal(t, uint64(11), r.ErrorsTotal)
	assert.Equal(t, 7, st.ByRouteStatus[fakemender.RouteInventory][503])
	assertMatchesBackend(t, r, st, env.viaAmbassador)

	// Half the next exchanges (the v2 calls answered 404 after the delay)
	// take at least the injected delay.
	next := r.Operations[client.OpNext]
	assert.GreaterOrEqual(t, next.MaxMs, ms(delay))
	assert.GreaterOrEqual(t, next.P90Ms, ms(delay)*(1-HistogramRelativeError))
	assert.GreaterOrEqual(t, next.Fallbacks*2+2, next.Count-4, "one v2 fallback per v1 call")
	assert.Equal(t, n, r.Accepted, "devices retry past the faults")
}

func TestFleetFailRateRetriesUntilAllAccepted(t *testing.T) {
	env := newEnv(t, true)
	env.backend.AddFault(fakemender.Fault{FailRate: 0.2, Status: 503})
	const n = 40
	f, err := New(env.fastOptions(env.creds(t, n, true)))
	require.NoError(t, err)
	r := runUntil(t, f, 90*time.Second, func(p Progress) bool { return p.Accepted == n && p.Requests >= 6*n })

	assert.Equal(t, n, r.Accepted, "all devices accepted despite 20%% failures")
	require.NotNil(t, r.TimeToAllAcceptedS)
	assert.Positive(t, r.ErrorsTotal, "the failures are counted")
	var sum uint64
	for _, o := range r.Operations {
		for _, v := range o.ErrorsByKind {
			sum += v
		}
	}
	assert.Equal(t, r.ErrorsTotal, sum, "errors_total is the sum of the per-operation kinds")
	st := env.backend.Stats()
	assert.Positive(t, st.FaultsApplied)
	assertMatchesBackend(t, r, st, env.viaAmbassador)
}

func TestFleetDeployments(t *testing.T) {
	tests := []struct {
		name       string
		failRate   float64
		abort      bool
		wantStatus string
		want       Deployments
	}{
		{name: "success and new artifact name", wantStatus: menderapi.StatusSuccess, want: Deployments{Started: 3, Succeeded: 3}},
		{name: "failure at the fail rate with a log", failRate: 1, wantStatus: menderapi.StatusFailure, want: Deployments{Started: 3, Failed: 3, FailedOnPurpose: 3, FailRate: 1}},
		{name: "aborted on the server", abort: true, wantStatus: fakemender.StatusAborted, want: Deployments{Started: 3, Aborted: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, true)
			const n = 6
			opts := env.fastOptions(env.creds(t, n, true))
			opts.FailRate = tt.failRate
			opts.Rand = func() float64 { return 0.5 }
			f, err := New(opts)
			require.NoError(t, err)

			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			done := make(chan *Report, 1)
			go func() {
				r, err := f.Run(ctx)
				assert.NoError(t, err)
				done <- r
			}()
			require.Eventually(t, func() bool { return f.Progress().Accepted == n }, 30*time.Second, 20*time.Millisecond)
			devs := env.backend.Devices()
			targets := []string{devs[0].ID, devs[2].ID, devs[4].ID}
			if tt.abort {
				env.backend.AddFault(fakemender.Fault{PathPrefix: "/api/devices/v1/deployments/download/", Delay: 3 * time.Second, FailRate: 1})
			}
			depID, err := env.backend.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "release-2",
				DeviceTypes: []string{DefaultDeviceType}, Size: 64 << 10, Devices: targets})
			require.NoError(t, err)
			if tt.abort {
				require.Eventually(t, func() bool {
					for _, id := range targets {
						if env.backend.DeviceDeploymentStatus(depID, id) != menderapi.StatusDownloading {
							return false
						}
					}
					return true
				}, 30*time.Second, 10*time.Millisecond, "every target downloading")
				env.backend.Abort(depID)
			}
			require.Eventually(t, func() bool {
				for _, id := range targets {
					if env.backend.DeviceDeploymentStatus(depID, id) != tt.wantStatus {
						return false
					}
				}
				p := f.col
				return p.depStarted.Load() == 3 && p.depSucceeded.Load()+p.depFailed.Load()+p.depAborted.Load() == 3
			}, 30*time.Second, 10*time.Millisecond, "every target reached %s", tt.wantStatus)
			if tt.wantStatus == menderapi.StatusSuccess {
				require.Eventually(t, func() bool {
					for _, id := range targets {
						if env.backend.Inventory(id)["artifact_name"] != "release-2" {
							return false
						}
					}
					return true
				}, 30*time.Second, 10*time.Millisecond, "the new artifact name is in the inventory")
			}
			cancel()
			r := <-done
			// The backend serves a real artifact; every device downloads all
			// of it (an aborted device learns of it after its download).
			size := uint64(env.announcedSize(depID))
			require.Positive(t, size)
			want := tt.want
			want.DownloadedBytes, want.CompletedDownloadBytes, want.ArtifactBytesPerDevice = 3*size, 3*size, size
			got := r.Deployments
			assert.Equal(t, uint64(3), got.DownloadSeconds.Count, "a download time per device")
			installs := uint64(3)
			if tt.abort {
				installs = 0 // the 409 of the installing report stops them
			}
			assert.Equal(t, installs, got.InstallSeconds.Count, "an install time per device that installed")
			got.DownloadSeconds, got.InstallSeconds = DurationSummary{}, DurationSummary{}
			assert.Equal(t, want, got)
			for _, id := range targets {
				if tt.failRate > 0 {
					log := env.backend.DeploymentLog(depID, id)
					require.NotEmpty(t, log, "a failed deployment uploads a log")
					assert.Contains(t, log[len(log)-1].Message, "simulated installation failure")
				}
			}
			if tt.abort {
				assert.Positive(t, r.Operations[client.OpStatus].ErrorsByKind["http_409"], "the 409 that stopped the devices is counted")
			} else {
				assert.Equal(t, uint64(3), r.Operations[client.OpDownload].Count)
				assert.Zero(t, r.ErrorsTotal)
			}
		})
	}
}

func TestFleetStopsCleanlyOnCancel(t *testing.T) {
	env := newEnv(t, true)
	before := runtime.NumGoroutine()
	const n = 20
	opts := env.fastOptions(env.creds(t, n, true))
	opts.Ramp = time.Hour // most devices never start
	f, err := New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan *Report, 1)
	go func() {
		r, err := f.Run(ctx)
		assert.NoError(t, err, "stopping is not an error")
		done <- r
	}()
	require.Eventually(t, func() bool { return f.Progress().Accepted >= 1 }, 20*time.Second, 10*time.Millisecond)
	cancel()
	var r *Report
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	require.NotNil(t, r, "a canceled run still reports")
	assert.Equal(t, n, r.Devices)
	assert.Equal(t, 1, r.Accepted, "only the first device started within the ramp")
	assert.Nil(t, r.TimeToAllAcceptedS)
	assert.Equal(t, 1, f.Progress().Started)
	assert.Eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 }, 10*time.Second, 20*time.Millisecond,
		"device goroutines and connections are gone (%d before)", before)

	_, err = f.Run(t.Context())
	assert.ErrorIs(t, err, ErrRunning, "a fleet runs once")
}

func TestNewValidatesOptions(t *testing.T) {
	creds, _, err := LoadCredentials(t.Context(), StoreOptions{}, 0, 2)
	require.NoError(t, err)
	big := []*Credential{{Index: 300, Key: creds[0].Key}}
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no server", Options{Credentials: creds}, "ServerURL"},
		{"no credentials", Options{ServerURL: "https://x"}, "Credentials"},
		{"index beyond the MAC prefix", Options{ServerURL: "https://x", Credentials: big, MACPrefix: MACPrefix{1, 2, 3, 4, 5}}, "MAC prefix"},
		{"mac identity attribute", Options{ServerURL: "https://x", Credentials: creds, IdentityAttrs: []Attribute{{"mac", []string{"x"}}}}, "mac"},
		{"fail rate", Options{ServerURL: "https://x", Credentials: creds, FailRate: 1.5}, "FailRate"},
		{"negative ramp", Options{ServerURL: "https://x", Credentials: creds, Ramp: -1}, "negative"},
		{"negative install delay", Options{ServerURL: "https://x", Credentials: creds, InstallDelay: -time.Second}, "InstallDelay and ReconnectStorm must not be negative"},
		{"bad URL reaches the client", Options{ServerURL: "ftp://x", Credentials: creds}, "scheme"},
		{"ramp and arrival rate", Options{ServerURL: "https://x", Credentials: creds, Ramp: time.Second, ArrivalRate: 5}, "not both"},
		{"negative arrival rate", Options{ServerURL: "https://x", Credentials: creds, ArrivalRate: -1}, "ArrivalRate"},
		{"negative connection cap", Options{ServerURL: "https://x", Credentials: creds, MaxConns: -1}, "MaxConns"},
		{"negative storm", Options{ServerURL: "https://x", Credentials: creds, ReconnectStorm: -time.Second}, "ReconnectStorm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// errorKinds lists the report's errors as "op kind: count" for a failure
// message.
func errorKinds(r *Report) string {
	var parts []string
	for _, op := range r.OperationNames() {
		for k, v := range r.Operations[op].ErrorsByKind {
			parts = append(parts, fmt.Sprintf("%s %s: %d", op, k, v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// A run that ends at Options.Duration cuts the exchanges still in flight:
// they are canceled at the stop, not timeouts of the server.
func TestFleetDurationEndCancelsInFlight(t *testing.T) {
	env := newEnv(t, false)
	const n = 3
	// Every auth (and next) call hangs past the end of the run.
	env.backend.AddFault(fakemender.Fault{PathPrefix: "/api/devices/", Method: "POST", Delay: 4 * time.Second, FailRate: 1})
	env.backend.AddFault(fakemender.Fault{PathPrefix: menderapi.PathNextV1, Delay: 4 * time.Second, FailRate: 1})
	opts := env.fastOptions(env.creds(t, n, false))
	opts.Duration = 1500 * time.Millisecond
	f, err := New(opts)
	require.NoError(t, err)
	r, err := f.Run(t.Context())
	require.NoError(t, err)
	assert.Zero(t, r.ErrorsTotal, "no exchange cut at the end is an error: %s", errorKinds(r))
	assert.GreaterOrEqual(t, r.Canceled, uint64(1), "the hanging exchanges are counted as canceled")
}
