package fleet

import (
	"io"
	"maps"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/metrics"
)

// WriteMetrics writes the live fleet metrics in the Prometheus text format.
func (f *Fleet) WriteMetrics(w io.Writer) error {
	c := f.col
	p := f.Progress()
	mw := metrics.NewWriter(w)
	gauge := func(name, help string, v float64) {
		mw.Header(name, help, metrics.TypeGauge)
		mw.Sample(name, nil, v)
	}
	gauge("fleet_devices", "Virtual devices in this process.", float64(p.Devices))
	gauge("fleet_devices_started", "Devices launched so far (ramp).", float64(p.Started))
	gauge("fleet_devices_accepted", "Devices that authenticated at least once.", float64(p.Accepted))
	gauge("fleet_devices_pending", "Devices whose last auth request got 401 and were never accepted.", float64(p.Pending))
	gauge("fleet_devices_failing", "Devices whose last exchange failed.", float64(p.Failing))
	if d, ok := c.timeToAllAccepted(); ok {
		gauge("fleet_all_accepted_seconds", "Time from the start until every device was accepted.", d.Seconds())
	}
	gauge("fleet_memory_inuse_bytes", "Heap in use plus goroutine stacks.", float64(memInUse()))
	gauge("fleet_memory_peak_bytes", "Largest sampled heap in use plus stacks.", float64(c.memPeak.Load()))

	type opSnap struct {
		count, errs, fallbacks uint64
		kinds                  map[string]uint64
	}
	snaps := map[string]opSnap{}
	for _, op := range append(Operations, "other") {
		st := c.ops[op]
		st.mu.Lock()
		s := opSnap{count: st.count, errs: st.errors, fallbacks: st.fallbacks, kinds: map[string]uint64{}}
		for k, v := range st.kinds {
			s.kinds[k] = v
		}
		st.mu.Unlock()
		snaps[op] = s
	}
	mw.Header("fleet_requests_total", "Finished exchanges, by operation.", metrics.TypeCounter)
	for _, op := range Operations {
		mw.Sample("fleet_requests_total", []metrics.Label{{Name: "op", Value: op}}, float64(snaps[op].count))
	}
	mw.Header("fleet_request_errors_total", "Failed exchanges, by operation and kind.", metrics.TypeCounter)
	for _, op := range Operations {
		for _, k := range slices.Sorted(maps.Keys(snaps[op].kinds)) {
			mw.Sample("fleet_request_errors_total", []metrics.Label{{Name: "op", Value: op}, {Name: "kind", Value: k}}, float64(snaps[op].kinds[k]))
		}
	}
	mw.Header("fleet_request_fallbacks_total", "Answers that made the client switch endpoint version.", metrics.TypeCounter)
	for _, op := range []string{client.OpInventory, client.OpNext} {
		mw.Sample("fleet_request_fallbacks_total", []metrics.Label{{Name: "op", Value: op}}, float64(snaps[op].fallbacks))
	}
	mw.Header("fleet_requests_canceled_total", "Exchanges cut by the end of the run.", metrics.TypeCounter)
	mw.Sample("fleet_requests_canceled_total", nil, float64(c.canceled.Load()))
	mw.Header("fleet_request_duration_seconds", "Exchange latency, by operation.", metrics.TypeHistogram)
	for _, op := range Operations {
		bounds, counts, sum := c.ops[op].prom.Snapshot()
		mw.Histogram("fleet_request_duration_seconds", []metrics.Label{{Name: "op", Value: op}}, bounds, counts, sum)
	}
	mw.Header("fleet_tls_handshakes_total", "TLS handshakes of new connections, full or resumed.", metrics.TypeCounter)
	mw.Sample("fleet_tls_handshakes_total", []metrics.Label{{Name: "type", Value: "full"}}, float64(c.full.Load()))
	mw.Sample("fleet_tls_handshakes_total", []metrics.Label{{Name: "type", Value: "resumed"}}, float64(c.resumed.Load()))
	mw.Header("fleet_deployments_total", "Deployments acted on, by outcome (started counts every one).", metrics.TypeCounter)
	for _, o := range []struct {
		name string
		v    *atomic.Uint64
	}{{"started", &c.depStarted}, {"succeeded", &c.depSucceeded}, {"failed", &c.depFailed},
		{"aborted", &c.depAborted}, {"incomplete", &c.depIncomplete}} {
		mw.Sample("fleet_deployments_total", []metrics.Label{{Name: "outcome", Value: o.name}}, float64(o.v.Load()))
	}
	return mw.Flush()
}

// MetricsHandler serves WriteMetrics on GET /metrics.
func (f *Fleet) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", metrics.ContentType)
		_ = f.WriteMetrics(w)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not found: use GET /metrics", http.StatusNotFound)
	})
	return mux
}
