package provision

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

func TestDialogueClean(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, _ := fx.serve(ctx, st, fastLink)
	res, err := fx.device().Run(ctx, dev)
	require.NoError(t, err)
	board := <-results
	require.NoError(t, board.Err)

	assert.Equal(t, "dev-0042", res.CN)
	assert.Equal(t, "station-1", res.Station)
	assert.False(t, res.Reused)
	assert.Equal(t, int32(1), fx.stored.Load())
	leaf := fx.chain[0]
	assert.Equal(t, "dev-0042", leaf.Subject.CommonName)
	assert.True(t, samePublicKey(leaf.PublicKey, fx.key.Public()))
	assert.Equal(t, pki.CertFingerprint(leaf), res.Fingerprint)
	assert.Equal(t, res.Fingerprint, board.Fingerprint)
	assert.Equal(t, res.Serial, board.Serial)
	assert.Equal(t, "dev-0042", board.CN)
	assert.Equal(t, []string{KindIssued, KindStored}, kinds(fx.records.All()))
	assert.Zero(t, res.Stats.Retransmits)
}

// A corrupting middle: bits flipped, frames dropped, duplicated, cut and
// buried in garbage, in both directions. The dialogue still ends with the
// right certificate, stored once, and one certificate issued for the key.
func TestDialogueCorruptingMiddle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		p     float64
		kinds []string
	}{
		{"flips", 0.3, []string{"flip"}},
		{"drops", 0.3, []string{"drop"}},
		{"duplicates", 0.5, []string{"dup"}},
		{"truncation", 0.3, []string{"truncate"}},
		{"garbage between frames", 0.6, []string{"garbage"}},
		{"everything", 0.15, []string{"flip", "drop", "dup", "truncate", "garbage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 3; seed++ {
				fx := newFixture(t)
				dev, st := line(t, noisy(seed, tc.p, tc.kinds...), noisy(seed+100, tc.p, tc.kinds...))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				results, _ := fx.serve(ctx, st, fastLink)
				res, err := fx.device().Run(ctx, dev)
				require.NoError(t, err, "seed %d", seed)
				board := <-results
				cancel()
				require.NoError(t, board.Err, "seed %d", seed)
				assert.True(t, samePublicKey(fx.chain[0].PublicKey, fx.key.Public()))
				assert.Equal(t, res.Fingerprint, pki.CertFingerprint(fx.chain[0]))
				assert.Equal(t, int32(1), fx.stored.Load(), "stored once")
				assert.Equal(t, []string{KindIssued, KindStored}, kinds(fx.records.All()), "seed %d: one certificate for the key", seed)
			}
		})
	}
}

// A line that carries nothing fails within its deadline, naming the cable.
func TestDialogueDeadLine(t *testing.T) {
	fx := newFixture(t)
	dev, _ := line(t, func([]byte) []byte { return nil }, nil)
	d := fx.device()
	d.Link = LinkOptions{FrameTimeout: 10 * time.Millisecond, Retries: 3}
	start := time.Now()
	_, err := d.Run(context.Background(), dev)
	require.ErrorIs(t, err, ErrTimeout)
	assert.Contains(t, err.Error(), "nothing arrived from the station")
	assert.Less(t, time.Since(start), 2*time.Second)
	assert.Zero(t, fx.stored.Load())
}

