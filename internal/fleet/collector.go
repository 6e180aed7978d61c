package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math"
	"net"
	"net/http"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// Operations reports cover, in display order; they are the client's
// Event.Op values.
var Operations = []string{client.OpAuth, client.OpInventory, client.OpNext, client.OpStatus, client.OpLog, client.OpDownload}

// maxTimelinePoints bounds the timeline: when it is reached, neighbouring
// points are merged and the step doubles.
const maxTimelinePoints = 1024

// Error kinds besides "http_<status>".
const (
	KindTimeout     = "timeout"     // the request or a read timed out
	KindTLS         = "tls"         // handshake or certificate verification failed
	KindConnection  = "connection"  // refused, reset, closed or another transport error
	KindInterrupted = "interrupted" // an answer arrived but its body was cut
)

// promBounds are the Prometheus latency buckets (seconds).
var promBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// opStats aggregates one operation.
type opStats struct {
	mu        sync.Mutex
	count     uint64
	errors    uint64
	fallbacks uint64
	kinds     map[string]uint64
	hist      Histogram
	// prom is the operation's child of the latency histogram exported on
	// /metrics; nil for "other", which is not exported.
	prom prometheus.Observer
	// tick holds what finished since the last sample, for the series.
	tick struct {
		count, errors uint64
		kinds         map[string]uint64
		hist          Histogram
	}
}

// classify decides whether an exchange failed, and how. A fallback is an
// answer that makes the client retry with the other endpoint version (404
// to the v2 next call, 405 to the inventory PUT); it is neither a success
// nor an error. canceled marks exchanges cut by the fleet's own shutdown.
func classify(op string, status int, err error) (kind string, fallback, canceled bool) {
	if err != nil {
		switch {
		case errors.Is(err, context.Canceled):
			return "", false, true
		case errors.Is(err, errArtifactRejected):
			// The device hung up on an artifact it refused: the exchange
			// did not fail, the deployment does (and is counted there).
			return "", false, false
		case status != 0:
			return KindInterrupted, false, false
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			return KindTimeout, false, false
		case isTLSError(err):
			return KindTLS, false, false
		}
		return KindConnection, false, false
	}
	ok := false
	switch op {
	case client.OpAuth:
		ok = status == http.StatusOK
	case client.OpInventory:
		ok = status == http.StatusOK
		fallback = status == http.StatusMethodNotAllowed
	case client.OpNext:
		ok = status == http.StatusOK || status == http.StatusNoContent
		fallback = status == http.StatusNotFound
	case client.OpStatus, client.OpLog:
		ok = status == http.StatusNoContent
	case client.OpDownload:
		ok = status == http.StatusOK || status == http.StatusPartialContent
	default:
		ok = status >= 200 && status < 300
	}
	if ok || fallback {
		return "", fallback, false
	}
	return "http_" + strconv.Itoa(status), false, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isTLSError(err error) bool {
	var (
		verr  *tls.CertificateVerificationError
		alert tls.AlertError
		rh    tls.RecordHeaderError
		uerr  x509.UnknownAuthorityError
		herr  x509.HostnameError
		ierr  x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &alert) || errors.As(err, &rh) ||
		errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &ierr)
}

