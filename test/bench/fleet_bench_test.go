package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// benchPKI returns the PKI directory shared by the fleet benchmarks: the CA
// and server certificate, and the cached device credentials, kept in the
// temp directory across runs so that minting stays out of the measurements.
func benchPKI(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "mtls-agent-bench-pki")
	if _, err := pki.EnsureServerPKI(dir, []string{"127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	return dir
}

// loadCreds returns devices 0..n-1 with P-256 keys and certificates from
// the cache in dir (minting what is missing) and the pool trusting dir's CA.
func loadCreds(b *testing.B, dir string, n int) ([]*fleet.Credential, *x509.CertPool) {
	b.Helper()
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		b.Fatal(err)
	}
	creds, res, err := fleet.LoadCredentials(b.Context(), fleet.StoreOptions{Dir: filepath.Join(dir, "devices"), CA: ca,
		KeyType: pki.ECDSAP256, Name: fleet.DefaultMACPrefix.MAC}, 0, n)
	if err != nil {
		b.Fatal(err)
	}
	if res.MintedKeys+res.ReissuedCerts > 0 {
		b.Logf("credentials: %+v", res)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return creds, pool
}

// startFleet starts fl and returns a stop function that ends the run and
// returns its report.
func startFleet(b *testing.B, fl *fleet.Fleet) func() *fleet.Report {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *fleet.Report, 1)
	go func() {
		r, err := fl.Run(ctx)
		if err != nil {
			b.Error(err)
		}
		done <- r
	}()
	return func() *fleet.Report {
		cancel()
		return <-done
	}
}

// waitFor polls cond every 20 ms until it holds or limit passes.
func waitFor(b *testing.B, limit time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not timing anything
	}
}

// BenchmarkFleetAccept10k measures the time until 10,000 fresh devices
// (own P-256 certificates) are all accepted through the ambassador, and
// then the simulator's memory per device once every device has polled,
// with kept-alive connections and without. Run it with -benchtime 1x.
//
// The devices start over a 20 s ramp (500 a second, above what two cores
// accept, so the servers stay saturated without a thundering herd at the
// kernel's accept queue); FLEET_BENCH_RAMP_MS and FLEET_BENCH_DEVICES
// override ramp and fleet size. Errors are reported, not fatal: devices
// retry them, as real ones do.
func BenchmarkFleetAccept10k(b *testing.B) {
	n := envInt(b, "FLEET_BENCH_DEVICES", 10000)
	ramp := time.Duration(envInt(b, "FLEET_BENCH_RAMP_MS", 20000)) * time.Millisecond
	dir := benchPKI(b)
	for _, tc := range []struct {
		name      string
		keepAlive bool
	}{{"keep-alive", true}, {"no-keep-alive", false}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				url := startServerProcess(b, dir) // a fresh backend: every device is new to it
				base := inUse()
				creds, roots := loadCreds(b, dir, n)
				fl, err := fleet.New(fleet.Options{
					ServerURL: url, RootCAs: roots, Credentials: creds, Ramp: ramp,
					PollInterval: time.Minute, InventoryInterval: time.Hour, RetryInterval: 5 * time.Second,
					KeepAlive: tc.keepAlive, IdleConnTimeout: 10 * time.Minute,
				})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				stop := startFleet(b, fl)
				waitFor(b, 5*time.Minute, "every device accepted", func() bool { return fl.Progress().Accepted == n })
				accept := time.Since(start)
				b.StopTimer()
				// Settle: every device has sent its inventory and polled once.
				waitFor(b, 2*time.Minute, "every device polled", func() bool { return fl.Progress().Requests >= uint64(3*n) })
				time.Sleep(2 * time.Second) // let the last exchanges finish before sampling memory
				mem := inUse() - base
				r := stop()
				if r.ErrorsTotal > 0 {
					b.Logf("%d errors (the devices retried): %s", r.ErrorsTotal, errorKinds(r))
				}
				b.ReportMetric(accept.Seconds(), "s-all-accepted")
				b.ReportMetric(float64(n)/accept.Seconds(), "accepted/s")
				b.Logf("%d devices: all accepted after %v, %d requests, %d errors, %d full and %d resumed handshakes",
					n, accept, r.RequestsTotal, r.ErrorsTotal, r.Handshakes.Full, r.Handshakes.Resumed)
				b.ReportMetric(float64(mem)/float64(n)/1024, "KiB/device")
				b.ReportMetric(float64(r.ErrorsTotal), "errors")
			}
		})
	}
}

