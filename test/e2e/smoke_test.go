package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// TestSmoke is what `make armtest` runs with the ARM binaries under
// qemu-user (E2E_AGENT, E2E_AGENT_WRAPPER): the binary that ships to a board
// prints its version, passes check against the fake backend, authenticates,
// sends inventory, polls, and stops cleanly on SIGTERM.
func TestSmoke(t *testing.T) {
	t.Logf("agent %s (wrapper %q)", bins.agent, bins.wrapper)
	stdout, _, code := runAgent(t, nil, "version")
	require.Equal(t, 0, code)
	assert.True(t, strings.HasPrefix(stdout, "device-agent "), "version output: %q", stdout)

	b := startServe(t, t.TempDir(), "--auto-accept")
	a := newAgent(t, b.url, b.ca, agentConf{mac: "02:00:00:00:5a:01", update: 1, inv: 60, retry: 1})

	stdout, stderr, code := runAgent(t, a.env, a.args("check")...)
	require.Equal(t, 0, code, "check failed:\n%s%s", stdout, stderr)
	assert.NotContains(t, stdout, "FAIL")
	assert.Contains(t, stdout, "PASS  auth")

	agent := startAgent(t, a.env, a.args("daemon")...)
	require.Eventually(t, func() bool { return b.stats(t).ok("next", 204) >= 2 }, 60*time.Second, 200*time.Millisecond,
		"agent did not poll")
	devs := b.devices(t)
	require.Len(t, devs, 1)
	var inv menderapi.InventoryDevice
	require.Eventually(t, func() bool {
		return b.mgmt(t, http.MethodGet, menderapi.PathInventoryMgmtPrefix+devs[0].ID, nil, &inv) == http.StatusOK &&
			attr(inv, "device_type") == "raspberrypi4"
	}, 30*time.Second, 200*time.Millisecond)
	assert.Equal(t, 0, agent.stop(t, 2*time.Second))
}
