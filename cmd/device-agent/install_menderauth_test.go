package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// authUnitPath is mender-authd.service as shipped.
var authUnitPath = filepath.Join(repoRoot, "support", "mender-authd.service")

// install-mender-auth puts the mender-auth symlink, mender-authd.service
// (ExecStart at bindir) and the D-Bus files under datadir; the symlinked
// agent answers as mender-auth; uninstall removes them all.
func TestInstallMenderAuth(t *testing.T) {
	needMake(t)
	bin := filepath.Join(t.TempDir(), "bin")
	for _, tt := range []struct {
		name                     string
		vars                     []string
		bindir, datadir, unitdir string
	}{
		{"defaults", nil, "usr/bin", "usr/share", "lib/systemd/system"},
		{"prefix and systemd_unitdir", []string{"prefix=/usr/local", "systemd_unitdir=/usr/lib/systemd"}, "usr/local/bin", "usr/local/share", "usr/lib/systemd/system"},
		{"datadir", []string{"datadir=/opt/share"}, "usr/bin", "opt/share", "lib/systemd/system"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := t.TempDir()
			vars := append([]string{"DESTDIR=" + dest}, tt.vars...)
			out, err := makeIn(t, bin, append(vars, "install-bin", "install-mender-auth")...)
			require.NoError(t, err, "make install-bin install-mender-auth: %s", out)

			link := filepath.Join(dest, tt.bindir, "mender-auth")
			target, err := os.Readlink(link)
			require.NoError(t, err, "mender-auth must be a symlink")
			assert.Equal(t, "device-agent", target, "a relative link: it works under DESTDIR and on the device")
			vout, err := exec.Command(link, "--version").CombinedOutput()
			require.NoError(t, err, "%s --version: %s", link, vout)
			assert.Contains(t, string(vout), "mender-auth (device-agent")

			unit := filepath.Join(dest, tt.unitdir, "mender-authd.service")
			assert.Equal(t, os.FileMode(0o644), mode(t, unit))
			assert.Equal(t, []string{"/" + tt.bindir + "/mender-auth daemon"}, unitDirectives(t, unit)["Service.ExecStart"])
			policy := filepath.Join(dest, tt.datadir, "dbus-1/system.d/io.mender.AuthenticationManager.conf")
			assert.Equal(t, os.FileMode(0o644), mode(t, policy))
			activation := filepath.Join(dest, tt.datadir, "dbus-1/system-services/io.mender.AuthenticationManager.service")
			assert.Equal(t, os.FileMode(0o644), mode(t, activation))
			act := unitDirectives(t, activation)
			assert.Equal(t, []string{"/" + tt.bindir + "/mender-auth daemon"}, act["D-BUS Service.Exec"])
			assert.Equal(t, []string{"mender-authd.service"}, act["D-BUS Service.SystemdService"])
			assert.Equal(t, []string{"io.mender.AuthenticationManager"}, act["D-BUS Service.Name"])

			out, err = makeIn(t, bin, append(vars, "uninstall")...)
			require.NoError(t, err, "make uninstall: %s", out)
			for _, f := range []string{link, unit, policy, activation} {
				_, err := os.Lstat(f)
				assert.True(t, os.IsNotExist(err), "uninstall must remove %s", f)
			}
		})
	}
}

// mender-authd.service: a Type=dbus unit under Mender's name, conflicting
// with the standalone agent, as hardened as device-agent.service.
func TestAuthUnitDirectives(t *testing.T) {
	d := unitDirectives(t, authUnitPath)
	for key, want := range map[string][]string{
		"Unit.Requires":                   {"dbus.service"},
		"Unit.Conflicts":                  {"device-agent.service mender.service"},
		"Service.Type":                    {"dbus"},
		"Service.BusName":                 {"io.mender.AuthenticationManager"},
		"Service.ExecStart":               {"/usr/bin/mender-auth daemon"},
		"Service.Restart":                 {"always"},
		"Service.ProtectSystem":           {"strict"},
		"Service.ReadWritePaths":          {"-/data/mender -/var/lib/mender"},
		"Service.RestrictAddressFamilies": {"AF_UNIX AF_INET AF_INET6 AF_NETLINK"},
		"Service.CapabilityBoundingSet":   {""},
		"Service.DeviceAllow":             {"/dev/tpmrm0 rw", "/dev/tpm0 rw"},
	} {
		assert.Equal(t, want, d[key], key)
	}
	agent := unitDirectives(t, unitPath)
	for key, v := range agent {
		if strings.HasPrefix(key, "Service.Protect") || strings.HasPrefix(key, "Service.Restrict") || strings.HasPrefix(key, "Service.SystemCall") ||
			strings.HasPrefix(key, "Service.Private") || key == "Service.NoNewPrivileges" || key == "Service.MemoryDenyWriteExecute" {
			assert.Equal(t, v, d[key], "%s as in device-agent.service", key)
		}
	}
}

var authExposureRE = regexp.MustCompile(`Overall exposure level for mender-authd\.service: (\d+\.\d+)`)

// systemd-analyze rates mender-authd.service within the same budget as
// device-agent.service and finds nothing wrong in it.
func TestAuthUnitSecurity(t *testing.T) {
	needSystemdAnalyze(t)
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", authUnitPath).CombinedOutput()
	m := authExposureRE.FindStringSubmatch(string(out))
	require.NotNil(t, m, "no exposure level in:\n%s", out)
	level, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	t.Logf("systemd-analyze security: exposure %.1f", level)
	assert.LessOrEqual(t, level, 4.0)

	exe, err := os.Executable()
	require.NoError(t, err)
	unit, err := os.ReadFile(authUnitPath)
	require.NoError(t, err)
	text := strings.Replace(string(unit), "ExecStart=/usr/bin/mender-auth ", "ExecStart="+exe+" ", 1)
	require.NotEqual(t, string(unit), text)
	copyPath := filepath.Join(t.TempDir(), "mender-authd.service")
	require.NoError(t, os.WriteFile(copyPath, []byte(text), 0o644))
	vout, err := exec.Command("systemd-analyze", "verify", "--man=no", copyPath).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify: %s", vout)
	assert.Empty(t, strings.TrimSpace(string(vout)))
}
