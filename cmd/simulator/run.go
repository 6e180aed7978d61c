package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/rlimit"
)

// repeatFlag collects a repeatable flag verbatim (values may hold commas).
type repeatFlag []string

func (r *repeatFlag) String() string { return strings.Join(*r, " ") }
func (r *repeatFlag) Set(v string) error {
	*r = append(*r, v)
	return nil
}

type runFlags struct {
	server, ca, pkiDir, keyFile string
	count                       int
	keyType, macPrefix          string
	identityAttrs, invAttrs     repeatFlag
	ramp, duration, installTime time.Duration
	poll, inventory, retryPoll  time.Duration
	jitter, failRate            float64
	tenantToken                 string
	deviceType, artifactName    string
	noMTLS                      bool
	shard                       string
	logLevel                    string
	out                         reportFlags
	keepAlive                   bool
	sourceIPs                   []netip.Addr
	maxConns, maxHandshakes     int
	arrivalRate                 float64
	reconnectStorm              time.Duration
	rampSet                     bool
}

const runSynopsis = `Simulate --count Mender devices against --server through the real device client: each device
has its own key and (unless --no-mtls) its own certificate signed by the CA in --pki-dir, cached
there so that a rerun starts in seconds. Progress is shown live; at the end (after --duration, or
on Ctrl-C) a summary is printed and the reports are written.

--pki-dir DIR holds the device CA (DIR/ca.crt and DIR/ca.key, as made by 'simulator pki init' or
'simulator serve --dir DIR') and the credential cache (DIR/devices/<key type>/).
With --shard i/N, this process simulates the i-th of N slices of the --count devices; merge the
shard reports with 'simulator report merge'.`

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f runFlags
	fs := newFlagSet("run", runSynopsis, stdout, stderr)
	fs.StringVar(&f.server, "server", "", "server or ambassador base `URL`, e.g. https://127.0.0.1:8443 (required)")
	fs.StringVar(&f.ca, "ca", "", "CA `FILE` trusted for the server certificate (default: PKI-DIR/ca.crt when present, else the system roots)")
	fs.StringVar(&f.pkiDir, "pki-dir", "", "`DIR` with the device CA and the credential cache (required unless --no-mtls --key-file)")
	fs.IntVar(&f.count, "count", 0, "`N` devices in the whole fleet (required)")
	fs.StringVar(&f.keyType, "key-type", string(pki.ECDSAP256), "device "+keyTypeUsage)
	fs.StringVar(&f.macPrefix, "mac-prefix", fleet.DefaultMACPrefix.String(), "leading MAC `OCTETS`; the device index fills the rest")
	fs.Var(&f.identityAttrs, "identity-attr", "extra identity attribute `k=v` for every device (repeatable)")
	fs.Var(&f.invAttrs, "inventory-attr", "extra inventory attribute `k=v1|v2`: device i reports value i mod n (repeatable)")
	fs.DurationVar(&f.ramp, "ramp", 30*time.Second, "spread the device starts over this `DURATION`")
	fs.DurationVar(&f.duration, "duration", 5*time.Minute, "run time (a `DURATION`); 0 runs until Ctrl-C")
	fs.DurationVar(&f.poll, "poll", 30*time.Minute, "update poll `INTERVAL` (Mender's UpdatePollIntervalSeconds)")
	fs.DurationVar(&f.inventory, "inventory", 8*time.Hour, "inventory `INTERVAL` (Mender's InventoryPollIntervalSeconds)")
	fs.DurationVar(&f.retryPoll, "retry-poll", 5*time.Minute, "wait while pending and cap of the retry backoff, a `DURATION` (Mender's RetryPollIntervalSeconds)")
	fs.Float64Var(&f.jitter, "jitter", 0.1, "spread every periodic wait over interval·(1±`FRACTION`), in (0, 1]")
	fs.StringVar(&f.tenantToken, "tenant-token", "", "tenant `TOKEN` sent in auth requests (hosted Mender)")
	fs.StringVar(&f.deviceType, "device-type", fleet.DefaultDeviceType, "device `TYPE` the devices report")
	fs.StringVar(&f.artifactName, "artifact-name", fleet.DefaultArtifactName, "artifact `NAME` the devices start with")
	fs.BoolVar(&f.noMTLS, "no-mtls", false, "devices without client certificates (plain Mender); each still has its own key")
	fs.StringVar(&f.keyFile, "key-file", "", "with --no-mtls: `FILE` caching every device key (created when missing)")
	fs.Float64Var(&f.failRate, "deployment-fail-rate", 0, "`FRACTION` (0..1) of deployments a device reports as failed, with a log upload")
	fs.DurationVar(&f.installTime, "install-time", 0, "`DURATION` a device spends installing each deployment (0: none)")
	fs.Func("fail-rate", "renamed --deployment-fail-rate", func(string) error {
		return errors.New("renamed --deployment-fail-rate (the fraction of deployments that fail; serve --fail-rate fails requests)")
	})
	fs.hide("fail-rate")
	fs.BoolVar(&f.keepAlive, "keep-alive", false, "keep each device's connection open between its polls (up to the idle timeout, 90s);\n"+
		"without it a device closes its connection when a poll or inventory send is over, as real devices polling every 30 minutes do")
	fs.Func("source-ips", "connect from these local `ADDRESSES` (a comma list of addresses, ranges such as 127.0.0.2-127.0.0.65\n"+
		"within one /24, or prefixes such as 127.0.1.0/26): device i uses address i mod n; each address allows about\n"+
		"28,000 connections to one server address", func(v string) error {
		as, err := fleet.ParseSourceIPs(v)
		f.sourceIPs = as
		return err
	})
	fs.Func("max-conns", "cap the open connections at `N`: a device beyond it waits for a free slot within its request timeout\n"+
		"(default: the open-file limit less a reserve for the simulator's own files, at most 28,000 per source address)", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%q: want a positive number of connections (leave it out for the derived cap)", v)
		}
		f.maxConns = n
		return nil
	})
	fs.Func("max-handshakes", "at most `N` devices between the start of a step and the end of its TLS handshake; the others wait in\n"+
		"order: the devices share this machine's cores, and a herd that starts every handshake at once gets none done in time\n"+
		"(default: "+strconv.Itoa(fleet.DefaultHandshakesPerCPU)+" x GOMAXPROCS)", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%q: want a positive number of devices (leave it out for the default)", v)
		}
		f.maxHandshakes = n
		return nil
	})
	fs.Func("arrival-rate", "start the devices at a constant `RATE` such as 500/s or 90/m (open model) instead of over --ramp", func(v string) error {
		r, err := fleet.ParseRate(v)
		f.arrivalRate = r
		return err
	})
	fs.DurationVar(&f.reconnectStorm, "reconnect-storm", 0, "at this `TIME` after the start, cut every device connection and have every accepted device\n"+
		"poll at once, as when the proxy in front of the fleet restarts (0: none)")
	fs.StringVar(&f.shard, "shard", "0/1", "simulate slice `i/N` of the fleet's device indices")
	fs.StringVar(&f.logLevel, "log-level", "warn", "`LEVEL` of the simulator's own messages on stderr: debug, info, warn or error")
	f.out.register(fs, "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fs.Visit(func(fl *flag.Flag) { f.rampSet = f.rampSet || fl.Name == "ramp" })
	if msg := f.usageProblem(); msg != "" {
		fmt.Fprintf(stderr, "simulator run: %s\nRun 'simulator run --help' for the flags.\n", msg)
		return errUsage
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	// Each device connection is a descriptor: raise the soft limit to the
	// hard one before the connection cap is derived from it.
	limits, limErr := rlimit.RaiseFiles()
	setup, err := f.setup(ctx, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d devices (shard %s, indices %d..%d, %s) against %s\n", len(setup.opts.Credentials), setup.opts.Shard,
		setup.lo, setup.hi-1, setup.mode, f.server)
	fmt.Fprintf(stdout, "credentials: %d loaded from the cache, %d keys minted, %d certificates reissued (%.1fs)\n",
		setup.store.Loaded, setup.store.MintedKeys, setup.store.ReissuedCerts, setup.storeTime.Seconds())
	fl, err := fleet.New(setup.opts)
	if err != nil {
		return err
	}
	if limErr != nil {
		log.Warn("cannot raise the open-file limit", "err", limErr)
	} else {
		fmt.Fprintln(stdout, limits)
	}
	fmt.Fprintf(stdout, "capping open connections at %d (open-file limit %d, %d source addresses), handshakes under way at %d\n",
		fl.MaxConns(), limits.Soft, max(len(f.sourceIPs), 1), fl.MaxHandshakes())
	return runFleet(ctx, fl, f.out, stdout, log, nil)
}

// usageProblem returns what is wrong with the flags taken together, ""
// when nothing is: those errors exit with the usage status.
func (f *runFlags) usageProblem() string {
	switch {
	case f.arrivalRate > 0 && f.rampSet && f.ramp > 0:
		return "--ramp and --arrival-rate both set: start the devices over a ramp or at a rate, not both (drop one)"
	case f.reconnectStorm < 0:
		return fmt.Sprintf("--reconnect-storm %v: want a positive time after the start, or 0 for none", f.reconnectStorm)
	}
	if err := fleet.CheckSourceIPs(f.sourceIPs, f.server); err != nil {
		return "--source-ips: " + err.Error()
	}
	return ""
}

// runSetup is what the flags resolve to.
type runSetup struct {
	opts      fleet.Options
	lo, hi    int
	mode      string
	store     fleet.StoreResult
	storeTime time.Duration
}

func (f *runFlags) setup(ctx context.Context, log *slog.Logger) (*runSetup, error) {
	var errs []error
	if f.server == "" {
		errs = append(errs, errors.New("run: --server is required: the server or ambassador URL"))
	}
	if f.count <= 0 {
		errs = append(errs, fmt.Errorf("run: --count %d: give the number of devices (at least 1)", f.count))
	}
	kt, err := pki.ParseKeyType(f.keyType)
	if err != nil {
		errs = append(errs, fmt.Errorf("--key-type: %w", err))
	}
	prefix, err := fleet.ParseMACPrefix(f.macPrefix)
	if err != nil {
		errs = append(errs, fmt.Errorf("--mac-prefix: %w", err))
	} else if f.count > prefix.Capacity() {
		errs = append(errs, fmt.Errorf("--mac-prefix %s leaves room for %d devices, not %d: use a shorter prefix", prefix, prefix.Capacity(), f.count))
	}
	shard, err := fleet.ParseShard(f.shard)
	if err != nil {
		errs = append(errs, fmt.Errorf("--shard: %w", err))
	}
	var ids, invs []fleet.Attribute
	for _, s := range f.identityAttrs {
		a, err := fleet.ParseAttribute(s, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("--identity-attr: %w", err))
		}
		ids = append(ids, a)
	}
	for _, s := range f.invAttrs {
		a, err := fleet.ParseAttribute(s, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("--inventory-attr: %w", err))
		}
		invs = append(invs, a)
	}
	if f.installTime < 0 {
		errs = append(errs, fmt.Errorf("--install-time %v: want 0 or a positive duration", f.installTime))
	}
	if !(f.failRate >= 0 && f.failRate <= 1) {
		errs = append(errs, fmt.Errorf("--deployment-fail-rate %v: want a fraction in [0, 1]", f.failRate))
	}
	if !(f.jitter > 0 && f.jitter <= 1) {
		errs = append(errs, fmt.Errorf("--jitter %v: want a fraction in (0, 1]", f.jitter))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ramp", f.ramp}, {"duration", f.duration}, {"poll", f.poll}, {"inventory", f.inventory}, {"retry-poll", f.retryPoll}} {
		if d.v < 0 || (d.v == 0 && d.name != "ramp" && d.name != "duration") {
			errs = append(errs, fmt.Errorf("--%s %v: want a positive duration", d.name, d.v))
		}
	}
	switch {
	case f.noMTLS && f.keyFile == "" && f.pkiDir == "":
		errs = append(errs, errors.New("run: --no-mtls needs --key-file FILE (or --pki-dir DIR) to cache the device keys"))
	case !f.noMTLS && f.pkiDir == "":
		errs = append(errs, errors.New("run: --pki-dir is required: the directory with the device CA (ca.crt, ca.key), e.g. from 'simulator serve --dir DIR'"))
	case !f.noMTLS && f.keyFile != "":
		errs = append(errs, errors.New("run: --key-file is for --no-mtls; with mTLS the credentials are cached in --pki-dir"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	roots, err := f.roots()
	if err != nil {
		return nil, err
	}
	so := fleet.StoreOptions{KeyType: kt, Name: prefix.MAC, Logger: log}
	mode := string(kt) + " keys, mTLS"
	switch {
	case !f.noMTLS:
		crt, key := caPaths(f.pkiDir)
		if so.CA, err = pki.LoadCA(crt, key); err != nil {
			return nil, fmt.Errorf("--pki-dir %s: %w (create a CA with: simulator pki init --dir %s)", f.pkiDir, err, f.pkiDir)
		}
		so.Dir = filepath.Join(f.pkiDir, "devices")
	case f.keyFile != "":
		so.File, mode = f.keyFile, string(kt)+" keys, no client certificates"
	default:
		so.Dir, mode = filepath.Join(f.pkiDir, "devices"), string(kt)+" keys, no client certificates"
	}
	lo, hi := shard.Range(f.count)
	if hi <= lo {
		return nil, fmt.Errorf("--shard %s of --count %d holds no device: use fewer shards", shard, f.count)
	}
	start := time.Now()
	creds, res, err := fleet.LoadCredentials(ctx, so, lo, hi)
	if err != nil {
		return nil, err
	}
	return &runSetup{
		opts: fleet.Options{
			ServerURL: f.server, RootCAs: roots, Credentials: creds, Shard: shard, MACPrefix: prefix,
			IdentityAttrs: ids, InventoryAttrs: invs, TenantToken: f.tenantToken,
			DeviceType: f.deviceType, ArtifactName: f.artifactName,
			Ramp: f.rampUnlessRate(), Duration: f.duration, PollInterval: f.poll, InventoryInterval: f.inventory,
			RetryInterval: f.retryPoll, Jitter: f.jitter, FailRate: f.failRate, InstallDelay: f.installTime, Logger: log,
			KeepAlive: f.keepAlive, SourceIPs: f.sourceIPs, MaxConns: f.maxConns, MaxHandshakes: f.maxHandshakes, ArrivalRate: f.arrivalRate,
			ReconnectStorm: f.reconnectStorm,
		},
		lo: lo, hi: hi, mode: mode, store: res, storeTime: time.Since(start),
	}, nil
}

// rampUnlessRate is --ramp, or 0 with --arrival-rate (which replaces the
// default ramp).
func (f *runFlags) rampUnlessRate() time.Duration {
	if f.arrivalRate > 0 {
		return 0
	}
	return f.ramp
}

// roots returns the pool trusted for the server: --ca, else PKI-DIR/ca.crt
// when it exists, else nil (the system roots).
func (f *runFlags) roots() (*x509.CertPool, error) {
	file := f.ca
	if file == "" && f.pkiDir != "" {
		if crt, _ := caPaths(f.pkiDir); fileExists(crt) {
			file = crt
		}
	}
	if file == "" {
		return nil, nil
	}
	pool, err := loadPool(file)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	return pool, nil
}

// loadPool returns a pool with the PEM certificates of file.
func loadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificate in the file: give the CA that signed the server certificate", file)
	}
	return pool, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
