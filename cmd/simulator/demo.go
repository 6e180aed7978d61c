package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Demo settings.
const (
	demoDeviceType   = "raspberrypi4"
	demoArtifact     = "demo-release-2"
	demoArtifactSize = 256 << 10
	demoAgentMAC     = "02:de:ad:00:00:01"
	demoFailRate     = 0.1
	// demoSlice is the fraction of the fleet the mid-run deployment targets.
	demoSlice = 0.1
)

const demoSynopsis = `The first thing to run ('make run'): a fake Mender backend, the mTLS ambassador in front of it, a
fresh PKI, --count virtual devices with their own certificates and one real device-agent process
(taken from next to this binary, when there) for --duration, with live progress. Halfway through,
the backend deploys an artifact to a tenth of the fleet, and a tenth of those devices report
failure on purpose, with a log, so the report shows the whole device life cycle. At the end (or
on Ctrl-C) the summary is printed and the JSON and HTML reports are written, to ./simulator-demo/
by default. The PKI and the server and agent logs live in a temporary work directory that is
removed at the end unless --keep (or the device-agent failed).`

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		count    int
		duration time.Duration
		keyType  string
		keep     bool
		out      reportFlags
	)
	fs := newFlagSet("demo", demoSynopsis, stdout, stderr)
	fs.IntVar(&count, "count", 1000, "`N` virtual devices")
	fs.DurationVar(&duration, "duration", 60*time.Second, "run time, a `DURATION` (Ctrl-C stops earlier and still reports)")
	fs.StringVar(&keyType, "key-type", string(pki.ECDSAP256), "device "+keyTypeUsage)
	fs.BoolVar(&keep, "keep", false, "keep the work directory (PKI, server and agent logs) instead of removing it at the end")
	out.register(fs, filepath.Join(demoReportDir, "report.json"), filepath.Join(demoReportDir, "report.html"))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	kt, err := pki.ParseKeyType(keyType)
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	if count < 1 || duration <= 0 {
		return fmt.Errorf("demo: --count %d and --duration %v must be positive", count, duration)
	}
	stdout = &lockedWriter{w: stdout}
	work, err := os.MkdirTemp("", "simulator-demo-")
	if err != nil {
		return fmt.Errorf("demo: work directory: %w", err)
	}
	agentOK := true
	defer func() {
		if !keep && agentOK {
			_ = os.RemoveAll(work) // best effort: a temporary directory
		}
	}()
	logFile, err := os.Create(filepath.Join(work, "servers.log"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))

	srvCtx, stopServers := context.WithCancel(context.WithoutCancel(ctx))
	env, err := startDemoServers(srvCtx, filepath.Join(work, "pki"), log)
	if err != nil {
		stopServers()
		return err
	}
	defer func() {
		stopServers()
		env.wait()
	}()
	fmt.Fprintf(stdout, "simulator demo: fake Mender backend behind the mTLS ambassador at %s\n", env.url)
	fmt.Fprintf(stdout, "  work directory: %s (PKI, server and agent logs; %s)\n", work,
		map[bool]string{true: "kept (--keep)", false: "removed at the end unless --keep"}[keep])

	poll := min(max(duration/12, time.Second), 10*time.Second)
	start := time.Now()
	creds, _, err := fleet.LoadCredentials(ctx, fleet.StoreOptions{Dir: filepath.Join(work, "pki", "devices"), CA: env.ca,
		KeyType: kt, Name: fleet.DefaultMACPrefix.MAC}, 0, count)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "  %d devices with their own %s keys and certificates (minted in %.1fs)\n", count, kt, time.Since(start).Seconds())

	agent := startDemoAgent(ctx, work, env, poll, stdout)
	fl, err := fleet.New(fleet.Options{
		ServerURL: env.url, RootCAs: env.roots, Credentials: creds, DeviceType: demoDeviceType,
		Ramp: min(10*time.Second, duration/5), Duration: duration,
		PollInterval: poll, InventoryInterval: 4 * poll, RetryInterval: poll, FailRate: demoFailRate,
	})
	if err != nil {
		return err
	}
	dep := &demoDeployment{}
	var wg sync.WaitGroup
	runCtx, stopDeploy := context.WithCancel(ctx)
	wg.Go(func() { dep.scheduleAt(runCtx, duration/2, env.backend, count, stdout) })
	err = runFleet(ctx, fl, out, stdout, log, func(w io.Writer) {
		stopDeploy()
		wg.Wait()
		dep.summary(w, env.backend)
		agentOK = agent.stopAndSummarize(w, env.backend, keep)
		switch {
		case keep:
			fmt.Fprintf(w, "work directory kept: %s\n", work)
		case !agentOK:
			fmt.Fprintf(w, "work directory kept, since the device-agent failed: %s\n", work)
		default:
			fmt.Fprintf(w, "work directory removed (--keep keeps the PKI and the server and agent logs)\n")
		}
	})
	stopDeploy()
	wg.Wait()
	return err
}

