// Package fleet simulates a fleet of Mender devices in one process: N
// virtual devices, each running the real internal/client with its own key
// and, for mTLS, its own CA-signed certificate ([LoadCredentials] mints
// them and caches them on disk), a unique identity (a MAC derived from the
// device index plus extra attributes), its own TLS session and, while a
// step of it runs, its own HTTP transport (see [Options.KeepAlive]). The
// fleet's connections come from chosen source addresses
// ([Options.SourceIPs]) under a cap ([Options.MaxConns]); devices start
// over a ramp or at a constant arrival rate, and a reconnect storm
// ([Options.ReconnectStorm]) cuts every connection at once.
//
// [Fleet.Run] starts the devices over a ramp. Each device's inventory and
// update jobs run on timers through client.Step, the per-attempt logic and
// wait rules of client.Run, so an idle device holds no goroutine. Devices
// act on deployments as a device would: download with resume while reading
// the Mender Artifact (format, every manifest checksum, device type and
// name) as it arrives, length and checksum check, status reports, an
// optional install time, failure with a log upload at a configurable rate
// or on a failed check, a stop on 409, and the new artifact name in later
// inventory and polls. The run ends with a [Report]: per-operation counts,
// errors by kind and latency quantiles from constant-memory mergeable
// histograms ([Histogram]), the time until every device was accepted, full
// versus resumed TLS handshakes, peak memory and a timeline. Reports of
// several shards ([Shard]) merge exactly ([Merge]) and render as JSON, a
// text summary or a self-contained HTML page ([Report.WriteHTML]).
// [Fleet.Progress] and [Fleet.WriteMetrics] expose a run live.
package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/rlimit"
)

// Defaults of [Options].
const (
	DefaultDeviceType     = "test"
	DefaultArtifactName   = "original"
	DefaultSampleInterval = time.Second
	// ClientVersion is the mender_client_version the devices report.
	ClientVersion = "fleet-simulator"
)

// DefaultMACPrefix is the MAC prefix when Options.MACPrefix is nil: a
// locally administered unicast first octet.
var DefaultMACPrefix = MACPrefix{0x02}

// ErrRunning is returned by Run when the fleet already ran or is running.
var ErrRunning = errors.New("fleet already ran: build a new Fleet for another run")

