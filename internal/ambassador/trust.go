package ambassador

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"slices"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Reasons a client certificate is refused; they wrap into the errors the
// TLS handshake and the per-request check return.
var (
	// ErrNoClientCert means the request carries no verified client certificate.
	ErrNoClientCert = errors.New("client certificate required")
	// ErrCertRevoked means the certificate's serial is blacklisted or listed
	// in a CRL.
	ErrCertRevoked = errors.New("client certificate revoked")
	// ErrCertUntrusted means the certificate does not chain to a CA of the
	// current bundle (for example its CA was removed by a reload).
	ErrCertUntrusted = errors.New("client certificate not issued by a trusted CA")
	// ErrCertNotValidNow means the certificate is expired or not yet valid.
	ErrCertNotValidNow = errors.New("client certificate expired or not yet valid")
	// ErrNotClientAuth means the certificate lacks the client-auth extended
	// key usage.
	ErrNotClientAuth = errors.New("client certificate lacks the client authentication extended key usage")
)

// Metric reason labels of mtls_handshake_failures_total.
const (
	reasonNoCertificate    = "no_certificate"
	reasonUnknownAuthority = "unknown_authority"
	reasonNotValidNow      = "expired"
	reasonNotClientAuth    = "not_client_auth"
	reasonRevoked          = "revoked"
	reasonOther            = "other"
)

func handshakeReasons() []string {
	return []string{reasonNoCertificate, reasonUnknownAuthority, reasonNotValidNow, reasonNotClientAuth,
		reasonRevoked, reasonOther}
}

// trustState is an immutable snapshot of the client CA bundle and the
// revocation data. Reload replaces the whole snapshot atomically.
type trustState struct {
	pool      *x509.CertPool
	cas       []*x509.Certificate
	caSet     map[[32]byte]struct{} // SHA-256 of each CA's DER
	blacklist map[string]struct{}   // serialKey of blacklisted serials
	crl       map[string]map[string]struct{}
}

// serialKey is the canonical text of a serial: lowercase hex, no leading zeros.
func serialKey(n *big.Int) string { return n.Text(16) }

func (st *trustState) trustsRoot(c *x509.Certificate) bool {
	_, ok := st.caSet[sha256.Sum256(c.Raw)]
	return ok
}

// revokedByCRL reports whether a CRL of c's issuer lists c's serial.
func (st *trustState) revokedByCRL(c *x509.Certificate) bool {
	set := st.crl[string(c.RawIssuer)]
	_, ok := set[serialKey(c.SerialNumber)]
	return ok
}

// loadTrust reads every trust file. With prev == nil (New) any failure is
// returned; with prev set (reload) a group that fails to load keeps its
// previous state and the failures are returned joined, alongside the new
// state.
func loadTrust(o Options, prev *trustState, now time.Time, log *slog.Logger) (*trustState, error) {
	next := &trustState{}
	if prev != nil {
		*next = *prev
	}
	var errs []error

	cas, err := loadCABundle(o.ClientCAFiles, log)
	if err != nil {
		errs = append(errs, err)
	} else {
		next.cas = cas
		next.pool = x509.NewCertPool()
		next.caSet = make(map[[32]byte]struct{}, len(cas))
		for _, c := range cas {
			next.pool.AddCert(c)
			next.caSet[sha256.Sum256(c.Raw)] = struct{}{}
		}
	}
	if prev == nil && err != nil {
		return nil, err
	}

	if o.BlacklistFile == "" {
		next.blacklist = nil
	} else if bl, err := loadBlacklist(o.BlacklistFile); err != nil {
		errs = append(errs, err)
	} else {
		next.blacklist = bl
	}

	if len(o.CRLFiles) == 0 {
		next.crl = nil
	} else if crl, err := loadCRLs(o.CRLFiles, next.cas, now, log); err != nil {
		errs = append(errs, err)
	} else {
		next.crl = crl
	}
	if prev == nil && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return next, errors.Join(errs...)
}

// loadCABundle reads the client CA files: PEM files with one or more
// CERTIFICATE blocks, or a single DER certificate. Only CA certificates
// (pki.IsCACert) become trust anchors: basic constraints CA:TRUE, or a
// self-signed version-1 root, which OpenSSL treats as a CA and Mender's mTLS
// guide makes (`openssl req -new -x509 -config ca.conf`). Any other
// certificate, a version-1 leaf from `openssl x509 -req` included, is
// logged and ignored: crypto/x509 would otherwise let a version-1 leaf of
// the bundle sign client certificates.
func loadCABundle(files []string, log *slog.Logger) ([]*x509.Certificate, error) {
	var all []*x509.Certificate
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read client CA file %q: %w", f, err)
		}
		certs, err := parseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("client CA file %q: %w", f, err)
		}
		for i, c := range certs {
			if !pki.IsCACert(c) {
				log.Warn("client CA file holds a certificate that is not a CA (no basic constraints CA:TRUE, not a self-signed version-1 root); ignored",
					"file", f, "certificate", i+1, "subject", c.Subject.String())
				continue
			}
			all = append(all, c)
		}
	}
	if len(all) == 0 && len(files) > 0 {
		return nil, fmt.Errorf("client CA files %q hold no CA certificate (basic constraints CA:TRUE or a self-signed version-1 root): give the CA that signs the device certificates, not a device or server certificate", files)
	}
	return all, nil
}

