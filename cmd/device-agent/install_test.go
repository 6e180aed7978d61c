package main

import (
	"bufio"
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

// repoRoot is where the Makefile and support/ are, seen from this package.
const repoRoot = "../.."

// makeIn runs make in the repository root with vars (NAME=VALUE) and
// targets, and returns its combined output; the build goes to a private
// BIN so that it never touches the repository's bin/.
func makeIn(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	all := append([]string{"-s", "-C", repoRoot, "BIN=" + bin}, args...)
	cmd := exec.Command("make", all...)
	cmd.Env = append(os.Environ(), "MAKEFLAGS=") // not the caller's -n or -j
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func needMake(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("SKIP: make is not installed (apt-get install make)")
	}
}

// mode returns the permission bits of path, failing the test when absent.
func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err, "%s must be installed", path)
	return fi.Mode().Perm()
}

// The install targets put the agent, the unit and the example config under
// DESTDIR at the configured paths; install-conf keeps an existing
// mender.conf; uninstall removes the agent and the unit and keeps the
// configuration and the datastore.
func TestInstallTargets(t *testing.T) {
	needMake(t)
	bin := filepath.Join(t.TempDir(), "bin")

	tests := []struct {
		name                        string
		vars                        []string
		binPath, unitPath, confPath string
		wantExecStart               string
	}{
		{
			name:          "defaults",
			binPath:       "usr/bin/device-agent",
			unitPath:      "lib/systemd/system/device-agent.service",
			confPath:      "etc/mender/mender.conf",
			wantExecStart: "/usr/bin/device-agent daemon",
		},
		{
			name:          "prefix, sysconfdir and systemd_unitdir",
			vars:          []string{"prefix=/usr/local", "sysconfdir=/opt/etc", "systemd_unitdir=/usr/lib/systemd"},
			binPath:       "usr/local/bin/device-agent",
			unitPath:      "usr/lib/systemd/system/device-agent.service",
			confPath:      "opt/etc/mender/mender.conf",
			wantExecStart: "/usr/local/bin/device-agent daemon",
		},
		{
			name:          "bindir",
			vars:          []string{"bindir=/sbin"},
			binPath:       "sbin/device-agent",
			unitPath:      "lib/systemd/system/device-agent.service",
			confPath:      "etc/mender/mender.conf",
			wantExecStart: "/sbin/device-agent daemon",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := t.TempDir()
			vars := append([]string{"DESTDIR=" + dest}, tt.vars...)
			out, err := makeIn(t, bin, append(vars, "install-bin", "install-systemd", "install-conf")...)
			require.NoError(t, err, "make install-*: %s", out)

			agent := filepath.Join(dest, tt.binPath)
			assert.Equal(t, os.FileMode(0o755), mode(t, agent))
			unit := filepath.Join(dest, tt.unitPath)
			assert.Equal(t, os.FileMode(0o644), mode(t, unit))
			conf := filepath.Join(dest, tt.confPath)
			assert.Equal(t, os.FileMode(0o600), mode(t, conf), "mender.conf may get a TenantToken: root only")
			assert.Contains(t, out, "installed "+conf)

			assert.Equal(t, []string{tt.wantExecStart}, unitDirectives(t, unit)["Service.ExecStart"], "the unit runs the installed binary")
			want, err := os.ReadFile(filepath.Join(repoRoot, "support", "mender.conf"))
			require.NoError(t, err)
			got, err := os.ReadFile(conf)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got))

			// The installed agent is the HTTP/1.1-only build and runs.
			info, err := exec.Command("go", "version", "-m", agent).Output()
			require.NoError(t, err, "go version -m")
			assert.Regexp(t, `(?m)^\s*build\s+-tags=\S*`+agentTag, string(info), "built with -tags %s", agentTag)
			vout, err := exec.Command(agent, "version").CombinedOutput()
			require.NoError(t, err, "%s version: %s", agent, vout)

			// A second install-conf keeps the file the operator edited.
			edited := []byte(`{"ServerURL": "https://mine.example.com"}`)
			require.NoError(t, os.WriteFile(conf, edited, 0o600))
			out, err = makeIn(t, bin, append(vars, "install-conf")...)
			require.NoError(t, err, "make install-conf: %s", out)
			got, err = os.ReadFile(conf)
			require.NoError(t, err)
			assert.Equal(t, string(edited), string(got), "install-conf must never overwrite mender.conf")
			assert.Contains(t, out, conf+" exists, left unchanged")

			// uninstall removes what install-bin and install-systemd put
			// there, and nothing else.
			store := []string{filepath.Join(dest, "var/lib/mender/mender-agent.pem"), filepath.Join(dest, "data/mender/mender-cert.pem")}
			for _, f := range store {
				require.NoError(t, os.MkdirAll(filepath.Dir(f), 0o700))
				require.NoError(t, os.WriteFile(f, []byte("state"), 0o600))
			}
			out, err = makeIn(t, bin, append(vars, "uninstall")...)
			require.NoError(t, err, "make uninstall: %s", out)
			assert.NoFileExists(t, agent)
			assert.NoFileExists(t, unit)
			assert.DirExists(t, filepath.Dir(agent), "uninstall removes files, not directories")
			for _, f := range append(store, conf) {
				assert.FileExists(t, f, "uninstall must keep the configuration and the datastore")
			}
			assert.Contains(t, out, "kept "+conf)

			// A second uninstall has nothing to do and succeeds.
			out, err = makeIn(t, bin, append(vars, "uninstall")...)
			require.NoError(t, err, "second make uninstall: %s", out)
		})
	}
}

