package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

// menderUpdate returns Mender's C++ 5.1.0 mender-update:
// $MENDER_PEERS_DIR/mender-5.1.0, else ../shared/peers/mender-5.1.0 next
// to the repository; the test skips loudly without it (CI has it).
func menderUpdate(t *testing.T) (bin, dataDir string) {
	t.Helper()
	dir := ""
	if peers := os.Getenv("MENDER_PEERS_DIR"); peers != "" {
		dir = filepath.Join(peers, "mender-5.1.0")
	} else {
		root, err := filepath.Abs(repoRoot)
		require.NoError(t, err)
		dir = filepath.Join(filepath.Dir(root), "shared", "peers", "mender-5.1.0")
	}
	bin = filepath.Join(dir, "bin", "mender-update")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("SKIPPED LOUDLY: Mender's C++ 5.1.0 client is not at %s (%v); set MENDER_PEERS_DIR to run this test", dir, err)
	}
	return bin, filepath.Join(dir, "share", "mender")
}

// One mender.conf serves both the agent and the real mender-update 5.1 when
// the agent's client key, a TPM handle, lives in the agent-only
// device-agent.conf: mender-update gets as far as the network, while the
// same HttpsClient in mender.conf makes it fail loading the key before any
// request. The agent reads both files, the overlay last.
func TestConfigLayoutWithMenderUpdate(t *testing.T) {
	bin, dataDir := menderUpdate(t)
	httpsClient := map[string]any{"Certificate": "/data/mender/device.crt", "Key": "handle:0x81000100"}
	write := func(path string, v map[string]any) {
		data, err := json.Marshal(v)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, data, 0o600))
	}
	install := func(confDir, datastore string) string {
		cmd := exec.Command(bin, "install", "http://127.0.0.1:1/artifact.mender")
		cmd.Env = append(os.Environ(), "MENDER_CONF_DIR="+confDir, "MENDER_DATASTORE_DIR="+datastore, "MENDER_DATA_DIR="+dataDir)
		done := make(chan struct{})
		var out []byte
		go func() { out, _ = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("mender-update install did not end within 60s")
		}
		return string(out)
	}

	dir := t.TempDir()
	datastore := filepath.Join(dir, "datastore")
	require.NoError(t, os.MkdirAll(datastore, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(datastore, "device_type"), []byte("device_type=test\n"), 0o644))

	split := filepath.Join(dir, "split")
	write(filepath.Join(split, config.ConfFileName), map[string]any{"ServerURL": "https://mender.example.com"})
	write(filepath.Join(split, config.AgentConfFileName), map[string]any{"HttpsClient": httpsClient, "TPM": map[string]any{"Device": "/dev/tpmrm0"}})
	out := install(split, datastore)
	assert.Contains(t, out, "Connection refused", "with the key in device-agent.conf, mender-update reaches the network:\n%s", out)
	assert.NotContains(t, out, "Could not load client certificate")

	together := filepath.Join(dir, "together")
	write(filepath.Join(together, config.ConfFileName), map[string]any{"ServerURL": "https://mender.example.com", "HttpsClient": httpsClient})
	out = install(together, datastore)
	assert.Contains(t, out, "Could not load client certificate", "sanity: a TPM handle in mender.conf breaks mender-update:\n%s", out)

	cfg, err := config.Load(config.LoadOptions{
		MainPath:    filepath.Join(split, config.ConfFileName),
		OverlayPath: config.DefaultOverlayPath(split),
		DataDir:     dataDir, DatastoreDir: datastore,
	})
	require.NoError(t, err)
	assert.Equal(t, "handle:0x81000100", cfg.KeyFile, "the agent uses the TPM key from the overlay")
	assert.Equal(t, []string{filepath.Join(split, config.ConfFileName), filepath.Join(split, config.AgentConfFileName)}, cfg.Sources)
}
