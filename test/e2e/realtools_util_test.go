package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Helpers for the tests that run Mender's own tools against `simulator
// serve`: mender-cli, mender-artifact, Mender's Go client 3.4 (`mender`)
// and the C++ 5.1.0 client's `mender-update` from ../shared/peers.

// requireTool returns the path of a Debian tool the real-tools tests need;
// `make deps` installs it, so its absence is a failure, not a skip.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: `make deps` installs it (Debian %s): %v", name, pkg, err)
	}
	return path
}

// runTool runs a command to completion within two minutes and returns its
// combined output and exit code; it fails the test only when the command
// could not run at all.
func runTool(t *testing.T, dir string, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within 2 minutes:\n%s", name, args, out.String())
	}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "run %s: %v", name, err)
		return out.String(), ee.ExitCode()
	}
	return out.String(), 0
}

// menderCLI runs mender-cli with its own HOME (it keeps its token in
// $HOME/.cache/mender/authtoken and reads .mender-clirc from $HOME and the
// working directory) and with the backend's CA as the only trusted root
// (SSL_CERT_FILE, which Go's crypto/x509 honours), so the server
// certificate is really verified: no -k.
type menderCLI struct {
	bin, home, server, ca string
}

func newMenderCLI(t *testing.T, server, ca string) *menderCLI {
	t.Helper()
	return &menderCLI{bin: requireTool(t, "mender-cli", "mender-cli"), home: t.TempDir(), server: server, ca: ca}
}

// run returns mender-cli's combined output and exit code.
func (c *menderCLI) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	env := []string{"HOME=" + c.home, "XDG_CACHE_HOME=" + filepath.Join(c.home, ".cache"), "SSL_CERT_FILE=" + c.ca}
	return runTool(t, c.home, env, c.bin, append([]string{"--server", c.server}, args...)...)
}

// mustRun is run for commands that must succeed.
func (c *menderCLI) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, code := c.run(t, args...)
	require.Equal(t, 0, code, "mender-cli %v:\n%s", args, out)
	return out
}

func (c *menderCLI) login(t *testing.T, b *backend) {
	t.Helper()
	out := c.mustRun(t, "login", "--username", b.user, "--password", b.pass)
	require.Contains(t, out, "login successful")
	require.FileExists(t, filepath.Join(c.home, ".cache", "mender", "authtoken"), "mender-cli keeps its token there")
}

// payloadFile is one file of an artifact's payload.
type payloadFile struct {
	name string
	data []byte
}

// writeModuleImage writes a module-image artifact with mender-artifact 3.9
// (`write module-image`; its device-type flag is -t, it has no -c and no
// --no-progress) into dir and returns its path. The files are written in
// a scratch directory first, since the payload keeps their base names.
func writeModuleImage(t *testing.T, dir, moduleType, name, deviceType string, files []payloadFile) string {
	t.Helper()
	bin := requireTool(t, "mender-artifact", "mender-artifact")
	src := t.TempDir()
	args := []string{"write", "module-image", "-T", moduleType, "-t", deviceType, "-n", name}
	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(src, f.name), f.data, 0o644))
		args = append(args, "-f", f.name)
	}
	out := filepath.Join(dir, name+".mender")
	args = append(args, "-o", out)
	text, code := runTool(t, src, nil, bin, args...)
	require.Equal(t, 0, code, "mender-artifact %v:\n%s", args, text)
	return out
}

// writeSingleFileArtifact writes what Mender's single-file-artifact-gen
// makes: a single-file module-image that installs payload as
// destDir/fileName with mode 0644.
func writeSingleFileArtifact(t *testing.T, dir, name, deviceType, destDir, fileName string, payload []byte) string {
	t.Helper()
	return writeModuleImage(t, dir, "single-file", name, deviceType, []payloadFile{
		{"dest_dir", []byte(destDir + "\n")},
		{"filename", []byte(fileName + "\n")},
		{"permissions", []byte("644\n")},
		{fileName, payload},
	})
}

// Management API shapes of the deployments service (mender-server
// deployments model), as far as these tests read them.
type mgmtArtifact struct {
	ID                    string   `json:"id"`
	Name                  string   `json:"name"`
	DeviceTypesCompatible []string `json:"device_types_compatible"`
	Size                  int64    `json:"size"`
}

type mgmtDeviceDeployment struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Log    bool   `json:"log"`
}

// artifacts lists the artifacts the backend stores.
func (b *backend) artifacts(t *testing.T) []mgmtArtifact {
	t.Helper()
	var list []mgmtArtifact
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, "/api/management/v1/deployments/artifacts", nil, &list))
	return list
}

// artifactByName returns the stored artifact called name, failing when
// there is none.
func (b *backend) artifactByName(t *testing.T, name string) mgmtArtifact {
	t.Helper()
	list := b.artifacts(t)
	for _, a := range list {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("no artifact %q on the backend; it has %+v", name, list)
	return mgmtArtifact{}
}

// deploymentDevice returns the device's entry of a deployment ("" status
// when it has none yet).
func (b *backend) deploymentDevice(t *testing.T, depID, devID string) mgmtDeviceDeployment {
	t.Helper()
	var devs []mgmtDeviceDeployment
	require.Equal(t, http.StatusOK, b.mgmt(t, http.MethodGet, "/api/management/v1/deployments/deployments/"+depID+"/devices", nil, &devs))
	for _, d := range devs {
		if d.ID == devID {
			return d
		}
	}
	return mgmtDeviceDeployment{}
}

// mgmtRaw performs a management GET and returns the status and the body
// as it is (the device log is text, not JSON).
func (b *backend) mgmtRaw(t *testing.T, path string) (int, string) {
	t.Helper()
	tok := b.mgmtToken(t)
	req, err := http.NewRequest(http.MethodGet, b.mgmtURL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := b.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// tailFile returns the last n lines of a log file, or why it cannot.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(strings.TrimRight(string(data), "\n"), n)
}
