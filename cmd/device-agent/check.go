package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/identity"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// errChecksFailed means check reported at least one FAIL (exit 1, no
// further message).
var errChecksFailed = errors.New("checks failed")

// Check statuses.
const (
	statusPass = "PASS"
	statusFail = "FAIL"
	statusSkip = "SKIP" // not run: a check it depends on failed, or it does not apply
)

// checkResult is one check of `device-agent check`, as printed with --json.
type checkResult struct {
	// Name is the check: config, certificate, key, identity, device type,
	// connect, tls, auth (and tpm, tpm key, tpm selftest, auth key).
	Name string `json:"name"`
	// Status is PASS, FAIL or SKIP.
	Status string `json:"status"`
	// Detail is what was found, or for FAIL the problem and the error, or
	// for SKIP why the check did not run.
	Detail string `json:"detail"`
	// Fix says what to do about a FAIL; may be empty.
	Fix string `json:"fix"`
	// Warnings are problems that do not fail the check (an unknown config
	// key, a certificate about to expire).
	Warnings []string `json:"warnings,omitempty"`
}

// checkReport is the --json output.
type checkReport struct {
	// OK is true when no check failed (the exit code is then 0).
	OK     bool          `json:"ok"`
	Checks []checkResult `json:"checks"`
}

// checker collects the results and, when w is set, prints each as a line
// as soon as it is known: "PASS  name  detail", "FAIL  name  detail; fix:
// fix", "SKIP  name  why", and "WARN  name  warning" after its check.
type checker struct {
	w       io.Writer
	failed  bool
	results []checkResult
}

func (c *checker) add(r checkResult) {
	r.Detail = oneLine(r.Detail)
	r.Fix = oneLine(r.Fix)
	if r.Status == statusFail {
		c.failed = true
	}
	c.results = append(c.results, r)
	if c.w == nil {
		return
	}
	msg := r.Detail
	if r.Fix != "" {
		msg += "; fix: " + r.Fix
	}
	fmt.Fprintf(c.w, "%-4s  %-12s %s\n", r.Status, r.Name, msg)
}

func (c *checker) pass(name, format string, a ...any) {
	c.add(checkResult{Name: name, Status: statusPass, Detail: fmt.Sprintf(format, a...)})
}

func (c *checker) fail(name string, err error, fix string) {
	c.add(checkResult{Name: name, Status: statusFail, Detail: errText(err), Fix: fix})
}

func (c *checker) skip(name, format string, a ...any) {
	c.add(checkResult{Name: name, Status: statusSkip, Detail: fmt.Sprintf(format, a...)})
}

// warn attaches a warning to the last check named name (or the last check).
func (c *checker) warn(name, msg string) {
	msg = oneLine(msg)
	i := len(c.results) - 1
	for j := i; j >= 0; j-- {
		if c.results[j].Name == name {
			i = j
			break
		}
	}
	if i >= 0 {
		c.results[i].Warnings = append(c.results[i].Warnings, msg)
	}
	if c.w != nil {
		fmt.Fprintf(c.w, "WARN  %-12s %s\n", name, msg)
	}
}

// tpm records the TPM checks (tpmCheck): nothing when no key is in a TPM.
func (c *checker) tpm(ctx context.Context, cfg *config.Config, log *slog.Logger) {
	for _, r := range tpmCheck(ctx, cfg, log) {
		switch r.Status {
		case statusPass:
			c.pass(r.Name, "%s", r.Text)
		case statusFail:
			c.fail(r.Name, errors.New(r.Text), r.Fix)
		case "WARN":
			msg := r.Text
			if r.Fix != "" {
				msg += "; fix: " + r.Fix
			}
			c.warn(r.Name, msg)
		default:
			c.skip(r.Name, "%s", r.Text)
		}
	}
}

// diagnosed records a failed connection step with the client's diagnosis.
func (c *checker) diagnosed(name string, d client.Diagnosis, err error) {
	detail := errText(err)
	if d.Problem != "" {
		detail = d.Problem + " (" + detail + ")"
	}
	c.add(checkResult{Name: name, Status: statusFail, Detail: detail, Fix: d.Fix})
}

