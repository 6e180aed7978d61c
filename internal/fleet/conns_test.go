package fleet

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// recorder is an auto-accepting fake backend on 127.0.0.1 that asks for
// client certificates and records, for every request, where it came from
// and on whose certificate, plus the open connections and the requests
// in progress.
type recorder struct {
	url string
	ca  *pkitest.CA
	// hold delays every answer, to keep requests (and connections) busy.
	hold time.Duration

	open, peakOpen     atomic.Int64
	conns              atomic.Int64 // connections accepted in all
	active, peakActive atomic.Int64
	mu                 sync.Mutex
	tokens             map[string]string    // device token -> MAC of the auth request
	sources            map[string][]string  // MAC -> remote IPs of its requests
	firstAuth          map[string]time.Time // MAC -> time of its first auth request
	mismatches         []string             // requests on another device's certificate
	checked            int                  // requests whose certificate was checked
	storm              map[string]int       // MAC -> successful polls
	// onHello, when set before the run, is called in every server
	// handshake when the ClientHello arrives; the handshake waits for it.
	onHello func()
}

func newRecorder(t *testing.T, hold time.Duration) *recorder {
	t.Helper()
	ca := pkitest.NewCA(t)
	backend, err := fakemender.New(fakemender.Options{AutoAccept: true, ArtifactDir: t.TempDir()})
	require.NoError(t, err)
	rec := &recorder{ca: ca, hold: hold, tokens: map[string]string{}, sources: map[string][]string{},
		firstAuth: map[string]time.Time{}, storm: map[string]int{}}
	srv := httptest.NewUnstartedServer(rec.handler(backend))
	srv.TLS = ca.ServerTLSConfig(t)
	srv.TLS.ClientAuth = tls.RequireAnyClientCert // the test compares certificates, the CA is the test's own
	srv.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if rec.onHello != nil {
			rec.onHello()
		}
		return nil, nil
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			rec.conns.Add(1)
			peak(&rec.peakOpen, rec.open.Add(1))
		case http.StateClosed, http.StateHijacked:
			rec.open.Add(-1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	rec.url = srv.URL
	return rec
}

func peak(p *atomic.Int64, v int64) {
	for {
		old := p.Load()
		if v <= old || p.CompareAndSwap(old, v) {
			return
		}
	}
}

// handler records each request, then passes it to the backend.
func (rec *recorder) handler(backend http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peak(&rec.peakActive, rec.active.Add(1))
		defer rec.active.Add(-1)
		if rec.hold > 0 {
			time.Sleep(rec.hold)
		}
		cn := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		if r.URL.Path != menderapi.PathAuthRequests {
			tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			rec.mu.Lock()
			mac := rec.tokens[tok]
			rec.note(mac, cn, ip)
			rec.mu.Unlock()
			backend.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req menderapi.AuthRequest
		var id struct {
			MAC string `json:"mac"`
		}
		_ = json.Unmarshal(body, &req)
		_ = json.Unmarshal([]byte(req.IDData), &id)
		cw := &captureWriter{ResponseWriter: w}
		backend.ServeHTTP(cw, r)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if _, ok := rec.firstAuth[id.MAC]; !ok {
			rec.firstAuth[id.MAC] = time.Now()
		}
		if cw.status == http.StatusOK {
			rec.tokens[cw.body.String()] = id.MAC
		}
		rec.note(id.MAC, cn, ip)
	})
}

// note records one request of the device with mac (from its identity or
// token) that came from ip on the certificate named cn; mu is held.
func (rec *recorder) note(mac, cn, ip string) {
	rec.checked++
	if mac == "" || mac != cn {
		rec.mismatches = append(rec.mismatches, "device "+mac+" on the certificate of "+cn)
	}
	rec.sources[mac] = append(rec.sources[mac], ip)
}

// captureWriter keeps a copy of the answer (an auth answer is the token).
type captureWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

// options returns fleet options for n mTLS devices against the recorder.
func (rec *recorder) options(t *testing.T, n int) Options {
	t.Helper()
	env := &testEnv{ca: rec.ca}
	return Options{
		ServerURL:         rec.url,
		RootCAs:           rec.ca.Pool(),
		Credentials:       env.creds(t, n, true),
		PollInterval:      300 * time.Millisecond,
		InventoryInterval: time.Hour,
		RetryInterval:     200 * time.Millisecond,
		RequestTimeout:    10 * time.Second,
		SampleInterval:    100 * time.Millisecond,
	}
}

