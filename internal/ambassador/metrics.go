package ambassador

import (
	"io"
	"strconv"

	"github.com/mender-mtls/mtls-agent/internal/metrics"
)

// durationBuckets returns the upper bounds (seconds) of the duration histograms.
func durationBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

// ambMetrics holds the Prometheus metrics of one Ambassador; the text
// format is written by internal/metrics.
type ambMetrics struct {
	handshakeFailures *counterVec
	authRequests      *counterVec
	requests          *counterVec
	preauthDuration   *histogram
	upstreamDuration  *histogram
	upgradesClosed    *counterVec
	limitRefusals     *counterVec
}

func newMetrics() *ambMetrics {
	return &ambMetrics{
		handshakeFailures: &counterVec{metrics.NewCounterVec("mtls_handshake_failures_total",
			"TLS handshakes rejected, by reason.", "reason", handshakeReasons()...)},
		authRequests: &counterVec{metrics.NewCounterVec("mtls_auth_requests_total",
			"Device auth requests, by outcome at the ambassador.", "outcome", authOutcomes()...)},
		requests: &counterVec{metrics.NewCounterVec("mtls_requests_total",
			"Device requests answered, by HTTP status code.", "code")},
		preauthDuration: &histogram{metrics.NewHistogram("mtls_preauth_duration_seconds",
			"Duration of preauthorization calls to the management API.", durationBuckets())},
		upstreamDuration: &histogram{metrics.NewHistogram("mtls_upstream_duration_seconds",
			"Duration of proxied device requests, until the response body is copied.", durationBuckets())},
		upgradesClosed: &counterVec{metrics.NewCounterVec("mtls_upgraded_connections_closed_total",
			"Websocket connections closed by the ambassador because the client certificate was revoked, lost its CA or expired, by reason.",
			"reason", reasonRevoked, reasonUnknownAuthority, reasonNotValidNow)},
		limitRefusals: &counterVec{metrics.NewCounterVec("mtls_limit_refusals_total",
			"Requests refused by a resource limit, by limit: inflight_per_cert (429), upstream_busy (no upstream "+
				"connection free in time: 503, or a failed management call), body_timeout (408), body_too_large (413).",
			"limit", limitReasons()...)},
	}
}

func (m *ambMetrics) handshakeFailure(reason string) { m.handshakeFailures.inc(reason) }
func (m *ambMetrics) authOutcome(outcome string)     { m.authRequests.inc(outcome) }
func (m *ambMetrics) request(code int)               { m.requests.inc(strconv.Itoa(code)) }
func (m *ambMetrics) upgradeClosed(reason string)    { m.upgradesClosed.inc(reason) }
func (m *ambMetrics) limitRefusal(limit string)      { m.limitRefusals.inc(limit) }

// write renders every metric in the Prometheus text exposition format 0.0.4.
func (m *ambMetrics) write(w io.Writer) error {
	mw := metrics.NewWriter(w)
	m.handshakeFailures.Write(mw)
	m.authRequests.Write(mw)
	m.requests.Write(mw)
	m.preauthDuration.Write(mw)
	m.upgradesClosed.Write(mw)
	m.limitRefusals.Write(mw)
	m.upstreamDuration.Write(mw)
	return mw.Flush()
}

// counterVec adapts metrics.CounterVec to the package's call sites.
type counterVec struct{ *metrics.CounterVec }

func (c *counterVec) inc(value string) { c.Inc(value) }

func (c *counterVec) get(value string) uint64 { return c.Get(value) }

// histogram adapts metrics.Histogram to the package's call sites.
type histogram struct{ *metrics.Histogram }

func (h *histogram) observe(v float64) { h.Observe(v) }

func formatFloat(f float64) string { return metrics.FormatFloat(f) }