// BenchmarkFleetSteadyState measures the requests per second 2,000
// accepted devices sustain through the ambassador when they poll far more
// often than the servers can answer (so the rate is the capacity).
func BenchmarkFleetSteadyState(b *testing.B) {
	const n = 2000
	dir := benchPKI(b)
	for range b.N {
		b.StopTimer()
		url := startServerProcess(b, dir)
		creds, roots := loadCreds(b, dir, n)
		// Kept-alive connections: a device polling every 100 ms keeps its
		// connection, as --keep-alive does.
		fl, err := fleet.New(fleet.Options{ServerURL: url, RootCAs: roots, Credentials: creds, KeepAlive: true,
			PollInterval: 100 * time.Millisecond, InventoryInterval: time.Hour, RetryInterval: 5 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		stop := startFleet(b, fl)
		waitFor(b, 2*time.Minute, "every device accepted", func() bool { return fl.Progress().Accepted == n })
		time.Sleep(2 * time.Second) // past the start-up burst
		b.StartTimer()
		before, start := fl.Progress().Requests, time.Now()
		time.Sleep(5 * time.Second) // the measurement window
		reqs, elapsed := fl.Progress().Requests-before, time.Since(start)
		b.StopTimer()
		r := stop()
		b.ReportMetric(float64(reqs)/elapsed.Seconds(), "req/s")
		b.ReportMetric(r.Operations["next"].P99Ms, "p99-ms")
	}
}

// errorKinds lists the errors of r by operation and kind, or "none".
func errorKinds(r *fleet.Report) string {
	var parts []string
	for _, op := range r.OperationNames() {
		byKind := r.Operations[op].ErrorsByKind
		for _, k := range slices.Sorted(maps.Keys(byKind)) {
			parts = append(parts, fmt.Sprintf("%s %s: %d", op, k, byKind[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// envInt reads an integer override of a benchmark parameter.
func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// BenchmarkFleetDeployment measures a deployment of a real single-file
// Mender Artifact (a 1 MiB random payload, gzip-compressed by the fake
// backend's writer, so about 1 MiB on the wire) to 500 accepted devices
// through the ambassador: the time until every device reported success,
// the artifact bytes per second the servers delivered, and per device the
// download and install times (from the fleet report). The devices read
// each artifact as a Mender client does (manifest and payload checksums,
// device type, name) while it arrives. FLEET_BENCH_DEPLOY_DEVICES and
// FLEET_BENCH_DEPLOY_KIB override fleet and payload size.
func BenchmarkFleetDeployment(b *testing.B) {
	n := envInt(b, "FLEET_BENCH_DEPLOY_DEVICES", 500)
	kib := envInt(b, "FLEET_BENCH_DEPLOY_KIB", 1024)
	dir := benchPKI(b)
	for range b.N {
		b.StopTimer()
		srv, err := startServers(dir, false) // in-process: the test reads the backend's deployment
		if err != nil {
			b.Fatal(err)
		}
		creds, roots := loadCreds(b, dir, n)
		fl, err := fleet.New(fleet.Options{ServerURL: srv.url, RootCAs: roots, Credentials: creds,
			PollInterval: 200 * time.Millisecond, InventoryInterval: time.Hour, RetryInterval: 2 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		stop := startFleet(b, fl)
		waitFor(b, 2*time.Minute, "every device accepted", func() bool { return fl.Progress().Accepted == n })
		b.StartTimer()
		start := time.Now()
		depID, err := srv.backend.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "bench-release",
			DeviceTypes: []string{fleet.DefaultDeviceType}, Size: int64(kib) << 10})
		if err != nil {
			b.Fatal(err)
		}
		waitFor(b, 5*time.Minute, "every device reported success", func() bool {
			return deploymentSuccesses(srv.backend, depID) == n
		})
		elapsed := time.Since(start)
		b.StopTimer()
		r := stop()
		srv.close()
		d := r.Deployments
		if d.Failed+d.Incomplete+d.Aborted > 0 {
			b.Fatalf("deployment: %d failed, %d incomplete, %d aborted", d.Failed, d.Incomplete, d.Aborted)
		}
		b.ReportMetric(elapsed.Seconds(), "s-all-succeeded")
		b.ReportMetric(float64(d.CompletedDownloadBytes)/elapsed.Seconds()/(1<<20), "MiB/s")
		b.ReportMetric(float64(d.ArtifactBytesPerDevice), "artifact-B")
		b.ReportMetric(d.DownloadSeconds.P99S*1000, "download-p99-ms")
		b.ReportMetric(d.InstallSeconds.P50S*1000, "install-p50-ms")
		b.Logf("%d devices, artifact %d bytes: all succeeded after %v; %d bytes downloaded (retries included); download p50 %.0f ms p99 %.0f ms; install p50 %.0f ms p99 %.0f ms",
			n, d.ArtifactBytesPerDevice, elapsed, d.DownloadedBytes, d.DownloadSeconds.P50S*1000, d.DownloadSeconds.P99S*1000,
			d.InstallSeconds.P50S*1000, d.InstallSeconds.P99S*1000)
	}
}

// deploymentSuccesses counts the devices that reported success in the
// deployment.
func deploymentSuccesses(s *fakemender.Server, depID string) int {
	for _, d := range s.Deployments() {
		if d.ID == depID {
			return d.Statistics.Status["success"]
		}
	}
	return 0
}
