package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Device is the board's side of the dialogue.
type Device struct {
	// Identity is sent in hello (required).
	Identity map[string][]string
	// Key is the device key; its private part never leaves it (required).
	Key crypto.Signer
	// KeyInTPM is reported in hello.
	KeyInTPM bool
	// Current is the certificate chain the device holds for Key (leaf
	// first), nil when none; it is offered in hello only while valid.
	Current []*x509.Certificate
	// Store writes the verified chain (leaf first, without the CA) and
	// whatever configuration it needs, atomically; it is also called for
	// Current when the station confirms it, so an interrupted earlier run
	// is finished. Required.
	Store func(ctx context.Context, chain []*x509.Certificate, ca *x509.Certificate, station string) error
	// Link tunes the link; Station is forced off.
	Link LinkOptions
	// StepTimeout bounds each wait for the station; 0 means DefaultStepTimeout.
	StepTimeout time.Duration
	// Attempts is how often the dialogue starts again when the station
	// restarted (it answers with a reset); 0 means 3.
	Attempts int
	// Now is the clock for validity checks; nil means time.Now.
	Now func() time.Time
	// Log receives progress at debug level and restarts at info; nil discards.
	Log *slog.Logger
}

// DeviceResult is what a successful dialogue did.
type DeviceResult struct {
	Station     string
	CN          string
	Serial      string // hex
	Fingerprint string // of the certificate
	NotAfter    time.Time
	// Reused is true when the certificate the device held was confirmed,
	// false when a new one was stored.
	Reused bool
	// Note is what the station did after the device stored the certificate
	// (e.g. "preauthorized"); "" when it said nothing.
	Note string
	// Stats are the link's counters.
	Stats Stats
}

func (d *Device) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Device) log() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Run provisions the device over rw. It never stores a certificate that
// does not chain to the CA the station sent, does not belong to Key or is
// not valid now. The link stops when Run returns; closing rw (which ends
// the reading goroutine) is the caller's.
func (d *Device) Run(ctx context.Context, rw io.ReadWriter) (DeviceResult, error) {
	if d.Key == nil || d.Store == nil || len(d.Identity) == 0 {
		return DeviceResult{}, errors.New("provision: Device needs Key, Store and Identity")
	}
	lo := d.Link
	lo.Station = false
	link := NewLink(rw, lo)
	defer link.Close()
	attempts := d.Attempts
	if attempts <= 0 {
		attempts = 3
	}
	for attempt := 1; ; attempt++ {
		link.NewSession()
		res, err := d.dialogue(ctx, link)
		res.Stats = link.Stats()
		if err == nil {
			return res, nil
		}
		if errors.Is(err, ErrReset) && attempt < attempts && ctx.Err() == nil {
			d.log().Info("the station restarted; starting again", "attempt", attempt+1)
			continue
		}
		return res, explainLink(err, res.Stats, "station")
	}
}

// explainLink turns a timeout into the likely cause, from what arrived.
func explainLink(err error, st Stats, peer string) error {
	if !errors.Is(err, ErrTimeout) {
		return err
	}
	switch {
	case st.FramesIn == 0 && st.BytesIn == 0:
		return fmt.Errorf("%w: nothing arrived from the %s: check that it runs on the other end, the cable and the wiring (TX to RX)", err, peer)
	case st.FramesIn == 0:
		return fmt.Errorf("%w: %d bytes arrived from the %s but no valid frame: check that both sides use the same baud rate (--baud) and 8N1", err, st.BytesIn, peer)
	case st.BadFrames > 0:
		return fmt.Errorf("%w: the line is noisy (%d corrupt frames, %d retransmissions): check the cable and lower the baud rate", err, st.BadFrames, st.Retransmits)
	}
	return err
}