// At the wrong baud rate only garbage arrives: the error says so.
func TestDialogueWrongBaud(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	go func() { // a station at another speed: what it sends arrives as noise
		buf := make([]byte, 256)
		for {
			n, err := st.Read(buf)
			if err != nil {
				return
			}
			for i := range buf[:n] {
				buf[i] = buf[i]>>1 | 0x80
			}
			if _, err := st.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	d := fx.device()
	d.Link = LinkOptions{FrameTimeout: 10 * time.Millisecond, Retries: 3}
	_, err := d.Run(context.Background(), dev)
	require.ErrorIs(t, err, ErrTimeout)
	assert.Contains(t, err.Error(), "same baud rate")
	assert.Zero(t, fx.stored.Load())
}

// The device is killed after it stored the certificate but before the
// station heard "stored": running it again confirms the same certificate,
// and the station never issues a second one.
func TestDeviceKilledAfterStore(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, slink := fx.serve(ctx, st, fastLink)

	killCtx, kill := context.WithCancel(ctx)
	d := fx.device()
	store := d.Store
	d.Store = func(ctx context.Context, chain []*x509.Certificate, ca *x509.Certificate, station string) error {
		err := store(ctx, chain, ca, station)
		kill() // the board loses power now
		return err
	}
	_, err := d.Run(killCtx, dev)
	require.ErrorIs(t, err, context.Canceled)
	first := fx.chain
	board := <-results
	require.Error(t, board.Err, "the station's dialogue ends without stored")

	// The board boots again and reruns provision with what it stored.
	results2 := make(chan BoardResult, 1)
	go func() { results2 <- fx.station.ServeBoard(ctx, slink, "pipe0") }()
	d2 := fx.device()
	d2.Current = first
	res, err := d2.Run(ctx, dev)
	require.NoError(t, err)
	require.NoError(t, (<-results2).Err)
	assert.True(t, res.Reused)
	assert.Equal(t, pki.CertFingerprint(first[0]), res.Fingerprint)
	assert.Equal(t, []string{KindIssued, KindStored}, kinds(fx.records.All()), "one certificate for one key")
}

// The station is killed in the middle (after it issued the certificate,
// before the device's "stored" arrived) and restarted with its records:
// the device starts again by itself and ends with the same certificate.
func TestStationRestartedMidDialogue(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Frames from the device go through this switch: once the certificate
	// went out, the station is "killed": the device's frames are lost until
	// the new station runs.
	var killed = make(chan struct{})
	var once bool
	dev.mangle = func(b []byte) []byte {
		if once {
			return nil
		}
		return b
	}
	st.mangle = func(b []byte) []byte {
		if f, err := DecodeFrame(b[1 : len(b)-1]); err == nil && f.Type == FrameData {
			if typ, _, _ := DecodeEnvelope(f.Body); typ == TypeCert {
				once = true
				close(killed)
			}
		}
		return b
	}
	sctx, skill := context.WithCancel(ctx)
	results, _ := fx.serve(sctx, st, fastLink)
	devDone := make(chan error, 1)
	var res DeviceResult
	go func() {
		var err error
		res, err = fx.device().Run(ctx, dev)
		devDone <- err
	}()
	<-killed
	skill()
	<-results
	recs, results2 := restartStation(ctx, t, fx, dev, st)

	require.NoError(t, <-devDone)
	require.NoError(t, (<-results2).Err)
	assert.Equal(t, pki.CertFingerprint(fx.chain[0]), res.Fingerprint)
	assert.Equal(t, []string{KindIssued, KindStored}, kinds(recs.All()), "the restarted station sent the certificate it had issued")
}

// The station dies after it acknowledged the CSR and before it answered,
// so the device, waiting for the certificate, has nothing to send: it
// repeats its last message now and then, the new station answers that
// unknown dialogue with a reset, and the device starts again by itself
// well before its step timeout.
func TestStationRestartedWhileDeviceWaits(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	killed := make(chan struct{})
	var dead bool
	st.mangle = func(b []byte) []byte {
		if dead {
			return nil
		}
		if f, err := DecodeFrame(b[1 : len(b)-1]); err == nil && f.Type == FrameData {
			if typ, _, _ := DecodeEnvelope(f.Body); typ == TypeCert {
				dead = true // the certificate never leaves the dying station
				close(killed)
				return nil
			}
		}
		return b
	}
	sctx, skill := context.WithCancel(ctx)
	results, _ := fx.serve(sctx, st, fastLink)
	devDone := make(chan error, 1)
	d := fx.device()
	d.StepTimeout = 30 * time.Second // longer than the test: only a restart can finish it
	var res DeviceResult
	go func() {
		var err error
		res, err = d.Run(ctx, dev)
		devDone <- err
	}()
	<-killed
	skill()
	<-results
	recs, results2 := restartStation(ctx, t, fx, dev, st)

	require.NoError(t, <-devDone)
	require.NoError(t, (<-results2).Err)
	assert.Equal(t, pki.CertFingerprint(fx.chain[0]), res.Fingerprint)
	assert.Equal(t, []string{KindIssued, KindStored}, kinds(recs.All()), "the restarted station sent the certificate it had issued, not a second one")
}

// restartStation starts a new station, with the records the killed one
// left, on the station's end of the line. The old station's reader
// goroutine keeps its pipe, so the new one gets a new pipe, as a new
// process gets a new file descriptor; the device's frames go there, as
// they are.
func restartStation(ctx context.Context, t *testing.T, fx *fixture, dev, st *end) (*Records, <-chan BoardResult) {
	t.Helper()
	fresh := newMemPipe()
	st.in.Close()
	dev.mu.Lock()
	dev.out, dev.mangle = fresh, nil
	dev.mu.Unlock()
	recs, err := OpenRecords(fx.records.Path())
	require.NoError(t, err)
	fx.station.Records = recs
	results, _ := fx.serve(ctx, &end{in: fresh, out: st.out}, fastLink)
	return recs, results
}

// rawDevice speaks the protocol by hand, for what a correct device never
// sends.
func rawDevice(t *testing.T, rw io.ReadWriter) (*conv, *Link) {
	l := NewLink(rw, fastLink)
	l.NewSession()
	t.Cleanup(l.Close)
	return &conv{link: l, codec: LiteCodec{}, step: 5 * time.Second, peer: "station"}, l
}

func TestStationRefusesOtherVersion(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, _ := fx.serve(ctx, st, fastLink)
	c, l := rawDevice(t, dev)
	raw, _ := LiteCodec{}.Marshal(Hello{Versions: []int{2}})
	b, _ := LiteCodec{}.Marshal(envelope{V: 2, T: TypeHello, B: raw})
	require.NoError(t, l.Send(ctx, b))
	_, err := c.recv(ctx, map[string]any{TypeDecision: &Decision{}})
	var pe *PeerError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, CodeVersion, pe.Code)
	assert.Contains(t, pe.Text, "version 2")
	board := <-results
	require.Error(t, board.Err)
	assert.Contains(t, board.Err.Error(), "speaks provisioning protocol version 2, this program speaks version 1")
}

func TestDeviceRefusesOtherVersion(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { // a station of a later protocol version
		l := NewLink(st, LinkOptions{Station: true, FrameTimeout: 20 * time.Millisecond, Retries: 40})
		defer l.Close()
		if _, err := l.Accept(ctx); err != nil {
			return
		}
		b, _ := fx.station.Codec.Marshal(envelope{V: 3, T: TypeDecision})
		_ = l.Send(ctx, b)
		_, _ = l.Recv(ctx, time.Second)
	}()
	_, err := fx.device().Run(ctx, dev)
	var ve *VersionError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, 3, ve.Got)
	assert.Zero(t, fx.stored.Load())
}

