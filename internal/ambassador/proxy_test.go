package ambassador

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProxiedRequestsShareCopyBuffers checks that the proxy copies
// responses through pooled buffers: httputil.ReverseProxy without a
// BufferPool allocates a 32 KiB buffer for every proxied response, which
// made more than half of a poll's garbage. Polls one after the other reuse
// the same few buffers (sync.Pool may drop some, and drops a quarter of
// them on purpose under the race detector).
func TestProxiedRequestsShareCopyBuffers(t *testing.T) {
	e := newEnv(t, envConfig{noRun: true})
	cert, _ := e.deviceCA.issue(t, leafOpts{cn: "dev"})
	poll := func() {
		r := httptest.NewRequest(http.MethodGet, nextPath, nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		rec := httptest.NewRecorder()
		e.amb.Handler().ServeHTTP(rec, r)
		require.Equal(t, http.StatusOK, rec.Code, "body %s", rec.Body)
	}
	const n = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		poll()
	}
	runtime.ReadMemStats(&after)
	lent, made := e.amb.buffers.lent.Load(), e.amb.buffers.made.Load()
	t.Logf("%d polls: %d copy buffers lent, %d made; %d bytes allocated per poll (ambassador, upstream and client together)",
		n, lent, made, (after.TotalAlloc-before.TotalAlloc)/n)
	require.GreaterOrEqual(t, lent, int64(n), "every proxied response is copied through a pooled buffer")
	require.LessOrEqual(t, made, int64(n/2), "buffers are reused from one response to the next")
}

// TestRequestLogLines checks the per-request log line: at debug level one
// line per request with method, path, status, request id and the
// certificate's serial; at info level a served poll writes no line (its
// arguments are not even built) while a refusal still writes one.
func TestRequestLogLines(t *testing.T) {
	for _, tt := range []struct {
		name      string
		level     slog.Level
		wantPolls int
	}{{"debug", slog.LevelDebug, 1}, {"info", slog.LevelInfo, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			var rec logRecorder
			e := newEnv(t, envConfig{noRun: true, mutate: func(_ *env, o *Options) {
				o.Logger = slog.New(slog.NewJSONHandler(&rec, &slog.HandlerOptions{Level: tt.level}))
			}})
			cert, _ := e.deviceCA.issue(t, leafOpts{cn: "dev"})
			for _, p := range []string{nextPath, "/api/management/v1/inventory/devices"} {
				r := httptest.NewRequest(http.MethodGet, p, nil)
				r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
				e.amb.Handler().ServeHTTP(httptest.NewRecorder(), r)
			}
			polls := rec.lines(t, slog.LevelDebug, "request")
			require.Len(t, polls, tt.wantPolls, "request lines of the served poll")
			if tt.wantPolls > 0 {
				assert.Equal(t, http.MethodGet, polls[0]["method"])
				assert.Equal(t, menderapi.PathNextV1, polls[0]["path"])
				assert.EqualValues(t, http.StatusOK, polls[0]["status"])
				assert.Equal(t, serialKey(cert.SerialNumber), polls[0]["serial"])
				assert.NotEmpty(t, polls[0]["request_id"])
			}
			refused := rec.lines(t, slog.LevelInfo, "request")
			require.Len(t, refused, 1, "the refused management path is logged at info")
			assert.EqualValues(t, http.StatusNotFound, refused[0]["status"])
			assert.Equal(t, serialKey(cert.SerialNumber), refused[0]["serial"])
		})
	}
}
