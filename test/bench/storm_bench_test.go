package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// The storm benchmarks run `simulator serve --mtls` (the fake backend
// behind the ambassador) and `simulator run` as separate processes, from
// BENCH_BIN as `make bench` builds them, or else from a fresh `go build`.

// simulatorBin returns the simulator binary: BENCH_BIN/simulator when
// BENCH_BIN is set, else one built into a temporary directory.
func simulatorBin(b *testing.B) string {
	b.Helper()
	if dir := os.Getenv("BENCH_BIN"); dir != "" {
		path := filepath.Join(dir, "simulator")
		if _, err := os.Stat(path); err != nil {
			b.Fatalf("BENCH_BIN=%s: %v (make build puts the simulator there)", dir, err)
		}
		return path
	}
	path := filepath.Join(b.TempDir(), "simulator")
	cmd := exec.Command("go", "build", "-o", path, "../../cmd/simulator")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build ./cmd/simulator: %v\n%s", err, out)
	}
	return path
}

// stormPKI returns the PKI directory of the storm benchmarks, kept in the
// temp directory across runs: a CA made with `simulator pki init`, the
// server certificate `simulator serve` adds, and n device credentials in
// the cache `simulator run --pki-dir` reads, minted before any clock
// starts.
func stormPKI(b *testing.B, sim string, n int) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "mtls-agent-bench-storm-pki")
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err != nil {
		if out, err := exec.Command(sim, "pki", "init", "--dir", dir).CombinedOutput(); err != nil {
			b.Fatalf("simulator pki init --dir %s: %v\n%s", dir, err, out)
		}
	}
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	_, res, err := fleet.LoadCredentials(b.Context(), fleet.StoreOptions{Dir: filepath.Join(dir, "devices"), CA: ca,
		KeyType: pki.ECDSAP256, Name: fleet.DefaultMACPrefix.MAC}, 0, n)
	if err != nil {
		b.Fatal(err)
	}
	if res.MintedKeys+res.ReissuedCerts > 0 {
		b.Logf("storm credentials: %+v in %v", res, time.Since(start).Round(time.Millisecond))
	}
	return dir
}

// stormServer is a running `simulator serve --mtls`.
type stormServer struct {
	*child
	url, ca, status string
}

// startStormServer starts `simulator serve --mtls` on free loopback ports
// with the PKI in dir, its state in memory and its log at warn.
func startStormServer(b *testing.B, sim, dir string) *stormServer {
	b.Helper()
	srv := startChild(b, sim, nil, "serve", "--mtls", "--dir", dir, "--state", "none", "--log-level", "warn",
		"--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0")
	url, ca := serveAddress(b, srv)
	s := &stormServer{child: srv, url: url, ca: ca}
	sc := bufio.NewScanner(strings.NewReader(srv.out.String()))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "status:" {
			s.status = f[1]
		}
	}
	if s.status == "" {
		b.Fatalf("simulator serve --mtls printed no status URL:\n%s", srv.out)
	}
	return s
}

// runHelp returns `simulator run --help`, to check for flags.
func runHelp(b *testing.B, sim string) string {
	b.Helper()
	out, _ := exec.Command(sim, "run", "--help").CombinedOutput() // exits 0 or 2 depending on the flag package
	return string(out)
}

// needFlags fails the benchmark naming the first flag `simulator run`
// does not have.
func needFlags(b *testing.B, sim string, flags ...string) {
	b.Helper()
	help := runHelp(b, sim)
	for _, f := range flags {
		if !strings.Contains(help, "  --"+f+" ") && !strings.Contains(help, "  --"+f+"\n") {
			b.Fatalf("simulator run has no --%s flag (%s): this benchmark needs it", f, sim)
		}
	}
}

// fleetRun is a running `simulator run` and where it writes its report.
type fleetRun struct {
	*child
	report, metrics string
}

