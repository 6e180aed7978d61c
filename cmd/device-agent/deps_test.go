package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
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
		"github.com/mender-mtls/mtls-agent/internal/dbusauth/dbustest",
		"github.com/coder/websocket",           // forwarder tests only: the forwarder splices upgrades itself
		"github.com/godbus/dbus/v5/introspect", // the service answers Introspect with its own XML
		"github.com/godbus/dbus/v5/prop",
		"github.com/fxamacker/cbor/v2", // the station's codec; the agent has internal/provision/cborlite
		"github.com/x448/float16",
		"github.com/mender-mtls/mtls-agent/internal/provision/cborfx",
	}
	for _, d := range deps {
		require.NotContains(t, d, "go-tpm-tools", "device-agent must not link go-tpm-tools (%s)", d)
	}
	require.Contains(t, deps, "github.com/google/go-tpm/tpm2", "sanity: the agent has its TPM backend")
	require.Contains(t, deps, "github.com/godbus/dbus/v5", "sanity: the agent serves io.mender.Authentication1")
	for _, f := range forbidden {
		require.NotContains(t, deps, f, "device-agent must not link %s", f)
	}
}

// agentTag is the build tag every agent build carries (Makefile): net/http
// without its bundled HTTP/2, which the agent never speaks.
const agentTag = "nethttpomithttp2"

// http2Packages are what net/http's bundled HTTP/2 links in.
var http2Packages = []string{
	"golang.org/x/net/http2",
	"golang.org/x/net/http2/hpack",
	"vendor/golang.org/x/net/http2/hpack",
	"net/http/internal/httpcommon",
}

// goList runs go list for the armv7 agent with tags and returns its output
// split into fields.
func goList(t *testing.T, tags string, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-tags", tags}, args...)...)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm", "GOARM=7")
	out, err := cmd.Output()
	require.NoError(t, err, "go list -tags %q %v", tags, args)
	return strings.Fields(string(out))
}

// The agent speaks HTTP/1.1 only; built with nethttpomithttp2 it links
// neither net/http's bundled HTTP/2 (h2_bundle.go) nor what that pulls in.
// The untagged build is the sanity check that the test can see HTTP/2.
func TestAgentOmitsHTTP2(t *testing.T) {
	tests := []struct {
		name   string
		tags   string
		wantH2 bool
	}{
		{"untagged build links HTTP/2 (sanity)", "", true},
		{"agent build with " + agentTag, agentTag, false},
		{"agent build with " + agentTag + " and notpm", agentTag + ",notpm", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deps := goList(t, tt.tags, "-deps", ".")
			var linked []string
			for _, p := range http2Packages {
				if slices.Contains(deps, p) {
					linked = append(linked, p)
				}
			}
			files := goList(t, tt.tags, "-f", "{{join .GoFiles \" \"}}", "net/http")
			bundled := slices.Contains(files, "h2_bundle.go")
			if tt.wantH2 {
				assert.True(t, bundled, "sanity: an untagged net/http has h2_bundle.go")
				assert.NotEmpty(t, linked, "sanity: an untagged agent links hpack")
				return
			}
			assert.False(t, bundled, "net/http built with %s must not compile h2_bundle.go", tt.tags)
			assert.Empty(t, linked, "device-agent built with %s must not link HTTP/2 packages", tt.tags)
		})
	}
}

// Every agent build of the Makefile (host and boards) carries agentTag,
// combined with TAGS; the simulator builds do not need it.
func TestMakefileAgentBuildsOmitHTTP2(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("SKIP: make is not installed (make deps / apt-get install make)")
	}
	tests := []struct {
		name     string
		tags     string
		wantTags string
	}{
		{"no TAGS", "", agentTag},
		{"TAGS=notpm", "notpm", agentTag + ",notpm"},
		{"TAGS with two tags, space-separated", "notpm foo", agentTag + ",notpm,foo"},
		{"TAGS with two tags, comma-separated", "notpm,foo", agentTag + ",notpm,foo"},
	}
	targets := []string{"build-agent", "build-armv6", "build-armv7", "build-arm64"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-s", "-n", "-C", "../..", "TAGS=" + tt.tags}, targets...)
			out, err := exec.Command("make", args...).CombinedOutput()
			require.NoError(t, err, "make -n: %s", out)
			var builds []string
			for line := range strings.Lines(string(out)) {
				if strings.Contains(line, " build ") && strings.Contains(line, "./cmd/device-agent") {
					builds = append(builds, line)
				}
			}
			require.Len(t, builds, len(targets), "one go build per target in:\n%s", out)
			for _, line := range builds {
				assert.Contains(t, line, `-tags "`+tt.wantTags+`"`, "agent build must carry the tags")
			}
		})
	}
}

// Built with -tags nodbus the agent links no D-Bus code, and the roles that
// need the bus say so in one line instead of failing later.
func TestNoDBusBuild(t *testing.T) {
	deps := goList(t, agentTag+",nodbus", "-deps", ".")
	require.Contains(t, deps, "github.com/mender-mtls/mtls-agent/internal/dbusauth", "sanity: the stub is linked")
	for _, d := range deps {
		require.NotContains(t, d, "godbus", "a nodbus agent must not link godbus")
	}
	if testing.Short() {
		return
	}
	bin := filepath.Join(t.TempDir(), "device-agent")
	out, err := exec.Command("go", "build", "-tags", agentTag+",nodbus", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	dir := t.TempDir()
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`{"ServerURL": "https://127.0.0.1:9"}`), 0o600))
	cmd := exec.Command(bin, "mender-auth", "--config", conf, "--fallback-config", "", "--datastore", dir, "daemon")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS=unix:path="+filepath.Join(dir, "no-bus"))
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "mender-auth daemon must fail without D-Bus support:\n%s", out)
	assert.Contains(t, string(out), "built without D-Bus support")
}
