package keystore

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Key is a private key opened by Open, with its certificate chain when one
// was configured. It is a crypto.Signer and a crypto.MessageSigner. All
// methods are safe for concurrent use. A file key holds no open file or
// device; Close only makes later signing fail with ErrClosed. A TPM key
// holds the TPM it opened (see TPM for when that keeps the device open)
// until Close; with Options.TPM it holds nothing of its own.
type Key struct {
	ref      string
	signer   crypto.Signer
	closer   io.Closer // releases what Open opened for the key; nil for file keys
	certFile string
	now      func() time.Time
	log      *slog.Logger
	closed   atomic.Bool

	mu          sync.Mutex // guards the fields below
	chain       []*x509.Certificate
	certStat    fs.FileInfo // of the certificate file last read (or tried)
	lastCheck   time.Time   // when the certificate file was last stat'ed
	statFailing bool        // the last stat failed and was logged
}

var (
	_ crypto.Signer        = (*Key)(nil)
	_ crypto.MessageSigner = (*Key)(nil)
)

// Public returns the public key.
func (k *Key) Public() crypto.PublicKey { return k.signer.Public() }

// Sign signs digest with the private key, as crypto.Signer does.
func (k *Key) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if k.closed.Load() {
		return nil, fmt.Errorf("sign with %s: %w", k.ref, ErrClosed)
	}
	return k.signer.Sign(rand, digest, opts)
}

// SignMessage signs msg, hashing it first with opts.HashFunc() unless that
// is zero (Ed25519 signs the message itself). When the underlying signer is
// a crypto.MessageSigner the call is forwarded to it unchanged.
func (k *Key) SignMessage(rand io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	if k.closed.Load() {
		return nil, fmt.Errorf("sign with %s: %w", k.ref, ErrClosed)
	}
	if ms, ok := k.signer.(crypto.MessageSigner); ok {
		return ms.SignMessage(rand, msg, opts)
	}
	if h := opts.HashFunc(); h != 0 {
		if !h.Available() {
			return nil, fmt.Errorf("sign with %s: %w: hash %v is not available", k.ref, ErrUnsupported, h)
		}
		hh := h.New()
		hh.Write(msg)
		msg = hh.Sum(nil)
	}
	return k.signer.Sign(rand, msg, opts)
}

// Ref returns the reference the key was opened with.
func (k *Key) Ref() string { return k.ref }

// Fingerprint returns menderapi.Fingerprint of the public key: a safe name
// for the key in logs.
func (k *Key) Fingerprint() string { return menderapi.Fingerprint(k.signer.Public()) }

// Close marks the key closed; later Sign, SignMessage and TLSCertificate
// calls fail with ErrClosed. For a TPM key it also closes the TPM that Open
// opened for it. It is idempotent; only the first call can return an error.
func (k *Key) Close() error {
	if k.closed.Swap(true) || k.closer == nil {
		return nil
	}
	return k.closer.Close()
}