// Options configure a [Fleet]. Zero values are documented per field.
type Options struct {
	// ServerURL is the Mender server (or ambassador) base URL. Required.
	ServerURL string
	// RootCAs are the roots trusted for the server certificate, shared by
	// every device. nil means the system roots.
	RootCAs *x509.CertPool
	// Credentials are the devices, one per entry; Index gives the identity.
	// Entries with a certificate present it (mTLS). Required. New keeps the
	// keys and the certificates' DER, not the parsed certificates.
	Credentials []*Credential
	// Shard is recorded in the report; the zero value is the whole fleet.
	Shard Shard
	// MACPrefix leads every device MAC; nil means DefaultMACPrefix. Every
	// credential index must be below its capacity.
	MACPrefix MACPrefix
	// IdentityAttrs are extra identity attributes, the same for every
	// device; "mac" is not allowed (it is derived from the index).
	IdentityAttrs []Attribute
	// InventoryAttrs are extra inventory attributes; device i reports value
	// number i % len(values).
	InventoryAttrs []Attribute
	// TenantToken is sent in auth requests; "" means none.
	TenantToken string
	// DeviceType is reported by every device; "" means DefaultDeviceType.
	DeviceType string
	// ArtifactName is the initially installed artifact; "" means
	// DefaultArtifactName.
	ArtifactName string
	// Ramp spreads the device starts evenly over this time; 0 starts all
	// at once (each client still waits a random delay under one second).
	Ramp time.Duration
	// ArrivalRate starts the devices at this constant rate, in devices per
	// second (an open model, k6's constant-arrival-rate: device i starts
	// i/ArrivalRate seconds after the run, whatever the earlier devices
	// are doing), instead of over Ramp; 0 means the ramp. Setting both is
	// an error.
	ArrivalRate float64
	// ReconnectStorm, when non-zero, is the time since the start of the run
	// at which every device connection is cut and every accepted device
	// polls at once, as when the proxy in front of a fleet restarts; the
	// report's Storm shows the recovery. 0 means none.
	ReconnectStorm time.Duration
	// Duration ends the run; 0 means run until the context is done.
	Duration time.Duration
	// PollInterval, InventoryInterval and RetryInterval are the clients'
	// update poll, inventory and retry intervals; 0 means Mender's defaults
	// (30 min, 8 h, 5 min). RetryInterval also caps deployment retries.
	PollInterval, InventoryInterval, RetryInterval time.Duration
	// Jitter spreads every periodic wait over interval·(1 ± Jitter); 0
	// means the client default 0.1.
	Jitter float64
	// RequestTimeout bounds each request; 0 means the client default 60 s.
	RequestTimeout time.Duration
	// FailRate is the fraction of deployments a device reports as failed
	// (with a log upload), in [0, 1]; 0 means none.
	FailRate float64
	// InstallDelay is how long a device stays in the installing state of a
	// deployment, simulating the time an install takes; 0 means it moves
	// on at once.
	InstallDelay time.Duration
	// KeepAlive keeps a device's connections open between its steps, up
	// to IdleConnTimeout. False (the default) closes them when the step
	// ends (an inventory send with its auth, or an update check with the
	// deployment it starts, may still reuse one connection): a fleet at
	// production intervals then holds no idle connection.
	KeepAlive bool
	// DisableKeepAlives closes each connection after one request, even
	// within a step.
	DisableKeepAlives bool
	// IdleConnTimeout is how long an idle connection is kept; 0 means
	// 90 s, the device client's default.
	IdleConnTimeout time.Duration
	// SourceIPs are the local addresses the devices connect from: device
	// index i uses SourceIPs[i % len]. Each address has its own range of
	// ephemeral ports, so more than about 28,000 connections to one server
	// address need several (on Linux every 127.0.0.0/8 address is local).
	// nil means the system's choice.
	SourceIPs []netip.Addr
	// MaxConns caps the fleet's open connections: a device that needs one
	// beyond the cap waits for a free slot, within its request timeout,
	// instead of failing on a descriptor or port shortage. 0 means
	// DefaultMaxConns of the open-file soft limit and the source
	// addresses.
	MaxConns int
	// MaxHandshakes bounds the devices between the start of a step and the
	// end of its TLS handshake; the others wait in order, holding no
	// goroutine (see DefaultHandshakesPerCPU for why). 0 means
	// DefaultHandshakesPerCPU x GOMAXPROCS.
	MaxHandshakes int
	// DisableResumption turns TLS session resumption off; false gives each
	// device its own one-entry session cache.
	DisableResumption bool
	// SampleInterval is the timeline and peak-memory sampling period; 0
	// means DefaultSampleInterval.
	SampleInterval time.Duration
	// Logger receives the fleet's own logs; nil discards them.
	Logger *slog.Logger
	// DeviceLogger receives every device client's logs; nil discards them
	// (thousands of devices would flood any terminal).
	DeviceLogger *slog.Logger
	// Rand returns uniform values in [0, 1) for the fail-rate decisions and
	// deployment retry jitter; it must be safe for concurrent use. nil
	// means math/rand/v2.
	Rand func() float64
	// Now is the clock of the report and timeline; nil means time.Now.
	Now func() time.Time
}

// Fleet is a set of virtual devices. Create it with [New]; Run it once.
// Progress and WriteMetrics may be called at any time, concurrently.
type Fleet struct {
	opts    Options
	log     *slog.Logger
	col     *collector
	devices []*device
	keyType string
	mtls    bool
	started atomic.Int64
	ran     atomic.Bool
	begun   atomic.Pointer[time.Time] // start of Run, for Progress
	// runCtx is the context of the run; set by Run before any device
	// timer is armed.
	runCtx context.Context
	// stepCtxs are the contexts of the running devices' steps, children
	// of runCtx (see stepCtx).
	stepCtxs []context.Context
	// inflight counts armed device timers and running steps.
	inflight sync.WaitGroup
	rand     func() float64
	pool     *connPool
	adm      *admission
	storm    stormState
	maxConns int
}