func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q; only CERTIFICATE blocks belong in a CA bundle", n, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, errors.New("no certificate found; give PEM CERTIFICATE blocks or one DER certificate")
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// loadBlacklist reads a serial blacklist file (see Options.BlacklistFile).
func loadBlacklist(file string) (map[string]struct{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read blacklist file %q: %w", file, err)
	}
	bl, err := parseBlacklist(data)
	if err != nil {
		return nil, fmt.Errorf("blacklist file %q: %w", file, err)
	}
	return bl, nil
}

// parseBlacklist parses the blacklist file (pki.ParseBlacklist) into
// serialKey form.
func parseBlacklist(data []byte) (map[string]struct{}, error) {
	list, err := pki.ParseBlacklist(data)
	if err != nil {
		return nil, err
	}
	bl := make(map[string]struct{}, len(list))
	for _, n := range list {
		bl[serialKey(n)] = struct{}{}
	}
	return bl, nil
}

// loadCRLs reads PEM ("X509 CRL" blocks) or DER CRL files, verifies each
// against one of cas and returns the revoked serials by issuer.
func loadCRLs(files []string, cas []*x509.Certificate, now time.Time, log *slog.Logger) (map[string]map[string]struct{}, error) {
	out := make(map[string]map[string]struct{})
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CRL file %q: %w", f, err)
		}
		ders, err := crlDERs(data)
		if err != nil {
			return nil, fmt.Errorf("CRL file %q: %w", f, err)
		}
		for i, der := range ders {
			crl, err := x509.ParseRevocationList(der)
			if err != nil {
				return nil, fmt.Errorf("CRL file %q: parse CRL %d: %w", f, i+1, err)
			}
			if !crlSignedByOneOf(crl, cas) {
				return nil, fmt.Errorf("CRL file %q: CRL %d (issuer %q) is not signed by any client CA; add its CA to ClientCAFiles",
					f, i+1, crl.Issuer.String())
			}
			if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
				log.Warn("CRL is past its next update; still applying it", "file", f, "issuer", crl.Issuer.String(),
					"next_update", crl.NextUpdate)
			}
			set := out[string(crl.RawIssuer)]
			if set == nil {
				set = make(map[string]struct{})
				out[string(crl.RawIssuer)] = set
			}
			for _, e := range crl.RevokedCertificateEntries {
				if e.SerialNumber != nil {
					set[serialKey(e.SerialNumber)] = struct{}{}
				}
			}
		}
	}
	return out, nil
}

func crlDERs(data []byte) ([][]byte, error) {
	var ders [][]byte
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q; want \"X509 CRL\"", blk.Type)
		}
		ders = append(ders, blk.Bytes)
	}
	if len(ders) == 0 {
		ders = append(ders, data) // DER
	}
	return ders, nil
}

func crlSignedByOneOf(crl *x509.RevocationList, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// fileStamp is what the reload loop compares to notice a changed file.
type fileStamp struct {
	path    string
	size    int64
	modTime time.Time
	missing bool
}

func (a *Ambassador) watchedFiles() []string {
	files := slices.Clone(a.opts.ClientCAFiles)
	if a.opts.BlacklistFile != "" {
		files = append(files, a.opts.BlacklistFile)
	}
	return append(files, a.opts.CRLFiles...)
}

func stampFiles(files []string) []fileStamp {
	out := make([]fileStamp, len(files))
	for i, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			out[i] = fileStamp{path: f, missing: true}
			continue
		}
		out[i] = fileStamp{path: f, size: fi.Size(), modTime: fi.ModTime()}
	}
	return out
}

func stampsEqual(a, b []fileStamp) bool {
	return slices.EqualFunc(a, b, func(x, y fileStamp) bool {
		return x.path == y.path && x.size == y.size && x.modTime.Equal(y.modTime) && x.missing == y.missing
	})
}

// Reload re-reads the client CA bundle, the blacklist and the CRLs now. A
// file group (CAs, blacklist, CRLs) that fails to load keeps its previous
// state; the failures are logged and returned joined. New handshakes use the
// new state at once; open connections are kept, and their next request is
// checked against the new blacklist and CRLs. Upgraded (websocket)
// connections whose certificate the new state refuses are closed.
func (a *Ambassador) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	return a.reloadLocked()
}

