package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

const pkiUsage = `Usage: simulator pki COMMAND [flags]

The PKI steps of Mender's mTLS guide, without openssl.

Commands:
  init      create a CA:                 DIR/ca.crt, DIR/ca.key
  server    issue the server certificate: DIR/server.crt, DIR/server.key
  device    issue a device key and certificate: OUTDIR/mender-cert.pem, OUTDIR/mender-cert-private.pem,
            OUTDIR/mender.conf.fragment
  sign-csr  sign a device CSR (the key stays on the device, e.g. in a TPM)
  revoke    add a serial this CA issued to DIR/blacklist and rewrite DIR/crl.pem
  list      show the certificates this CA issued and their state (valid, expired, revoked)

A CA made with the openssl commands of Mender's mTLS guide works too: DIR/ca.crt with
DIR/ca-private.key. Every signing command records what it issued in DIR/issued.json.
Existing files are never overwritten without --force. Run 'simulator pki COMMAND --help' for flags.
`

const day = 24 * time.Hour

func cmdPKI(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, pkiUsage)
		return errUsage
	}
	switch args[0] {
	case "init":
		return pkiInit(args[1:], stdout, stderr)
	case "server":
		return pkiServer(args[1:], stdout, stderr)
	case "device":
		return pkiDevice(args[1:], stdout, stderr)
	case "sign-csr":
		return pkiSignCSR(args[1:], stdout, stderr)
	case "revoke":
		return pkiRevoke(args[1:], stdout, stderr)
	case "list":
		return pkiList(args[1:], stdout, stderr)
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, pkiUsage)
		return nil
	}
	fmt.Fprintf(stderr, "simulator pki: unknown command %q\n\n%s", args[0], pkiUsage)
	return errUsage
}

// caPaths returns the CA certificate and key of dir: ca.crt with ca.key,
// or with ca-private.key (Mender's mTLS guide) when only that exists.
func caPaths(dir string) (string, string) { return pki.CAFiles(dir) }

func loadCA(dir string) (*pki.CA, error) {
	crt, key := caPaths(dir)
	ca, err := pki.LoadCA(crt, key)
	if err != nil {
		return nil, fmt.Errorf("%w (create one with: simulator pki init --dir %s)", err, dir)
	}
	return ca, nil
}

// keyTypeUsage is the help of every --key-type flag.
const keyTypeUsage = "key `TYPE`: ecdsa-p256, ecdsa-p384, ed25519, rsa2048 or rsa3072"

func keyTypeFlag(s string) (pki.KeyType, error) {
	kt, err := pki.ParseKeyType(s)
	if err != nil {
		return "", fmt.Errorf("--key-type: %w", err)
	}
	return kt, nil
}

func pkiInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki init", "Create a CA in DIR: ca.crt and ca.key (0600).", stdout, stderr)
	dir := fs.String("dir", "", "`DIR` for ca.crt and ca.key (required)")
	kt := fs.String("key-type", "ecdsa-p256", "CA "+keyTypeUsage)
	days := fs.Int("days", 3650, "validity in `DAYS`")
	cn := fs.String("cn", "Mender mTLS device CA", "CA common `NAME`")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "dir", *dir); err != nil {
		return err
	}
	t, err := keyTypeFlag(*kt)
	if err != nil {
		return err
	}
	if *days <= 0 {
		return fmt.Errorf("--days %d: must be positive", *days)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	ca, err := pki.NewCA(*cn, t, time.Duration(*days)*day)
	if err != nil {
		return err
	}
	crt, key := absPath(filepath.Join(*dir, pki.CACertName)), absPath(filepath.Join(*dir, pki.CAKeyName))
	if err := ca.Save(crt, key, *force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA %q (%s) valid until %s\n  certificate: %s\n  key:         %s (keep it offline)\n",
		*cn, t, ca.Cert.NotAfter.UTC().Format(time.DateOnly), crt, key)
	return nil
}

