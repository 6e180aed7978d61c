package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// ReportVersion is the version of the report JSON this package writes and
// reads.
const ReportVersion = 1

// Report is what a fleet run measured; every field is computed from the
// exchanges, handshakes and samples of the run. Its JSON form (--report)
// is the stable interface; field documentation gives units.
type Report struct {
	// Version is ReportVersion.
	Version int `json:"version"`
	// Started and Ended bound the run (the earliest and latest over merged
	// shards).
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	// DurationS is Ended - Started in seconds.
	DurationS float64 `json:"duration_s"`
	// Server is the base URL the devices talked to.
	Server string `json:"server"`
	// MTLS tells whether the devices presented client certificates.
	MTLS bool `json:"mtls"`
	// KeyType is the device key type (ecdsa-p256, ...).
	KeyType string `json:"key_type"`
	// Shards lists the shard (or shards, after a merge) in the report.
	Shards []ShardReport `json:"shards"`
	// Devices is the number of simulated devices.
	Devices int `json:"devices"`
	// Accepted is the number of devices that authenticated successfully at
	// least once.
	Accepted int `json:"accepted"`
	// Pending is the number of devices whose last auth request got 401 and
	// that were never accepted, at the end.
	Pending int `json:"pending"`
	// Failing is the number of devices whose last exchange failed, at the end.
	Failing int `json:"failing"`
	// RequestsTotal counts every finished exchange (canceled ones excluded).
	RequestsTotal uint64 `json:"requests_total"`
	// ErrorsTotal counts the failed exchanges over every operation.
	ErrorsTotal uint64 `json:"errors_total"`
	// Canceled counts exchanges cut by the end of the run; they are no errors.
	Canceled uint64 `json:"canceled"`
	// TimeToAllAcceptedS is the time in seconds from the start of the run
	// until every device was accepted; null when some never were. For a
	// merged report it is the slowest shard's.
	TimeToAllAcceptedS *float64 `json:"time_to_all_accepted_s"`
	// Handshakes counts TLS handshakes of new connections.
	Handshakes Handshakes `json:"handshakes"`
	// Memory is the simulator's memory use.
	Memory Memory `json:"memory"`
	// Deployments counts what the devices did with deployments.
	Deployments Deployments `json:"deployments"`
	// Operations holds per-operation statistics, keyed by auth, inventory,
	// next, status, log and download (all present, possibly with count 0).
	Operations map[string]*OpReport `json:"operations"`
	// Timeline is the run sampled over time.
	Timeline Timeline `json:"timeline"`
	// Markers are the run's events (Fleet.Mark), in time order.
	Markers []Marker `json:"markers,omitempty"`
	// Storm is the recovery from the reconnect storm; absent without one.
	Storm *StormReport `json:"storm,omitempty"`
	// Series is the run over time per operation; absent in reports from
	// before it existed.
	Series *Series `json:"series,omitempty"`
	// BytesIn and BytesOut are the bytes read from and written to the
	// devices' connections (TLS records included); absent when not counted.
	BytesIn  uint64 `json:"bytes_in,omitempty"`
	BytesOut uint64 `json:"bytes_out,omitempty"`
	// Run describes the command and the host; set by the simulator
	// command, absent from reports built by other programs.
	Run *RunInfo `json:"run,omitempty"`
	// Thresholds are the --threshold checks and their outcome.
	Thresholds []ThresholdResult `json:"thresholds,omitempty"`
}

// ShardReport names one shard of the fleet in a report.
type ShardReport struct {
	// Shard is "i/N".
	Shard string `json:"shard"`
	// FirstIndex is the first device index of the shard.
	FirstIndex int `json:"first_index"`
	// Devices is the number of devices of the shard.
	Devices int `json:"devices"`
	// TimeToAllAcceptedS is the shard's own value (see Report).
	TimeToAllAcceptedS *float64 `json:"time_to_all_accepted_s"`
}

