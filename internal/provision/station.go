package provision

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// DefaultCNTemplate names a device after its identity's serial, else mac.
const DefaultCNTemplate = "dev-{serial}"

// Station is the factory side. One Station serves several ports at once;
// each port has its own Link.
type Station struct {
	// Name names the station in the records and to the device.
	Name string
	// CA signs the certificates (required).
	CA *pki.CA
	// CNTemplate makes the certificate's common name from the identity:
	// {NAME} is the identity attribute NAME (its first value); "" means
	// DefaultCNTemplate.
	CNTemplate string
	// Validity of the certificates (required, positive).
	Validity time.Duration
	// Records keeps the audit trail (required).
	Records *Records
	// Commit runs after the device confirmed the certificate and the stored
	// record is written (e.g. preauthorization). Its note goes to the
	// device and the result; its error is reported in the result, but the
	// board counts as provisioned. Nil does nothing.
	Commit func(ctx context.Context, rec Record) (note string, err error)
	// StepTimeout bounds each wait for the device; 0 means DefaultStepTimeout.
	StepTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives debug progress; nil discards.
	Log *slog.Logger
	// Codec encodes and decodes the messages; nil means the device's
	// built-in [LiteCodec]. The simulator's station passes the
	// fxamacker/cbor codec of internal/provision/cborfx.
	Codec Codec
}

// BoardResult is one board's dialogue, for the station's one line a board.
type BoardResult struct {
	Port        string
	Identity    map[string][]string
	CN          string
	Serial      string
	Fingerprint string
	KeyInTPM    bool
	Reused      bool // the device's certificate (or an earlier one for its key) was used again
	Note        string
	CommitErr   error
	Duration    time.Duration
	Err         error
}

// IdentityString formats an identity as sorted key=value pairs.
func IdentityString(id map[string][]string) string {
	keys := slices.Sorted(maps.Keys(id))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+strings.Join(id[k], ","))
	}
	return strings.Join(parts, " ")
}

// CheckTemplate checks a CN template: braces pair up and name attributes.
func CheckTemplate(t string) error {
	_, err := expand(t, nil, false)
	return err
}

// CommonName expands the station's template for an identity.
func (s *Station) CommonName(id map[string][]string) (string, error) {
	t := s.CNTemplate
	if t == "" {
		t = DefaultCNTemplate
	}
	return expand(t, id, true)
}

func expand(t string, id map[string][]string, fill bool) (string, error) {
	var b strings.Builder
	for rest := t; rest != ""; {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			b.WriteString(rest)
			break
		}
		if rest[i] == '}' {
			return "", fmt.Errorf("CN template %q: a } without its {", t)
		}
		b.WriteString(rest[:i])
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("CN template %q: a { without its }", t)
		}
		name := rest[i+1 : i+j]
		if name == "" || strings.ContainsAny(name, "{ ") {
			return "", fmt.Errorf("CN template %q: %q is not an identity attribute name", t, "{"+name+"}")
		}
		if fill {
			v := id[name]
			if len(v) == 0 || strings.TrimSpace(v[0]) == "" {
				return "", fmt.Errorf("the CN template %q needs the identity attribute %q, the device sent %s", t, name, IdentityString(id))
			}
			b.WriteString(v[0])
		}
		rest = rest[i+j+1:]
	}
	cn := b.String()
	if fill && (cn == "" || len(cn) > 64) {
		return "", fmt.Errorf("the CN template %q gives %q: a common name must have 1 to 64 characters", t, cn)
	}
	return cn, nil
}

func (s *Station) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Station) codec() Codec {
	if s.Codec != nil {
		return s.Codec
	}
	return LiteCodec{}
}

func (s *Station) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.New(slog.DiscardHandler)
}

