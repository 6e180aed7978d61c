package ambassador

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// durationBuckets returns the upper bounds (seconds) of the duration histograms.
func durationBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

// ambMetrics holds the Prometheus metrics of one Ambassador in a registry
// of its own (never the global one: tests build several ambassadors), with
// the Go runtime and process collectors.
type ambMetrics struct {
	reg               *prometheus.Registry
	handshakeFailures *prometheus.CounterVec
	authRequests      *prometheus.CounterVec
	requests          *prometheus.CounterVec
	preauthDuration   prometheus.Histogram
	upstreamDuration  prometheus.Histogram
	upgradesClosed    *prometheus.CounterVec
	limitRefusals     *prometheus.CounterVec
	connRefusals      *prometheus.CounterVec
	acceptErrors      prometheus.Counter
}

// newCounterVec returns a counter family with one label whose preset values
// are exported at 0 from the start, so that rate() works before the first
// event.
func newCounterVec(name, help, label string, preset ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	for _, v := range preset {
		c.WithLabelValues(v)
	}
	return c
}

func newMetrics(conns *connLimits) *ambMetrics {
	m := &ambMetrics{
		reg: prometheus.NewRegistry(),
		handshakeFailures: newCounterVec("mtls_handshake_failures_total",
			"TLS handshakes rejected, by reason.", "reason", handshakeReasons()...),
		authRequests: newCounterVec("mtls_auth_requests_total",
			"Device auth requests, by outcome at the ambassador.", "outcome", authOutcomes()...),
		requests: newCounterVec("mtls_requests_total",
			"Device requests answered, by HTTP status code.", "code"),
		preauthDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mtls_preauth_duration_seconds",
			Help: "Duration of preauthorization calls to the management API.", Buckets: durationBuckets()}),
		upstreamDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mtls_upstream_duration_seconds",
			Help: "Duration of proxied device requests, until the response body is copied.", Buckets: durationBuckets()}),
		upgradesClosed: newCounterVec("mtls_upgraded_connections_closed_total",
			"Websocket connections closed by the ambassador because the client certificate was revoked, lost its CA or expired, by reason.",
			"reason", reasonRevoked, reasonUnknownAuthority, reasonNotValidNow),
		limitRefusals: newCounterVec("mtls_limit_refusals_total",
			"Requests refused by a resource limit, by limit: inflight_per_cert (429), upstream_busy (no upstream "+
				"connection free in time: 503, or a failed management call), body_timeout (408), body_too_large (413).",
			"limit", limitReasons()...),
		connRefusals: newCounterVec("mtls_connection_refusals_total",
			"Device connections refused by a connection bound, by reason: conn_limit (accepted past MaxConns, "+
				"requests answered 503), conn_ceiling (reset before the handshake), handshake_wait (no handshake "+
				"slot in time, closed before the handshake).",
			"reason", connRefusalReasons()...),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mtls_accept_errors_total",
			Help: "Failed accepts of device connections (such as EMFILE: out of descriptors), each followed by a backoff."}),
	}
	m.reg.MustRegister(
		m.handshakeFailures, m.authRequests, m.requests, m.preauthDuration, m.upstreamDuration,
		m.upgradesClosed, m.limitRefusals, m.connRefusals, m.acceptErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mtls_open_connections",
			Help: "Device connections open, handshaking ones included."},
			func() float64 { return float64(conns.open.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mtls_handshakes_in_progress",
			Help: "TLS handshakes with devices in progress."},
			func() float64 { return float64(conns.handshaking.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mtls_connections_max",
			Help: "Device connections served normally (MaxConns); past it requests are answered 503."},
			func() float64 { return float64(conns.max) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *ambMetrics) handshakeFailure(reason string) {
	m.handshakeFailures.WithLabelValues(reason).Inc()
}
func (m *ambMetrics) authOutcome(outcome string)  { m.authRequests.WithLabelValues(outcome).Inc() }
func (m *ambMetrics) request(code int)            { m.requests.WithLabelValues(strconv.Itoa(code)).Inc() }
func (m *ambMetrics) upgradeClosed(reason string) { m.upgradesClosed.WithLabelValues(reason).Inc() }
func (m *ambMetrics) limitRefusal(limit string)   { m.limitRefusals.WithLabelValues(limit).Inc() }

// handler serves the registry in the Prometheus exposition formats.
func (m *ambMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
