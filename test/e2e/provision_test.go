package e2e

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/provision"
)

// serialCable returns the two ends of a null-modem cable made of two pty
// pairs whose masters this test relays into each other: each program opens
// its end by path, as it would /dev/ttyUSB0.
func serialCable(t *testing.T) (a, b string) {
	t.Helper()
	m1, s1, err := pty.Open()
	require.NoError(t, err)
	m2, s2, err := pty.Open()
	require.NoError(t, err)
	go func() { _, _ = io.Copy(m1, m2) }()
	go func() { _, _ = io.Copy(m2, m1) }()
	t.Cleanup(func() { m1.Close(); m2.Close(); s1.Close(); s2.Close() })
	return s1.Name(), s2.Name()
}

// The whole factory flow with a TPM: `device-agent provision` over a serial
// line creates the key in swtpm and stores the certificate that `simulator
// station` signed; the station preauthorizes the device against `simulator
// serve`; then `device-agent daemon` is accepted through `serve --mtls` on
// its first auth request, and no private key was ever written to disk.
func TestProvisionOverSerialWithTPM(t *testing.T) {
	tpm := startSwtpm(t)
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	const mac = "02:00:00:00:0e:07"
	a := newAgent(t, b.url, b.ca, agentConf{mac: mac, update: 1, inv: 60, retry: 1})
	stationPort, devicePort := serialCable(t)

	records := filepath.Join(t.TempDir(), "records.jsonl")
	station := start(t, nil, bins.simulator, "station", "--port", stationPort, "--pki-dir", dir, "--cn-template", "board-{mac}",
		"--records", records, "--name", "e2e-line", "--preauth", b.mgmtURL, "--ca", b.ca, "--user", b.user, "--password", b.pass)

	device := t.TempDir()
	cert := filepath.Join(device, "mender-cert.pem")
	out, errOut, code := runAgent(t, a.env, a.args("provision", "--port", devicePort, "--tpm-device", tpm,
		"--key", "handle:0x81000100", "--cert", cert, "--timeout", "60s")...)
	require.Equal(t, 0, code, "provision:\n%s%s", out, errOut)
	assert.Contains(t, out, "created key handle:0x81000100")
	assert.Contains(t, out, "provisioned by e2e-line")
	assert.Contains(t, out, "new certificate CN=board-"+mac)
	assert.Contains(t, out, "station:     preauthorized")

	require.Eventually(t, station.exited, 20*time.Second, 20*time.Millisecond, "the station did not finish")
	require.NoError(t, station.err, "station: %s", station.stderr)
	assert.Contains(t, station.stdout.String(), "cn=board-"+mac)
	assert.Contains(t, station.stdout.String(), "tpm=true")
	assert.Contains(t, station.stdout.String(), "result=ok; preauthorized")
	simulator(t, "station", "verify-records", records)
	recs, err := provision.ReadRecords(records)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.True(t, recs[1].KeyInTPM)

	devs := b.devices(t)
	require.Len(t, devs, 1)
	assert.Equal(t, menderapi.DevStatusPreauthorized, devs[0].Status, "the station preauthorized the device")

	// check sees the provisioning and the TPM key.
	out, errOut, code = runAgent(t, a.env, a.args("check")...)
	require.Equal(t, 0, code, "check:\n%s%s", out, errOut)
	assert.Contains(t, out, "provisioned")
	assert.Contains(t, out, "by station e2e-line")

	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "board-"+mac)
	assert.Equal(t, 0, agent.stop(t, 2*time.Second))
	st := b.stats(t)
	assert.Zero(t, st.ok("auth", 401), "accepted on its first auth request")

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
