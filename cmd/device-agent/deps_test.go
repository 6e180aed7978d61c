package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The agent binary ships to boards: it must not link the test backend, the
// ambassador, the fleet simulator, test helpers or cgo-only code (the
// go-tpm-tools simulator).
func TestAgentDependencies(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm", "GOARM=7")
	out, err := cmd.Output()
	require.NoError(t, err, "go list -deps")
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/mender-mtls/mtls-agent/internal/client", "sanity: the list holds the agent's own packages")
	forbidden := []string{
		"github.com/mender-mtls/mtls-agent/internal/ambassador",
		"github.com/mender-mtls/mtls-agent/internal/fakemender",
		"github.com/mender-mtls/mtls-agent/internal/fleet",
		"github.com/mender-mtls/mtls-agent/internal/pki/pkitest",
		"net/http/httptest",
		"testing",
		"github.com/stretchr/testify/assert",
		"github.com/google/go-tpm-tools/simulator", // cgo; tests only
		"github.com/google/go-tpm-tools/client",    // a large module graph the agent does not need
	}
	for _, d := range deps {
		require.NotContains(t, d, "go-tpm-tools", "device-agent must not link go-tpm-tools (%s)", d)
	}
	require.Contains(t, deps, "github.com/google/go-tpm/tpm2", "sanity: the agent has its TPM backend")
	for _, f := range forbidden {
		require.NotContains(t, deps, f, "device-agent must not link %s", f)
	}
}