// demoReportDir is where the demo writes its reports by default.
const demoReportDir = "simulator-demo"

// lockedWriter serialises writes from the progress line and other messages.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// demoServers is the in-process backend and ambassador.
type demoServers struct {
	backend *fakemender.Server
	ca      *pki.CA
	caFile  string
	url     string
	roots   *x509.CertPool
	done    []chan error
}

func (d *demoServers) wait() {
	for _, c := range d.done {
		<-c
	}
}

// startDemoServers creates a PKI in dir and starts the fake backend and
// the ambassador on loopback ports until ctx is done; it returns once the
// ambassador is ready.
func startDemoServers(ctx context.Context, dir string, log *slog.Logger) (*demoServers, error) {
	pk, err := pki.EnsureServerPKI(dir, []string{"localhost", "127.0.0.1"})
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadCA(pk.CACert, pk.CAKey)
	if err != nil {
		return nil, err
	}
	backend, err := fakemender.New(fakemender.Options{EnableV2Next: true, ArtifactDir: filepath.Join(dir, "artifacts"),
		Logger: log.With("component", "backend")})
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(pk.ServerCert, pk.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %s: %w", pk.ServerCert, err)
	}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo backend: %w", err)
	}
	srv := backendServer(backend, cert, log)
	amb, err := ambassador.New(ambassador.Options{
		Upstream: &url.URL{Scheme: "https", Host: bln.Addr().String()}, UpstreamCAFile: pk.CACert,
		User: fakemender.DefaultUser, Password: fakemender.DefaultPassword,
		ServerCertFile: pk.ServerCert, ServerKeyFile: pk.ServerKey, ClientCAFiles: []string{pk.CACert},
		Logger: log.With("component", "ambassador"),
	})
	if err != nil {
		bln.Close()
		return nil, err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		bln.Close()
		return nil, fmt.Errorf("demo ambassador: %w", err)
	}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		bln.Close()
		aln.Close()
		return nil, fmt.Errorf("demo ambassador status: %w", err)
	}
	roots, err := loadPool(pk.CACert)
	if err != nil {
		return nil, err
	}
	d := &demoServers{backend: backend, ca: ca, caFile: pk.CACert, url: "https://" + aln.Addr().String(), roots: roots,
		done: []chan error{make(chan error, 1), make(chan error, 1)}}
	go func() { d.done[0] <- serveUntilDone(ctx, srv, bln, log) }()
	go func() { d.done[1] <- runAmbassador(ctx, amb, aln, sln, log) }()
	status := "http://" + sln.Addr().String() + "/status"
	deadline := time.Now().Add(15 * time.Second)
	for {
		if ready(ctx, status) {
			return d, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return d, fmt.Errorf("demo: the ambassador did not get ready (see the servers log): %s", status)
		}
		time.Sleep(50 * time.Millisecond) // polling a local readiness endpoint; not a test
	}
}

