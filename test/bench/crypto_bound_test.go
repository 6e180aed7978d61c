package bench

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// The cryptographic work of admitting one device through `simulator serve
// --mtls`, as the code does it (read from internal/client, internal/fleet,
// internal/ambassador and internal/fakemender):
//
//   - handshake: one full TLS handshake between the device client's TLS
//     settings (TLS 1.2 minimum, http/1.1, the client certificate signed
//     by the device's P-256 key, Go's default key shares, crypto/tls's own
//     verification replaced by the client's chain and hostname check, a
//     one-entry session cache as the fleet gives each device) and the
//     ambassador's own TLSConfig (RequireAndVerifyClientCert against the
//     device CA, then its peer policy), both ends in this process over
//     net.Pipe. The server's session ticket is written and read, as on
//     the wire.
//   - sign: the device's ECDSA P-256 signature of its auth request body
//     (menderapi.Sign).
//   - verify: the ambassador's check of that signature against the
//     certificate's key, and the backend's check against the key in the
//     request body, found in its JSON and parsed from its PEM as the
//     backend does (menderapi.ParseAuthRequest).
//   - jwt: the fake backend's default token algorithm, EdDSA (Ed25519):
//     signing the device token, and verifying it once, on the device's
//     first request with it (the backend caches verified tokens, so later
//     polls and the ambassador's management token, one for every device,
//     cost no signature check).
//
// Left out on purpose: HTTP, JSON encoding, the symmetric record
// encryption of the exchanged bytes, and the ambassador's upstream TLS
// connections (a kept-alive pool, so no handshake per device).

// admissionParts names the parts of one admission, in order.
var admissionParts = [...]string{"handshake", "sign", "verify", "jwt"}

// admissionKit is the fixed material of the crypto-bound measurement:
// server side, device credentials and the backend's JWT key.
type admissionKit struct {
	serverTLS *tls.Config
	roots     *x509.CertPool
	devices   []admissionDevice
	jwtKey    ed25519.PrivateKey
	tokenIn   []byte // header.claims of a device token, as the backend signs it
	curve     atomic.Value
	keys      string // the key types, for the log
}

// admissionDevice is one device's credential and its signed auth request
// body (built once: building JSON is not cryptography).
type admissionDevice struct {
	cert tls.Certificate
	key  crypto.Signer
	body []byte
	sig  string // a signature of body, for measuring the verification alone
}

// newAdmissionKit loads the server PKI in dir (the CA, server certificate
// and key that `simulator serve --mtls --dir dir` serves), builds the
// ambassador's TLS configuration from it and takes the credentials of
// devices from creds.
func newAdmissionKit(tb testing.TB, dir string, creds []*fleet.Credential) *admissionKit {
	tb.Helper()
	caCert, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	ca, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	// Only the TLS configuration is used: the ambassador is never run, so
	// the upstream is never contacted.
	amb, err := ambassador.New(ambassador.Options{
		Upstream: &url.URL{Scheme: "https", Host: "127.0.0.1:1"}, UpstreamCAFile: caCert,
		User: fakemender.DefaultUser, Password: fakemender.DefaultPassword,
		ServerCertFile: filepath.Join(dir, "server.crt"), ServerKeyFile: filepath.Join(dir, "server.key"),
		ClientCAFiles: []string{caCert},
	})
	if err != nil {
		tb.Fatal(err)
	}
	k := &admissionKit{serverTLS: amb.TLSConfig(), roots: x509.NewCertPool()}
	k.roots.AddCert(ca.Cert)
	srvCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		tb.Fatal(err)
	}
	k.keys = fmt.Sprintf("server key %s, CA key %s", keyName(srvCert.Leaf.PublicKey), keyName(ca.Cert.PublicKey))
	if len(creds) > 0 {
		k.keys += ", device key " + keyName(creds[0].Key.Public())
	}
	for i, cred := range creds {
		if cred.Cert == nil {
			tb.Fatalf("device %d has no certificate", i)
		}
		body, err := menderapi.BuildAuthRequestTier(menderapi.Attributes{"mac": {fleet.DefaultMACPrefix.MAC(cred.Index)}}.IdentityJSON(),
			cred.Key.Public(), "", menderapi.TierStandard)
		if err != nil {
			tb.Fatal(err)
		}
		sig, err := menderapi.Sign(cred.Key, body)
		if err != nil {
			tb.Fatal(err)
		}
		k.devices = append(k.devices, admissionDevice{
			cert: tls.Certificate{Certificate: [][]byte{cred.Cert.Raw}, PrivateKey: cred, Leaf: cred.Cert},
			key:  cred.Key, body: body, sig: sig,
		})
	}
	_, k.jwtKey, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	// A device token of the backend's shape, so the signed input has its
	// real length.
	hdr, _ := json.Marshal(map[string]string{"alg": fakemender.AlgEdDSA, "typ": "JWT"})
	now := time.Now()
	claims, err := json.Marshal(fakemender.DeviceClaims{ID: "0a3bb3e4-5c1f-4f55-9d6e-0b1c7e5d3a10",
		Subject: "6a0f5c3e-8f8e-4a3c-9d62-1d2b3c4d5e6f", Issuer: fakemender.IssuerDevice,
		Expires: now.Add(168 * time.Hour).Unix(), IssuedAt: now.Unix(), NotBef: fakemender.NotBefore,
		Device: true, Plan: "enterprise"})
	if err != nil {
		tb.Fatal(err)
	}
	k.tokenIn = []byte(base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(claims))
	return k
}

