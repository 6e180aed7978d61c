package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// mender34 is Mender's Go client 3.4 (Debian mender-client) running as a
// daemon in a private mount namespace.
//
// The client has compiled-in paths and ignores MENDER_* variables: it reads
// /etc/mender/artifact_info and runs /usr/share/mender/identity,
// /usr/share/mender/inventory and /usr/share/mender/modules/v3. Its
// --config, --fallback-config and --data flags cover the rest (with --data
// it keeps its store, the module work directories and device_type there and
// never touches /var/lib/mender, which Debian makes a link to /data/mender).
// So inside `unshare -m` the test's own etc and share directories are bound
// over /etc/mender and /usr/share/mender; the host's files are never
// touched, and the mounts end with the process. /var/lib/mender is bound to
// the test's data directory too when it exists (on this Debian image it is
// a dangling link, since /data does not exist, and nothing follows it).
type mender34 struct {
	*proc
	root, etc, share, data, log string
}

// failModule is an update module that fails ArtifactInstall and says so on
// stderr, which the client copies into the deployment log; every other state
// succeeds, and its empty answers to queries mean "No".
const failModule = `case "$1" in
ArtifactInstall) echo "e2e-fail module: ArtifactInstall refused on purpose" >&2; exit 1 ;;
esac
exit 0`

// mender34Namespace binds the test's directories ($1 etc, $2 share, $3
// data) and execs the rest of the arguments.
const mender34Namespace = `set -e
mount --bind "$1" /etc/mender
mount --bind "$2" /usr/share/mender
if [ -d /var/lib/mender ]; then mount --bind "$3" /var/lib/mender; fi
shift 3
exec "$@"`

// startMender34 starts the client as a device of b with the `simulator pki
// device` certificate in certDir (its mender.conf.fragment merged into
// mender.conf), identity mac, the given device type and artifact
// release-1 installed.
func startMender34(t *testing.T, b *backend, certDir, mac, deviceType string) *mender34 {
	t.Helper()
	bin := requireTool(t, "mender", "mender-client")
	requireTool(t, "unshare", "util-linux")
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: Mender's Go client 3.4 has compiled-in paths (/etc/mender, /usr/share/mender); " +
			"the test binds its own directories over them in a private mount namespace, which needs root")
	}
	stock := "/usr/share/mender/modules/v3/single-file"
	module, err := os.ReadFile(stock)
	require.NoError(t, err, "the single-file update module of Debian mender-client (`make deps` installs it)")

	m := &mender34{root: t.TempDir()}
	m.etc, m.share, m.data = filepath.Join(m.root, "etc"), filepath.Join(m.root, "share"), filepath.Join(m.root, "data")
	m.log = filepath.Join(m.root, "mender.log")
	for _, d := range []string{m.etc, filepath.Join(m.share, "identity"), filepath.Join(m.share, "inventory"),
		filepath.Join(m.share, "modules", "v3"), m.data} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	writeScript(t, filepath.Join(m.share, "identity", "mender-device-identity"), "echo mac="+mac)
	writeScript(t, filepath.Join(m.share, "inventory", "mender-inventory-e2e"), "echo e2e_client=mender-3.4")
	require.NoError(t, os.WriteFile(filepath.Join(m.share, "modules", "v3", "single-file"), module, 0o755))
	writeScript(t, filepath.Join(m.share, "modules", "v3", "e2e-fail"), failModule)
	require.NoError(t, os.WriteFile(filepath.Join(m.etc, "artifact_info"), []byte("artifact_name=release-1\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(m.data, "device_type"), []byte("device_type="+deviceType+"\n"), 0o644))

	conf := readJSON(t, filepath.Join(certDir, "mender.conf.fragment"))
	for k, v := range map[string]any{
		"ServerURL":                    b.url,
		"ServerCertificate":            b.ca,
		"DeviceTypeFile":               filepath.Join(m.data, "device_type"),
		"DBus":                         map[string]any{"Enabled": false},
		"UpdatePollIntervalSeconds":    1,
		"InventoryPollIntervalSeconds": 1,
		"RetryPollIntervalSeconds":     1,
		"ModuleTimeoutSeconds":         60,
	} {
		conf[k] = v
	}
	writeJSON(t, filepath.Join(m.etc, "mender.conf"), conf)

	m.proc = start(t, nil, "unshare", "-m", "--propagation", "private", "sh", "-c", mender34Namespace, "sh",
		m.etc, m.share, m.data,
		bin, "--no-syslog", "--log-level", "debug", "--log-file", m.log,
		"--config", "/etc/mender/mender.conf", "--fallback-config", "", "--data", m.data, "daemon")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mender 3.4 log (last 80 lines of %s):\n%s", m.log, tailFile(m.log, 80))
		}
	})
	return m
}