// CertificateChain returns the certificate chain, leaf first, or nil when
// no certificate file was configured.
//
// It re-stats the certificate file at most once per second (by the
// Options.Now clock) and, when the file was replaced or its modification
// time or size changed, reloads it. A reloaded chain is used only when it
// parses, its leaf belongs to the private key and every certificate is
// valid now; otherwise the previous chain stays in use and one warning per
// change is logged. The TLS client calls this at each handshake, which is
// how a replaced certificate is used without a restart.
func (k *Key) CertificateChain() []*x509.Certificate {
	if k.certFile == "" {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if now.Sub(k.lastCheck) >= reloadInterval || now.Before(k.lastCheck) {
		k.lastCheck = now
		k.reloadIfChanged()
	}
	return slices.Clone(k.chain)
}

// reloadIfChanged is called with k.mu held.
func (k *Key) reloadIfChanged() {
	fi, err := os.Stat(k.certFile)
	if err != nil {
		if !k.statFailing {
			k.log.Warn("cannot check certificate file, keeping the loaded certificate",
				"cert_file", k.certFile, "err", err)
			k.statFailing = true
		}
		return
	}
	k.statFailing = false
	if sameStat(fi, k.certStat) {
		return
	}
	st, chain, err := k.loadChain()
	if st == nil {
		st = fi
	}
	k.certStat = st
	if err != nil {
		k.log.Warn("ignoring changed certificate file, keeping the loaded certificate",
			"cert_file", k.certFile, "fingerprint", k.Fingerprint(), "err", err)
		return
	}
	k.chain = chain
	k.log.Info("reloaded certificate", "cert_file", k.certFile,
		"cert_fingerprint", pki.CertFingerprint(chain[0]), "not_after", chain[0].NotAfter)
}

func sameStat(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) &&
		a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// loadChain reads the certificate file and checks it against the key and
// the clock. It returns the file's stat even when the content is rejected.
func (k *Key) loadChain() (fs.FileInfo, []*x509.Certificate, error) {
	f, err := os.Open(k.certFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("open certificate: %w: %s does not exist: check the certificate path (%w)", ErrNotFound, k.certFile, err)
		}
		return nil, nil, fmt.Errorf("open certificate: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("open certificate: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return st, nil, fmt.Errorf("open certificate: %w", err)
	}
	chain, err := pki.ParseCertsPEM(data)
	if err != nil && !hasPEMBlock(data, isCertificateType) && hasPEMBlock(data, isPrivateKeyType) {
		return st, nil, fmt.Errorf("open certificate %s: %w: the file holds a private key, not a certificate: point the certificate path at the key's certificate (PEM CERTIFICATE)", k.certFile, err)
	}
	if err != nil {
		return st, nil, fmt.Errorf("open certificate %s: %w: want PEM certificates, the key's own first", k.certFile, err)
	}
	if err := k.checkChain(chain); err != nil {
		return st, nil, err
	}
	return st, chain, nil
}

// checkChain verifies that the leaf belongs to the key and that every
// certificate is valid at k.now().
func (k *Key) checkChain(chain []*x509.Certificate) error {
	leaf := chain[0]
	if !menderapi.PublicKeysEqual(leaf.PublicKey, k.signer.Public()) {
		return fmt.Errorf("open certificate %s: %w: the certificate (subject %q) is for key %s but the private key %s is %s: use the certificate issued for this key, first in the file",
			k.certFile, ErrKeyMismatch, leaf.Subject.CommonName, menderapi.Fingerprint(leaf.PublicKey), k.ref, k.Fingerprint())
	}
	now := k.now()
	for i, c := range chain {
		switch {
		case now.Before(c.NotBefore):
			return fmt.Errorf("open certificate %s: %w: %s is valid from %s, but it is now %s: check the system clock",
				k.certFile, ErrNotYetValid, describe(i, c), c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		case now.After(c.NotAfter):
			return fmt.Errorf("open certificate %s: %w: %s expired on %s (it is now %s): renew it",
				k.certFile, ErrExpired, describe(i, c), c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// describe names certificate i of a chain for messages.
func describe(i int, c *x509.Certificate) string {
	if i == 0 {
		return fmt.Sprintf("certificate %q", c.Subject.CommonName)
	}
	return fmt.Sprintf("intermediate certificate %q", c.Subject.CommonName)
}

// Warnings returns problems that do not stop the key from working yet, for
// the caller to log at start-up and periodically: a certificate that
// expires within ExpiryWarning (e.g. "certificate "device-1" in
// /data/device.crt expires in 12 days (2026-12-04): renew it"), one that has
// expired since it was loaded, and a leaf whose extended key usage does not
// allow TLS client authentication. Nil means nothing to report.
func (k *Key) Warnings() []string {
	chain := k.CertificateChain()
	now := k.now()
	var w []string
	for i, c := range chain {
		left := c.NotAfter.Sub(now)
		date := c.NotAfter.UTC().Format(time.DateOnly)
		switch {
		case left < 0:
			w = append(w, fmt.Sprintf("%s in %s expired on %s: renew it", describe(i, c), k.certFile, date))
		case left < 24*time.Hour:
			w = append(w, fmt.Sprintf("%s in %s expires in less than a day (%s): renew it", describe(i, c), k.certFile, date))
		case left <= ExpiryWarning:
			w = append(w, fmt.Sprintf("%s in %s expires in %d days (%s): renew it", describe(i, c), k.certFile, int(left/(24*time.Hour)), date))
		}
	}
	if len(chain) > 0 {
		leaf := chain[0]
		if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) &&
			!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
			w = append(w, fmt.Sprintf("%s in %s does not allow TLS client authentication (no clientAuth extended key usage): an mTLS server will reject it; issue a client certificate",
				describe(0, leaf), k.certFile))
		}
	}
	return w
}

// TLSCertificate returns the current chain (see CertificateChain) with the
// key as its private key, for tls.Config.GetClientCertificate. It fails
// with ErrNotFound when no certificate file was configured and with
// ErrClosed after Close.
func (k *Key) TLSCertificate() (*tls.Certificate, error) {
	if k.closed.Load() {
		return nil, fmt.Errorf("tls certificate for %s: %w", k.ref, ErrClosed)
	}
	chain := k.CertificateChain()
	if len(chain) == 0 {
		return nil, fmt.Errorf("tls certificate for %s: %w: no certificate file is configured for this key: set the certificate path", k.ref, ErrNotFound)
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	return &tls.Certificate{Certificate: raw, PrivateKey: k, Leaf: chain[0]}, nil
}
