// Package bench holds the fleet and protocol benchmarks behind `make bench`
// (BENCHTIME=1x keeps each fleet benchmark to one run):
//
//   - BenchmarkFleetAccept10k: time until 10,000 fresh devices, each with its
//     own P-256 certificate (minted into a cached PKI directory before the
//     timer starts), are all accepted through the mTLS ambassador, and the
//     simulator's memory per device with connections kept alive;
//   - BenchmarkFleetMemoryNoKeepAlive: memory per device without kept-alive
//     connections;
//   - BenchmarkFleetSteadyState: requests per second a fleet sustains
//     through the ambassador once accepted;
//   - BenchmarkAuthRoundTrip: auth round trips per second against the fake
//     backend on loopback;
//   - BenchmarkAmbassadorRatio: auth and poll rates through the ambassador
//     divided by the direct rates, measured in one run;
//   - BenchmarkAgentFootprint: the stripped agent's size per board and its
//     RSS after a minute of polling (the binaries of `make build cross`,
//     BENCH_BIN);
//   - BenchmarkCryptoBound: the cryptographic work of admitting one device
//     (TLS 1.3 handshake with client certificate, auth request signature
//     and its two verifications, JWT issue and verification) on every
//     core: the admissions per second this machine allows, and each
//     part's CPU time;
//   - BenchmarkStormVsCryptoBound: 10,000 fresh devices started at once
//     (`simulator run --ramp 0` against `simulator serve --mtls`, separate
//     processes) as a ratio of the crypto bound measured in the same run;
//   - BenchmarkAmbassadorVsNginx: polls per second from the same devices
//     direct, through the ambassador and through nginx as an
//     mTLS-terminating proxy with the same certificates and backend;
//   - BenchmarkReconnectStorm: how long 10,000 connected devices take to
//     poll again after every connection is cut at once;
//   - BenchmarkFleet100k: 100,000 devices started at once from one
//     simulator: time until all are accepted, errors and retries, RSS per
//     device at production intervals, the ambassador's refusals.
//
// The fleet benchmarks run the backend and the ambassador in a child
// process (this test binary re-executed), so the memory figures are the
// simulator's own.
package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/memconn"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// serveEnv names the PKI directory when this binary runs as the server child.
const serveEnv = "FLEET_BENCH_SERVE_PKI"

func TestMain(m *testing.M) {
	if dir := os.Getenv(serveEnv); dir != "" {
		if err := serveChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// servers is the fake backend behind the ambassador, in-process.
type servers struct {
	url     string // the ambassador
	direct  string // the backend itself
	pk      *pki.ServerPKIResult
	backend *fakemender.Server
	close   func()
}

// startServers runs fakemender (v2 next enabled, so one poll is one
// request; autoAccept for devices that talk to it directly) and the
// ambassador on loopback with the PKI in dir (from pki.EnsureServerPKI)
// until close is called. As in `simulator serve --mtls`, the ambassador
// reaches the backend in process (memconn, plain HTTP); the backend's TLS
// listener is for the devices that talk to it directly.
func startServers(dir string, autoAccept bool) (*servers, error) {
	pk, err := pki.EnsureServerPKI(dir, []string{"127.0.0.1"})
	if err != nil {
		return nil, err
	}
	backend, err := fakemender.New(fakemender.Options{EnableV2Next: true, AutoAccept: autoAccept})
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(pk.ServerCert, pk.ServerKey)
	if err != nil {
		return nil, err
	}
	quiet := slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	bsrv := &http.Server{Handler: backend, ErrorLog: quiet, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}}
	go func() { _ = bsrv.ServeTLS(bln, "", "") }()
	link := memconn.Listen("backend.internal")
	lsrv := &http.Server{Handler: backend, ErrorLog: quiet, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = lsrv.Serve(link) }()
	// The ambassador's own upstream transport (bounded to 256 connections)
	// is what is measured; FLEET_BENCH_UPSTREAM_CONNS=N swaps in a transport
	// bounded to N connections over the same link, to compare pool sizes.
	var upstream http.RoundTripper
	dial := link.DialContext
	if conns := envOr("FLEET_BENCH_UPSTREAM_CONNS", 0); conns > 0 {
		upstream = &http.Transport{
			DialContext:     link.DialContext,
			MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, MaxIdleConns: conns,
			IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: time.Minute,
		}
		dial = nil // the swapped-in transport dials
	}
	amb, err := ambassador.New(ambassador.Options{
		Transport: upstream, UpstreamDialContext: dial,
		Upstream: &url.URL{Scheme: "http", Host: "backend.internal"},
		User:     fakemender.DefaultUser, Password: fakemender.DefaultPassword,
		ServerCertFile: pk.ServerCert, ServerKeyFile: pk.ServerKey, ClientCAFiles: []string{pk.CACert},
	})
	if err != nil {
		bsrv.Close()
		lsrv.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = amb.Run(ctx) }()
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		bsrv.Close()
		lsrv.Close()
		return nil, err
	}
	asrv := amb.Server() // the connection and handshake bounds of a real ambassador
	asrv.ErrorLog = quiet
	go func() { _ = asrv.Serve(amb.Listener(aln)) }()
	status := amb.StatusHandler()
	for deadline := time.Now().Add(20 * time.Second); ; {
		rec := &statusRecorder{}
		status.ServeHTTP(rec, (&http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/status"}}).WithContext(ctx))
		if rec.code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			asrv.Close()
			bsrv.Close()
			lsrv.Close()
			return nil, fmt.Errorf("ambassador not ready")
		}
		time.Sleep(20 * time.Millisecond) // waiting for the management login, not measuring
	}
	return &servers{url: "https://" + aln.Addr().String(), direct: "https://" + bln.Addr().String(),
		pk: pk, backend: backend, close: func() {
			asrv.Close()
			bsrv.Close()
			lsrv.Close()
			cancel()
			_ = backend.Close() // removes the artifacts a deployment made
		}}, nil
}

// statusRecorder is a minimal ResponseWriter for the status probe.
type statusRecorder struct {
	code int
	h    http.Header
}

func (r *statusRecorder) Header() http.Header {
	if r.h == nil {
		r.h = http.Header{}
	}
	return r.h
}
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(c int)           { r.code = c }

// serveChild is the child process: serve until stdin closes.
func serveChild(dir string) error {
	s, err := startServers(dir, false)
	if err != nil {
		return err
	}
	defer s.close()
	fmt.Printf("READY %s\n", s.url)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// startServerProcess re-executes this test binary as the server child and
// returns the ambassador URL; the child stops at the end of the benchmark.
func startServerProcess(b *testing.B, pkiDir string) string {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+pkiDir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("bench server child: %v", err)
	}
	u, ok := strings.CutPrefix(strings.TrimSpace(line), "READY ")
	if !ok {
		b.Fatalf("bench server child said %q", line)
	}
	return u
}

// inUse returns heap in use plus goroutine stacks in a steady state: after
// three full GCs, so that goroutine stacks grown by TLS handshakes have
// shrunk back (each GC halves a stack that uses less than a quarter of it,
// as the periodic GCs of a long run do).
func inUse() uint64 {
	for range 3 {
		runtime.GC()
	}
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	metrics.Read(s)
	var total uint64
	for _, x := range s {
		total += x.Value.Uint64()
	}
	return total
}

// envOr reads an integer setting of the server child; def when unset.
func envOr(name string, def int) int {
	v, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return def
	}
	return v
}