// Handshakes counts TLS handshakes.
type Handshakes struct {
	// Full handshakes sent the client certificate and signed with the key.
	Full uint64 `json:"full"`
	// Resumed handshakes reused a TLS session.
	Resumed uint64 `json:"resumed"`
}

// Memory is sampled heap in use plus goroutine stacks.
type Memory struct {
	// PeakBytes is the largest sample during the run (summed over shards).
	PeakBytes uint64 `json:"peak_bytes"`
	// BaselineBytes is the sample taken before the device clients were
	// built (summed over shards).
	BaselineBytes uint64 `json:"baseline_bytes"`
	// PerDeviceKiB is (PeakBytes - BaselineBytes) / Devices / 1024. It
	// includes everything else the process did meanwhile (an in-process
	// backend in `simulator demo`).
	PerDeviceKiB float64 `json:"per_device_kib"`
	// RSSBytes is the resident set size of the process at the end of the
	// run (VmRSS), PeakRSSBytes its largest value (VmHWM); summed over
	// shards; 0 where /proc/self/status does not exist.
	RSSBytes     uint64 `json:"rss_bytes"`
	PeakRSSBytes uint64 `json:"peak_rss_bytes"`
	// RSSPerDeviceKiB is RSSBytes / Devices / 1024: the whole process,
	// credentials, runtime and anything else it ran included.
	RSSPerDeviceKiB float64 `json:"rss_per_device_kib"`
}

// Deployments counts deployment outcomes on the devices.
type Deployments struct {
	// Started counts deployment instructions a device acted on.
	Started uint64 `json:"started"`
	// Succeeded counts deployments reported as success.
	Succeeded uint64 `json:"succeeded"`
	// Failed counts deployments reported as failure (simulated at the fail
	// rate, or an artifact that failed a check: length, checksum, format,
	// device type or name), each with a log upload.
	Failed uint64 `json:"failed"`
	// FailedOnPurpose is the part of Failed decided by the fail rate.
	FailedOnPurpose uint64 `json:"failed_on_purpose"`
	// FailRate is the configured fraction of deployments the devices fail
	// on purpose (Options.FailRate, `simulator run --deployment-fail-rate`);
	// for a merged report the largest of the shards'.
	FailRate float64 `json:"fail_rate"`
	// Aborted counts deployments stopped by a 409 (aborted on the server).
	Aborted uint64 `json:"aborted"`
	// Incomplete counts deployments left unfinished: retries exhausted or
	// the run ended.
	Incomplete uint64 `json:"incomplete"`
	// DownloadedBytes is the artifact bytes received, including those of
	// downloads that were cut, retried or stopped.
	DownloadedBytes uint64 `json:"downloaded_bytes"`
	// CompletedDownloadBytes is the artifact bytes of the downloads that
	// completed (one per device and deployment, DownloadSeconds.Count).
	CompletedDownloadBytes uint64 `json:"completed_download_bytes"`
	// ArtifactBytesPerDevice is CompletedDownloadBytes / DownloadSeconds.Count,
	// rounded: the mean artifact size a device downloaded; 0 without a
	// completed download.
	ArtifactBytesPerDevice uint64 `json:"artifact_bytes_per_device"`
	// DownloadSeconds is the time of each completed download, from the
	// accepted downloading report to the last byte (resumes and retries
	// included; the artifact is read and checked on the way).
	DownloadSeconds DurationSummary `json:"download_seconds"`
	// InstallSeconds is the time of each simulated install, from the end of
	// the download to the accepted final status report (success, or failure
	// at the fail rate), Options.InstallDelay included.
	InstallSeconds DurationSummary `json:"install_seconds"`
}

// DurationSummary summarises durations of one step of the deployments,
// one per device and deployment, in seconds.
type DurationSummary struct {
	// Count is the number of durations.
	Count uint64 `json:"count"`
	// P50S, P90S and P99S are quantiles in seconds, within
	// HistogramRelativeError; MaxS and MeanS are exact. All are rounded to
	// the microsecond.
	P50S  float64 `json:"p50_s"`
	P90S  float64 `json:"p90_s"`
	P99S  float64 `json:"p99_s"`
	MaxS  float64 `json:"max_s"`
	MeanS float64 `json:"mean_s"`
	// Histogram holds the durations every figure above comes from; it
	// merges exactly across shards.
	Histogram *Histogram `json:"histogram"`
}