func ready(ctx context.Context, statusURL string) bool {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, statusURL, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// demoDeployment is the mid-run deployment.
type demoDeployment struct {
	id      string
	targets []string
	err     error
}

// scheduleAt waits until after (or ctx done), then deploys demoArtifact to
// a slice of the accepted virtual devices.
func (d *demoDeployment) scheduleAt(ctx context.Context, after time.Duration, backend *fakemender.Server, count int, stdout io.Writer) {
	t := time.NewTimer(after)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return
	}
	want := max(int(float64(count)*demoSlice), 1)
	var n int
	for _, dev := range backend.Devices() {
		mac, _ := dev.IdentityData["mac"].(string)
		if dev.Status != "accepted" || mac == demoAgentMAC {
			continue
		}
		if n%int(1/demoSlice) == 0 && len(d.targets) < want {
			d.targets = append(d.targets, dev.ID)
		}
		n++
	}
	if len(d.targets) == 0 {
		d.err = errors.New("no accepted device to deploy to yet")
		return
	}
	d.id, d.err = backend.AddDeployment(fakemender.DeploymentSpec{ArtifactName: demoArtifact,
		DeviceTypes: []string{demoDeviceType}, Size: demoArtifactSize, Devices: d.targets})
	if d.err == nil {
		prefix := ""
		if isTerminal(stdout) {
			prefix = "\r\x1b[K" // over the progress line, which the next refresh redraws
		}
		fmt.Fprintf(stdout, "%sdeployment of %s scheduled to %d devices\n", prefix, demoArtifact, len(d.targets))
	}
}

// summary prints the deployment's device statuses as the backend sees them.
func (d *demoDeployment) summary(w io.Writer, backend *fakemender.Server) {
	switch {
	case d.err != nil:
		fmt.Fprintf(w, "deployment: not scheduled: %v\n", d.err)
		return
	case d.id == "":
		fmt.Fprintln(w, "deployment: not scheduled (the run ended before half time)")
		return
	}
	counts := map[string]int{}
	for _, id := range d.targets {
		st := backend.DeviceDeploymentStatus(d.id, id)
		if st == "" {
			st = "not picked up yet"
		}
		counts[st]++
	}
	var parts []string
	for _, st := range []string{"success", "failure", "downloading", "installing", "rebooting", "pending", "not picked up yet"} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
			delete(counts, st)
		}
	}
	for st, n := range counts {
		parts = append(parts, fmt.Sprintf("%d %s", n, st))
	}
	fmt.Fprintf(w, "deployment: %s to %d devices on the backend: %s\n", demoArtifact, len(d.targets), strings.Join(parts, ", "))
	fmt.Fprintf(w, "            the demo makes %.0f %% of deployments fail on purpose (each with a log upload), to show failure reports\n",
		demoFailRate*100)
}

// demoAgent is the real device-agent process, when there is one.
type demoAgent struct {
	cmd     *exec.Cmd
	cancel  context.CancelFunc
	logPath string
	missing string // why there is no agent
}

// startDemoAgent starts device-agent from next to this executable with its
// own certificate, or explains why it cannot.
func startDemoAgent(ctx context.Context, work string, env *demoServers, poll time.Duration, stdout io.Writer) *demoAgent {
	exe, err := os.Executable()
	if err != nil {
		return &demoAgent{missing: fmt.Sprintf("cannot locate this executable: %v", err)}
	}
	path := filepath.Join(filepath.Dir(exe), "device-agent")
	if !fileExists(path) {
		a := &demoAgent{missing: "no device-agent next to this binary (" + path + "); build both with 'make build'"}
		fmt.Fprintf(stdout, "  device-agent: %s; running without it\n", a.missing)
		return a
	}
	dir := filepath.Join(work, "agent")
	a := &demoAgent{logPath: filepath.Join(dir, "agent.log")}
	if err := writeAgentFiles(dir, env, poll); err != nil {
		a.missing = err.Error()
		fmt.Fprintf(stdout, "  device-agent: %v; running without it\n", err)
		return a
	}
	logf, err := os.Create(a.logPath)
	if err != nil {
		a.missing = err.Error()
		return a
	}
	actx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(actx, path, "daemon", "--config", filepath.Join(dir, "mender.conf"),
		"--fallback-config", "", "--data", filepath.Join(dir, "var"))
	cmd.Env = append(os.Environ(), "MENDER_DATA_DIR="+filepath.Join(dir, "share"),
		"MENDER_DATASTORE_DIR="+filepath.Join(dir, "var"), "MENDER_CONF_DIR="+dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		a.missing = fmt.Sprintf("start %s: %v", path, err)
		fmt.Fprintf(stdout, "  device-agent: %s; running without it\n", a.missing)
		return a
	}
	logf.Close() // the child has its own descriptor
	a.cmd, a.cancel = cmd, cancel
	fmt.Fprintf(stdout, "  device-agent: %s (pid %d, MAC %s), log %s\n", path, cmd.Process.Pid, demoAgentMAC, a.logPath)
	return a
}

