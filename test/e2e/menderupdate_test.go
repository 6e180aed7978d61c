package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// menderPeer returns the directory of Mender's C++ 5.1.0 client
// (bin/mender-update, share/mender): $MENDER_PEERS_DIR/mender-5.1.0, else
// ../shared/peers/mender-5.1.0 next to the repository. Without it the test
// skips loudly; CI has it.
func menderPeer(t *testing.T) string {
	t.Helper()
	var dir string
	if peers := os.Getenv("MENDER_PEERS_DIR"); peers != "" {
		dir = filepath.Join(peers, "mender-5.1.0")
	} else {
		root, err := filepath.Abs(filepath.Join("..", ".."))
		require.NoError(t, err)
		dir = filepath.Join(filepath.Dir(root), "shared", "peers", "mender-5.1.0")
	}
	if _, err := os.Stat(filepath.Join(dir, "bin", "mender-update")); err != nil {
		t.Skipf("SKIPPED LOUDLY: Mender's C++ 5.1.0 client is not at %s (%v); "+
			"set MENDER_PEERS_DIR to the directory holding mender-5.1.0/ to run this test", dir, err)
	}
	out, code := runTool(t, dir, nil, filepath.Join(dir, "bin", "mender-update"), "--version")
	if code != 0 {
		t.Fatalf("%s/bin/mender-update does not run (`make deps` installs its libraries, e.g. liblmdb0, libarchive13):\n%s", dir, out)
	}
	return dir
}

// Mender's C++ 5.1.0 `mender-update install URL` standalone, as an mTLS
// device: the artifact was uploaded with mender-cli, its signed download
// link comes from the management API, and the device fetches it through
// the ambassador of `simulator serve --mtls` with its `simulator pki
// device` certificate; then `commit`. The file is installed and the client
// reports the new artifact.
func TestRealToolsMenderUpdate51Install(t *testing.T) {
	peer := menderPeer(t)
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	cli := newMenderCLI(t, b.mgmtURL, b.ca)
	cli.login(t, b)

	const deviceType = "e2e-mender51"
	dest := filepath.Join(t.TempDir(), "installed")
	require.NoError(t, os.MkdirAll(dest, 0o755))
	payload := []byte("installed by mender-update 5.1.0\n")
	art := writeSingleFileArtifact(t, t.TempDir(), "release-51", deviceType, dest, "payload.txt", payload)
	cli.mustRun(t, "artifacts", "upload", "--no-progress", art)
	stored := b.artifactByName(t, "release-51")

	var link struct {
		URI    string `json:"uri"`
		Expire string `json:"expire"`
	}
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, "/api/management/v1/deployments/artifacts/"+stored.ID+"/download", nil, &link))
	require.True(t, strings.HasPrefix(link.URI, b.mgmtURL+"/api/devices/"),
		"the link is on the host the management call used, under the device API: %s", link.URI)
	assert.NotEmpty(t, link.Expire)
	// The device reaches the backend only through the ambassador, which
	// proxies /api/devices/ to it; the link's signature does not cover the host.
	viaAmbassador := b.url + strings.TrimPrefix(link.URI, b.mgmtURL)

	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-mender51", "--out", certDir, "--device-path", certDir)
	conf, store := t.TempDir(), t.TempDir()
	mc := readJSON(t, filepath.Join(certDir, "mender.conf.fragment"))
	mc["ServerURL"] = b.url
	mc["ServerCertificate"] = b.ca
	writeJSON(t, filepath.Join(conf, "mender.conf"), mc)
	require.NoError(t, os.WriteFile(filepath.Join(store, "device_type"), []byte("device_type="+deviceType+"\n"), 0o644))
	env := []string{"MENDER_CONF_DIR=" + conf, "MENDER_DATA_DIR=" + filepath.Join(peer, "share", "mender"), "MENDER_DATASTORE_DIR=" + store}
	update := filepath.Join(peer, "bin", "mender-update")

	// Without the device certificate the ambassador refuses the handshake:
	// nothing is installed.
	noCert := t.TempDir()
	writeJSON(t, filepath.Join(noCert, "mender.conf"), map[string]any{"ServerURL": b.url, "ServerCertificate": b.ca})
	out, code := runTool(t, store, append(env, "MENDER_CONF_DIR="+noCert), update, "install", viaAmbassador)
	assert.Equal(t, 1, code, "mender-update install without a client certificate:\n%s", out)
	assert.Contains(t, out, "certificate required")
	assert.Contains(t, out, "System not modified")
	assert.NoFileExists(t, filepath.Join(dest, "payload.txt"))

	before := b.stats(t).ok("download", http.StatusOK)
	out, code = runTool(t, store, env, update, "install", viaAmbassador)
	require.Equal(t, 0, code, "mender-update install %s:\n%s", viaAmbassador, out)
	assert.Contains(t, out, "Installed, but not committed", "single-file supports rollback, so install stops before commit")
	assert.Equal(t, before+1, b.stats(t).ok("download", http.StatusOK), "the artifact came from the backend, through the ambassador")
	got, err := os.ReadFile(filepath.Join(dest, "payload.txt"))
	require.NoError(t, err, "the single-file module installed the payload")
	assert.Equal(t, payload, got)

	out, code = runTool(t, store, env, update, "commit")
	require.Equal(t, 0, code, "mender-update commit:\n%s", out)
	assert.Contains(t, out, "Committed")
	out, code = runTool(t, store, env, update, "show-artifact")
	require.Equal(t, 0, code, "mender-update show-artifact:\n%s", out)
	assert.Equal(t, "release-51", strings.TrimSpace(lastLines(strings.TrimSpace(out), 1)))
}