// badSigner signs with another key: its CSR signature does not verify.
type badSigner struct{ pub, other crypto.Signer }

func (b badSigner) Public() crypto.PublicKey { return b.pub.Public() }
func (b badSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return b.other.Sign(r, d, o)
}

func TestStationRefusesBadCSRSignature(t *testing.T) {
	fx := newFixture(t)
	other, _ := pki.GenerateKey(pki.ECDSAP256)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, _ := fx.serve(ctx, st, fastLink)
	d := fx.device()
	d.Key = badSigner{pub: fx.key, other: other}
	_, err := d.Run(ctx, dev)
	require.Error(t, err)
	// Go's x509 checks the signature it made, so the device fails first;
	// either way nothing is issued or stored.
	board := <-results
	require.Error(t, board.Err)
	assert.Zero(t, fx.stored.Load())
	assert.Empty(t, fx.records.All())
}

func TestStationChecksCSR(t *testing.T) {
	fx := newFixture(t)
	other, _ := pki.GenerateKey(pki.ECDSAP256)
	for _, tc := range []struct {
		name, want string
		csr        func() []byte
	}{
		{"subject breaks the template", "breaks the CN template: want exactly CN=dev-0042", func() []byte {
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "evil"}}, fx.key)
			return der
		}},
		{"extra subject fields", "breaks the CN template", func() []byte {
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-0042", Organization: []string{"X"}}}, fx.key)
			return der
		}},
		{"signature does not verify", "CSR signature does not verify", func() []byte {
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-0042"}}, fx.key)
			der[len(der)-3] ^= 0x40
			return der
		}},
		{"another key", "another key", func() []byte {
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-0042"}}, other)
			return der
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, st := line(t, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			results, _ := fx.serve(ctx, st, fastLink)
			c, _ := rawDevice(t, dev)
			pub, _ := x509.MarshalPKIXPublicKey(fx.key.Public())
			require.NoError(t, c.send(ctx, TypeHello, Hello{Versions: []int{1}, Identity: map[string][]string{"serial": {"0042"}}, PublicKey: pub}))
			var dec Decision
			_, err := c.recv(ctx, map[string]any{TypeDecision: &dec})
			require.NoError(t, err)
			require.Equal(t, ActionCSR, dec.Action)
			require.NoError(t, c.send(ctx, TypeCSR, CSR{DER: tc.csr()}))
			_, err = c.recv(ctx, map[string]any{TypeCert: &Cert{}})
			var pe *PeerError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, CodeCSR, pe.Code)
			assert.Contains(t, pe.Text, tc.want)
			board := <-results
			require.ErrorContains(t, board.Err, tc.want)
			assert.Empty(t, fx.records.All(), "nothing issued")
		})
	}
}

func TestStationRefusesMissingAttribute(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, _ := fx.serve(ctx, st, fastLink)
	d := fx.device()
	d.Identity = map[string][]string{"mac": {"02:00:00:00:00:01"}}
	_, err := d.Run(ctx, dev)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `refused this device: the CN template "dev-{serial}" needs the identity attribute "serial", the device sent mac=02:00:00:00:00:01`)
	assert.ErrorContains(t, (<-results).Err, "refused")
	assert.Zero(t, fx.stored.Load())
}