// ServeBoard waits on link (made with LinkOptions.Station) for a device to
// start a dialogue and runs it to the end. A device that restarts in the
// middle ends this dialogue with an error; its new dialogue is served by
// the next ServeBoard on the same link.
func (s *Station) ServeBoard(ctx context.Context, link *Link, port string) BoardResult {
	res := BoardResult{Port: port}
	first, err := link.Accept(ctx)
	if err != nil {
		res.Err = err
		return res
	}
	start := time.Now()
	c := &conv{link: link, codec: s.codec(), step: s.StepTimeout, peer: "device"}
	if c.step <= 0 {
		c.step = DefaultStepTimeout
	}
	err = s.dialogue(ctx, c, first, &res)
	res.Duration = time.Since(start)
	if err != nil {
		res.Err = explainLink(err, link.Stats(), "device")
	}
	return res
}

func (s *Station) dialogue(ctx context.Context, c *conv, first []byte, res *BoardResult) error {
	hello, err := decodeHello(c.codec, first)
	if err != nil {
		if isVersion(err) || errors.Is(err, ErrMessage) {
			c.sendError(ctx, CodeVersion, err.Error())
		}
		return err
	}
	res.Identity, res.KeyInTPM = hello.Identity, hello.KeyInTPM
	pub, err := x509.ParsePKIXPublicKey(hello.PublicKey)
	if err != nil {
		c.sendError(ctx, CodeProtocol, "the public key in hello does not parse")
		return fmt.Errorf("%w: the public key in hello does not parse: %w", ErrMessage, err)
	}
	refuse := func(reason string) error {
		_ = c.send(ctx, TypeDecision, Decision{Action: ActionRefuse, Reason: reason, Station: s.Name})
		return errors.New("refused: " + reason)
	}
	if len(hello.Identity) == 0 {
		return refuse("the device sent no identity")
	}
	cn, err := s.CommonName(hello.Identity)
	if err != nil {
		return refuse(err.Error())
	}
	res.CN = cn
	caFP := pki.CertFingerprint(s.CA.Cert)
	keyFP := menderapi.Fingerprint(pub)
	base := Record{Station: s.Name, Port: res.Port, Identity: hello.Identity, KeyFingerprint: keyFP, KeyInTPM: hello.KeyInTPM, CN: cn, CA: caFP}
	if pemKey, err := menderapi.MarshalPublicKeyPEM(pub); err == nil {
		base.PublicKey = pemKey
	} else {
		return refuse("unsupported device key: " + err.Error())
	}

	var leaf *x509.Certificate
	if held := s.heldCert(hello, pub, cn); held != nil {
		leaf = held
		res.Reused = true
		if err := c.send(ctx, TypeDecision, Decision{Action: ActionHave, CN: cn, Station: s.Name}); err != nil {
			return err
		}
	} else {
		if err := c.send(ctx, TypeDecision, Decision{Action: ActionCSR, CN: cn, Station: s.Name}); err != nil {
			return err
		}
		var cm CSR
		if _, err := c.recv(ctx, map[string]any{TypeCSR: &cm}); err != nil {
			return err
		}
		if leaf, err = s.issue(cm, pub, cn, base, res); err != nil {
			code := CodeCSR
			if errors.Is(err, errStation) {
				code = CodeStation
			}
			c.sendError(ctx, code, err.Error())
			return err
		}
		chain := [][]byte{leaf.Raw}
		if err := c.send(ctx, TypeCert, Cert{Chain: chain, CA: s.CA.Cert.Raw}); err != nil {
			return err
		}
	}
	res.Serial, res.Fingerprint = pki.FormatSerial(leaf.SerialNumber), pki.CertFingerprint(leaf)
	var st Stored
	if _, err := c.recv(ctx, map[string]any{TypeStored: &st}); err != nil {
		return err
	}
	if st.Fingerprint != res.Fingerprint {
		c.sendError(ctx, CodeProtocol, "the stored fingerprint is not the certificate's")
		return fmt.Errorf("the device reports storing %s, not the certificate %s", st.Fingerprint, res.Fingerprint)
	}
	rec := base
	rec.Kind, rec.CertSerial, rec.CertFingerprint, rec.NotAfter = KindStored, res.Serial, res.Fingerprint, leaf.NotAfter.UTC()
	rec.Time = s.now()
	if !s.Records.Stored(res.Fingerprint) {
		if rec, err = s.Records.Append(rec); err != nil {
			c.sendError(ctx, CodeStation, "the station could not write its records")
			return err
		}
	}
	if s.Commit != nil {
		res.Note, res.CommitErr = s.Commit(ctx, rec)
		if res.CommitErr != nil {
			res.Note = "not committed: " + res.CommitErr.Error()
		}
	}
	// The board is provisioned whether or not the last acknowledgement
	// arrives.
	if err := c.send(ctx, TypeDone, Done{Note: res.Note}); err != nil {
		s.log().Debug("the device did not acknowledge done", "port", res.Port, "error", err)
	}
	return nil
}