// New validates opts and builds one client per credential.
func New(opts Options) (*Fleet, error) {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	if opts.ServerURL == "" {
		bad("ServerURL is empty: set the server or ambassador URL")
	}
	if len(opts.Credentials) == 0 {
		bad("Credentials is empty: load them with LoadCredentials")
	}
	if opts.MACPrefix == nil {
		opts.MACPrefix = DefaultMACPrefix
	}
	capacity := opts.MACPrefix.Capacity()
	for i, c := range opts.Credentials {
		if c == nil || c.Key == nil {
			bad("Credentials[%d] has no key", i)
			break
		}
		if c.Index < 0 || c.Index >= capacity {
			bad("device index %d does not fit MAC prefix %s (room for %d devices): use a shorter prefix", c.Index, opts.MACPrefix, capacity)
			break
		}
	}
	for _, a := range opts.IdentityAttrs {
		if a.Key == "mac" {
			bad("identity attribute mac: it is derived from the device index; use --mac-prefix")
		}
	}
	for _, a := range opts.InventoryAttrs {
		if len(a.Values) == 0 {
			bad("inventory attribute %q has no value", a.Key)
		}
	}
	if !(opts.FailRate >= 0 && opts.FailRate <= 1) {
		bad("FailRate %v: want a fraction in [0, 1]", opts.FailRate)
	}
	if opts.Ramp < 0 || opts.Duration < 0 || opts.SampleInterval < 0 || opts.InstallDelay < 0 || opts.ReconnectStorm < 0 {
		bad("Ramp, Duration, SampleInterval, InstallDelay and ReconnectStorm must not be negative")
	}
	if !(opts.ArrivalRate >= 0) || math.IsInf(opts.ArrivalRate, 0) {
		bad("ArrivalRate %v: want devices per second > 0, or 0 for the ramp", opts.ArrivalRate)
	} else if opts.ArrivalRate > 0 && opts.Ramp > 0 {
		bad("ArrivalRate and Ramp are both set: start the devices at a rate or over a ramp, not both")
	}
	if opts.MaxHandshakes < 0 {
		bad("MaxHandshakes %d: want a positive bound, or 0 for %d per core", opts.MaxHandshakes, DefaultHandshakesPerCPU)
	}
	if opts.MaxConns < 0 {
		bad("MaxConns %d: want a positive cap, or 0 to derive it from the open-file limit", opts.MaxConns)
	}
	if err := CheckSourceIPs(opts.SourceIPs, opts.ServerURL); err != nil {
		errs = append(errs, fmt.Errorf("SourceIPs: %w", err))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("fleet options: %w", errors.Join(errs...))
	}
	if opts.DeviceType == "" {
		opts.DeviceType = DefaultDeviceType
	}
	if opts.ArtifactName == "" {
		opts.ArtifactName = DefaultArtifactName
	}
	if opts.SampleInterval == 0 {
		opts.SampleInterval = DefaultSampleInterval
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = client.DefaultRetryPollInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	f := &Fleet{opts: opts, log: opts.Logger, rand: opts.Rand}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.rand == nil {
		f.rand = rand.Float64
	}
	f.col = newCollector(len(opts.Credentials), opts.SampleInterval, opts.Now)
	f.col.gauges = f.seriesGauges
	f.maxConns = opts.MaxConns
	if f.maxConns == 0 {
		var soft uint64 // 0: no limit to read
		if files, err := rlimit.CurrentFiles(); err == nil {
			soft = files.Soft
		}
		f.maxConns = DefaultMaxConns(soft, len(opts.SourceIPs))
	}
	f.pool = newConnPool(f, opts.SourceIPs, f.maxConns, len(opts.Credentials))
	f.adm = newAdmission(f, opts.MaxHandshakes)
	f.keyType = string(keyTypeOf(opts.Credentials[0].Key))
	f.mtls = opts.Credentials[0].Cert != nil
	f.devices = make([]*device, len(opts.Credentials))
	for i, cred := range opts.Credentials {
		d, err := f.newDevice(cred)
		if err != nil {
			return nil, fmt.Errorf("fleet: device %d: %w", cred.Index, err)
		}
		f.devices[i] = d
	}
	f.opts.Credentials = nil // the devices hold what they need
	return f, nil
}

// newDevice builds the client of one device.
func (f *Fleet) newDevice(cred *Credential) (*device, error) {
	o := &f.opts
	d := &device{f: f, index: cred.Index, mac: o.MACPrefix.MAC(cred.Index)}
	copts := client.Options{
		Servers:               []string{o.ServerURL},
		AuthKey:               cred.Key,
		TenantToken:           o.TenantToken,
		Identity:              d.identity,
		DeviceType:            o.DeviceType,
		ArtifactName:          o.ArtifactName,
		ClientVersion:         ClientVersion,
		RootCAs:               o.RootCAs,
		UpdatePollInterval:    o.PollInterval,
		InventoryPollInterval: o.InventoryInterval,
		RetryPollInterval:     o.RetryInterval,
		PollJitter:            o.Jitter,
		RequestTimeout:        o.RequestTimeout,
		Logger:                o.DeviceLogger,
		Observer:              d.observe,
		OnDeployment:          d.onDeployment,
		// The fleet's own transport (see deviceTransport): the client
		// reads the certificate from TLSCredential for its inventory only.
		HTTPClient: &http.Client{Transport: deviceTransport{d}},
	}
	if cred.Cert != nil {
		d.cred = &derCredential{Signer: cred.Key, der: cred.Cert.Raw}
		copts.TLSCredential = d.cred
	}
	if len(o.InventoryAttrs) > 0 {
		copts.Inventory = d.inventory
	}
	c, err := client.New(copts)
	if err != nil {
		return nil, err
	}
	d.c = c
	return d, nil
}

// Run starts the devices over the ramp and runs them until Duration has
// passed or ctx is done, then stops them (requests in flight are
// canceled), closes their idle connections and returns the report.
// Stopping is not an error: a canceled run still returns its report.
//
// Each device's two jobs (inventory, update checks) run on timers with the
// client's own Step, which is Run's per-attempt logic and wait rules, in
// Run's order: a random first-contact delay, the inventory (which
// authenticates), then update checks once the device is authenticated. An
// idle device therefore holds no goroutine; a goroutine exists only while
// one of its requests (or deployments) is in progress.
func (f *Fleet) Run(ctx context.Context) (*Report, error) {
	if !f.ran.CompareAndSwap(false, true) {
		return nil, ErrRunning
	}
	f.col.begin()
	begun := f.col.start
	f.begun.Store(&begun)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.opts.Duration > 0 {
		// A cancel, not a deadline: exchanges still in flight at the end
		// are cut by the stop (counted as canceled), not timed out.
		stop := time.AfterFunc(f.opts.Duration, cancel)
		defer stop.Stop()
	}
	f.log.Info("fleet starting", "devices", len(f.devices), "server", f.opts.ServerURL, "mtls", f.mtls,
		"ramp", f.opts.Ramp, "arrival_rate", f.opts.ArrivalRate, "duration", f.opts.Duration,
		"keep_alive", f.opts.KeepAlive, "max_conns", f.maxConns, "source_ips", formatAddrs(f.opts.SourceIPs))
	if at := f.opts.ReconnectStorm; at > 0 {
		storm := time.AfterFunc(at, func() {
			if runCtx.Err() == nil {
				f.reconnectStorm()
			}
		})
		defer storm.Stop()
	}

	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(f.opts.SampleInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f.col.sample()
			case <-runCtx.Done():
				return
			}
		}
	})
	f.runCtx = runCtx
	f.stepCtxs = make([]context.Context, stepCtxShards)
	for i := range f.stepCtxs {
		c, cancelStep := context.WithCancel(runCtx)
		defer cancelStep()
		f.stepCtxs[i] = c
	}
	n := len(f.devices)
	for i, d := range f.devices {
		d.arm(client.JobInventory, f.startDelay(d, i, n))
	}
	<-runCtx.Done()
	for _, d := range f.devices {
		d.stop()
	}
	f.inflight.Wait()
	sampler.Wait()
	ended := f.opts.Now()
	for _, d := range f.devices {
		d.dropTransport()
	}
	f.col.sample()
	r := f.report(ended)
	f.log.Info("fleet stopped", "accepted", r.Accepted, "devices", r.Devices, "requests", r.RequestsTotal, "errors", r.ErrorsTotal)
	return r, nil
}