// collector aggregates everything a report shows. Its methods are safe for
// concurrent use.
type collector struct {
	now     func() time.Time
	start   time.Time
	devices int

	ops      map[string]*opStats // fixed keys: Operations, plus "other"
	canceled atomic.Uint64

	totalRequests, totalErrors atomic.Uint64
	full, resumed              atomic.Uint64

	accepted    atomic.Int64
	allAccepted atomic.Int64 // time from start until every device was accepted, +1ns; 0 = not yet

	depStarted, depSucceeded, depFailed, depAborted, depIncomplete, depBytes atomic.Uint64
	// depFailedOnPurpose counts the failures decided by Options.FailRate
	// (a subset of depFailed).
	depFailedOnPurpose atomic.Uint64
	// depCompletedBytes sums the lengths of the completed downloads, whose
	// times are in depDownload; depInstall holds the install times.
	depCompletedBytes       atomic.Uint64
	depDownload, depInstall durationStats

	memBaseline uint64
	memPeak     atomic.Uint64
	lastRPS     atomic.Uint64 // math.Float64bits

	// gauges reads the device states and connection counts for the
	// series (Fleet.seriesGauges); nil leaves them 0.
	gauges func() seriesGauges

	// seriesMu guards series, lastIn and lastOut.
	seriesMu sync.Mutex
	series   seriesBuf
	// lastIn and lastOut are bytesIn and bytesOut at the last sample.
	lastIn, lastOut uint64

	// latency is the fleet_request_duration_seconds histogram of /metrics.
	latency *prometheus.HistogramVec
	// reg is the fleet's Prometheus registry, built on first use.
	regOnce sync.Once
	reg     *prometheus.Registry

	markMu  sync.Mutex
	markers []Marker

	// bytesIn and bytesOut count the bytes read from and written to the
	// devices' connections (TLS records included).
	bytesIn, bytesOut atomic.Uint64
}

// addBytes counts bytes read from (in) and written to (out) a device
// connection.
func (c *collector) addBytes(in, out uint64) {
	if in > 0 {
		c.bytesIn.Add(in)
	}
	if out > 0 {
		c.bytesOut.Add(out)
	}
}

// maxMarkers bounds the markers kept in one run; later ones are dropped.
const maxMarkers = 1000

// Marker is an event of a run shown on the report's time charts: a
// deployment scheduled, a fault injected, a reconnect storm.
type Marker struct {
	// AtS is the time since the start of the run, in seconds.
	AtS float64 `json:"at_s"`
	// Kind names the event, e.g. "reconnect-storm".
	Kind string `json:"kind"`
	// Detail is a short free text, "" for none.
	Detail string `json:"detail,omitempty"`
}

// mark records a marker at the current time.
func (c *collector) mark(kind, detail string) {
	at := c.now().Sub(c.start).Seconds()
	c.markMu.Lock()
	defer c.markMu.Unlock()
	if len(c.markers) < maxMarkers {
		c.markers = append(c.markers, Marker{AtS: max(at, 0), Kind: kind, Detail: detail})
	}
}

// markerList returns a copy of the markers recorded so far.
func (c *collector) markerList() []Marker {
	c.markMu.Lock()
	defer c.markMu.Unlock()
	return append([]Marker(nil), c.markers...)
}

func newCollector(devices int, sample time.Duration, now func() time.Time) *collector {
	c := &collector{now: now, devices: devices, ops: map[string]*opStats{}, series: seriesBuf{base: sample, factor: 1}}
	c.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fleet_request_duration_seconds",
		Help: "Exchange latency, by operation.", Buckets: promBounds}, []string{"op"})
	for _, op := range append(Operations, "other") {
		st := &opStats{kinds: map[string]uint64{}}
		st.tick.kinds = map[string]uint64{}
		if op != "other" {
			st.prom = c.latency.WithLabelValues(op)
		}
		c.ops[op] = st
	}
	c.memBaseline = memInUse()
	c.memPeak.Store(c.memBaseline)
	return c
}

// begin sets the start of the run (the origin of the timeline and of the
// time until every device was accepted).
func (c *collector) begin() {
	c.start = c.now()
}