// install-conf treats a symlinked mender.conf (a read-only image linking
// to /data) as present and leaves the link alone, even a dangling one.
func TestInstallConfKeepsSymlink(t *testing.T) {
	needMake(t)
	dest := t.TempDir()
	dir := filepath.Join(dest, "etc", "mender")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	link := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.Symlink("/data/etc/mender.conf", link))
	out, err := makeIn(t, filepath.Join(t.TempDir(), "bin"), "DESTDIR="+dest, "install-conf")
	require.NoError(t, err, "make install-conf: %s", out)
	target, err := os.Readlink(link)
	require.NoError(t, err, "mender.conf must still be a symlink")
	assert.Equal(t, "/data/etc/mender.conf", target)
	assert.Contains(t, out, "left unchanged")
}

// unitPath is the unit as shipped.
var unitPath = filepath.Join(repoRoot, "support", "device-agent.service")

// unitDirectives parses a unit file into section.Key → values, in order.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	d := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "unit line %q is not Key=Value", line)
			d[section+"."+k] = append(d[section+"."+k], v)
		}
	}
	require.NoError(t, sc.Err())
	return d
}

// The unit's contract: started after the network and the data partition,
// restarted for ever, notify-ready, reloadable, and sandboxed so that the
// agent can reach only its datastore, the TPM and the network.
func TestUnitDirectives(t *testing.T) {
	d := unitDirectives(t, unitPath)
	tests := []struct {
		key  string
		want []string
	}{
		{"Unit.Wants", []string{"network-online.target"}},
		{"Unit.After", []string{"network-online.target data.mount mender-data-dir.service"}},
		{"Service.Type", []string{"notify"}},
		{"Service.NotifyAccess", []string{"main"}},
		{"Service.ExecStart", []string{"/usr/bin/device-agent daemon"}},
		{"Service.ExecReload", []string{"/bin/kill -HUP $MAINPID"}},
		{"Service.Restart", []string{"always"}},
		{"Service.ProtectSystem", []string{"strict"}},
		{"Service.ReadWritePaths", []string{"-/data/mender -/var/lib/mender"}},
		{"Service.ProtectHome", []string{"yes"}},
		{"Service.PrivateTmp", []string{"yes"}},
		{"Service.NoNewPrivileges", []string{"yes"}},
		{"Service.ProtectKernelTunables", []string{"yes"}},
		{"Service.ProtectKernelModules", []string{"yes"}},
		{"Service.ProtectKernelLogs", []string{"yes"}},
		{"Service.RestrictAddressFamilies", []string{"AF_UNIX AF_INET AF_INET6 AF_NETLINK"}},
		{"Service.SystemCallFilter", []string{"@system-service"}},
		{"Service.DeviceAllow", []string{"/dev/tpmrm0 rw", "/dev/tpm0 rw"}},
		{"Service.CapabilityBoundingSet", []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			assert.Equal(t, tt.want, d[tt.key])
		})
	}
	sec, err := strconv.Atoi(strings.TrimSuffix(first(d["Service.RestartSec"]), "s"))
	require.NoError(t, err, "RestartSec must be set in seconds")
	assert.Positive(t, sec, "RestartSec")
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// needSystemdAnalyze skips loudly without systemd-analyze (Debian's
// systemd package; make deps installs it).
func needSystemdAnalyze(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("SKIP: systemd-analyze is not installed, the unit's hardening is NOT checked (make deps installs Debian's systemd)")
	}
}

// exposureRE is the summary line of systemd-analyze security.
var exposureRE = regexp.MustCompile(`Overall exposure level for device-agent\.service: (\d+\.\d+)`)

// exposure returns systemd-analyze security's overall exposure level for
// the unit file at path.
func exposure(t *testing.T, path string) float64 {
	t.Helper()
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", path).CombinedOutput()
	m := exposureRE.FindStringSubmatch(string(out))
	require.NotNil(t, m, "no exposure level in:\n%s", out)
	level, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return level
}

// The sandbox is measured, not assumed: systemd-analyze security rates
// the unit 4.0 or lower (0 is locked down, 10 is unprotected). The bare
// unit is the sanity check that the rating sees a missing sandbox.
func TestUnitSecurityExposure(t *testing.T) {
	needSystemdAnalyze(t)
	const budget = 4.0
	bare := filepath.Join(t.TempDir(), "device-agent.service")
	require.NoError(t, os.WriteFile(bare, []byte("[Service]\nExecStart=/usr/bin/device-agent daemon\n"), 0o644))
	tests := []struct {
		name         string
		path         string
		withinBudget bool
	}{
		{"shipped unit", unitPath, true},
		{"sanity: a unit without hardening", bare, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			level := exposure(t, tt.path)
			t.Logf("systemd-analyze security: exposure %.1f (budget %.1f)", level, budget)
			if tt.withinBudget {
				assert.LessOrEqual(t, level, budget, "the unit lost hardening: see systemd-analyze security --offline=true %s", tt.path)
			} else {
				assert.Greater(t, level, budget, "sanity: an unhardened unit must rate above the budget")
			}
		})
	}
}

// systemd-analyze verify finds no problem in the unit (an unknown key or a
// bad value is a warning there, so the output must be empty). ExecStart
// must name an existing binary, so a copy points at this test binary.
func TestUnitVerify(t *testing.T) {
	needSystemdAnalyze(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	unit, err := os.ReadFile(unitPath)
	require.NoError(t, err)
	text := strings.Replace(string(unit), "ExecStart=/usr/bin/device-agent ", "ExecStart="+exe+" ", 1)
	require.NotEqual(t, string(unit), text, "the unit's ExecStart moved")
	copyPath := filepath.Join(t.TempDir(), "device-agent.service")
	require.NoError(t, os.WriteFile(copyPath, []byte(text), 0o644))
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", copyPath).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify: %s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify must have nothing to say")
}