// errStation marks failures of the station itself (CA, records).
var errStation = errors.New("station failure")

// heldCert returns the device's own certificate when the station can
// confirm it: it belongs to the key, carries cn, chains to this CA and is
// valid for at least a tenth of the validity still.
func (s *Station) heldCert(h Hello, pub crypto.PublicKey, cn string) *x509.Certificate {
	if len(h.Cert) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(h.Cert[0])
	if err != nil || !samePublicKey(leaf.PublicKey, pub) || leaf.Subject.CommonName != cn {
		return nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.CA.Cert)
	now := s.now()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil
	}
	if leaf.NotAfter.Sub(now) < s.Validity/10 {
		return nil
	}
	return leaf
}

// issue checks the CSR and returns the certificate for its key: the one
// already issued for this key when the records hold one still valid, else a
// new one, recorded before it is returned.
func (s *Station) issue(cm CSR, pub crypto.PublicKey, cn string, base Record, res *BoardResult) (*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(cm.DER)
	if err != nil {
		return nil, fmt.Errorf("the CSR does not parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the CSR signature does not verify: %w", err)
	}
	if !samePublicKey(csr.PublicKey, pub) {
		return nil, errors.New("the CSR is for another key than the one in hello")
	}
	if got := csr.Subject.CommonName; got != cn || len(csr.Subject.Names) > 1 {
		return nil, fmt.Errorf("the CSR subject %q breaks the CN template: want exactly CN=%s", csr.Subject.String(), cn)
	}
	now := s.now()
	if prev, ok := s.Records.IssuedFor(base.KeyFingerprint, base.CA); ok {
		if c, err := x509.ParseCertificate(prev.Certificate); err == nil && c.Subject.CommonName == cn && c.NotAfter.Sub(now) >= s.Validity/10 && now.After(c.NotBefore) {
			res.Reused = true
			return c, nil
		}
	}
	leaf, err := s.CA.IssueClient(pub, cn, s.Validity)
	if err != nil {
		return nil, fmt.Errorf("%w: sign: %w", errStation, err)
	}
	rec := base
	rec.Kind, rec.CertSerial, rec.CertFingerprint, rec.NotAfter, rec.Certificate = KindIssued,
		pki.FormatSerial(leaf.SerialNumber), pki.CertFingerprint(leaf), leaf.NotAfter.UTC(), leaf.Raw
	rec.Time = now
	if _, err := s.Records.Append(rec); err != nil {
		return nil, fmt.Errorf("%w: %w", errStation, err)
	}
	return leaf, nil
}

// CertificatePEM returns the certificate of an issued record as PEM.
func (r Record) CertificatePEM() []byte {
	if len(r.Certificate) == 0 {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
}

// Serve runs board after board on rw (one port) until ctx ends or the line
// fails, calling each with every board's result; with once it returns after
// the first board. It returns nil when ctx ended, else the line's error.
func (s *Station) Serve(ctx context.Context, rw io.ReadWriter, port string, opts LinkOptions, once bool, each func(BoardResult)) error {
	opts.Station = true
	link := NewLink(rw, opts)
	defer link.Close()
	for {
		res := s.ServeBoard(ctx, link, port)
		if ctx.Err() != nil && res.Identity == nil {
			return nil
		}
		if errors.Is(res.Err, ErrClosed) && res.Identity == nil {
			return res.Err
		}
		each(res)
		if once || errors.Is(res.Err, ErrClosed) {
			return nil
		}
	}
}
