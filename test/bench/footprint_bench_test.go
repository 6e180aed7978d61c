package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// armv7Budget is the project's limit for the stripped armv7 agent, in MB
// (10^6 bytes).
const armv7Budget = 7.0

// footprintBinaries returns the directory with the binaries `make build
// cross` produces: BENCH_BIN when set (make bench sets it), else a fresh
// build into a temporary directory. They are the shipped builds: stripped,
// HTTP/2 omitted, with the Makefile's flags.
func footprintBinaries(b *testing.B) string {
	b.Helper()
	if dir := os.Getenv("BENCH_BIN"); dir != "" {
		return dir
	}
	dir := filepath.Join(b.TempDir(), "bin")
	cmd := exec.Command("make", "-s", "-C", "../..", "BIN="+dir, "build", "cross")
	cmd.Env = append(os.Environ(), "MAKEFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("make build cross: %v\n%s", err, out)
	}
	return dir
}

// BenchmarkAgentFootprint reports what the agent costs on a board: the
// size of the stripped static binary per board (size/armv6, size/armv7,
// size/arm64, in MB of 10^6 bytes), and the resident memory of the host
// build after a minute of polling (rss: VmRSS now and VmHWM, its peak, in
// MiB), running as `device-agent daemon` against `simulator serve
// --auto-accept` on loopback with 1 s update, inventory and retry
// intervals. FOOTPRINT_SECONDS shortens the minute.
func BenchmarkAgentFootprint(b *testing.B) {
	bin := footprintBinaries(b)
	for _, board := range []string{"armv6", "armv7", "arm64"} {
		b.Run("size/"+board, func(b *testing.B) {
			path := filepath.Join(bin, "linux_"+board, "device-agent")
			var size int64
			for range b.N {
				fi, err := os.Stat(path)
				if err != nil {
					b.Fatalf("%v (make cross builds it)", err)
				}
				size = fi.Size()
			}
			mb := float64(size) / 1e6
			b.ReportMetric(0, "ns/op") // a size, not a speed: benchtable shows no speed columns
			b.ReportMetric(mb, "MB")
			if board == "armv7" && mb > armv7Budget && b.N == 1 { // once, not per round
				b.Logf("over budget: stripped armv7 agent is %.3f MB, the budget is %.1f MB", mb, armv7Budget)
			}
		})
	}
	// The cost of the D-Bus code (godbus and the io.mender.Authentication1
	// service), which the mender-auth role needs: the armv7 agent built
	// with -tags nodbus, and the difference.
	b.Run("size/armv7-nodbus", func(b *testing.B) {
		with, err := os.Stat(filepath.Join(bin, "linux_armv7", "device-agent"))
		if err != nil {
			b.Fatalf("%v (make cross builds it)", err)
		}
		var size int64
		for range b.N {
			out := filepath.Join(b.TempDir(), "device-agent")
			cmd := exec.Command("make", "-s", "-C", "../..", "build-armv7", "TAGS=nodbus", "BIN="+filepath.Dir(filepath.Dir(out)))
			cmd.Env = append(os.Environ(), "MAKEFLAGS=")
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("make build-armv7 TAGS=nodbus: %v\n%s", err, o)
			}
			fi, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(out)), "linux_armv7", "device-agent"))
			if err != nil {
				b.Fatal(err)
			}
			size = fi.Size()
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(size)/1e6, "MB")
		b.ReportMetric(float64(with.Size()-size)/1e3, "kB-dbus")
	})
	b.Run("rss", func(b *testing.B) {
		d := time.Minute
		if s := envInt(b, "FOOTPRINT_SECONDS", 0); s > 0 {
			d = time.Duration(s) * time.Second
		}
		for range b.N {
			rss, hwm, polls := agentRSS(b, bin, d)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(rss)/1024, "MiB-VmRSS")
			b.ReportMetric(float64(hwm)/1024, "MiB-VmHWM")
			b.ReportMetric(float64(polls), "polls")
		}
	})
}