func TestFleetEachRequestOnItsOwnCertificate(t *testing.T) {
	rec := newRecorder(t, 0)
	opts := rec.options(t, 20)
	f, err := New(opts)
	require.NoError(t, err)
	r := runUntil(t, f, 15*time.Second, func(p Progress) bool { return p.Accepted == 20 && p.Requests >= 100 })
	require.Equal(t, 20, r.Accepted)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Empty(t, rec.mismatches, "every auth, inventory and poll is made on its own device's certificate")
	assert.GreaterOrEqual(t, rec.checked, 100)
}

func TestFleetSpreadsSourceAddresses(t *testing.T) {
	rec := newRecorder(t, 0)
	opts := rec.options(t, 9)
	srcs, err := ParseSourceIPs("127.0.0.2-127.0.0.4")
	require.NoError(t, err)
	opts.SourceIPs = srcs
	f, err := New(opts)
	require.NoError(t, err)
	r := runUntil(t, f, 15*time.Second, func(p Progress) bool { return p.Accepted == 9 && p.Requests >= 30 })
	require.Equal(t, 9, r.Accepted)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.sources, 9)
	for i := range 9 {
		mac := DefaultMACPrefix.MAC(i)
		want := srcs[i%3].String()
		require.NotEmpty(t, rec.sources[mac], mac)
		for _, ip := range rec.sources[mac] {
			assert.Equal(t, want, ip, "device %d connects from address %d mod 3", i, i)
		}
	}
}

func TestFleetCapsOpenConnections(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "keep-alive"}[keepAlive], func(t *testing.T) {
			rec := newRecorder(t, 50*time.Millisecond)
			opts := rec.options(t, 24)
			opts.MaxConns = 3
			// With keep-alive, idle connections must give way to waiting
			// devices: their idle timeout (90 s) outlasts the test.
			opts.KeepAlive = keepAlive
			f, err := New(opts)
			require.NoError(t, err)
			var peakConns atomic.Int64
			r := runUntil(t, f, 20*time.Second, func(p Progress) bool {
				peak(&peakConns, int64(p.Conns))
				return p.Accepted == 24
			})
			require.Equal(t, 24, r.Accepted, "every device completes, waiting for a slot instead of failing")
			assert.Zero(t, r.ErrorsTotal, "waits for a slot are no device errors")
			assert.LessOrEqual(t, rec.peakActive.Load(), int64(3), "requests in progress at the server never exceed the cap")
			assert.LessOrEqual(t, peakConns.Load(), int64(3))
			assert.Positive(t, f.Progress().ConnWaits, "devices had to wait")
			assert.Equal(t, 3, f.MaxConns())
		})
	}
}

func TestFleetHoldsNoConnectionBetweenSteps(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "keep-alive"}[keepAlive], func(t *testing.T) {
			rec := newRecorder(t, 0)
			opts := rec.options(t, 10)
			opts.PollInterval, opts.InventoryInterval = time.Hour, time.Hour
			opts.KeepAlive = keepAlive
			f, err := New(opts)
			require.NoError(t, err)
			var idle atomic.Int64 // server-side open connections once every device polled
			polled := func() bool {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				n := 0
				for _, s := range rec.sources {
					if len(s) >= 3 { // auth, inventory, poll
						n++
					}
				}
				return n == 10
			}
			since := time.Time{}
			runUntil(t, f, 15*time.Second, func(p Progress) bool {
				if !polled() {
					return false
				}
				if since.IsZero() {
					since = time.Now()
				}
				idle.Store(rec.open.Load())
				return rec.open.Load() == 0 || time.Since(since) > 2*time.Second
			})
			if keepAlive {
				assert.Positive(t, idle.Load(), "with --keep-alive idle devices keep their connections")
			} else {
				assert.Zero(t, idle.Load(), "idle devices hold no connection")
			}
			// The first update check follows the authenticating inventory
			// step at once, on the same connection.
			assert.Equal(t, int64(10), rec.conns.Load(), "one connection per device for auth, inventory and the first poll")
		})
	}
}

func TestFleetArrivalRate(t *testing.T) {
	rec := newRecorder(t, 0)
	const n, rate = 20, 40.0
	opts := rec.options(t, n)
	opts.ArrivalRate = rate
	f, err := New(opts)
	require.NoError(t, err)
	r := runUntil(t, f, 15*time.Second, func(p Progress) bool { return p.Accepted == n })
	require.Equal(t, n, r.Accepted)
	start := f.col.start
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.firstAuth, n)
	for i := range n {
		at := rec.firstAuth[DefaultMACPrefix.MAC(i)].Sub(start)
		// A timer never fires early: device i arrives no sooner than i/rate.
		assert.GreaterOrEqual(t, at, time.Duration(float64(i)/rate*float64(time.Second)), "device %d", i)
	}
	last := rec.firstAuth[DefaultMACPrefix.MAC(n-1)].Sub(start)
	assert.Less(t, last, 5*time.Second, "the last arrival is near (n-1)/rate, not after a long delay")
}

