package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mender-cli 1.9 (Debian) against `simulator serve --mtls`, on the
// backend's own address as an operator would use it: login, the device
// list once a device authenticated through the ambassador, the upload of
// an artifact made by mender-artifact and the artifact list; a wrong
// password and corrupt uploads are refused, and a refused upload stores
// nothing.
func TestRealToolsMenderCLI(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	cli := newMenderCLI(t, b.mgmtURL, b.ca)

	out, code := cli.run(t, "login", "--username", b.user, "--password", "not-the-password")
	assert.NotEqual(t, 0, code, "a wrong password fails:\n%s", out)
	assert.Contains(t, out, "401")
	assert.NoFileExists(t, filepath.Join(cli.home, ".cache", "mender", "authtoken"), "no token after a failed login")
	cli.login(t, b)

	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-cli", "--out", certDir)
	a := mtlsAgent(t, b.url, b.ca, certDir, "02:00:00:00:c1:01")
	startAgent(t, a.env, a.args("daemon")...)
	dev := waitAcceptedAndPolling(t, b, "dev-cli")

	out = cli.mustRun(t, "devices", "list")
	assert.Contains(t, out, dev.ID, "devices list shows the device")
	raw := cli.mustRun(t, "devices", "list", "--raw")
	var devs []struct {
		ID           string         `json:"id"`
		Status       string         `json:"status"`
		IdentityData map[string]any `json:"identity_data"`
	}
	require.NoError(t, json.Unmarshal([]byte(jsonPart(raw)), &devs), "devices list --raw prints the server's JSON:\n%s", raw)
	require.Len(t, devs, 1)
	assert.Equal(t, dev.ID, devs[0].ID)
	assert.Equal(t, "accepted", devs[0].Status)
	assert.Equal(t, "02:00:00:00:c1:01", devs[0].IdentityData["mac"])

	art := writeSingleFileArtifact(t, t.TempDir(), "release-cli-1", "raspberrypi4", "/opt/e2e", "hello.txt", []byte("hello from mender-cli\n"))
	out = cli.mustRun(t, "artifacts", "upload", "--no-progress", "--description", "uploaded by mender-cli", art)
	assert.Contains(t, out, "upload successful")
	stored := b.artifactByName(t, "release-cli-1")
	assert.Equal(t, []string{"raspberrypi4"}, stored.DeviceTypesCompatible)
	fi, err := os.Stat(art)
	require.NoError(t, err)
	assert.Equal(t, fi.Size(), stored.Size, "the stored artifact is the uploaded file")

	out = cli.mustRun(t, "artifacts", "list")
	assert.Contains(t, out, "release-cli-1")
	assert.Contains(t, out, stored.ID)

	good, err := os.ReadFile(art)
	require.NoError(t, err)
	corrupt := []struct {
		name string
		data []byte
	}{
		{"not an artifact", []byte("this is not a Mender artifact\n")},
		{"truncated", good[:len(good)/2]},
		{"empty", nil},
	}
	for _, c := range corrupt {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "corrupt.mender")
			require.NoError(t, os.WriteFile(path, c.data, 0o644))
			out, code := cli.run(t, "artifacts", "upload", "--no-progress", path)
			assert.NotEqual(t, 0, code, "mender-cli reports the refused upload:\n%s", out)
			assert.Contains(t, out, "FAILURE")
			assert.Contains(t, out, "status 400", "the backend refuses it as a bad request")
			assert.NotContains(t, out, "upload successful")
			list := b.artifacts(t)
			assert.Len(t, list, 1, "a refused upload stores nothing: %+v", list)
		})
	}
	out, code = cli.run(t, "artifacts", "upload", "--no-progress", art)
	assert.NotEqual(t, 0, code, "the same artifact twice is a conflict:\n%s", out)
	assert.Contains(t, out, "status 409")
	out = cli.mustRun(t, "artifacts", "list")
	assert.Equal(t, 1, strings.Count(out, "release-cli-1"), "artifacts list still shows exactly the good artifact:\n%s", out)
}

// jsonPart drops what mender-cli prints before its JSON (it says
// "Configuration file not found. Continuing." when it has no
// .mender-clirc).
func jsonPart(s string) string {
	if i := strings.IndexAny(s, "[{"); i >= 0 {
		return s[i:]
	}
	return s
}
