package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// nginxBin is where Debian's nginx-light puts nginx.
const nginxBin = "/usr/sbin/nginx"

// nginxConf is an mTLS-terminating reverse proxy in front of the fake
// backend as a user would write it for this job: the ambassador's server
// certificate and device CA, TLS 1.2 and 1.3, a kept-alive upstream pool
// over HTTPS with the backend's certificate verified, the verified client
// certificate passed on in Client-Cert (nginx has no RFC 9440 form, so
// its URL-escaped PEM, as nginx users pass it), only the device API
// proxied (as the ambassador does), no access log. It checks the
// certificate chain only: unlike the ambassador it does not check the
// auth request signature against the certificate or preauthorize the
// device, so devices authenticate through the ambassador.
const nginxConf = `worker_processes auto;
daemon off;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path {{DIR}}/body;
	proxy_temp_path {{DIR}}/proxy;
	upstream backend {
		server {{BACKEND}};
		keepalive 256;
	}
	server {
		listen {{LISTEN}} ssl;
		ssl_certificate {{CERT}};
		ssl_certificate_key {{KEY}};
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_client_certificate {{CA}};
		ssl_verify_client on;
		ssl_verify_depth 3;
		location /api/devices/ {
			proxy_pass https://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $host;
			proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
			proxy_set_header X-Forwarded-Proto $scheme;
			proxy_set_header Client-Cert $ssl_client_escaped_cert;
			proxy_ssl_trusted_certificate {{CA}};
			proxy_ssl_verify on;
			proxy_ssl_name localhost; # nginx 1.22 matches DNS names only; the certificate has localhost and 127.0.0.1
			proxy_ssl_session_reuse on;
		}
		location / { return 404; }
	}
}
`

// startNginx runs nginx with nginxConf in a fresh prefix directory in
// front of the backend at backendAddr (host:port), with the server PKI pk,
// and returns its https URL. nginx and its workers run in their own
// process group, killed at the end of the test.
func startNginx(tb testing.TB, pk *pki.ServerPKIResult, backendAddr string) string {
	tb.Helper()
	if _, err := os.Stat(nginxBin); err != nil {
		tb.Fatalf("%s: %v: install nginx-light with scripts/install-deps.sh", nginxBin, err)
	}
	dir := tb.TempDir()
	addr := freeAddr(tb)
	conf := strings.NewReplacer("{{DIR}}", dir, "{{BACKEND}}", backendAddr, "{{LISTEN}}", addr,
		"{{CERT}}", pk.ServerCert, "{{KEY}}", pk.ServerKey, "{{CA}}", pk.CACert).Replace(nginxConf)
	file := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	out := &syncWriter{}
	cmd := exec.Command(nginxBin, "-p", dir, "-c", file, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start nginx: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // master and workers
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		// Workers that outlived the master still hold the group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	log := func() string {
		data, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return out.String() + string(data)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("nginx error log:\n%s", log())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		select {
		case <-done:
			tb.Fatalf("nginx exited at start:\n%s", log())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nginx did not listen on %s within 10 s:\n%s", addr, log())
		}
		time.Sleep(20 * time.Millisecond) // waiting for nginx to bind, not timing anything
	}
	return "https://" + addr
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// switchable is a device's connection to the servers: its requests go to
// the https URL the device was made with, but each new connection is
// dialled to the current target (backend, ambassador or nginx, which all
// serve the same server certificate), so the same clients with the same
// tokens poll each path in turn.
type switchable struct {
	target atomic.Pointer[string] // host:port
}

func (s *switchable) set(u string) { h := strings.TrimPrefix(u, "https://"); s.target.Store(&h) }

// httpClient is the device's HTTP client: its certificate, the CA as
// roots, HTTP/1.1 and kept-alive connections.
func (s *switchable) httpClient(cred *fleet.Credential, roots *x509.CertPool) *http.Client {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}, RootCAs: roots,
		ServerName: "127.0.0.1", Certificates: []tls.Certificate{{Certificate: [][]byte{cred.Cert.Raw}, PrivateKey: cred, Leaf: cred.Cert}}}
	return &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
			return d.DialContext(ctx, "tcp", *s.target.Load())
		},
		MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute, ResponseHeaderTimeout: 30 * time.Second,
	}}
}