// startFleetRun starts `simulator run` against srv with the PKI in dir,
// its JSON report in a temp file and live metrics on a free port, plus
// args.
func startFleetRun(b *testing.B, sim, dir string, srv *stormServer, args ...string) *fleetRun {
	b.Helper()
	r := &fleetRun{report: filepath.Join(b.TempDir(), "report.json"), metrics: freeAddr(b)}
	all := append([]string{"run", "--server", srv.url, "--ca", srv.ca, "--pki-dir", dir, "--report", r.report,
		"--metrics", r.metrics, "--log-level", "error"}, args...)
	r.child = startChild(b, sim, nil, all...)
	return r
}

// gauge reads one unlabelled metric of the run's /metrics; ok is false
// when it is absent.
func (r *fleetRun) gauge(name string) (float64, bool) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// waitAllAccepted waits until the run reports every device accepted
// (fleet_all_accepted_seconds appears), the run exits, or limit passes.
func (r *fleetRun) waitAllAccepted(b *testing.B, limit time.Duration) bool {
	b.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-r.done:
			return false
		case <-time.After(250 * time.Millisecond): // polling the run's metrics, not timing anything
		}
		if _, ok := r.gauge("fleet_all_accepted_seconds"); ok {
			return true
		}
	}
	return false
}

// finish ends the run (SIGTERM writes the reports, as Ctrl-C does) and
// decodes its JSON report.
func (r *fleetRun) finish(b *testing.B) *fleet.Report {
	b.Helper()
	if code := r.stop(); code != 0 {
		b.Fatalf("simulator run exited %d:\n%s", code, tail(r.out.String(), 3000))
	}
	rep, err := fleet.ReadReport(r.report)
	if err != nil {
		b.Fatalf("the run's report: %v", err)
	}
	return rep
}

// authRetries is the auth requests beyond one per device: pending
// answers, refusals and errors that the devices retried.
func authRetries(r *fleet.Report) uint64 {
	auth, ok := r.Operations["auth"]
	if !ok || auth.Count < uint64(r.Devices) {
		return 0
	}
	return auth.Count - uint64(r.Devices)
}

// cpuSeconds returns the user and system CPU time pid has used.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("read CPU time of %d: %v", pid, err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// BenchmarkStormVsCryptoBound measures, in one run, the crypto bound of
// admitting a device on this machine (2,000 admissions per core, as in
// BenchmarkCryptoBound, with the storm's own server certificate) and then
// a storm: FLEET_BENCH_STORM_DEVICES (default 10,000) fresh devices, each
// with its own P-256 certificate, started at once (`simulator run --ramp
// 0`) against `simulator serve --mtls`, both separate processes. It
// reports the storm's devices/s (devices / time until all accepted, from
// the run's report), the bound, their ratio (the target is 0.8),
// the devices' errors and auth retries, and the CPU time both processes
// spent per admitted device next to the bound's.
func BenchmarkStormVsCryptoBound(b *testing.B) {
	n := envInt(b, "FLEET_BENCH_STORM_DEVICES", 10000)
	sim := simulatorBin(b)
	dir := stormPKI(b, sim, n)
	for range b.N {
		b.StopTimer()
		srv := startStormServer(b, sim, dir) // a fresh backend: every device is new to it
		kit := newAdmissionKit(b, dir, admissionDevices(b, dir, 64))
		bound, err := kit.measureBound(2000 * runtime.GOMAXPROCS(0))
		if err != nil {
			b.Fatal(err)
		}
		srvCPU := cpuSeconds(b, srv.cmd.Process.Pid)
		b.StartTimer()
		run := startFleetRun(b, sim, dir, srv, "--count", strconv.Itoa(n), "--ramp", "0", "--duration", "10m")
		all := run.waitAllAccepted(b, 11*time.Minute)
		b.StopTimer()
		cpu := cpuSeconds(b, srv.cmd.Process.Pid) - srvCPU + cpuSeconds(b, run.cmd.Process.Pid)
		rep := run.finish(b)
		if !all || rep.TimeToAllAcceptedS == nil {
			b.Fatalf("not every device was accepted: %d of %d accepted, %d pending, %d failing; errors: %s",
				rep.Accepted, rep.Devices, rep.Pending, rep.Failing, errorKinds(rep))
		}
		storm := float64(n) / *rep.TimeToAllAcceptedS
		b.ReportMetric(0, "ns/op") // the rates are the figures
		b.ReportMetric(storm, "devices/s")
		b.ReportMetric(bound.rate, "bound-devices/s")
		b.ReportMetric(storm/bound.rate, "ratio")
		b.ReportMetric(float64(rep.ErrorsTotal), "errors")
		b.ReportMetric(float64(authRetries(rep)), "auth-retries")
		b.ReportMetric(cpu/float64(n)*1e6, "cpu-us/device")
		b.ReportMetric(bound.usPer, "bound-us/device")
		b.Logf("%d devices, no ramp: all accepted in %.1f s (%.0f/s); crypto bound %.0f devices/s (%.0f us CPU each: handshake %.0f, sign %.0f, verify %.0f, jwt %.0f; key share %s); ratio %.2f; %s; serve+run CPU %.0f us per device (includes what they did while the run was ending); %d full and %d resumed handshakes; errors: %s",
			n, *rep.TimeToAllAcceptedS, storm, bound.rate, bound.usPer, bound.partUs[0], bound.partUs[1], bound.partUs[2], bound.partUs[3],
			bound.curve, storm/bound.rate, bound.keys, cpu/float64(n)*1e6, rep.Handshakes.Full, rep.Handshakes.Resumed, errorKinds(rep))
		srv.stop()
	}
}