// stepCtxShards is how many step contexts the devices share (see
// Fleet.stepCtx).
const stepCtxShards = 64

// stepCtx returns the context of device d's steps: one of the run's step
// contexts, or the run's own when there are none. Every request context
// registers with its parent under the parent's lock, which one context
// shared by 100,000 devices turns into a hot spot; device i uses step
// context i mod stepCtxShards.
func (f *Fleet) stepCtx(d *device) context.Context {
	if len(f.stepCtxs) == 0 {
		return f.runCtx
	}
	return f.stepCtxs[d.index%len(f.stepCtxs)]
}

// Mark records an event of the run (kind, and a short detail or "") at the
// current time; the report shows it on its time charts. Safe to call
// concurrently, before or during Run.
func (f *Fleet) Mark(kind, detail string) { f.col.mark(kind, detail) }

// Progress is a live view of a run.
type Progress struct {
	// Elapsed is the time since Run started; Total is Options.Duration (0
	// when the run lasts until its context is done).
	Elapsed, Total time.Duration
	// Devices is the fleet size; Started how many devices were launched.
	Devices, Started int
	// Accepted devices authenticated at least once; Pending ones got 401
	// on their last auth request and were never accepted; Failing ones had
	// their last exchange fail.
	Accepted, Pending, Failing int
	// Requests and Errors are totals; RPS is the request rate over the last
	// sampling interval.
	Requests, Errors uint64
	RPS              float64
	// Conns is the number of open device connections; Waiting the number
	// of device steps waiting for a connection slot (Options.MaxConns) or
	// for admission (Options.MaxHandshakes), and ConnWaits how often a
	// device had to wait for a connection slot so far.
	Conns, Waiting int
	ConnWaits      uint64
}