// pollClients returns n accepted devices that authenticated through the
// ambassador of s and whose connections go where sw points.
func pollClients(tb testing.TB, s *servers, roots *x509.CertPool, ca *pki.CA, sw *switchable, n int) []*client.Client {
	tb.Helper()
	creds, _, err := fleet.LoadCredentials(tb.Context(), fleet.StoreOptions{CA: ca, KeyType: pki.ECDSAP256, Name: fleet.DefaultMACPrefix.MAC}, 0, n)
	if err != nil {
		tb.Fatal(err)
	}
	sw.set(s.url)
	cs := make([]*client.Client, n)
	for i, cred := range creds {
		c, err := client.New(client.Options{
			Servers: []string{s.url}, AuthKey: cred.Key, DeviceType: "bench",
			Identity: func(context.Context) (menderapi.Attributes, error) {
				return menderapi.Attributes{"mac": {fleet.DefaultMACPrefix.MAC(cred.Index)}}, nil
			},
			HTTPClient: sw.httpClient(cred, roots), RequestTimeout: 30 * time.Second,
		})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(c.CloseIdleConnections)
		if err := c.Authenticate(tb.Context()); err != nil {
			tb.Fatalf("device %d: authenticate through the ambassador: %v", i, err)
		}
		cs[i] = c
	}
	return cs
}

// nextPollsOf counts the deployment polls the backend answered.
func nextPollsOf(s *servers) int {
	by := s.backend.Stats().ByRouteStatus[fakemender.RouteNext]
	return by[http.StatusNoContent] + by[http.StatusOK]
}

// TestNginxProxyRefusesWithoutCert checks the nginx set-up of
// BenchmarkAmbassadorVsNginx: a poll through nginx reaches the backend
// (counted there), and a client without a certificate gets nginx's 400.
func TestNginxProxyRefusesWithoutCert(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "pki")
	s, err := startServers(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	ngx := startNginx(t, s.pk, strings.TrimPrefix(s.direct, "https://"))
	ca, err := pki.LoadCA(s.pk.CACert, s.pk.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	sw := &switchable{}
	c := pollClients(t, s, roots, ca, sw, 1)[0]
	c.CloseIdleConnections()
	sw.set(ngx)
	before := nextPollsOf(s)
	if _, err := c.CheckUpdate(ctx); err != nil {
		t.Fatalf("poll through nginx: %v", err)
	}
	if got := nextPollsOf(s) - before; got != 1 {
		t.Fatalf("the backend counted %d polls through nginx, want 1", got)
	}

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ngx+menderapi.PathNextV1+"?device_type=bench&artifact_name=x", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("request without a certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "No required SSL certificate was sent") {
		t.Fatalf("without a certificate nginx answered %d %q, want 400 No required SSL certificate was sent", resp.StatusCode, body)
	}
	if got := nextPollsOf(s) - before; got != 1 {
		t.Fatalf("the request without a certificate reached the backend (%d polls counted)", got)
	}
}

// BenchmarkAmbassadorVsNginx measures deployment polls per second from the
// same 64 accepted devices with kept-alive connections, in one run and
// interleaved in four rounds: direct to the fake backend, through the mTLS ambassador,
// and through nginx configured as an mTLS-terminating reverse proxy
// (nginxConf) with the same certificates in front of the same backend.
// It reports each rate and the ratios amb/direct and amb/nginx.
// FLEET_BENCH_NGINX_POLLS (default 20000) is the polls per path per round.
func BenchmarkAmbassadorVsNginx(b *testing.B) {
	const devices = 64
	polls := envInt(b, "FLEET_BENCH_NGINX_POLLS", 20000)
	s, roots, ca := inProcess(b)
	ngx := startNginx(b, s.pk, strings.TrimPrefix(s.direct, "https://"))
	sw := &switchable{}
	cs := pollClients(b, s, roots, ca, sw, devices)
	paths := []struct{ name, url string }{{"direct", s.direct}, {"ambassador", s.url}, {"nginx", ngx}}
	// Interleaved in rounds, so that a change in what else the machine
	// does weighs on the three paths alike.
	const rounds = 4
	per := max(polls/rounds, 1)
	seconds := map[string]float64{}
	b.ResetTimer()
	for range b.N {
		for range rounds {
			for _, p := range paths {
				b.StopTimer()
				for _, c := range cs {
					c.CloseIdleConnections()
				}
				sw.set(p.url)
				before := nextPollsOf(s)
				concurrently(b, cs, len(cs), poll) // connections up on this path
				b.StartTimer()
				rate := concurrently(b, cs, per, poll)
				b.StopTimer()
				if got := nextPollsOf(s) - before; got != per+len(cs) {
					b.Fatalf("%s: the backend answered %d polls, want %d", p.name, got, per+len(cs))
				}
				seconds[p.name] += float64(per) / rate
				b.StartTimer()
			}
		}
	}
	rates := map[string]float64{}
	for name, sec := range seconds {
		rates[name] = float64(b.N*rounds*per) / sec
	}
	b.ReportMetric(0, "ns/op") // the rates are the figures
	b.ReportMetric(rates["direct"], "direct-poll/s")
	b.ReportMetric(rates["ambassador"], "ambassador-poll/s")
	b.ReportMetric(rates["nginx"], "nginx-poll/s")
	b.ReportMetric(rates["ambassador"]/rates["direct"], "amb/direct")
	b.ReportMetric(rates["ambassador"]/rates["nginx"], "amb/nginx")
}