func TestFleetReconnectStorm(t *testing.T) {
	rec := newRecorder(t, 0)
	const n = 50
	opts := rec.options(t, n)
	opts.PollInterval, opts.InventoryInterval = time.Hour, time.Hour
	opts.KeepAlive = true
	opts.ReconnectStorm = 3 * time.Second
	f, err := New(opts)
	require.NoError(t, err)
	var before atomic.Int64
	r := runUntil(t, f, 20*time.Second, func(p Progress) bool {
		if !f.storm.fired.Load() {
			before.Store(int64(p.Conns))
		}
		return f.storm.over.Load()
	})
	require.Equal(t, n, r.Accepted)
	st := r.Storm
	require.NotNil(t, st, "the report has the storm")
	assert.Equal(t, n, st.Devices)
	assert.Equal(t, n, st.Recovered)
	require.NotNil(t, st.RecoveryS, "every device polled again")
	assert.Less(t, *st.RecoveryS, 10.0)
	assert.GreaterOrEqual(t, st.AtS, 3.0, "the storm hits at ReconnectStorm, never before")
	assert.Less(t, st.AtS, 10.0)
	assert.Positive(t, st.ConnectionsClosed, "kept-alive connections were cut")
	assert.Positive(t, before.Load())
	var kinds []string
	for _, m := range f.col.markerList() {
		kinds = append(kinds, m.Kind)
	}
	assert.Contains(t, kinds, "reconnect-storm")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := range n {
		// auth, inventory, the first poll and the poll the storm caused; the
		// hour-long interval gives no other.
		assert.GreaterOrEqual(t, len(rec.sources[DefaultMACPrefix.MAC(i)]), 4, "device %d", i)
	}
}

func TestParseSourceIPs(t *testing.T) {
	got, err := ParseSourceIPs("127.0.0.2-127.0.0.4, 127.0.1.0/31,::1")
	require.NoError(t, err)
	var s []string
	for _, a := range got {
		s = append(s, a.String())
	}
	assert.Equal(t, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.0", "127.0.1.1", "::1"}, s)
	for _, bad := range []string{"", "127.0.0.2-127.0.1.4", "127.0.0.9-127.0.0.2", "10.0.0.0/8", "x", "127.0.0.1,127.0.0.1", "127.0.0.1,"} {
		_, err := ParseSourceIPs(bad)
		assert.ErrorIs(t, err, ErrInvalid, bad)
	}
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	assert.NoError(t, CheckSourceIPs(lo, "https://127.0.0.1:8443"))
	assert.NoError(t, CheckSourceIPs(lo, "https://localhost:8443"))
	assert.ErrorContains(t, CheckSourceIPs(lo, "https://192.0.2.1"), "is a loopback address")
	assert.ErrorContains(t, CheckSourceIPs([]netip.Addr{netip.MustParseAddr("192.0.2.7")}, "https://127.0.0.1"), "use 127.x.y.z")
	assert.ErrorContains(t, CheckSourceIPs([]netip.Addr{netip.MustParseAddr("::1")}, "https://127.0.0.1"), "IP version")
	_, err = New(Options{ServerURL: "https://127.0.0.1", Credentials: []*Credential{{}}, SourceIPs: []netip.Addr{netip.MustParseAddr("192.0.2.7")}})
	assert.ErrorContains(t, err, "SourceIPs")
}

func TestParseRateAndDefaultMaxConns(t *testing.T) {
	for in, want := range map[string]float64{"500/s": 500, "90/m": 1.5, " 2.5/s ": 2.5} {
		got, err := ParseRate(in)
		require.NoError(t, err, in)
		assert.InDelta(t, want, got, 1e-9, in)
	}
	for _, bad := range []string{"", "500", "0/s", "-1/s", "5/h", "x/s", "Inf/s", "NaN/s"} {
		_, err := ParseRate(bad)
		assert.ErrorIs(t, err, ErrInvalid, bad)
	}
	assert.Equal(t, 20000-FileReserve, DefaultMaxConns(20000, 0))
	assert.Equal(t, 20000-FileReserve, DefaultMaxConns(20000, 64))
	assert.Equal(t, PortsPerSourceAddr, DefaultMaxConns(1<<20, 1))
	assert.Equal(t, 2*PortsPerSourceAddr, DefaultMaxConns(1<<20, 2))
	assert.Equal(t, 1, DefaultMaxConns(10, 1))
}