// newDurationSummary returns the summary of h.
func newDurationSummary(h *Histogram) DurationSummary {
	s := DurationSummary{Histogram: h}
	s.fillStats()
	return s
}

// fillStats derives the count and the figures from the histogram.
func (s *DurationSummary) fillStats() {
	h := s.Histogram
	if h == nil {
		h = &Histogram{}
		s.Histogram = h
	}
	s.Count = h.Count()
	s.P50S, s.P90S, s.P99S = secs(h.Quantile(0.5)), secs(h.Quantile(0.9)), secs(h.Quantile(0.99))
	s.MaxS, s.MeanS = secs(h.Max()), secs(h.Mean())
}

// secs converts d to seconds rounded to the microsecond.
func secs(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e6 }

// fillStats derives the duration figures and ArtifactBytesPerDevice.
func (d *Deployments) fillStats() {
	d.DownloadSeconds.fillStats()
	d.InstallSeconds.fillStats()
	d.ArtifactBytesPerDevice = 0
	if n := d.DownloadSeconds.Count; n > 0 {
		d.ArtifactBytesPerDevice = (d.CompletedDownloadBytes + n/2) / n
	}
}

// OpReport is the statistics of one operation.
type OpReport struct {
	// Count is the number of finished exchanges.
	Count uint64 `json:"count"`
	// Errors is the number of failed exchanges.
	Errors uint64 `json:"errors"`
	// ErrorsByKind splits Errors: http_<status>, timeout, tls, connection,
	// interrupted.
	ErrorsByKind map[string]uint64 `json:"errors_by_kind"`
	// Fallbacks counts answers that made the client switch endpoint
	// version (404 on v2 next, 405 on inventory PUT); neither errors nor
	// successes.
	Fallbacks uint64 `json:"fallbacks"`
	// P50Ms, P90Ms, P95Ms and P99Ms are latency quantiles in milliseconds,
	// within HistogramRelativeError; MinMs, MaxMs and MeanMs are exact.
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P95Ms  float64 `json:"p95_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MinMs  float64 `json:"min_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
	// RPS is Count over the run's duration (requests per second).
	RPS float64 `json:"rps"`
	// Histogram is the latency histogram every figure above comes from.
	Histogram *Histogram `json:"histogram"`
}

// Timeline is the run sampled at a fixed step.
type Timeline struct {
	// StepS is the time between points in seconds.
	StepS float64 `json:"step_s"`
	// Accepted is the number of devices accepted at the end of each step.
	Accepted []int `json:"accepted"`
	// Requests and Errors count exchanges that ended in each step (divide
	// by StepS for per-second rates). The last step may be shorter.
	Requests []uint64 `json:"requests"`
	Errors   []uint64 `json:"errors"`
}

// fillStats derives the quantile fields from the histogram.
func (o *OpReport) fillStats() {
	h := o.Histogram
	o.P50Ms, o.P90Ms, o.P95Ms, o.P99Ms = ms(h.Quantile(0.5)), ms(h.Quantile(0.9)), ms(h.Quantile(0.95)), ms(h.Quantile(0.99))
	o.MinMs, o.MaxMs, o.MeanMs = ms(h.Min()), ms(h.Max()), ms(h.Mean())
}

// fillRates sets each operation's RPS from the run's duration.
func (r *Report) fillRates() {
	for _, o := range r.Operations {
		o.RPS = 0
		if r.DurationS > 0 {
			o.RPS = math.Round(float64(o.Count)/r.DurationS*1000) / 1000
		}
	}
}

// newOpReports returns an empty report for every operation.
func newOpReports() map[string]*OpReport {
	m := make(map[string]*OpReport, len(Operations))
	for _, op := range Operations {
		m[op] = &OpReport{ErrorsByKind: map[string]uint64{}, Histogram: &Histogram{}}
	}
	return m
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return nil
}