// record aggregates one exchange and reports whether it failed and whether
// it was cut by shutdown.
func (c *collector) record(ev client.Event) (failed, canceled bool) {
	kind, fallback, canceled := classify(ev.Op, ev.Status, ev.Err)
	if canceled {
		c.canceled.Add(1)
		return false, true
	}
	st := c.ops[ev.Op]
	if st == nil {
		st = c.ops["other"]
	}
	st.mu.Lock()
	st.count++
	st.hist.Record(ev.Duration)
	st.tick.count++
	st.tick.hist.Record(ev.Duration)
	if fallback {
		st.fallbacks++
	}
	if kind != "" {
		st.errors++
		st.kinds[kind]++
		st.tick.errors++
		st.tick.kinds[kind]++
	}
	st.mu.Unlock()
	if st.prom != nil {
		st.prom.Observe(ev.Duration.Seconds())
	}
	c.totalRequests.Add(1)
	if kind != "" {
		c.totalErrors.Add(1)
	}
	return kind != "", false
}

// handshake counts one TLS handshake.
func (c *collector) handshake(resumed bool) {
	if resumed {
		c.resumed.Add(1)
	} else {
		c.full.Add(1)
	}
}

// markAccepted counts a device accepted for the first time.
func (c *collector) markAccepted() {
	if int(c.accepted.Add(1)) == c.devices {
		c.allAccepted.Store(int64(c.now().Sub(c.start)) + 1)
	}
}

// timeToAllAccepted returns the time from start until every device was
// accepted, and false while some are not.
func (c *collector) timeToAllAccepted() (time.Duration, bool) {
	v := c.allAccepted.Load()
	return time.Duration(v - 1), v > 0
}

// sample closes one sampling interval: the series point (from which the
// report's timeline is derived), requests per second and peak memory.
func (c *collector) sample() {
	p := SeriesPoint{Accepted: int(c.accepted.Load())}
	if c.gauges != nil {
		g := c.gauges()
		p.Pending, p.Failing, p.Conns, p.Waiting = g.pending, g.failing, g.conns, g.waiting
	}
	var req uint64
	for _, op := range append(Operations, "other") {
		st := c.ops[op]
		st.mu.Lock()
		if st.tick.count > 0 {
			o := &OpPoint{Count: st.tick.count, Errors: st.tick.errors, Histogram: sparseOf(&st.tick.hist)}
			if len(st.tick.kinds) > 0 {
				o.ErrorsByKind = st.tick.kinds
				st.tick.kinds = map[string]uint64{}
			}
			if p.Ops == nil {
				p.Ops = map[string]*OpPoint{}
			}
			p.Ops[op] = o
			req += o.Count
			st.tick.count, st.tick.errors, st.tick.hist = 0, 0, Histogram{}
		}
		st.mu.Unlock()
	}
	c.seriesMu.Lock()
	in, out := c.bytesIn.Load(), c.bytesOut.Load()
	p.BytesIn, p.BytesOut = in-c.lastIn, out-c.lastOut
	c.lastIn, c.lastOut = in, out
	c.series.add(p)
	c.seriesMu.Unlock()
	if c.series.base > 0 {
		c.lastRPS.Store(math.Float64bits(float64(req) / c.series.base.Seconds()))
	}
	c.sampleMemory()
}

func (c *collector) rps() float64 { return math.Float64frombits(c.lastRPS.Load()) }

func (c *collector) sampleMemory() {
	m := memInUse()
	for {
		old := c.memPeak.Load()
		if m <= old || c.memPeak.CompareAndSwap(old, m) {
			return
		}
	}
}

// memInUse returns heap in use (live and fragmented spans, the
// ReadMemStats HeapInuse) plus goroutine stacks (StackInuse), read from
// runtime/metrics without stopping the world.
func memInUse() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(s)
	var total uint64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindUint64 {
			total += x.Value.Uint64()
		}
	}
	return total
}

// durationStats is a histogram of durations safe for concurrent use.
type durationStats struct {
	mu sync.Mutex
	h  Histogram
}

// record adds one duration.
func (s *durationStats) record(d time.Duration) {
	s.mu.Lock()
	s.h.Record(d)
	s.mu.Unlock()
}

// snapshot returns a copy of the histogram.
func (s *durationStats) snapshot() *Histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.h
	return &h
}