func (a *Ambassador) reloadLocked() error {
	stamps := stampFiles(a.watchedFiles()) // before reading: a later change triggers another reload
	next, err := loadTrust(a.opts, a.trust.Load(), a.now(), a.log)
	a.trust.Store(next)
	a.closeRevokedUpgrades(next) // tunnels bypass the per-request check
	a.stamps = stamps
	a.stats.reloads.Add(1)
	if err != nil {
		a.stats.reloadFailures.Add(1)
		a.log.Error("reload trust files; keeping the previous state of the failed files", "error", err)
		return err
	}
	a.log.Info("trust files reloaded", "client_cas", len(next.cas), "blacklisted", len(next.blacklist),
		"crl_issuers", len(next.crl))
	return nil
}

// reloadLoop polls the trust files every ReloadInterval and reloads when a
// stamp changed.
func (a *Ambassador) reloadLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.reloadMu.Lock()
		if !stampsEqual(stampFiles(a.watchedFiles()), a.stamps) {
			_ = a.reloadLocked() // logged inside
		}
		a.reloadMu.Unlock()
	}
}

// TLSConfig returns the device-facing TLS configuration. Every handshake
// gets a fresh configuration from GetConfigForClient with the current client
// CA bundle, so reloads apply to new handshakes at once. Client certificates
// are required and verified (tls.RequireAndVerifyClientCert); in addition
// VerifyConnection refuses blacklisted or CRL-revoked certificates and
// certificates without the client-auth extended key usage. ALPN offers
// HTTP/1.1 only, which every Mender client speaks and which works with any
// http.Server setup.
func (a *Ambassador) TLSConfig() *tls.Config {
	cfg := a.handshakeConfig(a.trust.Load())
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return a.handshakeConfig(a.trust.Load()), nil
	}
	return cfg
}

func (a *Ambassador) handshakeConfig(st *trustState) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{a.serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    st.pool,
		MinVersion:   a.minVersion,
		NextProtos:   []string{"http/1.1"},
		Time:         a.now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			reason, err := a.checkPeer(a.trust.Load(), cs.PeerCertificates, cs.VerifiedChains)
			if err != nil {
				a.metrics.handshakeFailure(reason)
				a.stats.handshakeFailures.Add(1)
				if len(cs.PeerCertificates) > 0 {
					leaf := cs.PeerCertificates[0]
					a.logLimited(a.log.Info, "rejected/"+reason, "tls handshake rejected", "reason", reason,
						"serial", serialKey(leaf.SerialNumber), "subject", leaf.Subject.String(), "error", err)
				}
				return fmt.Errorf("%s: %w", ownRejectionMarker, err)
			}
			return nil
		},
	}
}

// checkPeer applies the ambassador's policy to a client certificate chain:
// validity at Now, client-auth EKU, a chain to a CA of st (re-verified when
// chains is empty), and no blacklist or CRL entry. It returns the metric
// reason with the error.
func (a *Ambassador) checkPeer(st *trustState, certs []*x509.Certificate, chains [][]*x509.Certificate) (string, error) {
	if len(certs) == 0 {
		return reasonNoCertificate, ErrNoClientCert
	}
	leaf := certs[0]
	now := a.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return reasonNotValidNow, fmt.Errorf("%w (valid %s to %s)", ErrCertNotValidNow,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if !hasClientAuthEKU(leaf) {
		return reasonNotClientAuth, ErrNotClientAuth
	}
	if len(chains) == 0 {
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		var err error
		chains, err = leaf.Verify(x509.VerifyOptions{Roots: st.pool, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return reasonUnknownAuthority, fmt.Errorf("%w: %v", ErrCertUntrusted, err)
		}
	}
	trusted := slices.ContainsFunc(chains, func(ch []*x509.Certificate) bool {
		return len(ch) > 0 && st.trustsRoot(ch[len(ch)-1])
	})
	if !trusted {
		return reasonUnknownAuthority, fmt.Errorf("%w: its CA is no longer in the bundle", ErrCertUntrusted)
	}
	if _, ok := st.blacklist[serialKey(leaf.SerialNumber)]; ok {
		return reasonRevoked, fmt.Errorf("%w: serial %s is blacklisted", ErrCertRevoked, serialKey(leaf.SerialNumber))
	}
	for _, ch := range chains {
		for _, c := range ch[:max(len(ch)-1, 0)] { // every certificate below the trust anchor
			if st.revokedByCRL(c) {
				return reasonRevoked, fmt.Errorf("%w: serial %s is listed in a CRL of %q", ErrCertRevoked,
					serialKey(c.SerialNumber), c.Issuer.String())
			}
		}
	}
	return "", nil
}

// hasClientAuthEKU reports whether c may be used for TLS client auth: it
// has no extended key usage extension at all (as crypto/x509 reads it, and
// as `openssl x509 -req` in Mender's mTLS guide issues device
// certificates), or the extension lists clientAuth or anyExtendedKeyUsage.
// A server-auth-only certificate is refused.
func hasClientAuthEKU(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	return slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny)
}