// errText is err on one line; joined errors (a config with several
// problems) are separated by "; ".
func errText(err error) string {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 1 {
		var parts []string
		for _, e := range j.Unwrap() {
			parts = append(parts, errText(e))
		}
		return strings.Join(parts, "; ")
	}
	return oneLine(err.Error())
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

const checkSynopsis = `Check the configuration, the certificate and keys, the identity and the
device type, then connect to each server (TCP, then the TLS handshake with the
client certificate) and send an auth request; last, who owns Mender's D-Bus
name io.mender.AuthenticationManager and the forwarder URL it hands out
(never a failure: no bus is a warning). Every check runs unless it needs
one that failed (it is then SKIPped), and each prints one line: PASS, FAIL
(with the fix) or SKIP, with WARN lines after it. Exit status: 0 when no check
failed, 1 when one did, 2 for bad flags.`

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("check", checkSynopsis, stderr)
	cf.register(fs, getenv)
	timeout := fs.Duration("timeout", 20*time.Second, "`DURATION` limit for connecting to the servers and authenticating, together")
	asJSON := fs.Bool("json", false, `print the results as one JSON object {"ok": bool, "checks": [{"name", "status", "detail", "fix", "warnings"}]} instead of lines`)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c := &checker{}
	if !*asJSON {
		c.w = stdout
	}
	runChecks(ctx, c, &cf, stderr, getenv, *timeout)
	dbusCheck(ctx, c, getenv)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(checkReport{OK: !c.failed, Checks: c.results}); err != nil {
			return fmt.Errorf("check: write the results: %w", err)
		}
	}
	if c.failed {
		return errChecksFailed
	}
	return nil
}

// Names of the checks after config, in order.
var laterChecks = []string{"certificate", "key", "identity", "device type", "connect", "tls", "auth"}

