package ambassador

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

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