// SaveJSON writes the report to path atomically.
func (r *Report) SaveJSON(path string) error {
	var sb strings.Builder
	if err := r.WriteJSON(&sb); err != nil {
		return err
	}
	if err := atomicfile.Write(path, []byte(sb.String()), 0o644); err != nil {
		return fmt.Errorf("save report: %w", err)
	}
	return nil
}

// ReadReport reads a report written by SaveJSON and checks its version,
// histograms and operations.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read report: %w", err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("report %s: %w", path, err)
	}
	if r.Version != ReportVersion {
		return nil, fmt.Errorf("report %s: version %d: %w: this simulator reads version %d", path, r.Version, ErrIncompatible, ReportVersion)
	}
	if r.Operations == nil {
		r.Operations = map[string]*OpReport{}
	}
	for _, op := range Operations {
		if r.Operations[op] == nil {
			r.Operations[op] = &OpReport{}
		}
	}
	for name, o := range r.Operations {
		if o == nil {
			o = &OpReport{}
			r.Operations[name] = o
		}
		if o.Histogram == nil {
			o.Histogram = &Histogram{}
		}
		if o.ErrorsByKind == nil {
			o.ErrorsByKind = map[string]uint64{}
		}
		if o.Histogram.Count() != o.Count {
			return nil, fmt.Errorf("report %s: operation %s: count %d but its histogram holds %d: the file was edited or truncated",
				path, name, o.Count, o.Histogram.Count())
		}
	}
	for _, s := range []struct {
		name string
		sum  *DurationSummary
	}{{"download_seconds", &r.Deployments.DownloadSeconds}, {"install_seconds", &r.Deployments.InstallSeconds}} {
		if s.sum.Histogram == nil {
			s.sum.Histogram = &Histogram{} // a report from before these fields
		}
		if s.sum.Histogram.Count() != s.sum.Count {
			return nil, fmt.Errorf("report %s: deployments.%s: count %d but its histogram holds %d: the file was edited or truncated",
				path, s.name, s.sum.Count, s.sum.Histogram.Count())
		}
	}
	if r.Series != nil {
		if err := r.Series.check(); err != nil {
			return nil, fmt.Errorf("report %s: %w", path, err)
		}
		r.Series.fillStats()
	}
	return &r, nil
}