// waitMender34Accepted waits until the device with identity mac is
// accepted and has reported its inventory, and returns its id.
func waitMender34Accepted(t *testing.T, b *backend, m *mender34, mac string) string {
	t.Helper()
	var id string
	require.Eventually(t, func() bool {
		for _, d := range b.devices(t) {
			if d.IdentityData["mac"] == mac && d.Status == menderapi.DevStatusAccepted {
				id = d.ID
				return true
			}
		}
		return m.exited()
	}, 60*time.Second, 200*time.Millisecond, "mender 3.4 was not accepted through the ambassador")
	require.False(t, m.exited(), "mender 3.4 exited: %s", m.stderr)
	require.Eventually(t, func() bool { return inventoryArtifact(t, b, id) == "release-1" }, 30*time.Second, 200*time.Millisecond,
		"mender 3.4's inventory (artifact_name release-1 from artifact_info) never arrived")
	return id
}

// inventoryArtifact returns the artifact_name a device reported.
func inventoryArtifact(t *testing.T, b *backend, id string) any {
	t.Helper()
	var inv menderapi.InventoryDevice
	if b.mgmt(t, http.MethodGet, menderapi.PathInventoryMgmtPrefix+id, nil, &inv) != http.StatusOK {
		return nil
	}
	return attr(inv, "artifact_name")
}

var deploymentCreatedRE = regexp.MustCompile(`deployment (\S+) created`)

// deploy runs `simulator deploy` with artifact to one device and returns
// its output, its exit code and the id of the deployment it created.
func deploy(t *testing.T, b *backend, artifact, deviceID string) (string, int, string) {
	t.Helper()
	ctx := t.Context()
	cmd := exec.CommandContext(ctx, bins.simulator, "deploy", "--server", b.mgmtURL, "--ca", b.ca, "--user", b.user,
		"--artifact", artifact, "--devices", deviceID, "--interval", "500ms", "--timeout", "2m")
	cmd.Env = append(os.Environ(), "SIMULATOR_PASSWORD="+b.pass)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "run simulator deploy: %v", err)
		code = ee.ExitCode()
	}
	m := deploymentCreatedRE.FindStringSubmatch(out)
	require.NotNil(t, m, "simulator deploy printed no deployment id:\n%s", out)
	return out, code, m[1]
}

// Mender's Go client 3.4 as a device through `simulator serve --mtls`, on a
// `simulator pki device` certificate: it is accepted with no manual step,
// `simulator deploy` uploads and deploys a single-file artifact made by
// mender-artifact, the client installs the file and reports success, and
// its inventory then names the new artifact. A second deployment, of an
// artifact whose update module fails, ends in failure: deploy exits 1 and
// the device's log, which carries the module's message, is served by the
// management API.
func TestRealToolsMenderClient34Deploy(t *testing.T) {
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	certDir := filepath.Join(t.TempDir(), "device")
	simulator(t, "pki", "device", "--dir", dir, "--cn", "dev-mender34", "--out", certDir, "--device-path", certDir)
	const mac, deviceType = "02:00:00:00:34:01", "e2e-mender34"
	m := startMender34(t, b, certDir, mac, deviceType)
	devID := waitMender34Accepted(t, b, m, mac)

	dest := filepath.Join(t.TempDir(), "installed")
	require.NoError(t, os.MkdirAll(dest, 0o755))
	payload := []byte(fmt.Sprintf("installed by mender 3.4 at %s\n", time.Now().UTC().Format(time.RFC3339Nano)))
	good := writeSingleFileArtifact(t, t.TempDir(), "release-2", deviceType, dest, "payload.txt", payload)

	out, code, depID := deploy(t, b, good, devID)
	require.Equal(t, 0, code, "simulator deploy of release-2:\n%s", out)
	assert.Contains(t, out, devID)
	assert.Contains(t, out, "success")
	got, err := os.ReadFile(filepath.Join(dest, "payload.txt"))
	require.NoError(t, err, "the single-file module installed the payload")
	assert.Equal(t, payload, got)
	assert.Equal(t, "success", b.deploymentDevice(t, depID, devID).Status)
	require.Eventually(t, func() bool { return inventoryArtifact(t, b, devID) == "release-2" }, 30*time.Second, 200*time.Millisecond,
		"the inventory never reported artifact_name release-2")

	bad := writeModuleImage(t, t.TempDir(), "e2e-fail", "release-3-broken", deviceType,
		[]payloadFile{{"thing.txt", []byte("never installed\n")}})
	out, code, depID = deploy(t, b, bad, devID)
	assert.Equal(t, 1, code, "simulator deploy of a failing artifact exits 1:\n%s", out)
	assert.Contains(t, out, "failure")
	dd := b.deploymentDevice(t, depID, devID)
	assert.Equal(t, "failure", dd.Status)
	assert.True(t, dd.Log, "the device deployment says it has a log")
	status, log := b.mgmtRaw(t, "/api/management/v1/deployments/deployments/"+depID+"/devices/"+devID+"/log")
	require.Equal(t, http.StatusOK, status, "device log: %s", log)
	assert.Contains(t, log, "ArtifactInstall refused on purpose", "the module's stderr is in the log")
	assert.Contains(t, out, "log of "+devID, "deploy prints the end of the failed device's log")
	assert.NoFileExists(t, filepath.Join(dest, "thing.txt"))
	got, err = os.ReadFile(filepath.Join(dest, "payload.txt"))
	require.NoError(t, err)
	assert.Equal(t, payload, got, "the failed deployment left release-2's file alone")
	assert.False(t, m.exited(), "mender 3.4 keeps running")
}