func (d *Device) dialogue(ctx context.Context, link *Link) (DeviceResult, error) {
	var res DeviceResult
	c := &conv{link: link, codec: LiteCodec{}, step: d.StepTimeout, peer: "station"}
	if c.step <= 0 {
		c.step = DefaultStepTimeout
	}
	pubDER, err := x509.MarshalPKIXPublicKey(d.Key.Public())
	if err != nil {
		return res, fmt.Errorf("device key: %w", err)
	}
	hello := Hello{Versions: []int{Version}, Identity: d.Identity, PublicKey: pubDER, KeyInTPM: d.KeyInTPM}
	if d.currentValid() {
		for _, c := range d.Current {
			hello.Cert = append(hello.Cert, c.Raw)
		}
	}
	d.log().Debug("sending hello", "session", fmt.Sprintf("%08x", link.Session()), "has_certificate", hello.Cert != nil)
	if err := c.send(ctx, TypeHello, hello); err != nil {
		return res, err
	}
	var dec Decision
	if _, err := c.recv(ctx, map[string]any{TypeDecision: &dec}); err != nil {
		if isVersion(err) {
			c.sendError(ctx, CodeVersion, err.Error())
		}
		return res, err
	}
	res.Station = dec.Station
	var chain []*x509.Certificate
	var caCert *x509.Certificate
	switch dec.Action {
	case ActionRefuse:
		return res, &PeerError{Side: "station", Code: CodeRefused, Text: "refused this device: " + dec.Reason}
	case ActionHave:
		if hello.Cert == nil {
			c.sendError(ctx, CodeProtocol, "the station confirmed a certificate the device did not offer")
			return res, fmt.Errorf("%w: the station confirmed a certificate this device does not hold", ErrMessage)
		}
		chain, res.Reused = d.Current, true
	case ActionCSR:
		if dec.CN == "" {
			c.sendError(ctx, CodeProtocol, "the decision names no common name")
			return res, fmt.Errorf("%w: the station asked for a CSR without a common name", ErrMessage)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: dec.CN}}, d.Key)
		if err != nil {
			c.sendError(ctx, CodeCSR, "the device could not sign its CSR: "+err.Error())
			return res, fmt.Errorf("create CSR for CN=%s: %w", dec.CN, err)
		}
		if err := c.send(ctx, TypeCSR, CSR{DER: der}); err != nil {
			return res, err
		}
		var cm Cert
		if _, err := c.recv(ctx, map[string]any{TypeCert: &cm}); err != nil {
			return res, err
		}
		if chain, caCert, err = d.verify(cm, dec.CN); err != nil {
			c.sendError(ctx, CodeCert, err.Error())
			return res, err
		}
	default:
		c.sendError(ctx, CodeProtocol, fmt.Sprintf("unknown decision %q", dec.Action))
		return res, fmt.Errorf("%w: unknown decision %q", ErrMessage, dec.Action)
	}
	if err := d.Store(ctx, chain, caCert, dec.Station); err != nil {
		c.sendError(ctx, CodeStorage, "the device could not store the certificate: "+err.Error())
		return res, err
	}
	// Should the station restart now, the next hello offers this chain.
	d.Current = chain
	leaf := chain[0]
	res.CN, res.Serial, res.Fingerprint, res.NotAfter = leaf.Subject.CommonName, pki.FormatSerial(leaf.SerialNumber), pki.CertFingerprint(leaf), leaf.NotAfter
	if err := c.send(ctx, TypeStored, Stored{Fingerprint: res.Fingerprint}); err != nil {
		return res, fmt.Errorf("the certificate is stored, but the station did not hear it: run provision again to let it commit its records: %w", err)
	}
	var done Done
	if _, err := c.recv(ctx, map[string]any{TypeDone: &done}); err != nil {
		return res, fmt.Errorf("the certificate is stored, but the station did not confirm its records: run provision again: %w", err)
	}
	res.Note = done.Note
	return res, nil
}

// currentValid reports whether Current is a chain for Key valid now.
func (d *Device) currentValid() bool {
	if len(d.Current) == 0 {
		return false
	}
	leaf, now := d.Current[0], d.now()
	return samePublicKey(leaf.PublicKey, d.Key.Public()) && now.After(leaf.NotBefore) && now.Before(leaf.NotAfter)
}

// verify checks the station's certificate: it parses, belongs to Key,
// carries the CN asked for, is valid now and chains to the CA sent.
func (d *Device) verify(cm Cert, cn string) ([]*x509.Certificate, *x509.Certificate, error) {
	if len(cm.Chain) == 0 || len(cm.CA) == 0 {
		return nil, nil, errors.New("the station sent no certificate or no CA")
	}
	chain := make([]*x509.Certificate, 0, len(cm.Chain))
	for i, der := range cm.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %d from the station does not parse: %w", i+1, err)
		}
		chain = append(chain, c)
	}
	ca, err := x509.ParseCertificate(cm.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("the CA certificate from the station does not parse: %w", err)
	}
	leaf := chain[0]
	if !samePublicKey(leaf.PublicKey, d.Key.Public()) {
		return nil, nil, errors.New("the certificate from the station does not match the device key: nothing was stored")
	}
	if leaf.Subject.CommonName != cn {
		return nil, nil, fmt.Errorf("the certificate from the station is for CN=%s, not the CN=%s it asked for: nothing was stored", leaf.Subject.CommonName, cn)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: d.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, nil, fmt.Errorf("the certificate from the station does not verify against its CA %q (check the device clock): %w", ca.Subject.CommonName, err)
	}
	return chain, ca, nil
}

// samePublicKey compares two public keys by their PKIX encoding.
func samePublicKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}