// BenchmarkReconnectStorm measures how a connected fleet comes back after
// every connection drops at once (as after an ambassador restart):
// FLEET_BENCH_RECONNECT_DEVICES (default 10,000) devices with kept-alive
// connections and a 10 s poll interval, so they are connected, start at
// once; at FLEET_BENCH_RECONNECT_AT_S seconds (default 60, after all are
// accepted) `simulator run --reconnect-storm` closes every connection and
// has every device poll at once; the run ends a minute later. It reports
// the seconds until they are all back and polling (the target is
// 30 s), the fraction that recovered, and the connection errors after the
// storm.
func BenchmarkReconnectStorm(b *testing.B) {
	n := envInt(b, "FLEET_BENCH_RECONNECT_DEVICES", 10000)
	at := time.Duration(envInt(b, "FLEET_BENCH_RECONNECT_AT_S", 60)) * time.Second
	sim := simulatorBin(b)
	needFlags(b, sim, "keep-alive", "reconnect-storm")
	dir := stormPKI(b, sim, n)
	// The timer runs through the whole run: with it stopped, the
	// benchmark framework would see no time spent and run it again and
	// again.
	for range b.N {
		srv := startStormServer(b, sim, dir)
		started := time.Now()
		run := startFleetRun(b, sim, dir, srv, "--count", strconv.Itoa(n), "--ramp", "0", "--keep-alive",
			"--poll", "10s", "--reconnect-storm", at.String(), "--duration", (at + 10*time.Minute).String())
		if !run.waitAllAccepted(b, at) {
			b.Fatalf("not every device was accepted before the reconnect storm at %v:\n%s", at, tail(run.out.String(), 3000))
		}
		// The storm, then a minute for the fleet to come back (the target
		// is 30 s); the report says whether and when every device did.
		select {
		case <-run.done:
			b.Fatalf("simulator run ended before the reconnect storm was over:\n%s", tail(run.out.String(), 3000))
		case <-time.After(time.Until(started.Add(at + time.Minute))):
		}
		rep := run.finish(b)
		if rep.Storm == nil {
			b.Fatalf("the run's report has no storm section (simulator run --reconnect-storm writes it):\n%s", tail(run.out.String(), 3000))
		}
		st := rep.Storm
		if st.Devices == 0 || st.RecoveryS == nil {
			b.Fatalf("reconnect storm at %.0f s: %d of %d devices back and polling by the end of the run; %d connection errors after; errors: %s",
				st.AtS, st.Recovered, st.Devices, st.ConnectionErrorsAfter, errorKinds(rep))
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(*st.RecoveryS, "s-recovery")
		b.ReportMetric(float64(st.Recovered)/float64(st.Devices), "recovered/devices")
		b.ReportMetric(float64(st.ConnectionErrorsAfter), "conn-errors-after")
		b.Logf("reconnect storm at %.0f s: %d connections cut, %d of %d devices back and polling in %.1f s, %d connection errors after; errors: %s",
			st.AtS, st.ConnectionsClosed, st.Recovered, st.Devices, *st.RecoveryS, st.ConnectionErrorsAfter, errorKinds(rep))
		srv.stop()
	}
}

// BenchmarkFleet100k admits FLEET_BENCH_100K_DEVICES (default 100,000)
// fresh devices, each with its own P-256 certificate, at once (`--ramp 0`)
// from one simulator process whose connections come from 64 loopback
// source addresses, against `simulator serve --mtls`, then holds them at
// production intervals (poll 30 min, no kept-alive connections). It
// reports the time until all are accepted (the target is 180 s),
// the errors by kind and the auth retries, the simulator's RSS per device
// (VmRSS after all are accepted and 30 s of settling; target 16 KiB) and
// the refusals the ambassador counted in its /status.
func BenchmarkFleet100k(b *testing.B) {
	n := envInt(b, "FLEET_BENCH_100K_DEVICES", 100000)
	sim := simulatorBin(b)
	needFlags(b, sim, "source-ips")
	dir := stormPKI(b, sim, n)
	for range b.N {
		b.StopTimer()
		srv := startStormServer(b, sim, dir)
		b.StartTimer()
		run := startFleetRun(b, sim, dir, srv, "--count", strconv.Itoa(n), "--ramp", "0",
			"--source-ips", "127.0.0.2-127.0.0.65", "--poll", "30m", "--duration", "20m")
		all := run.waitAllAccepted(b, 15*time.Minute)
		b.StopTimer()
		if all {
			time.Sleep(30 * time.Second) // settling at production intervals before the memory is read
		}
		var rssKiB int64
		if all {
			rssKiB, _ = procStatus(b, run.cmd.Process.Pid)
		}
		refusals := ambassadorRefusals(b, srv.status)
		rep := run.finish(b)
		if !all || rep.TimeToAllAcceptedS == nil {
			b.Fatalf("not every device was accepted: %d of %d accepted, %d pending, %d failing; errors: %s; ambassador refusals: %s",
				rep.Accepted, rep.Devices, rep.Pending, rep.Failing, errorKinds(rep), refusals)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(*rep.TimeToAllAcceptedS, "s-all-accepted")
		b.ReportMetric(float64(n) / *rep.TimeToAllAcceptedS, "devices/s")
		b.ReportMetric(float64(rep.ErrorsTotal), "errors")
		b.ReportMetric(float64(authRetries(rep)), "auth-retries")
		b.ReportMetric(float64(rssKiB)/float64(n), "RSS-KiB/device")
		b.Logf("%d devices, no ramp: all accepted in %.1f s; %d failing; %d auth retries; errors: %s; simulator VmRSS %.1f MiB (%.1f KiB per device) after 30 s at production intervals; ambassador refusals: %s",
			n, *rep.TimeToAllAcceptedS, rep.Failing, authRetries(rep), errorKinds(rep), float64(rssKiB)/1024, float64(rssKiB)/float64(n), refusals)
		if rep.Failing > 0 {
			b.Errorf("%d devices left failing", rep.Failing)
		}
		srv.stop()
	}
}

// ambassadorRefusals returns the refusal counters of the ambassador's
// /status (every numeric field whose name mentions a refusal or
// rejection), as "name=value" pairs.
func ambassadorRefusals(b *testing.B, statusURL string) string {
	b.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(statusURL)
	if err != nil {
		b.Fatalf("ambassador status: %v", err)
	}
	defer resp.Body.Close()
	var doc any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		b.Fatalf("decode ambassador status %s: %v", statusURL, err)
	}
	var parts []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(strings.TrimPrefix(prefix+"."+k, "."), x)
			}
		case float64:
			l := strings.ToLower(prefix)
			if strings.Contains(l, "refus") || strings.Contains(l, "reject") || strings.Contains(l, "shed") {
				parts = append(parts, fmt.Sprintf("%s=%.0f", prefix, v))
			}
		}
	}
	walk("", doc)
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none in /status"
	}
	return strings.Join(parts, " ")
}