// clientTLS is the device's TLS client configuration as internal/client
// builds it (newTLSConfig and forHost) for a server at host, with the
// session cache the fleet gives each device.
func (k *admissionKit) clientTLS(d *admissionDevice, host string) *tls.Config {
	roots := k.roots
	return &tls.Config{
		MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &d.cert, nil },
		RootCAs:              roots, ServerName: host, ClientSessionCache: tls.NewLRUClientSessionCache(1),
		InsecureSkipVerify: true, // verified below, as the client does
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			return leaf.VerifyHostname(host)
		},
	}
}

// handshake makes one full TLS handshake of device d against the
// ambassador's configuration over an in-memory pipe.
func (k *admissionKit) handshake(d *admissionDevice) error {
	cc, sc := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = cc.SetDeadline(deadline)
	_ = sc.SetDeadline(deadline)
	srv := tls.Server(sc, k.serverTLS)
	var serr error
	var wg sync.WaitGroup
	wg.Go(func() {
		serr = srv.Handshake()
		// Close sends close_notify after the session ticket; the client
		// reads both.
		_ = srv.Close()
	})
	cli := tls.Client(cc, k.clientTLS(d, "127.0.0.1"))
	cerr := cli.Handshake()
	if cerr == nil {
		if k.curve.Load() == nil {
			k.curve.Store(cli.ConnectionState().CurveID.String())
		}
		_, _ = io.Copy(io.Discard, cli) // the ticket, then close_notify
	}
	_ = cli.Close()
	wg.Wait()
	if cerr != nil {
		return fmt.Errorf("client handshake: %w", cerr)
	}
	if serr != nil {
		return fmt.Errorf("server handshake: %w", serr)
	}
	if st := cli.ConnectionState(); st.DidResume || st.Version != tls.VersionTLS13 {
		return fmt.Errorf("handshake resumed %t version %x: want a full TLS 1.3 handshake", st.DidResume, st.Version)
	}
	return nil
}

// sign is the device's auth request signature.
func (k *admissionKit) sign(d *admissionDevice) (string, error) { return menderapi.Sign(d.key, d.body) }

// verify is the ambassador's check against the certificate's key and the
// backend's against the key in the body, parsed from PEM.
func (k *admissionKit) verify(d *admissionDevice, sig string) error {
	if err := menderapi.Verify(d.cert.Leaf.PublicKey, d.body, sig); err != nil {
		return fmt.Errorf("ambassador verify: %w", err)
	}
	// The backend finds the key in the JSON body and parses its PEM
	// (ParseAuthRequest), then verifies.
	req, err := menderapi.ParseAuthRequest(d.body)
	if err != nil {
		return err
	}
	if err := menderapi.Verify(req.Key, d.body, sig); err != nil {
		return fmt.Errorf("backend verify: %w", err)
	}
	return nil
}

// jwt issues the device token and verifies it once, as the backend does.
func (k *admissionKit) jwt() error {
	sig := ed25519.Sign(k.jwtKey, k.tokenIn)
	tok := string(k.tokenIn) + "." + base64.RawURLEncoding.EncodeToString(sig)
	i := len(tok) - ed25519SigB64Len
	raw, err := base64.RawURLEncoding.DecodeString(tok[i:])
	if err != nil {
		return err
	}
	if !ed25519.Verify(k.jwtKey.Public().(ed25519.PublicKey), []byte(tok[:i-1]), raw) {
		return errors.New("JWT does not verify")
	}
	return nil
}

// keyName names a public key's algorithm and size.
func keyName(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// ed25519SigB64Len is the length of an Ed25519 signature in unpadded
// base64url.
var ed25519SigB64Len = base64.RawURLEncoding.EncodedLen(ed25519.SignatureSize)

// admit does all of one admission of device d and adds the time of each
// part to spent (indexed as admissionParts).
func (k *admissionKit) admit(d *admissionDevice, spent *[len(admissionParts)]time.Duration) error {
	t0 := time.Now()
	if err := k.handshake(d); err != nil {
		return err
	}
	t1 := time.Now()
	sig, err := k.sign(d)
	if err != nil {
		return err
	}
	t2 := time.Now()
	if err := k.verify(d, sig); err != nil {
		return err
	}
	t3 := time.Now()
	if err := k.jwt(); err != nil {
		return err
	}
	t4 := time.Now()
	for i, d := range []time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3)} {
		spent[i] += d
	}
	return nil
}

