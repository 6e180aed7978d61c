package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/identity"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
)

// errChecksFailed means check printed at least one FAIL line (exit 1, no
// further message).
var errChecksFailed = errors.New("checks failed")

type checker struct {
	w      io.Writer
	failed bool
}

func (c *checker) pass(name, format string, a ...any) {
	fmt.Fprintf(c.w, "PASS  %-12s %s\n", name, fmt.Sprintf(format, a...))
}

func (c *checker) fail(name string, err error, fix string) {
	c.failed = true
	msg := oneLine(err.Error())
	if fix != "" {
		msg += "; fix: " + fix
	}
	fmt.Fprintf(c.w, "FAIL  %-12s %s\n", name, msg)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("check", "Validate config, key, certificate and identity, then connect and authenticate.\nPrints one PASS or FAIL line per check; exits 0 only when all pass.", stderr)
	cf.register(fs, getenv)
	timeout := fs.Duration("timeout", 20*time.Second, "time limit for connecting and authenticating")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c := &checker{w: stdout}

	e, err := loadEnv(&cf, stderr, getenv)
	if err != nil {
		c.fail("config", err, "")
		return errChecksFailed
	}
	c.pass("config", "%s; servers %s", cf.config, strings.Join(e.cfg.Servers, ", "))
	if !reportTPM(ctx, c, e.cfg, e.log) {
		return errChecksFailed
	}

	k, err := e.openKeys(ctx)
	if err != nil {
		name := "key"
		if errors.Is(err, keystore.ErrKeyMismatch) || errors.Is(err, keystore.ErrExpired) || errors.Is(err, keystore.ErrNotYetValid) {
			name = "certificate"
		}
		c.fail(name, err, "")
		return errChecksFailed
	}
	defer k.Close()
	c.pass("key", "%s (%s), signs auth requests", e.cfg.AuthKeyFile, k.auth.Fingerprint())
	if k.tls != nil {
		chain := k.tls.CertificateChain()
		leaf := chain[0]
		c.pass("certificate", "%s: %s, serial %x, valid until %s, matches key %s",
			e.cfg.CertFile, leaf.Subject, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.DateOnly), k.tls.Fingerprint())
		for _, w := range k.tls.Warnings() {
			fmt.Fprintf(stdout, "WARN  %-12s %s\n", "certificate", w)
		}
		if !samePubKey(k) {
			c.fail("auth key", errors.New("auth requests are signed with a key other than the mTLS certificate's key; an mTLS ambassador refuses them"),
				"set Security.AuthPrivateKey to the HttpsClient.Key file, or leave it unset")
		}
	} else {
		fmt.Fprintf(stdout, "INFO  %-12s no client certificate configured (HttpsClient.Certificate); connecting without mTLS\n", "certificate")
	}

	attrs, err := identity.Collect(ctx, e.scopts)
	if err != nil {
		c.fail("identity", err, "")
	} else {
		c.pass("identity", "%s", formatAttrs(attrs))
	}

	opts, err := e.clientOptions(k)
	if err != nil {
		c.fail("device type", err, "")
		return errChecksFailed
	}
	c.pass("device type", "%s (artifact %s)", opts.DeviceType, opts.ArtifactName)
	if c.failed {
		return errChecksFailed
	}

	cl, err := client.New(opts)
	if err != nil {
		c.fail("client", err, "")
		return errChecksFailed
	}
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := cl.Authenticate(cctx); err != nil {
		name, fix := classifyConnectError(err)
		c.fail(name, err, fix)
		return errChecksFailed
	}
	c.pass("auth", "authenticated with %s; the server issued a device token", cl.Server())
	return nil
}

func samePubKey(k *keys) bool {
	return k.tls == nil || k.auth == k.tls || k.auth.Fingerprint() == k.tls.Fingerprint()
}

// classifyConnectError names the failed step of connecting and says how to fix it.
func classifyConnectError(err error) (string, string) {
	var (
		verr    *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		inval   x509.CertificateInvalidError
		alert   tls.AlertError
		opErr   *net.OpError
		dnsErr  *net.DNSError
	)
	switch {
	case errors.Is(err, client.ErrPending):
		return "auth", "the device is pending: accept it in the Mender UI or preauthorize it (through an mTLS ambassador, check the ambassador's log)"
	// The client wraps every verification failure in a
	// *tls.CertificateVerificationError, so the specific x509 errors come first.
	case errors.As(err, &host):
		return "tls", "the server certificate does not name the host in ServerURL: use a matching ServerURL or reissue the certificate with that name as a subjectAltName"
	case errors.As(err, &unknown), errors.As(err, &verr), errors.As(err, &inval):
		return "tls", "the server certificate is not trusted: set ServerCertificate in mender.conf to the server's CA certificate"
	case errors.As(err, &alert):
		return "tls", "the server refused the TLS handshake: check that the client certificate (HttpsClient.Certificate) is signed by a CA the server trusts and not revoked"
	case errors.As(err, &dnsErr):
		return "connect", "the server name does not resolve: check ServerURL and DNS"
	case errors.As(err, &opErr), errors.Is(err, context.DeadlineExceeded):
		return "connect", "the server is unreachable: check ServerURL, the network and firewalls"
	}
	return "auth", ""
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