// Merge combines shard reports into one fleet report: counts, histograms
// (exactly), handshakes and memory add up; the timelines are aligned on
// each shard's start and added; the time until every device was accepted
// is the slowest shard's, or null when any shard has null. Reports must
// have the same version and may not name the same shard twice.
func Merge(reports ...*Report) (*Report, error) {
	if len(reports) == 0 {
		return nil, fmt.Errorf("merge: %w: no reports given", ErrInvalid)
	}
	out := &Report{Version: ReportVersion, Operations: newOpReports(), Server: reports[0].Server,
		MTLS: reports[0].MTLS, KeyType: reports[0].KeyType}
	seen := map[string]bool{}
	allAccepted := true
	var slowest float64
	var steps []float64
	for i, r := range reports {
		if r.Version != ReportVersion {
			return nil, fmt.Errorf("merge: report #%d has version %d: %w", i+1, r.Version, ErrIncompatible)
		}
		for _, s := range r.Shards {
			if seen[s.Shard] {
				return nil, fmt.Errorf("merge: shard %s appears twice: %w: give each shard's report once", s.Shard, ErrIncompatible)
			}
			seen[s.Shard] = true
			out.Shards = append(out.Shards, s)
		}
		if out.Started.IsZero() || r.Started.Before(out.Started) {
			out.Started = r.Started
		}
		if r.Ended.After(out.Ended) {
			out.Ended = r.Ended
		}
		if r.Server != out.Server {
			out.Server = "(several)"
		}
		out.MTLS = out.MTLS && r.MTLS
		if r.KeyType != out.KeyType {
			out.KeyType = "(several)"
		}
		out.Devices += r.Devices
		out.Accepted += r.Accepted
		out.Pending += r.Pending
		out.Failing += r.Failing
		out.RequestsTotal += r.RequestsTotal
		out.ErrorsTotal += r.ErrorsTotal
		out.Canceled += r.Canceled
		if r.TimeToAllAcceptedS == nil {
			allAccepted = false
		} else {
			slowest = max(slowest, *r.TimeToAllAcceptedS)
		}
		out.Handshakes.Full += r.Handshakes.Full
		out.Handshakes.Resumed += r.Handshakes.Resumed
		out.Memory.PeakBytes += r.Memory.PeakBytes
		out.Memory.BaselineBytes += r.Memory.BaselineBytes
		out.Memory.RSSBytes += r.Memory.RSSBytes
		out.Memory.PeakRSSBytes += r.Memory.PeakRSSBytes
		out.BytesIn += r.BytesIn
		out.BytesOut += r.BytesOut
		if out.Run == nil && r.Run != nil {
			run := *r.Run
			out.Run = &run
		}
		d := &out.Deployments
		d.Started += r.Deployments.Started
		d.Succeeded += r.Deployments.Succeeded
		d.Failed += r.Deployments.Failed
		d.FailedOnPurpose += r.Deployments.FailedOnPurpose
		d.FailRate = max(d.FailRate, r.Deployments.FailRate)
		d.Aborted += r.Deployments.Aborted
		d.Incomplete += r.Deployments.Incomplete
		d.DownloadedBytes += r.Deployments.DownloadedBytes
		d.CompletedDownloadBytes += r.Deployments.CompletedDownloadBytes
		for _, pair := range [][2]*DurationSummary{{&d.DownloadSeconds, &r.Deployments.DownloadSeconds},
			{&d.InstallSeconds, &r.Deployments.InstallSeconds}} {
			if pair[0].Histogram == nil {
				pair[0].Histogram = &Histogram{}
			}
			pair[0].Histogram.Merge(pair[1].Histogram)
		}
		for name, o := range r.Operations {
			m := out.Operations[name]
			if m == nil {
				m = &OpReport{ErrorsByKind: map[string]uint64{}, Histogram: &Histogram{}}
				out.Operations[name] = m
			}
			m.Count += o.Count
			m.Errors += o.Errors
			m.Fallbacks += o.Fallbacks
			for k, v := range o.ErrorsByKind {
				m.ErrorsByKind[k] += v
			}
			m.Histogram.Merge(o.Histogram)
		}
		steps = append(steps, r.Timeline.StepS)
	}
	slices.SortFunc(out.Shards, func(a, b ShardReport) int { return a.FirstIndex - b.FirstIndex })
	if allAccepted {
		out.TimeToAllAcceptedS = &slowest
	}
	for _, o := range out.Operations {
		o.fillStats()
	}
	out.Deployments.fillStats()
	out.DurationS = out.Ended.Sub(out.Started).Seconds()
	out.Memory.PerDeviceKiB = perDeviceKiB(out.Memory, out.Devices)
	out.Memory.RSSPerDeviceKiB = rssPerDeviceKiB(out.Memory.RSSBytes, out.Devices)
	out.fillRates()
	tl, err := mergeTimelines(reports, slices.Max(steps))
	if err != nil {
		return nil, err
	}
	out.Timeline = tl
	var seriesSteps []float64
	for _, r := range reports {
		if r.Series != nil && len(r.Series.Points) > 0 {
			seriesSteps = append(seriesSteps, r.Series.StepS)
		}
		// The markers are aligned on each shard's start, as the timelines.
		out.Markers = append(out.Markers, r.Markers...)
	}
	slices.SortStableFunc(out.Markers, func(a, b Marker) int { return cmpFloat(a.AtS, b.AtS) })
	if len(seriesSteps) > 0 {
		if out.Series, err = mergeSeries(reports, slices.Max(seriesSteps)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// mergeTimelines rebins every timeline to step (a multiple of each
// timeline's own step) and adds them up point by point; a series shorter
// than the longest keeps contributing its last accepted count.
func mergeTimelines(reports []*Report, step float64) (Timeline, error) {
	type series struct {
		acc       []int
		req, errs []uint64
	}
	var all []series
	n := 0
	for i, r := range reports {
		tl := r.Timeline
		if len(tl.Accepted) == 0 {
			continue
		}
		if len(tl.Requests) != len(tl.Accepted) || len(tl.Errors) != len(tl.Accepted) {
			return Timeline{}, fmt.Errorf("merge: report #%d: timeline series have different lengths", i+1)
		}
		ratio := step / tl.StepS
		k := int(math.Round(ratio))
		if tl.StepS <= 0 || k < 1 || math.Abs(ratio-float64(k)) > 1e-6 {
			return Timeline{}, fmt.Errorf("merge: report #%d: timeline step %vs does not divide %vs: %w", i+1, tl.StepS, step, ErrIncompatible)
		}
		var s series
		for j := 0; j < len(tl.Accepted); j += k {
			end := min(j+k, len(tl.Accepted))
			var rq, er uint64
			for x := j; x < end; x++ {
				rq += tl.Requests[x]
				er += tl.Errors[x]
			}
			s.acc, s.req, s.errs = append(s.acc, tl.Accepted[end-1]), append(s.req, rq), append(s.errs, er)
		}
		all = append(all, s)
		n = max(n, len(s.acc))
	}
	out := Timeline{StepS: step, Accepted: make([]int, n), Requests: make([]uint64, n), Errors: make([]uint64, n)}
	for _, s := range all {
		for j := range n {
			if j < len(s.acc) {
				out.Accepted[j] += s.acc[j]
				out.Requests[j] += s.req[j]
				out.Errors[j] += s.errs[j]
			} else {
				out.Accepted[j] += s.acc[len(s.acc)-1]
			}
		}
	}
	return out, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func rssPerDeviceKiB(rss uint64, devices int) float64 {
	if devices <= 0 {
		return 0
	}
	return math.Round(float64(rss)/float64(devices)/1024*10) / 10
}

func perDeviceKiB(m Memory, devices int) float64 {
	if devices <= 0 || m.PeakBytes <= m.BaselineBytes {
		return 0
	}
	return math.Round(float64(m.PeakBytes-m.BaselineBytes)/float64(devices)/1024*10) / 10
}

// WriteSummary writes the human summary: totals and one table row per
// operation.
func (r *Report) WriteSummary(w io.Writer) error {
	tta := "not every device was accepted"
	if r.TimeToAllAcceptedS != nil {
		tta = fmt.Sprintf("%.1fs", *r.TimeToAllAcceptedS)
	}
	shards := make([]string, 0, len(r.Shards))
	for _, s := range r.Shards {
		shards = append(shards, s.Shard)
	}
	mode := "mTLS"
	if !r.MTLS {
		mode = "no client certificates"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "devices      %d (%s, %s keys; shard %s), ran %.1fs against %s\n", r.Devices, mode, r.KeyType,
		strings.Join(shards, ","), r.DurationS, r.Server)
	fmt.Fprintf(&b, "accepted     %d/%d, all accepted after: %s; pending %d, failing %d at the end\n",
		r.Accepted, r.Devices, tta, r.Pending, r.Failing)
	fmt.Fprintf(&b, "requests     %d, errors %d, canceled at stop %d\n", r.RequestsTotal, r.ErrorsTotal, r.Canceled)
	fmt.Fprintf(&b, "handshakes   %d full, %d resumed\n", r.Handshakes.Full, r.Handshakes.Resumed)
	fmt.Fprintf(&b, "memory       peak %.1f MiB; %.1f KiB per device, measured with %d devices\n",
		float64(r.Memory.PeakBytes)/(1<<20), r.Memory.PerDeviceKiB, r.Devices)
	if r.Memory.RSSBytes > 0 {
		fmt.Fprintf(&b, "  RSS        %.1f MiB at the end, peak %.1f MiB; %.1f KiB per device\n",
			float64(r.Memory.RSSBytes)/(1<<20), float64(r.Memory.PeakRSSBytes)/(1<<20), r.Memory.RSSPerDeviceKiB)
	}
	if r.BytesIn > 0 || r.BytesOut > 0 {
		fmt.Fprintf(&b, "bytes        %d in, %d out\n", r.BytesIn, r.BytesOut)
	}
	d := r.Deployments
	fmt.Fprintf(&b, "deployments  %d started: %d succeeded, %d failed, %d aborted, %d incomplete; %d bytes downloaded\n",
		d.Started, d.Succeeded, d.Failed, d.Aborted, d.Incomplete, d.DownloadedBytes)
	if why := d.failureReasons(); why != "" {
		fmt.Fprintf(&b, "             %s\n", why)
	}
	if s := d.DownloadSeconds; s.Count > 0 {
		fmt.Fprintf(&b, "  download   %s; %d artifact bytes per device\n", s.line(), d.ArtifactBytesPerDevice)
	}
	if s := d.InstallSeconds; s.Count > 0 {
		fmt.Fprintf(&b, "  install    %s\n", s.line())
	}
	b.WriteString("\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "operation\tcount\terrors\terr rate\tmin ms\tmean ms\tp50 ms\tp90 ms\tp95 ms\tp99 ms\tmax ms\treq/s\terrors by kind\t")
	rows := 0
	for _, name := range r.OperationNames() {
		o := r.Operations[name]
		if o.Count == 0 {
			continue // no row for an operation that never ran
		}
		rows++
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%s\t\n", name, o.Count, o.Errors,
			percent(float64(o.Errors)/float64(o.Count)), o.MinMs, o.MeanMs, o.P50Ms, o.P90Ms, o.P95Ms, o.P99Ms, o.MaxMs, o.RPS, kinds(o.ErrorsByKind))
	}
	if rows == 0 {
		fmt.Fprintln(tw, "(no request finished)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Thresholds) == 0 {
		return nil
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\nTHRESHOLDS   %d of %d passed\n", len(r.Thresholds)-r.FailedThresholds(), len(r.Thresholds))
	for _, t := range r.Thresholds {
		fmt.Fprintf(&tb, "  %s\n", t.Line())
	}
	_, err := io.WriteString(w, tb.String())
	return err
}

// failureReasons explains Failed: how many failures were on purpose, at
// the configured fail rate, and how many were not; "" with no failure.
func (d Deployments) failureReasons() string {
	if d.Failed == 0 {
		return ""
	}
	other := d.Failed - min(d.FailedOnPurpose, d.Failed)
	var parts []string
	if d.FailedOnPurpose > 0 {
		parts = append(parts, fmt.Sprintf("%d failed on purpose: the devices fail %s of deployments (deployment fail rate), with a log upload",
			d.FailedOnPurpose, percent(d.FailRate)))
	}
	if other > 0 {
		parts = append(parts, fmt.Sprintf("%d failed an artifact check: length, checksum, format, device type or name (see the deployment logs)", other))
	}
	return strings.Join(parts, "; ")
}

// line writes the summary as "N devices: p50 …, p90 …, p99 …, max …".
func (s DurationSummary) line() string {
	return fmt.Sprintf("%d devices: p50 %s, p90 %s, p99 %s, max %s", s.Count, seconds(s.P50S), seconds(s.P90S), seconds(s.P99S), seconds(s.MaxS))
}

// seconds writes a time in seconds: to the millisecond below 10 s, to
// 10 ms below 100 s, to 100 ms above (0.042s, 12.50s, 731.2s).
func seconds(v float64) string {
	switch {
	case v < 10:
		return strconv.FormatFloat(v, 'f', 3, 64) + "s"
	case v < 100:
		return strconv.FormatFloat(v, 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "s"
}

// percent writes a fraction as a percentage without needless decimals.
func percent(f float64) string {
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + " %"
}

// OperationNames returns the operations in display order: the standard
// ones, then any other in name order.
func (r *Report) OperationNames() []string {
	names := slices.Clone(Operations)
	for _, k := range slices.Sorted(maps.Keys(r.Operations)) {
		if !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	out := names[:0]
	for _, n := range names {
		if r.Operations[n] != nil {
			out = append(out, n)
		}
	}
	return out
}

func kinds(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// seriesGauges reads the device states and the connection counts for a
// point of the series.
func (f *Fleet) seriesGauges() seriesGauges {
	g := seriesGauges{conns: int(f.pool.open.Load()), waiting: int(f.pool.waiting.Load() + f.adm.queued.Load())}
	g.pending, g.failing = f.states()
	return g
}

// report builds the report at the end of a run.
func (f *Fleet) report(ended time.Time) *Report {
	c := f.col
	r := &Report{
		Version:       ReportVersion,
		Started:       c.start,
		Ended:         ended,
		DurationS:     ended.Sub(c.start).Seconds(),
		Server:        f.opts.ServerURL,
		MTLS:          f.mtls,
		KeyType:       f.keyType,
		Devices:       len(f.devices),
		Accepted:      int(c.accepted.Load()),
		RequestsTotal: c.totalRequests.Load(),
		ErrorsTotal:   c.totalErrors.Load(),
		Canceled:      c.canceled.Load(),
		Handshakes:    Handshakes{Full: c.full.Load(), Resumed: c.resumed.Load()},
		Memory:        Memory{PeakBytes: c.memPeak.Load(), BaselineBytes: c.memBaseline},
		Deployments: Deployments{
			Started: c.depStarted.Load(), Succeeded: c.depSucceeded.Load(), Failed: c.depFailed.Load(),
			FailedOnPurpose: c.depFailedOnPurpose.Load(), FailRate: f.opts.FailRate,
			Aborted: c.depAborted.Load(), Incomplete: c.depIncomplete.Load(), DownloadedBytes: c.depBytes.Load(),
			CompletedDownloadBytes: c.depCompletedBytes.Load(),
			DownloadSeconds:        newDurationSummary(c.depDownload.snapshot()),
			InstallSeconds:         newDurationSummary(c.depInstall.snapshot()),
		},
		Operations: map[string]*OpReport{},
	}
	r.Pending, r.Failing = f.states()
	r.Storm = f.stormReport()
	r.Memory.PerDeviceKiB = perDeviceKiB(r.Memory, r.Devices)
	r.Deployments.fillStats()
	if d, ok := c.timeToAllAccepted(); ok {
		s := d.Seconds()
		r.TimeToAllAcceptedS = &s
	}
	r.Shards = []ShardReport{{Shard: f.opts.Shard.String(), FirstIndex: f.devices[0].index,
		Devices: len(f.devices), TimeToAllAcceptedS: r.TimeToAllAcceptedS}}
	for name, st := range c.ops {
		st.mu.Lock()
		if name == "other" && st.count == 0 {
			st.mu.Unlock()
			continue
		}
		h := st.hist
		o := &OpReport{Count: st.count, Errors: st.errors, Fallbacks: st.fallbacks,
			ErrorsByKind: make(map[string]uint64, len(st.kinds)), Histogram: &h}
		for k, v := range st.kinds {
			o.ErrorsByKind[k] = v
		}
		st.mu.Unlock()
		o.fillStats()
		r.Operations[name] = o
	}
	r.Markers = c.markerList()
	c.seriesMu.Lock()
	r.Series = c.series.snapshot()
	c.seriesMu.Unlock()
	r.Timeline = timelineOf(r.Series)
	r.BytesIn, r.BytesOut = c.bytesIn.Load(), c.bytesOut.Load()
	st := procStatus("VmRSS", "VmHWM")
	r.Memory.RSSBytes, r.Memory.PeakRSSBytes = st["VmRSS"], st["VmHWM"]
	r.Memory.RSSPerDeviceKiB = rssPerDeviceKiB(r.Memory.RSSBytes, r.Devices)
	r.fillRates()
	return r
}