// listFlag collects a repeatable flag that also takes comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func pkiServer(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki server", "Issue the server (ambassador) certificate: DIR/server.crt and DIR/server.key.", stdout, stderr)
	dir := fs.String("dir", "", "CA `DIR` (from pki init); the certificate is written there (required)")
	var dns, ips listFlag
	fs.Var(&dns, "dns", "DNS `NAME`s the certificate covers (repeatable or comma-separated; required)")
	fs.Var(&ips, "ip", "`IP` addresses the certificate covers (repeatable or comma-separated)")
	kt := fs.String("key-type", "ecdsa-p256", keyTypeUsage)
	days := fs.Int("days", 730, "validity in `DAYS`")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "dir", *dir); err != nil {
		return err
	}
	if len(dns) == 0 {
		return fmt.Errorf("--dns is required: the names devices use in ServerURL, e.g. --dns mender.example.com")
	}
	t, err := keyTypeFlag(*kt)
	if err != nil {
		return err
	}
	var ipAddrs []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q: not an IP address", s)
		}
		ipAddrs = append(ipAddrs, ip)
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return err
	}
	crtPath, keyPath := absPath(filepath.Join(*dir, "server.crt")), absPath(filepath.Join(*dir, "server.key"))
	if err := refuseExisting(*force, crtPath, keyPath); err != nil {
		return err
	}
	key, err := pki.GenerateKey(t)
	if err != nil {
		return err
	}
	cert, err := ca.IssueServer(key.Public(), dns[0], dns, ipAddrs, time.Duration(*days)*day)
	if err != nil {
		return err
	}
	if err := writeKeyAndCert(keyPath, crtPath, key, cert); err != nil {
		return err
	}
	if err := pki.RecordIssued(*dir, ca, pki.KindServer, crtPath, cert); err != nil {
		return err
	}
	// A certificate serve made is marked so; this one is not serve's to replace.
	if err := os.Remove(filepath.Join(*dir, pki.ServerCertMarkerName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Fprintf(stdout, "server certificate for %s, serial %s, valid until %s\n  certificate: %s\n  key:         %s\n",
		strings.Join(append(dns, ips...), ", "), pki.FormatSerial(cert.SerialNumber), cert.NotAfter.UTC().Format(time.DateOnly), crtPath, keyPath)
	return nil
}

func pkiDevice(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki device", "Issue a device key and certificate signed by the CA in --dir.\n"+
		"Writes OUTDIR/mender-cert.pem, OUTDIR/mender-cert-private.pem (0600) and OUTDIR/mender.conf.fragment\n"+
		"(the HttpsClient and Security.AuthPrivateKey keys pointing at --device-path).", stdout, stderr)
	dir := fs.String("dir", "", "CA `DIR` (from pki init) (required)")
	cn := fs.String("cn", "", "device common `NAME`, e.g. its serial number (required)")
	out := fs.String("out", "", "output `DIR` (required)")
	kt := fs.String("key-type", "ecdsa-p256", keyTypeUsage)
	days := fs.Int("days", 3650, "validity in `DAYS` (factory certificates are long-lived; revoke with pki revoke)")
	devPath := fs.String("device-path", "/data/mender", "`DIR` where the files live on the device, used in the config fragment")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlags(fs, "dir", *dir, "cn", *cn, "out", *out); err != nil {
		return err
	}
	t, err := keyTypeFlag(*kt)
	if err != nil {
		return err
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	crtPath := absPath(filepath.Join(*out, "mender-cert.pem"))
	keyPath := absPath(filepath.Join(*out, "mender-cert-private.pem"))
	fragPath := absPath(filepath.Join(*out, "mender.conf.fragment"))
	if err := refuseExisting(*force, crtPath, keyPath, fragPath); err != nil {
		return err
	}
	key, err := pki.GenerateKey(t)
	if err != nil {
		return err
	}
	cert, err := ca.IssueClient(key.Public(), *cn, time.Duration(*days)*day)
	if err != nil {
		return err
	}
	if err := writeKeyAndCert(keyPath, crtPath, key, cert); err != nil {
		return err
	}
	if err := pki.RecordIssued(*dir, ca, pki.KindDevice, crtPath, cert); err != nil {
		return err
	}
	devCert := filepath.Join(*devPath, "mender-cert.pem")
	devKey := filepath.Join(*devPath, "mender-cert-private.pem")
	frag := map[string]any{
		"HttpsClient": map[string]string{"Certificate": devCert, "Key": devKey},
		"Security":    map[string]string{"AuthPrivateKey": devKey},
	}
	js, _ := json.MarshalIndent(frag, "", "  ")
	if err := atomicfile.Write(fragPath, append(js, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "device %q (%s), serial %s, valid until %s\n  certificate: %s\n  key:         %s\n  config:      %s\n",
		*cn, t, pki.FormatSerial(cert.SerialNumber), cert.NotAfter.UTC().Format(time.DateOnly), crtPath, keyPath, fragPath)
	return nil
}

func pkiSignCSR(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki sign-csr", "Sign a device CSR with the CA in --dir after checking the CSR's signature.", stdout, stderr)
	dir := fs.String("dir", "", "CA `DIR` (required)")
	csrPath := fs.String("csr", "", "CSR `FILE` (PEM) (required)")
	out := fs.String("out", "", "certificate `FILE` to write (required)")
	days := fs.Int("days", 3650, "validity in `DAYS`")
	force := fs.Bool("force", false, "overwrite an existing certificate")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlags(fs, "dir", *dir, "csr", *csrPath, "out", *out); err != nil {
		return err
	}
	data, err := os.ReadFile(*csrPath)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(data)
	if blk == nil || (blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST") {
		return fmt.Errorf("%s: no PEM CERTIFICATE REQUEST block", *csrPath)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", *csrPath, err)
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return err
	}
	if err := refuseExisting(*force, *out); err != nil {
		return err
	}
	cert, err := ca.SignCSR(csr, time.Duration(*days)*day)
	if err != nil {
		return fmt.Errorf("%s: %w", *csrPath, err)
	}
	outPath := absPath(*out)
	if err := atomicfile.Write(outPath, pki.EncodeCertsPEM(cert), 0o644); err != nil {
		return err
	}
	if err := pki.RecordIssued(*dir, ca, pki.KindDevice, outPath, cert); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed %s, serial %s, valid until %s\n  certificate: %s\n",
		cert.Subject, pki.FormatSerial(cert.SerialNumber), cert.NotAfter.UTC().Format(time.DateOnly), outPath)
	return nil
}

func pkiRevoke(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki revoke", "Revoke a certificate this CA issued: add its serial to DIR/blacklist (one hex serial a line,\n"+
		"the format of Mender's MTLS_BLACKLIST_PATH) and rewrite DIR/crl.pem signed by the CA. A serial that\n"+
		"is not in DIR/issued.json (see 'simulator pki list') is refused unless --force: a typo would\n"+
		"otherwise revoke nothing and look done.", stdout, stderr)
	dir := fs.String("dir", "", "CA `DIR` (required)")
	serial := fs.String("serial", "", "certificate serial in `HEX`, as 'simulator pki list' or 'openssl x509 -serial' print it (required)")
	force := fs.Bool("force", false, "revoke a serial this CA's index does not list (e.g. a certificate signed with openssl)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlags(fs, "dir", *dir, "serial", *serial); err != nil {
		return err
	}
	n, err := pki.ParseSerial(*serial)
	if err != nil {
		return fmt.Errorf("--serial: %w", err)
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return err
	}
	issued, err := pki.ReadIssued(*dir)
	if err != nil {
		return err
	}
	entry, known := pki.FindIssued(issued, ca, n)
	if !known && !*force {
		return fmt.Errorf("pki revoke: serial %s was not issued by the CA in %s (%s does not list it): check the serial with 'simulator pki list --dir %s', or add --force to revoke it anyway (e.g. a certificate signed with openssl)",
			pki.FormatSerial(n), *dir, absPath(filepath.Join(*dir, pki.IssuedIndexName)), *dir)
	}
	res, err := pki.Revoke(ca, absPath(filepath.Join(*dir, "blacklist")), absPath(filepath.Join(*dir, "crl.pem")), *serial)
	if err != nil {
		return err
	}
	state := "revoked"
	if !res.Added {
		state = "already revoked"
	}
	what := "(not in this CA's index; --force)"
	if known {
		what = "(" + entry.Subject + ")"
	}
	fmt.Fprintf(stdout, "serial %s %s %s; %d serial(s) in %s\n", res.Serial, what, state, res.Count, res.BlacklistPath)
	if res.NoCRL != "" {
		fmt.Fprintf(stdout, "no CRL written: %s\n", res.NoCRL)
	} else {
		fmt.Fprintf(stdout, "CRL #%d written to %s\n", res.CRLNumber, res.CRLPath)
	}
	return nil
}

func pkiList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pki list", "List the certificates the CA in --dir issued (DIR/issued.json, written by pki server, pki device,\n"+
		"pki sign-csr and serve) with their state: revoked (in DIR/blacklist), expired or valid.", stdout, stderr)
	dir := fs.String("dir", "", "CA `DIR` (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "dir", *dir); err != nil {
		return err
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return err
	}
	all, err := pki.ReadIssued(*dir)
	if err != nil {
		return err
	}
	revoked, err := pki.ReadBlacklist(filepath.Join(*dir, "blacklist"))
	if err != nil {
		return err
	}
	isRevoked := map[string]bool{}
	for _, n := range revoked {
		isRevoked[pki.FormatSerial(n)] = true
	}
	mine := pki.IssuedBy(all, ca)
	fmt.Fprintf(stdout, "CA %q (%s): %d certificate(s) issued\n", ca.Cert.Subject.CommonName, absPath(filepath.Join(*dir, pki.IssuedIndexName)), len(mine))
	if len(mine) > 0 {
		now := time.Now()
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SERIAL\tSTATE\tNOT AFTER\tKIND\tSUBJECT")
		for _, e := range mine {
			state := "valid"
			switch {
			case isRevoked[e.Serial]:
				state = "revoked"
			case now.After(e.NotAfter):
				state = "expired"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Serial, state, e.NotAfter.UTC().Format(time.DateOnly), e.Kind, e.Subject)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if other := len(all) - len(mine); other > 0 {
		fmt.Fprintf(stdout, "(%d entries of an earlier CA in this directory not shown)\n", other)
	}
	return nil
}

func requireFlag(fs interface{ Name() string }, name, v string) error {
	if v == "" {
		return fmt.Errorf("%s: --%s is required (see simulator %s --help)", fs.Name(), name, fs.Name())
	}
	return nil
}

// requireFlags checks name, value pairs in order.
func requireFlags(fs interface{ Name() string }, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := requireFlag(fs, pairs[i], pairs[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: %w (use --force to overwrite)", p, atomicfile.ErrExists)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeKeyAndCert writes the private key (0600) and the certificate, each
// atomically; the key first, so a certificate never exists without its key.
func writeKeyAndCert(keyPath, crtPath string, key crypto.Signer, cert *x509.Certificate) error {
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(crtPath, pki.EncodeCertsPEM(cert), 0o644)
}