// A station that returns a certificate for another key, for another CN or
// from another CA: the device stores nothing.
func TestDeviceVerifiesCertificate(t *testing.T) {
	fx := newFixture(t)
	other, _ := pki.GenerateKey(pki.ECDSAP256)
	otherCA, _ := pki.NewCA("Other CA", pki.ECDSAP256, time.Hour)
	for _, tc := range []struct {
		name, want string
		cert       func() Cert
	}{
		{"another key", "does not match the device key", func() Cert {
			c, _ := fx.ca.IssueClient(other.Public(), "dev-0042", time.Hour)
			return Cert{Chain: [][]byte{c.Raw}, CA: fx.ca.Cert.Raw}
		}},
		{"another CN", "not the CN=dev-0042", func() Cert {
			c, _ := fx.ca.IssueClient(fx.key.Public(), "dev-9", time.Hour)
			return Cert{Chain: [][]byte{c.Raw}, CA: fx.ca.Cert.Raw}
		}},
		{"another CA", "does not verify against its CA", func() Cert {
			c, _ := otherCA.IssueClient(fx.key.Public(), "dev-0042", time.Hour)
			return Cert{Chain: [][]byte{c.Raw}, CA: fx.ca.Cert.Raw}
		}},
		{"garbage", "does not parse", func() Cert { return Cert{Chain: [][]byte{{1, 2, 3}}, CA: fx.ca.Cert.Raw} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx.stored.Store(0)
			dev, st := line(t, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stErr := make(chan error, 1)
			go func() {
				l := NewLink(st, LinkOptions{Station: true, FrameTimeout: 20 * time.Millisecond, Retries: 40})
				defer l.Close()
				c := &conv{link: l, codec: fx.station.Codec, step: 5 * time.Second, peer: "device"}
				if _, err := l.Accept(ctx); err != nil {
					stErr <- err
					return
				}
				_ = c.send(ctx, TypeDecision, Decision{Action: ActionCSR, CN: "dev-0042"})
				_, _ = c.recv(ctx, map[string]any{TypeCSR: &CSR{}})
				_ = c.send(ctx, TypeCert, tc.cert())
				_, err := c.recv(ctx, map[string]any{TypeStored: &Stored{}})
				stErr <- err
			}()
			_, err := fx.device().Run(ctx, dev)
			require.ErrorContains(t, err, tc.want)
			var pe *PeerError
			require.ErrorAs(t, <-stErr, &pe)
			assert.Equal(t, CodeCert, pe.Code)
			assert.Zero(t, fx.stored.Load())
		})
	}
}

// A full disk on the device: the station hears why and records nothing
// as stored.
func TestDeviceStoreFails(t *testing.T) {
	fx := newFixture(t)
	dev, st := line(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, _ := fx.serve(ctx, st, fastLink)
	d := fx.device()
	d.Store = func(context.Context, []*x509.Certificate, *x509.Certificate, string) error {
		return fmt.Errorf("write /data/mender/mender-cert.pem: %w", syscall.ENOSPC)
	}
	_, err := d.Run(ctx, dev)
	require.ErrorIs(t, err, syscall.ENOSPC)
	board := <-results
	var pe *PeerError
	require.ErrorAs(t, board.Err, &pe)
	assert.Equal(t, CodeStorage, pe.Code)
	assert.Contains(t, pe.Text, "no space left on device")
	assert.Equal(t, []string{KindIssued}, kinds(fx.records.All()))

	// Once there is room, running again sends the same certificate: one
	// certificate for one key.
	results2 := make(chan BoardResult, 1)
	slink := NewLink(st, LinkOptions{Station: true, FrameTimeout: 20 * time.Millisecond, Retries: 40})
	defer slink.Close()
	go func() { results2 <- fx.station.ServeBoard(ctx, slink, "pipe0") }()
	res, err := fx.device().Run(ctx, dev)
	require.NoError(t, err)
	board2 := <-results2
	require.NoError(t, board2.Err)
	assert.True(t, board2.Reused, "the certificate issued before was sent again")
	assert.Equal(t, fx.records.All()[0].CertFingerprint, res.Fingerprint)
	assert.Equal(t, []string{KindIssued, KindStored}, kinds(fx.records.All()))
}

func TestCNTemplate(t *testing.T) {
	s := &Station{CNTemplate: "{site}-{mac}"}
	cn, err := s.CommonName(map[string][]string{"site": {"ber"}, "mac": {"02:aa"}})
	require.NoError(t, err)
	assert.Equal(t, "ber-02:aa", cn)
	for _, bad := range []string{"dev-{serial", "dev-}", "dev-{}", "{a b}"} {
		assert.Error(t, CheckTemplate(bad), bad)
	}
	require.NoError(t, CheckTemplate(DefaultCNTemplate))
	s.CNTemplate = "{long}"
	_, err = s.CommonName(map[string][]string{"long": {string(make([]byte, 65))}})
	require.ErrorContains(t, err, "1 to 64 characters")
}
