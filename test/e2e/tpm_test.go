package e2e

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startSwtpm runs swtpm (TPM 2.0, TCP command port) on a free loopback port
// with its own state directory and returns the agent's device string.
func startSwtpm(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("SKIPPED LOUDLY: swtpm is not installed; run `make deps` (Debian swtpm, swtpm-tools) to run the TPM end-to-end test")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	state := t.TempDir()
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", "type=unixio,path="+filepath.Join(state, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}, 10*time.Second, 20*time.Millisecond, "swtpm did not listen")
	return "tcp://" + addr
}

// The factory flow with a TPM: `device-agent keygen` creates the key in the
// TPM and writes a CSR, `simulator pki sign-csr` signs it, and
// `device-agent daemon` (key handle:0x81000100 for both mTLS and auth
// requests) is accepted automatically through `simulator serve --mtls`. No
// private key is ever written to the device's disk.
func TestTPMKeygenSignCSRDaemon(t *testing.T) {
	tpm := startSwtpm(t)
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")

	device := t.TempDir()
	csr := filepath.Join(device, "device.csr")
	stdout, stderr, code := runAgent(t, nil, "keygen", "--tpm-device", tpm, "--key", "handle:0x81000100",
		"--cn", "tpm-device-1", "--csr", csr, "--config", "", "--fallback-config", "")
	require.Equal(t, 0, code, "keygen:\n%s%s", stdout, stderr)
	cert := filepath.Join(device, "mender-cert.pem")
	simulator(t, "pki", "sign-csr", "--dir", dir, "--csr", csr, "--out", cert)

	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:0e:01", update: 1, inv: 60, retry: 1, extra: map[string]any{
		"HttpsClient": map[string]any{"Certificate": cert, "Key": "handle:0x81000100"},
		"Security":    map[string]any{"AuthPrivateKey": "handle:0x81000100"},
		"TPM":         map[string]any{"Device": tpm},
	}})
	stdout, stderr, code = runAgent(t, a.env, a.args("check")...)
	require.Equal(t, 0, code, "check:\n%s%s", stdout, stderr)
	assert.Contains(t, stdout, "0x81000100")

	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "tpm-device-1")
	assert.Equal(t, 0, agent.stop(t, 2*time.Second))

	for _, root := range []string{device, a.dir} {
		require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			assert.False(t, strings.Contains(string(data), "PRIVATE KEY"), "private key material on disk: %s", p)
			return nil
		}))
	}
}