// agentRSS runs the agent daemon against simulator serve for d and returns
// its VmRSS and VmHWM in KiB and the number of deployment polls the backend
// answered.
func agentRSS(b *testing.B, bin string, d time.Duration) (rss, hwm int64, polls int) {
	b.Helper()
	dir := b.TempDir()
	const user, pass = "admin@example.com", "bench-secret"
	srv := startChild(b, filepath.Join(bin, "simulator"), nil, "serve", "--dir", filepath.Join(dir, "serve"),
		"--listen", "127.0.0.1:0", "--user", user, "--password", pass, "--auto-accept")
	url, ca := serveAddress(b, srv)

	conf := filepath.Join(dir, "mender.conf")
	data, share := filepath.Join(dir, "var"), filepath.Join(dir, "share")
	for _, sub := range []string{data, filepath.Join(share, "identity"), filepath.Join(share, "inventory")} {
		if err := os.MkdirAll(sub, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(share, "identity", "mender-device-identity"):  "#!/bin/sh\necho mac=02:00:00:00:fe:01\n",
		filepath.Join(share, "inventory", "mender-inventory-bench"): "#!/bin/sh\necho bench=footprint\n",
		filepath.Join(data, "device_type"):                          "device_type=raspberrypi4\n",
	}
	js, err := json.Marshal(map[string]any{"ServerURL": url, "ServerCertificate": ca,
		"UpdatePollIntervalSeconds": 1, "InventoryPollIntervalSeconds": 1, "RetryPollIntervalSeconds": 1})
	if err != nil {
		b.Fatal(err)
	}
	files[conf] = string(js)
	for path, body := range files {
		if err := os.WriteFile(path, []byte(body), 0o700); err != nil {
			b.Fatal(err)
		}
	}
	env := []string{"MENDER_DATA_DIR=" + share, "MENDER_DATASTORE_DIR=" + data, "MENDER_CONF_DIR=" + dir}
	agent := startChild(b, filepath.Join(bin, "device-agent"), env,
		"daemon", "--config", conf, "--fallback-config", "", "--data", data)

	time.Sleep(d) // the measurement: a minute of the agent's life
	rss, hwm = procStatus(b, agent.cmd.Process.Pid)
	polls = nextPolls(b, url, ca, user, pass)
	if code := agent.stop(); code != 0 {
		b.Fatalf("device-agent exited %d after SIGTERM:\n%s", code, agent.out)
	}
	if polls == 0 {
		b.Fatalf("the agent never polled:\n%s", agent.out)
	}
	return rss, hwm, polls
}

// child is a process started by a benchmark, stopped at its end.
type child struct {
	cmd  *exec.Cmd
	out  *syncWriter
	done chan struct{}
}

// syncWriter collects a child's output.
type syncWriter struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func startChild(b *testing.B, name string, env []string, args ...string) *child {
	b.Helper()
	w := &syncWriter{}
	c := &child{cmd: exec.Command(name, args...), out: w, done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout, c.cmd.Stderr = w, w
	if err := c.cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	b.Cleanup(func() { c.stop() })
	return c
}

// stop sends SIGTERM, kills after 10 s, and returns the exit code.
func (c *child) stop() int {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	return c.cmd.ProcessState.ExitCode()
}

// serveAddress waits for simulator serve to print its URL and CA file.
func serveAddress(b *testing.B, srv *child) (url, ca string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for url == "" || ca == "" {
		select {
		case <-srv.done:
			b.Fatalf("simulator serve exited:\n%s", srv.out)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("simulator serve printed no URL and CA within 30 s:\n%s", srv.out)
		}
		time.Sleep(20 * time.Millisecond) // waiting for start-up output, not timing anything
		sc := bufio.NewScanner(strings.NewReader(srv.out.String()))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "URL:" {
				url = f[1]
			}
			if len(f) >= 2 && f[0] == "CA:" {
				ca = f[1]
			}
		}
	}
	return url, ca
}

// procStatus returns VmRSS and VmHWM of pid in KiB.
func procStatus(b *testing.B, pid int) (rss, hwm int64) {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read the agent's memory: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	if rss == 0 || hwm == 0 {
		b.Fatalf("no VmRSS/VmHWM in /proc/%d/status:\n%s", pid, data)
	}
	return rss, hwm
}

// nextPolls logs in to the fake backend's management API and returns how
// many deployment polls it answered.
func nextPolls(b *testing.B, url, caFile, user, pass string) int {
	b.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	call := func(method, path, token string) []byte {
		req, err := http.NewRequestWithContext(context.Background(), method, url+path, nil)
		if err != nil {
			b.Fatal(err)
		}
		if token == "" {
			req.SetBasicAuth(user, pass)
		} else {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("%s %s: %d %v", method, path, resp.StatusCode, err)
		}
		return body
	}
	token := string(call(http.MethodPost, menderapi.PathLogin, ""))
	var st fakemender.Stats
	if err := json.Unmarshal(call(http.MethodGet, "/api/management/v1/fake/stats", token), &st); err != nil {
		b.Fatalf("decode stats: %v", err)
	}
	// A poll is one or two requests (v2, and v1 after a 404 from a
	// backend without v2); it ends with 204 (nothing new) or 200.
	return st.ByRouteStatus[fakemender.RouteNext][http.StatusNoContent] + st.ByRouteStatus[fakemender.RouteNext][http.StatusOK]
}
