// Tests of the Yocto layer yocto/meta-mtls. This file holds the static
// checks, for what bitbake's parser does not catch: file modes, the unit and
// D-Bus files the recipe installs, the README a yocto-check-layer wants, and
// the Go module pins in sync with go.mod. bitbake_test.go runs the real
// parser over the layer.
package yocto_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	repoRoot  = "../.."
	layerDir  = repoRoot + "/yocto/meta-mtls"
	recipeDir = layerDir + "/recipes-mender/device-agent"
)

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assignment returns the value of the last `NAME = "..."` (or ?=, ??=, +=)
// in text, with line continuations joined.
func assignment(text, name string) (string, bool) {
	text = strings.ReplaceAll(text, "\\\n", " ")
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*(\?\?=|\?=|\+=|=)\s*"([^"]*)"`)
	m := re.FindAllStringSubmatch(text, -1)
	if m == nil {
		return "", false
	}
	return m[len(m)-1][2], true
}

func TestLayerFileModes(t *testing.T) {
	err := filepath.WalkDir(layerDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode()
		switch {
		case mode.IsDir():
			if mode.Perm()&0o005 != 0o005 {
				t.Errorf("%s: directory mode %v: others need r-x (bitbake runs as an ordinary user)", p, mode.Perm())
			}
		case mode.IsRegular():
			if mode.Perm()&0o111 != 0 {
				t.Errorf("%s: mode %v: layer files are not executable (chmod 0644)", p, mode.Perm())
			}
			if mode.Perm()&0o004 == 0 {
				t.Errorf("%s: mode %v: others need read (chmod 0644)", p, mode.Perm())
			}
		default:
			t.Errorf("%s: %v: only regular files and directories belong in the layer", p, mode.Type())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLayerConf(t *testing.T) {
	conf := readFile(t, layerDir+"/conf/layer.conf")
	cols, _ := assignment(conf, "BBFILE_COLLECTIONS")
	if strings.TrimSpace(cols) != "mtls" {
		t.Fatalf("layer.conf: BBFILE_COLLECTIONS += %q, want \"mtls\"", cols)
	}
	want := map[string]func(string) bool{
		"BBFILE_PATTERN_mtls":  func(v string) bool { return v == "^${LAYERDIR}/" },
		"BBFILE_PRIORITY_mtls": func(v string) bool { return regexp.MustCompile(`^\d+$`).MatchString(v) },
		"LAYERDEPENDS_mtls":    func(v string) bool { return strings.Fields(v)[0] == "core" },
		"LAYERSERIES_COMPAT_mtls": func(v string) bool {
			f := strings.Fields(v)
			return len(f) == 2 && strings.Contains(v, "scarthgap") && strings.Contains(v, "wrynose")
		},
		"LAYERVERSION_mtls": func(v string) bool { return v != "" },
	}
	for name, ok := range want {
		v, found := assignment(conf, name)
		if !found || !ok(v) {
			t.Errorf("layer.conf: %s = %q is missing or wrong", name, v)
		}
	}
	if regexp.MustCompile(`(?m)^\s*(INHERIT|MACHINE|DISTRO)\b`).MatchString(conf) {
		t.Error("layer.conf sets INHERIT, MACHINE or DISTRO: a software layer must not (yocto-check-layer test_signatures)")
	}
}

// The README sections yocto-check-layer and our users need.
func TestLayerREADME(t *testing.T) {
	readme := readFile(t, layerDir+"/README.md")
	for _, h := range []string{"## Dependencies", "## Adding the layer", "## Variables", "## Packages",
		"## Go toolchain", "## Examples", "## Maintainer", "## Patches"} {
		if !strings.Contains(readme, "\n"+h+"\n") {
			t.Errorf("README.md: no %q section", h)
		}
	}
	if !regexp.MustCompile(`[\w.+-]+@[\w-]+\.[\w.-]+`).MatchString(readme) {
		t.Error("README.md: no maintainer e-mail address (yocto-check-layer test_readme)")
	}
	// Every variable the recipe lets a user set is documented.
	inc := readFile(t, recipeDir+"/device-agent.inc")
	for _, m := range regexp.MustCompile(`(?m)^(DEVICE_AGENT_[A-Z_]+)\s*\?=`).FindAllStringSubmatch(inc, -1) {
		if !strings.Contains(readme, "`"+m[1]+"`") {
			t.Errorf("README.md: variable %s (device-agent.inc) is not documented", m[1])
		}
	}
	// Every example fragment the README points to exists.
	for _, m := range regexp.MustCompile(`examples/[\w.-]+\.conf`).FindAllString(readme, -1) {
		if _, err := os.Stat(filepath.Join(layerDir, m)); err != nil {
			t.Errorf("README.md names %s: %v", m, err)
		}
	}
}

func TestRecipes(t *testing.T) {
	inc := readFile(t, recipeDir+"/device-agent.inc")
	gomod := readFile(t, repoRoot+"/go.mod")
	module := regexp.MustCompile(`(?m)^module\s+(\S+)`).FindStringSubmatch(gomod)[1]
	if v, _ := assignment(inc, "GO_IMPORT"); v != module {
		t.Errorf("device-agent.inc: GO_IMPORT = %q, go.mod says module %q", v, module)
	}
	if v, _ := assignment(inc, "GO_INSTALL"); v != "${GO_IMPORT}/cmd/device-agent" {
		t.Errorf("device-agent.inc: GO_INSTALL = %q, want ${GO_IMPORT}/cmd/device-agent", v)
	}
	src, _ := assignment(inc, "SRC_URI")
	if !strings.HasPrefix(src, "git://"+module+".git;") || !strings.Contains(src, "protocol=https") ||
		!strings.Contains(src, "branch=main") || !strings.Contains(src, "destsuffix=${GO_SRCURI_DESTSUFFIX}") {
		t.Errorf("device-agent.inc: SRC_URI = %q, want git://%s.git with protocol=https, branch=main, destsuffix=${GO_SRCURI_DESTSUFFIX}", src, module)
	}

	// Our licence: the repository has none yet, so the recipe says CLOSED.
	// Once a LICENSE file exists, the recipe must name it with its md5.
	lic, _ := assignment(inc, "LICENSE")
	var ours string
	for _, n := range []string{"LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING"} {
		if _, err := os.Stat(filepath.Join(repoRoot, n)); err == nil {
			ours = n
		}
	}
	switch {
	case ours == "" && lic != "CLOSED":
		t.Errorf("device-agent.inc: LICENSE = %q but the repository has no LICENSE file: no licence is granted, say CLOSED", lic)
	case ours != "" && lic == "CLOSED":
		t.Errorf("the repository now has %s: set LICENSE in device-agent.inc to its SPDX name and add it to LIC_FILES_CHKSUM (file://src/${GO_IMPORT}/%s;md5=...)", ours, ours)
	}

	oldOverride := regexp.MustCompile(`(?m)^[A-Z_]+_(append|prepend|remove)\b|^[A-Z_]+_\$\{PN\}|_\$\{PN\}-`)
	files, _ := filepath.Glob(recipeDir + "/*")
	for _, f := range files {
		text := readFile(t, f)
		if m := oldOverride.FindString(text); m != "" {
			t.Errorf("%s: old override syntax %q: use NAME:append / NAME:${PN}", f, m)
		}
		if strings.Contains(text, "${WORKDIR}") || strings.Contains(text, "${UNPACKDIR}") {
			t.Errorf("%s: refers to ${WORKDIR} or ${UNPACKDIR}: one of them does not exist or is fatal on one of the two series; install from the source tree under S", f)
		}
		if strings.HasSuffix(f, ".bb") {
			if !strings.Contains(text, "require device-agent.inc") {
				t.Errorf("%s: does not require device-agent.inc", f)
			}
			rev, _ := assignment(text, "SRCREV")
			if strings.HasSuffix(f, "_git.bb") {
				rev, _ = assignment(text, "DEVICE_AGENT_GIT_SRCREV")
			}
			if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(rev) {
				t.Errorf("%s: SRCREV %q is not a full commit id", f, rev)
			} else if err := srcrevInHistory(rev); err != nil {
				t.Errorf("%s: SRCREV %s: %v (pin a commit of this repository's history)", f, rev, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(repoRoot, "cmd", "device-agent", "main.go")); err != nil {
		t.Errorf("GO_INSTALL names cmd/device-agent: %v", err)
	}
}

// unitKeys reads the key=value lines of a systemd unit or D-Bus service
// file, by section.
func unitKeys(t *testing.T, p string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	section := ""
	for _, line := range strings.Split(readFile(t, p), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Errorf("%s: line %q is not key=value", p, line)
				continue
			}
			keys[section+"."+k] = v
		}
	}
	return keys
}

// The files the recipe installs from the source tree, with the keys that
// make them work together (and that the recipe's ExecStart rewrite expects).
func TestInstalledSupportFiles(t *testing.T) {
	inc := readFile(t, recipeDir+"/device-agent.inc")
	for _, f := range regexp.MustCompile(`\$src/(support/[\w./-]+)`).FindAllStringSubmatch(inc, -1) {
		if _, err := os.Stat(filepath.Join(repoRoot, f[1])); err != nil {
			t.Errorf("device-agent.inc installs %s: %v", f[1], err)
		}
	}
	checks := []struct {
		file string
		want map[string]string
	}{
		{"support/device-agent.service", map[string]string{
			"Service.ExecStart": "/usr/bin/device-agent daemon", "Install.WantedBy": "multi-user.target"}},
		{"support/mender-authd.service", map[string]string{
			"Service.Type": "dbus", "Service.BusName": "io.mender.AuthenticationManager",
			"Service.ExecStart": "/usr/bin/mender-auth daemon"}},
		{"support/dbus/io.mender.AuthenticationManager.service", map[string]string{
			"D-BUS Service.Name": "io.mender.AuthenticationManager", "D-BUS Service.SystemdService": "mender-authd.service"}},
	}
	for _, c := range checks {
		p := filepath.Join(repoRoot, c.file)
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		keys := unitKeys(t, p)
		for k, v := range c.want {
			got, ok := keys[k]
			if !ok || (strings.HasSuffix(k, "ExecStart") && !strings.HasPrefix(got, strings.Fields(v)[0])) || (!strings.HasSuffix(k, "ExecStart") && got != v) {
				t.Errorf("%s: %s = %q, want %q", c.file, k, got, v)
			}
		}
	}
	if p := filepath.Join(repoRoot, "support/dbus/io.mender.AuthenticationManager.conf"); fileExists(p) {
		if !strings.Contains(readFile(t, p), `own="io.mender.AuthenticationManager"`) {
			t.Errorf("%s: the policy does not let the daemon own io.mender.AuthenticationManager", p)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// The committed pins are exactly what `make yocto-pins` writes now.
func TestPinsInSync(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: regenerating the pins runs go list twice")
	}
	out := t.TempDir()
	cmd := exec.Command("go", "run", "./scripts/yocto-pins", "-out", out)
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./scripts/yocto-pins: %v\n%s", err, b)
	}
	for _, name := range []string{"device-agent-go-mods.inc", "device-agent-go-mods-proxy.inc", "device-agent-licenses.inc"} {
		fresh := readFile(t, filepath.Join(out, name))
		committed := readFile(t, filepath.Join(recipeDir, name))
		if fresh != committed {
			t.Errorf("%s drifted from go.mod/go.sum: run `make yocto-pins` and commit the result\n%s", name, lineDiff(committed, fresh))
		}
	}
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var buf bytes.Buffer
	for _, l := range strings.Split(a, "\n") {
		if !inb[l] {
			buf.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ina[l] {
			buf.WriteString("+ " + l + "\n")
		}
	}
	return buf.String()
}

// srcrevInHistory checks that rev is a commit of this checkout's history
// that has the agent's source, so the pinned recipe fetches something that
// exists. Outside a git checkout (a source tarball) there is nothing to
// check.
func srcrevInHistory(rev string) error {
	if _, err := os.Stat(filepath.Join(repoRoot, ".git")); err != nil {
		return nil
	}
	if out, err := exec.Command("git", "-C", repoRoot, "merge-base", "--is-ancestor", rev, "HEAD").CombinedOutput(); err != nil {
		return fmt.Errorf("not an ancestor of HEAD: %v %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("git", "-C", repoRoot, "cat-file", "-e", rev+":cmd/device-agent/main.go").CombinedOutput(); err != nil {
		return fmt.Errorf("has no cmd/device-agent/main.go: %v %s", err, bytes.TrimSpace(out))
	}
	return nil
}