// boundResult is a crypto-bound measurement: admissions per second with
// every core busy, CPU time per admission, and each part's CPU time per
// admission (its share of the measured time).
type boundResult struct {
	rate     float64
	usPer    float64
	partUs   [len(admissionParts)]float64
	curve    string
	keys     string
	parallel int
}

// measureBound runs n admissions on GOMAXPROCS goroutines, each taking
// the next device in turn.
func (k *admissionKit) measureBound(n int) (boundResult, error) {
	procs := runtime.GOMAXPROCS(0)
	var (
		next  atomic.Int64
		mu    sync.Mutex
		total [len(admissionParts)]time.Duration
		fail  atomic.Value
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range procs {
		wg.Go(func() {
			var spent [len(admissionParts)]time.Duration
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					break
				}
				if err := k.admit(&k.devices[i%int64(len(k.devices))], &spent); err != nil {
					fail.Store(err)
					return
				}
			}
			mu.Lock()
			for i := range total {
				total[i] += spent[i]
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, ok := fail.Load().(error); ok {
		return boundResult{}, err
	}
	return k.result(n, elapsed, total), nil
}

// result derives the bound from n admissions in elapsed with every core
// busy and the time spent in each part.
func (k *admissionKit) result(n int, elapsed time.Duration, total [len(admissionParts)]time.Duration) boundResult {
	procs := runtime.GOMAXPROCS(0)
	r := boundResult{rate: float64(n) / elapsed.Seconds(), parallel: procs}
	r.usPer = float64(procs) / r.rate * 1e6
	var sum time.Duration
	for _, d := range total {
		sum += d
	}
	for i, d := range total {
		r.partUs[i] = r.usPer * float64(d) / float64(sum)
	}
	r.curve, _ = k.curve.Load().(string)
	r.keys = k.keys
	return r
}

// report reports r as metrics of b.
func (r boundResult) report(b *testing.B, prefix string) {
	b.ReportMetric(r.rate, prefix+"devices/s")
	b.ReportMetric(r.usPer, "us/device")
	for i, name := range admissionParts {
		b.ReportMetric(r.partUs[i], name+"-us")
	}
}

// admissionDevices returns n devices with P-256 credentials from the
// server PKI in dir (in memory, not cached: minting is not measured).
func admissionDevices(tb testing.TB, dir string, n int) []*fleet.Credential {
	tb.Helper()
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		tb.Fatal(err)
	}
	creds, _, err := fleet.LoadCredentials(tb.Context(), fleet.StoreOptions{CA: ca, KeyType: pki.ECDSAP256,
		Name: fleet.DefaultMACPrefix.MAC}, 0, n)
	if err != nil {
		tb.Fatal(err)
	}
	return creds
}

// BenchmarkCryptoBound measures the cryptographic work of admitting one
// device (see admissionParts above for exactly what) on every core at
// once, with the server PKI `simulator serve --mtls` makes. It reports the
// bound this machine puts on admissions ("devices/s"), the CPU time of one
// admission ("us/device" = cores / rate) and each part's CPU time
// ("handshake-us", "sign-us", "verify-us", "jwt-us"); the sub-benchmarks
// measure each part alone.
func BenchmarkCryptoBound(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "pki")
	if _, err := pki.EnsureServerPKI(dir, []string{"localhost", "127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	kit := newAdmissionKit(b, dir, admissionDevices(b, dir, 64))
	b.Run("admission", func(b *testing.B) {
		var (
			next  atomic.Int64
			mu    sync.Mutex
			total [len(admissionParts)]time.Duration
		)
		b.RunParallel(func(pb *testing.PB) {
			var spent [len(admissionParts)]time.Duration
			defer func() {
				mu.Lock()
				defer mu.Unlock()
				for i := range total {
					total[i] += spent[i]
				}
			}()
			for pb.Next() {
				if err := kit.admit(&kit.devices[(next.Add(1)-1)%int64(len(kit.devices))], &spent); err != nil {
					b.Error(err)
					return
				}
			}
		})
		r := kit.result(b.N, b.Elapsed(), total)
		r.report(b, "")
		if b.N > 1 {
			b.Logf("crypto bound: %d cores, %.0f devices/s, %.0f us CPU per device (handshake %.0f, sign %.0f, verify %.0f, jwt %.0f); key share %s; %s",
				r.parallel, r.rate, r.usPer, r.partUs[0], r.partUs[1], r.partUs[2], r.partUs[3], r.curve, r.keys)
		}
	})
	parts := []struct {
		name string
		run  func(d *admissionDevice) error
	}{
		{"handshake", kit.handshake},
		{"sign", func(d *admissionDevice) error { _, err := kit.sign(d); return err }},
		{"verify", func(d *admissionDevice) error { return kit.verify(d, d.sig) }},
		{"jwt", func(*admissionDevice) error { return kit.jwt() }},
	}
	for _, p := range parts {
		b.Run(p.name, func(b *testing.B) {
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d := &kit.devices[(next.Add(1)-1)%int64(len(kit.devices))]
					if err := p.run(d); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(runtime.GOMAXPROCS(0))*float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e3, "us-cpu/op")
		})
	}
}