// runChecks runs every check into c. Each check runs unless it needs the
// result of one that failed.
func runChecks(ctx context.Context, c *checker, cf *commonFlags, stderr io.Writer, getenv func(string) string, timeout time.Duration) {
	e, warnings, err := loadEnvQuiet(cf, stderr, getenv)
	if err != nil {
		c.fail("config", err, "")
	} else {
		c.pass("config", "%s; servers %s", strings.Join(e.cfg.Sources, ", "), strings.Join(e.cfg.Servers, ", "))
	}
	for _, w := range warnings {
		c.warn("config", w)
	}
	if err != nil {
		for _, name := range laterChecks {
			c.skip(name, "needs a valid configuration (config failed)")
		}
		return
	}
	cfg := e.cfg

	c.tpm(ctx, cfg, e.log)
	c.provisioned(cfg)

	// The mTLS certificate and key, then the key that signs auth requests.
	k := &keys{}
	defer k.Close()
	certOK := true
	if cfg.CertFile == "" {
		c.skip("certificate", "no client certificate configured (HttpsClient.Certificate); connecting without mTLS")
	} else if tk, err := e.openTLSKey(ctx); err != nil {
		certOK = false
		c.fail("certificate", err, keyFix(err))
	} else {
		k.tls = tk
		leaf := tk.CertificateChain()[0]
		c.pass("certificate", "%s: %s, serial %x, issuer %s, valid until %s; key %s (%s) matches",
			cfg.CertFile, leaf.Subject, leaf.SerialNumber, leaf.Issuer, leaf.NotAfter.UTC().Format(time.DateOnly), cfg.KeyFile, tk.Fingerprint())
		for _, w := range tk.Warnings() {
			c.warn("certificate", w)
		}
	}
	if !certOK && samePath(cfg.AuthKeyFile, cfg.KeyFile) {
		c.skip("key", "auth requests are signed with the mTLS key %s, which failed above (certificate)", cfg.KeyFile)
	} else if ak, generated, err := e.openAuthKey(ctx, k.tls); err != nil {
		c.fail("key", err, keyFix(err))
	} else {
		k.auth, k.generated = ak, generated
		switch {
		case ak == k.tls:
			c.pass("key", "the mTLS key %s (%s) signs auth requests", cfg.KeyFile, ak.Fingerprint())
		case generated:
			c.pass("key", "%s (%s), generated now, signs auth requests", cfg.AuthKeyFile, ak.Fingerprint())
		default:
			c.pass("key", "%s (%s) signs auth requests", cfg.AuthKeyFile, ak.Fingerprint())
		}
		if !samePubKey(k) {
			c.fail("auth key", errors.New("auth requests are signed with a key other than the mTLS certificate's key; an mTLS ambassador refuses them"),
				"set Security.AuthPrivateKey to the HttpsClient.Key file, or leave it unset")
		}
	}

	attrs, err := identity.Collect(ctx, e.scopts)
	identityOK := err == nil
	if err != nil {
		c.fail("identity", err, "")
	} else {
		c.pass("identity", "%s", formatAttrs(attrs))
	}

	// The device type is not part of the auth request: without it the
	// connection and authentication are still checked.
	deviceType, err := config.ReadDeviceType(cfg.DeviceTypeFile)
	artifact, aerr := config.ReadArtifactName(cfg.DatastoreDir)
	switch {
	case err != nil:
		c.fail("device type", err, "")
		deviceType = "unknown" // a placeholder: the auth request does not carry it
	case aerr != nil:
		c.fail("device type", aerr, "")
	default:
		c.pass("device type", "%s (artifact %s)", deviceType, artifact)
	}

	opts := e.baseClientOptions(k)
	opts.DeviceType, opts.ArtifactName = deviceType, artifact
	if k.auth == nil {
		// Connecting needs no auth key; New needs one. The auth check below
		// is skipped, so this throwaway key never signs anything.
		throwaway, err := pki.GenerateKey(pki.Ed25519)
		if err != nil {
			c.fail("connect", err, "")
			return
		}
		opts.AuthKey = throwaway
	}
	cl, err := client.New(opts)
	if err != nil {
		c.fail("connect", err, "")
		c.skip("tls", "needs the client settings (connect failed)")
		c.skip("auth", "needs the client settings (connect failed)")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	reached := false
	for _, srv := range cfg.Servers {
		if probeServer(cctx, c, cl, srv, k.tls != nil, certOK) {
			reached = true
		}
	}

	switch {
	case !reached:
		c.skip("auth", "needs a server that accepts the connection (connect or tls failed)")
	case k.auth == nil:
		c.skip("auth", "needs the auth key (key failed)")
	case !identityOK:
		c.skip("auth", "needs the identity (identity failed)")
	default:
		if err := cl.Authenticate(cctx); err != nil {
			c.diagnosed("auth", client.Diagnose(err), err)
		} else {
			c.pass("auth", "authenticated with %s as %s; the server issued a device token", cl.Server(), formatAttrs(attrs))
		}
	}
}

// probeServer checks the connection to one server and its TLS handshake, and
// reports whether the server accepted the connection.
func probeServer(ctx context.Context, c *checker, cl *client.Client, srv string, withCert, certOK bool) bool {
	target, via := dialTarget(srv)
	state, err := cl.Probe(ctx, srv)
	if err != nil {
		d := client.Diagnose(err)
		if d.Step == client.StepConnect {
			c.diagnosed("connect", d, err)
			c.skip("tls", "needs a connection to %s (connect failed)", target)
			return false
		}
		c.pass("connect", "%s reached%s", target, via)
		if !certOK && d.Step == client.StepTLS {
			c.skip("tls", "%s: needs the client certificate (certificate failed); without it: %s", srv, d.Problem)
			return false
		}
		c.diagnosed("tls", d, err)
		return false
	}
	c.pass("connect", "%s reached%s", target, via)
	if state == nil {
		c.skip("tls", "%s is plain http: no TLS, the device token travels in clear text (use https://)", srv)
		return true
	}
	detail := fmt.Sprintf("%s with %s", tls.VersionName(state.Version), srv)
	if len(state.PeerCertificates) > 0 {
		leaf := state.PeerCertificates[0]
		detail += fmt.Sprintf(": server certificate %s, issuer %s, valid until %s", leaf.Subject, leaf.Issuer, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	switch {
	case withCert:
		detail += "; client certificate accepted"
	case !certOK:
		detail += "; no client certificate sent (certificate failed)"
	}
	c.pass("tls", "%s", detail)
	return true
}

// dialTarget names where a connection to srv goes: its host:port, and the
// proxy from the environment when one applies.
func dialTarget(srv string) (target, via string) {
	u, err := url.Parse(srv)
	if err != nil {
		return srv, ""
	}
	target = u.Host
	if u.Port() == "" {
		port := "443"
		if u.Scheme == "http" {
			port = "80"
		}
		target = net.JoinHostPort(u.Hostname(), port)
	}
	if p, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err == nil && p != nil {
		via = " through the proxy " + p.Host // never its user info
	}
	return target, via
}

// keyFix is the fix for a key or certificate that does not open, when the
// error does not already say it.
func keyFix(err error) string {
	if errors.Is(err, keystore.ErrSwapped) {
		return "swap the values of HttpsClient.Certificate and HttpsClient.Key in mender.conf"
	}
	return ""
}

func samePubKey(k *keys) bool {
	return k.tls == nil || k.auth == k.tls || k.auth.Fingerprint() == k.tls.Fingerprint()
}

func formatAttrs(a map[string][]string) string {
	var parts []string
	for k, vs := range a {
		parts = append(parts, k+"="+strings.Join(vs, ","))
	}
	sortStrings(parts)
	return strings.Join(parts, " ")
}

func cmdShowIdentity(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("show-identity", "Print the identity attributes (key=value lines) this device authenticates with.", stderr)
	cf.register(fs, getenv)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	e, err := loadEnv(&cf, stderr, getenv)
	if err != nil {
		return err
	}
	attrs, err := identity.Collect(ctx, e.scopts)
	if err != nil {
		return err
	}
	var lines []string
	for k, vs := range attrs {
		for _, v := range vs {
			lines = append(lines, k+"="+v)
		}
	}
	sortStrings(lines)
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	return nil
}

func sortStrings(s []string) { slices.Sort(s) }
