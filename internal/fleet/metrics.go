package fleet

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// Descriptions of the fleet metrics computed at each scrape.
var (
	descDevices  = prometheus.NewDesc("fleet_devices", "Virtual devices in this process.", nil, nil)
	descStarted  = prometheus.NewDesc("fleet_devices_started", "Devices launched so far (ramp).", nil, nil)
	descAccepted = prometheus.NewDesc("fleet_devices_accepted", "Devices that authenticated at least once.", nil, nil)
	descPending  = prometheus.NewDesc("fleet_devices_pending", "Devices whose last auth request got 401 and were never accepted.", nil, nil)
	descFailing  = prometheus.NewDesc("fleet_devices_failing", "Devices whose last exchange failed.", nil, nil)
	descAllAcc   = prometheus.NewDesc("fleet_all_accepted_seconds", "Time from the start until every device was accepted.", nil, nil)
	descMemInUse = prometheus.NewDesc("fleet_memory_inuse_bytes", "Heap in use plus goroutine stacks.", nil, nil)
	descMemPeak  = prometheus.NewDesc("fleet_memory_peak_bytes", "Largest sampled heap in use plus stacks.", nil, nil)
	descRequests = prometheus.NewDesc("fleet_requests_total", "Finished exchanges, by operation.", []string{"op"}, nil)
	descErrors   = prometheus.NewDesc("fleet_request_errors_total", "Failed exchanges, by operation and kind.", []string{"op", "kind"}, nil)
	descFallback = prometheus.NewDesc("fleet_request_fallbacks_total", "Answers that made the client switch endpoint version.", []string{"op"}, nil)
	descCanceled = prometheus.NewDesc("fleet_requests_canceled_total", "Exchanges cut by the end of the run.", nil, nil)
	descHandshk  = prometheus.NewDesc("fleet_tls_handshakes_total", "TLS handshakes of new connections, full or resumed.", []string{"type"}, nil)
	descDeploys  = prometheus.NewDesc("fleet_deployments_total", "Deployments acted on, by outcome (started counts every one).", []string{"outcome"}, nil)
	descBytes    = prometheus.NewDesc("fleet_connection_bytes_total", "Bytes read from (in) and written to (out) the devices' connections.", []string{"direction"}, nil)
)

// fleetMetrics reads the fleet's counters at each scrape.
type fleetMetrics struct{ f *Fleet }

func (m fleetMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDevices, descStarted, descAccepted, descPending, descFailing, descAllAcc,
		descMemInUse, descMemPeak, descRequests, descErrors, descFallback, descCanceled, descHandshk, descDeploys, descBytes} {
		ch <- d
	}
}

func (m fleetMetrics) Collect(ch chan<- prometheus.Metric) {
	c := m.f.col
	p := m.f.Progress()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descDevices, float64(p.Devices))
	gauge(descStarted, float64(p.Started))
	gauge(descAccepted, float64(p.Accepted))
	gauge(descPending, float64(p.Pending))
	gauge(descFailing, float64(p.Failing))
	if d, ok := c.timeToAllAccepted(); ok {
		gauge(descAllAcc, d.Seconds())
	}
	gauge(descMemInUse, float64(memInUse()))
	gauge(descMemPeak, float64(c.memPeak.Load()))
	for _, op := range Operations {
		st := c.ops[op]
		st.mu.Lock()
		count, fallbacks, kinds := st.count, st.fallbacks, maps.Clone(st.kinds)
		st.mu.Unlock()
		counter(descRequests, count, op)
		for _, k := range slices.Sorted(maps.Keys(kinds)) {
			counter(descErrors, kinds[k], op, k)
		}
		if op == client.OpInventory || op == client.OpNext {
			counter(descFallback, fallbacks, op)
		}
	}
	counter(descCanceled, c.canceled.Load())
	counter(descHandshk, c.full.Load(), "full")
	counter(descHandshk, c.resumed.Load(), "resumed")
	for _, o := range []struct {
		name string
		v    *atomic.Uint64
	}{{"started", &c.depStarted}, {"succeeded", &c.depSucceeded}, {"failed", &c.depFailed},
		{"aborted", &c.depAborted}, {"incomplete", &c.depIncomplete}} {
		counter(descDeploys, o.v.Load(), o.name)
	}
	if in, out := c.bytesIn.Load(), c.bytesOut.Load(); in > 0 || out > 0 {
		counter(descBytes, in, "in")
		counter(descBytes, out, "out")
	}
}

// Registry returns the fleet's own Prometheus registry (never the global
// one): the fleet metrics, the latency histogram, and the Go runtime and
// process collectors.
func (f *Fleet) Registry() *prometheus.Registry {
	c := f.col
	c.regOnce.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(fleetMetrics{f}, c.latency, collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		c.reg = reg
	})
	return c.reg
}

// WriteMetrics writes the live metrics of Registry in the Prometheus text
// format.
func (f *Fleet) WriteMetrics(w io.Writer) error {
	families, err := f.Registry().Gather()
	if err != nil {
		return fmt.Errorf("gather metrics: %w", err)
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range families {
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("write metrics: %w", err)
		}
	}
	return nil
}

// MetricsHandler serves Registry on GET /metrics.
func (f *Fleet) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(f.Registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not found: use GET /metrics", http.StatusNotFound)
	})
	return mux
}