// ProgressWidth is the most characters Progress.String returns: one
// 80-column terminal line with the cursor kept on it.
const ProgressWidth = 79

// String renders the progress as one line of at most ProgressWidth
// characters: elapsed/total time (mm:ss, or h:mm:ss), accepted/devices,
// started (while ramping up), pending, failing, request rate and errors.
// Long numbers shorten the labels rather than wrap the line.
func (p Progress) String() string {
	clock := shortDuration(p.Elapsed)
	if p.Total > 0 {
		clock += "/" + shortDuration(p.Total)
	}
	type field struct{ long, short string }
	fields := []field{
		{fmt.Sprintf("accepted %d/%d", p.Accepted, p.Devices), fmt.Sprintf("acc %d/%d", p.Accepted, p.Devices)},
	}
	if p.Started < p.Devices {
		fields = append(fields, field{fmt.Sprintf("started %d", p.Started), fmt.Sprintf("st %d", p.Started)})
	}
	fields = append(fields,
		field{fmt.Sprintf("pending %d", p.Pending), fmt.Sprintf("pend %d", p.Pending)},
		field{fmt.Sprintf("failing %d", p.Failing), fmt.Sprintf("fail %d", p.Failing)},
		field{fmt.Sprintf("%.0f req/s", p.RPS), fmt.Sprintf("%.0f/s", p.RPS)},
		field{fmt.Sprintf("errors %d", p.Errors), fmt.Sprintf("err %d", p.Errors)},
	)
	for _, form := range []struct {
		sep   string
		short bool
	}{{"  ", false}, {" ", false}, {" ", true}} {
		parts := []string{clock}
		for _, f := range fields {
			label := f.long
			if form.short {
				label = f.short
			}
			parts = append(parts, label)
		}
		if line := strings.Join(parts, form.sep); len(line) <= ProgressWidth {
			return line
		}
	}
	parts := []string{clock}
	for _, f := range fields {
		parts = append(parts, f.short)
	}
	return strings.Join(parts, " ")[:ProgressWidth]
}

// shortDuration writes d as mm:ss, or h:mm:ss from one hour on.
func shortDuration(d time.Duration) string {
	s := int64(max(d, 0).Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

// MaxHandshakes returns the admission bound in force: Options.MaxHandshakes
// or DefaultHandshakesPerCPU x GOMAXPROCS.
func (f *Fleet) MaxHandshakes() int { return f.adm.slots }

// MaxConns returns the cap on open connections in force: Options.MaxConns
// or the one derived from the open-file limit.
func (f *Fleet) MaxConns() int { return f.maxConns }

// Progress returns the current state of the run.
func (f *Fleet) Progress() Progress {
	p := Progress{
		Total:     f.opts.Duration,
		Devices:   len(f.devices),
		Started:   int(f.started.Load()),
		Accepted:  int(f.col.accepted.Load()),
		Requests:  f.col.totalRequests.Load(),
		Errors:    f.col.totalErrors.Load(),
		RPS:       f.col.rps(),
		Conns:     int(f.pool.open.Load()),
		Waiting:   int(f.pool.waiting.Load() + f.adm.queued.Load()),
		ConnWaits: f.pool.waits.Load(),
	}
	if b := f.begun.Load(); b != nil {
		p.Elapsed = f.opts.Now().Sub(*b)
	}
	p.Pending, p.Failing = f.states()
	return p
}

// states counts pending and failing devices.
func (f *Fleet) states() (pending, failing int) {
	for _, d := range f.devices {
		s := d.state.Load()
		if s&stPending != 0 && s&stAccepted == 0 {
			pending++
		}
		if s&stFailing != 0 {
			failing++
		}
	}
	return pending, failing
}
