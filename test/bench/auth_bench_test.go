package bench

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// workers is how many clients send requests concurrently in the round-trip
// benchmarks.
const workers = 8

// inProcess starts auto-accepting servers in this process and returns them
// with the pool trusting their CA and the CA itself.
func inProcess(b *testing.B) (*servers, *x509.CertPool, *pki.CA) {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "pki")
	s, err := startServers(dir, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.close)
	ca, err := pki.LoadCA(s.pk.CACert, s.pk.CAKey)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return s, pool, ca
}

// newClients returns one client per worker for url; with mtls they
// present their certificates.
func newClients(b *testing.B, url string, roots *x509.CertPool, creds []*fleet.Credential, mtls bool) []*client.Client {
	b.Helper()
	cs := make([]*client.Client, len(creds))
	for i, cred := range creds {
		o := client.Options{
			Servers: []string{url}, AuthKey: cred.Key, RootCAs: roots, DeviceType: "bench",
			Identity: func(context.Context) (menderapi.Attributes, error) {
				return menderapi.Attributes{"mac": {fleet.DefaultMACPrefix.MAC(cred.Index)}}, nil
			},
		}
		if mtls {
			o.TLSCredential = cred
		}
		c, err := client.New(o)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.CloseIdleConnections)
		cs[i] = c
	}
	return cs
}

// concurrently runs n calls of op spread over the clients and returns the
// rate per second.
func concurrently(b *testing.B, cs []*client.Client, n int, op func(ctx context.Context, c *client.Client) error) float64 {
	b.Helper()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Value
	)
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := op(b.Context(), c); err != nil {
					fail.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, ok := fail.Load().(error); ok {
		b.Fatal(err)
	}
	return float64(n) / elapsed.Seconds()
}

func authenticate(ctx context.Context, c *client.Client) error { return c.Authenticate(ctx) }

func poll(ctx context.Context, c *client.Client) error {
	_, err := c.CheckUpdate(ctx)
	return err
}

// BenchmarkAuthRoundTrip measures signed auth requests (sign, send, verify,
// issue a JWT) per second against the fake backend on loopback over TLS,
// from eight clients at once.
func BenchmarkAuthRoundTrip(b *testing.B) {
	s, roots, ca := inProcess(b)
	creds, _, err := fleet.LoadCredentials(b.Context(), fleet.StoreOptions{CA: ca}, 0, workers)
	if err != nil {
		b.Fatal(err)
	}
	cs := newClients(b, s.direct, roots, creds, false)
	concurrently(b, cs, len(cs), authenticate) // connections up, devices known
	b.ResetTimer()
	rate := concurrently(b, cs, b.N, authenticate)
	b.ReportMetric(rate, "auth/s")
}

// BenchmarkAmbassadorRatio measures, in one run, auth and poll rates
// directly against the fake backend and through the mTLS ambassador in
// front of it, and reports ambassador/direct as "ratio".
func BenchmarkAmbassadorRatio(b *testing.B) {
	for _, tc := range []struct {
		name string
		op   func(context.Context, *client.Client) error
	}{{"auth", authenticate}, {"poll", poll}} {
		b.Run(tc.name, func(b *testing.B) {
			s, roots, ca := inProcess(b)
			creds, _, err := fleet.LoadCredentials(b.Context(), fleet.StoreOptions{CA: ca}, 0, workers)
			if err != nil {
				b.Fatal(err)
			}
			direct := newClients(b, s.direct, roots, creds, false)
			// The same identities through the ambassador would be other auth
			// sets of the same devices; give them their own.
			ambCreds, _, err := fleet.LoadCredentials(b.Context(), fleet.StoreOptions{CA: ca}, workers, 2*workers)
			if err != nil {
				b.Fatal(err)
			}
			amb := newClients(b, s.url, roots, ambCreds, true)
			for _, cs := range [][]*client.Client{direct, amb} {
				concurrently(b, cs, len(cs), authenticate) // accepted, tokens held, connections up
			}
			b.ResetTimer()
			d := concurrently(b, direct, b.N, tc.op)
			a := concurrently(b, amb, b.N, tc.op)
			b.ReportMetric(d, "direct-"+tc.name+"/s")
			b.ReportMetric(a, "ambassador-"+tc.name+"/s")
			b.ReportMetric(a/d, "ratio")
		})
	}
}