// writeAgentFiles writes the agent's identity script, device type, key and
// certificate and mender.conf under dir.
func writeAgentFiles(dir string, env *demoServers, poll time.Duration) error {
	for _, d := range []string{"share/identity", "share/inventory", "var"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	key, err := pki.GenerateKey(pki.ECDSAP256)
	if err != nil {
		return err
	}
	cert, err := env.ca.IssueClient(key.Public(), demoAgentMAC, 30*24*time.Hour)
	if err != nil {
		return err
	}
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, "mender-cert.pem"), filepath.Join(dir, "mender-cert-private.pem")
	secs := max(int(poll.Seconds()), 1)
	conf, err := json.MarshalIndent(map[string]any{
		"ServerURL": env.url, "ServerCertificate": env.caFile,
		"HttpsClient":               map[string]string{"Certificate": certFile, "Key": keyFile},
		"Security":                  map[string]string{"AuthPrivateKey": keyFile},
		"UpdatePollIntervalSeconds": secs, "InventoryPollIntervalSeconds": 4 * secs, "RetryPollIntervalSeconds": secs,
	}, "", "  ")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{certFile, pki.EncodeCertsPEM(cert), 0o644},
		{keyFile, keyPEM, 0o600},
		{filepath.Join(dir, "mender.conf"), conf, 0o644},
		{filepath.Join(dir, "var", "device_type"), []byte("device_type=" + demoDeviceType + "\n"), 0o644},
		{filepath.Join(dir, "share", "identity", "mender-device-identity"), []byte("#!/bin/sh\necho mac=" + demoAgentMAC + "\n"), 0o755},
		{filepath.Join(dir, "share", "inventory", "mender-inventory-demo"), []byte("#!/bin/sh\necho demo=simulator-demo\n"), 0o755},
	} {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// stopAndSummarize stops the agent and prints whether the backend
// accepted it and got its inventory. It reports false when the agent ran
// but was not accepted (its log then matters); the log path is printed
// only when the work directory stays (keep, or that failure).
func (a *demoAgent) stopAndSummarize(w io.Writer, backend *fakemender.Server, keep bool) bool {
	if a.cmd == nil {
		fmt.Fprintf(w, "device-agent: not run: %s\n", a.missing)
		return true
	}
	a.cancel()
	_ = a.cmd.Wait() // interrupted on purpose; its log tells how it ended
	logRef := ""
	if keep {
		logRef = "; log " + a.logPath
	}
	for _, dev := range backend.Devices() {
		if mac, _ := dev.IdentityData["mac"].(string); mac == demoAgentMAC {
			inv := "no inventory yet"
			if attrs := backend.Inventory(dev.ID); len(attrs) > 0 {
				inv = fmt.Sprintf("inventory with %d attributes", len(attrs))
			}
			ok := dev.Status == "accepted"
			if !ok {
				logRef = "; log " + a.logPath
			}
			fmt.Fprintf(w, "device-agent: %s by the backend (device %s), %s%s\n", dev.Status, dev.ID, inv, logRef)
			return ok
		}
	}
	fmt.Fprintf(w, "device-agent: never reached the backend; see its log %s\n", a.logPath)
	return false
}
