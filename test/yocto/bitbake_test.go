package yocto_test

// The real bitbake parser over the layer, offline, from the snapshots of
// bitbake, openembedded-core, meta-mender and meta-raspberrypi that
// ../shared/yocto holds (or $YOCTO_SNAPSHOTS). bitbake will not run as root,
// so as root the tests run it as the user mtls-bitbake (scripts/install-deps.sh
// creates it, and the en_US.UTF-8 locale bitbake needs). The snapshots are
// unpacked once into a cache under os.TempDir() keyed by archive name, and
// the build directories stay there too, so a rerun re-parses in seconds.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

// The user bitbake runs as when the test runs as root.
const bitbakeUser = "mtls-bitbake"

// A bitbake setup: which snapshots, which extra layers, which machine.
type setup struct {
	name     string   // build directory name
	bitbake  string   // archive base names (without .tar.xz)
	oecore   string   //
	extra    []string // archives of extra layers, each with the layer paths inside it
	layers   []string // the layer in each extra archive, relative to its cache directory
	machine  string
	localCfg string // extra local.conf lines
	copyOnly bool   // copy our layer into the build but leave it out of bblayers.conf
}

// The local.conf lines every setup shares: the configuration the recipe turns
// into mender.conf and device-agent.conf.
const testConf = `DEVICE_AGENT_SERVER_URL = "https://mender.example.test"
DEVICE_AGENT_TENANT_TOKEN = "tenant-token-of-the-test"
DEVICE_AGENT_UPDATE_POLL_INTERVAL = "600"
`

var (
	scarthgap = setup{name: "scarthgap", bitbake: "bitbake-yocto-5.0.19", oecore: "openembedded-core-yocto-5.0.19",
		machine: "qemuarm", localCfg: testConf}
	wrynose = setup{name: "wrynose", bitbake: "bitbake-yocto-6.0.2", oecore: "openembedded-core-yocto-6.0.2",
		machine: "qemuarm", localCfg: testConf}
	// meta-mender's client and a Raspberry Pi 4, with our agent as mender-auth.
	withMender = setup{name: "scarthgap-mender-rpi4", bitbake: "bitbake-yocto-5.0.19", oecore: "openembedded-core-yocto-5.0.19",
		extra:   []string{"meta-mender-scarthgap", "meta-raspberrypi-scarthgap"},
		layers:  []string{"meta-mender/meta-mender-core", "meta-raspberrypi"},
		machine: "raspberrypi4",
		localCfg: testConf + `PREFERRED_RPROVIDER_mender-auth = "device-agent"
MENDER_SERVER_URL = "https://mender.example.test"
`}
)

// env is what every bitbake test needs: where the snapshots are and how to
// run bitbake.
type env struct {
	snapshots string
	cache     string
	runAs     *user.User // nil: run as ourselves
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the bitbake parse tests take minutes")
	}
	dir := os.Getenv("YOCTO_SNAPSHOTS")
	if dir == "" {
		abs, err := filepath.Abs(filepath.Join(repoRoot, "..", "shared", "yocto"))
		if err != nil {
			t.Fatal(err)
		}
		dir = abs
	}
	if _, err := os.Stat(filepath.Join(dir, scarthgap.bitbake+".tar.xz")); err != nil {
		msg := fmt.Sprintf("\n*** SKIPPING THE BITBAKE PARSE TESTS OF yocto/meta-mtls: no snapshots in %s (%v).\n*** Set YOCTO_SNAPSHOTS to the directory with bitbake-yocto-*.tar.xz; CI must have them.\n", dir, err)
		fmt.Fprint(os.Stderr, msg)
		t.Skip(msg)
	}
	for _, tool := range []string{"tar", "xz", "python3", "chrpath", "cpio", "diffstat", "gawk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("bitbake needs %s on PATH: run scripts/install-deps.sh", tool)
		}
	}
	out, _ := exec.Command("locale", "-a").Output()
	if !regexp.MustCompile(`(?mi)^en_US\.utf-?8$`).Match(out) {
		t.Fatal("bitbake needs the en_US.UTF-8 locale: run scripts/install-deps.sh (enables it in /etc/locale.gen and runs locale-gen)")
	}
	e := &env{snapshots: dir, cache: filepath.Join(os.TempDir(), "mtls-yocto")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(bitbakeUser)
		if err != nil {
			t.Fatalf("bitbake refuses to run as root and there is no user %s: run scripts/install-deps.sh (it creates it)", bitbakeUser)
		}
		e.runAs = u
	}
	if err := os.MkdirAll(e.cache, 0o755); err != nil {
		t.Fatal(err)
	}
	e.chown(t, e.cache, false)
	return e
}

// chown gives path (and everything under it when recursive) to the bitbake
// user.
func (e *env) chown(t *testing.T, path string, recursive bool) {
	t.Helper()
	if e.runAs == nil {
		return
	}
	args := []string{e.runAs.Username + ":"}
	if recursive {
		args = []string{"-R", e.runAs.Username + ":"}
	}
	if out, err := exec.Command("chown", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v\n%s", path, err, out)
	}
}

// unpack returns the directory an archive unpacks to, unpacking it into the
// cache the first time (into a temporary directory renamed into place, so an
// interrupted run leaves nothing half-done behind).
func (e *env) unpack(t *testing.T, archive string) string {
	t.Helper()
	dest := filepath.Join(e.cache, archive)
	if _, err := os.Stat(filepath.Join(dest, ".complete")); err != nil {
		tmp, err := os.MkdirTemp(e.cache, archive+".partial-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		if out, err := exec.Command("tar", "-xJf", filepath.Join(e.snapshots, archive+".tar.xz"), "-C", tmp).CombinedOutput(); err != nil {
			t.Fatalf("unpack %s: %v\n%s", archive, err, out)
		}
		if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		e.chown(t, tmp, true)
		os.RemoveAll(dest)
		if err := os.Rename(tmp, dest); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(dest)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if en.IsDir() {
			return filepath.Join(dest, en.Name())
		}
	}
	t.Fatalf("%s: the archive holds no directory", archive)
	return ""
}

// writeIfChanged writes a file only when its content differs, so bitbake's
// parse cache stays valid across runs.
func writeIfChanged(t *testing.T, p, content string) {
	t.Helper()
	if old, err := os.ReadFile(p); err == nil && string(old) == content {
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// build is a prepared build directory.
type build struct {
	e       *env
	dir     string
	path    string // PATH with bitbake's bin
	bbfiles string // our layer's path inside the build directory
}

// The layer the graph test adds: a package group standing for an image
// that installs Mender's updater.
const selftestLayerConf = `BBPATH .= ":${LAYERDIR}"
BBFILES += "${LAYERDIR}/recipes-*/*/*.bb"
BBFILE_COLLECTIONS += "mtls-selftest"
BBFILE_PATTERN_mtls-selftest = "^${LAYERDIR}/"
BBFILE_PRIORITY_mtls-selftest = "6"
LAYERDEPENDS_mtls-selftest = "core mtls"
LAYERSERIES_COMPAT_mtls-selftest = "scarthgap wrynose"
`

const selftestRecipe = `SUMMARY = "meta-mtls test: what an image with Mender's updater installs"
LICENSE = "MIT"
inherit packagegroup
RDEPENDS:${PN} = "mender-update"
`

// A stand-in for a meta-openembedded recipe meta-mender depends on: an
// empty package, target and native.
const standinRecipe = `SUMMARY = "meta-mtls test: stand-in for a meta-openembedded recipe"
LICENSE = "MIT"
INHIBIT_DEFAULT_DEPS = "1"
ALLOW_EMPTY:${PN} = "1"
BBCLASSEXTEND = "native"
`

func (e *env) prepare(t *testing.T, s setup) *build {
	t.Helper()
	bb := e.unpack(t, s.bitbake)
	oe := e.unpack(t, s.oecore)
	layers := []string{filepath.Join(oe, "meta")}
	// s.layers[i] is relative to the cache directory of archive s.extra[i].
	for i, a := range s.extra {
		layers = append(layers, filepath.Join(filepath.Dir(e.unpack(t, a)), s.layers[i]))
	}
	dir := filepath.Join(e.cache, "build-"+s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.chown(t, dir, false)

	// A copy of our layer, times kept: the bitbake user may not be able to
	// read the working tree, and the parse cache keys on mtimes.
	ours := filepath.Join(dir, "layers", "meta-mtls")
	if err := os.RemoveAll(ours); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(ours), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", layerDir, ours).CombinedOutput(); err != nil {
		t.Fatalf("copy the layer: %v\n%s", err, out)
	}
	if !s.copyOnly {
		layers = append(layers, ours)
	}
	if len(s.extra) > 0 {
		self := filepath.Join(dir, "layers", "meta-mtls-selftest")
		writeIfChanged(t, filepath.Join(self, "conf", "layer.conf"), selftestLayerConf)
		writeIfChanged(t, filepath.Join(self, "recipes-test", "packagegroup-mtls-test", "packagegroup-mtls-test.bb"), selftestRecipe)
		// meta-mender's client needs three recipes of meta-openembedded, which
		// the snapshots do not hold; empty stand-ins let the graph resolve.
		for _, pn := range []string{"lmdb", "googletest", "jq"} {
			writeIfChanged(t, filepath.Join(self, "recipes-test", "standins", pn+"_0.0.bb"), standinRecipe)
		}
		layers = append(layers, self)
	}
	writeIfChanged(t, filepath.Join(dir, "conf", "bblayers.conf"),
		"BBPATH = \"${TOPDIR}\"\nBBFILES ?= \"\"\nBBLAYERS = \"\\\n    "+strings.Join(layers, " \\\n    ")+" \\\n\"\n")
	writeIfChanged(t, filepath.Join(dir, "conf", "local.conf"), fmt.Sprintf(`MACHINE = "%s"
DISTRO ?= "nodistro"
INIT_MANAGER = "systemd"
BB_NO_NETWORK = "1"
CONF_VERSION = "2"
%s`, s.machine, s.localCfg))
	e.chown(t, filepath.Join(dir, "conf"), true)
	e.chown(t, filepath.Join(dir, "layers"), true)
	return &build{e: e, dir: dir, path: filepath.Join(bb, "bin") + ":" + filepath.Join(oe, "scripts") + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", bbfiles: ours}
}

// bitbake runs bitbake in the build directory and returns its output; a
// non-zero exit fails the test.
func (b *build) bitbake(t *testing.T, args ...string) string {
	t.Helper()
	return b.run(t, 10*time.Minute, "bitbake", args...)
}

// run runs a bitbake tool as the bitbake user in the build directory.
func (b *build) run(t *testing.T, timeout time.Duration, tool string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	home := os.Getenv("HOME")
	if b.e.runAs != nil {
		home = b.e.runAs.HomeDir
	}
	envArgs := []string{"env", "-i", "HOME=" + home, "PATH=" + b.path, "LANG=en_US.UTF-8", "LC_ALL=en_US.UTF-8",
		"BUILDDIR=" + b.dir, tool}
	var cmd *exec.Cmd
	if b.e.runAs != nil {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", b.e.runAs.Username, "--"}, append(envArgs, args...)...)...)
	} else {
		cmd = exec.CommandContext(ctx, envArgs[0], append(envArgs[1:], args...)...)
	}
	cmd.Dir = b.dir
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s: %.1fs", tool, strings.Join(args, " "), time.Since(start).Seconds())
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, tail(string(out), 60))
	}
	return string(out)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkParse fails on any error, and on any warning about our layer.
func checkParse(t *testing.T, out string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "ERROR:") {
			t.Errorf("bitbake: %s", line)
		}
		if strings.HasPrefix(line, "WARNING:") && (strings.Contains(line, "meta-mtls") || strings.Contains(line, "device-agent")) {
			t.Errorf("bitbake warns about our layer: %s", line)
		}
	}
	if !regexp.MustCompile(`Parsing of \d+ \.bb files complete|recipes? in cache|Parsing recipes.*done`).MatchString(out) {
		t.Logf("bitbake -p output:\n%s", tail(out, 20))
	}
}

// vars parses the variable lines of `bitbake -e` output (NAME="value" and
// export NAME="value"), keyed by name; functions are keyed "name()".
func vars(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	assign := regexp.MustCompile(`(?s)^(?:export )?([A-Za-z0-9_:.+${}/-]+)="(.*)"$`)
	fn := regexp.MustCompile(`^(?:python )?([A-Za-z0-9_:.-]+)\(\) \{$`)
	var fname string
	var body []string
	var pending string
	for sc.Scan() {
		line := sc.Text()
		if fname != "" {
			if line == "}" {
				m[fname+"()"] = strings.Join(body, "\n")
				fname = ""
				continue
			}
			body = append(body, line)
			continue
		}
		if pending != "" {
			line = pending + "\n" + line
			pending = ""
		}
		if f := fn.FindStringSubmatch(line); f != nil {
			fname, body = f[1], nil
			continue
		}
		if strings.HasSuffix(line, "\\") {
			pending = strings.TrimSuffix(line, "\\")
			continue
		}
		if a := assign.FindStringSubmatch(line); a != nil {
			m[a[1]] = strings.ReplaceAll(strings.ReplaceAll(a[2], `\"`, `"`), `\\`, `\`)
		}
	}
	return m
}

func fields(s string) []string { return strings.Fields(s) }

// expectVars runs `bitbake -e device-agent` and checks what matters.
func expectVars(t *testing.T, b *build, standalone bool, goarch, goarm string) map[string]string {
	t.Helper()
	raw := b.bitbake(t, "-e", "device-agent")
	v := vars(raw)
	inc := readFile(t, recipeDir+"/device-agent.inc")
	bbfiles, _ := filepath.Glob(recipeDir + "/device-agent_[0-9]*.bb")
	if len(bbfiles) != 1 {
		t.Fatalf("want one versioned recipe, have %v", bbfiles)
	}
	srcrev, _ := assignment(readFile(t, bbfiles[0]), "SRCREV")
	pv := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(bbfiles[0]), "device-agent_"), ".bb")
	licInc := readFile(t, recipeDir+"/device-agent-licenses.inc")
	modLics, _ := assignment(licInc, "LICENSE")

	eq := func(name, want string) {
		t.Helper()
		if got, ok := v[name]; !ok || got != want {
			t.Errorf("bitbake -e device-agent: %s = %q, want %q", name, got, want)
		}
	}
	has := func(name string, want ...string) {
		t.Helper()
		got := fields(v[name])
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("bitbake -e device-agent: %s = %q does not list %q", name, v[name], w)
			}
		}
	}
	hasNot := func(name, unwanted string) {
		t.Helper()
		if slices.Contains(fields(v[name]), unwanted) {
			t.Errorf("bitbake -e device-agent: %s = %q lists %q", name, v[name], unwanted)
		}
	}
	eq("PV", pv)
	eq("SRCREV", srcrev)
	eq("GO_IMPORT", "github.com/mender-mtls/mtls-agent")
	eq("LICENSE", strings.TrimSpace("CLOSED "+modLics))
	eq("CGO_ENABLED", "0")
	eq("GOPROXY", "off")
	eq("GOARCH", goarch)
	if goarm != "" {
		eq("GOARM", goarm)
	}
	srcURI := fields(v["SRC_URI"])
	if len(srcURI) == 0 || srcURI[0] != "git://github.com/mender-mtls/mtls-agent.git;protocol=https;branch=main;destsuffix=device-agent-"+pv+"/src/github.com/mender-mtls/mtls-agent/" {
		t.Errorf("SRC_URI starts %q", srcURI)
	}
	// The module pins, each one in SRC_URI, as the series fetches them.
	pins := "device-agent-go-mods.inc"
	if v["DEVICE_AGENT_GO_MODS_INC"] != pins {
		pins = "device-agent-go-mods-proxy.inc"
	}
	pinned, _ := assignment(readFile(t, recipeDir+"/"+pins), "SRC_URI")
	for _, p := range fields(pinned) {
		p = strings.ReplaceAll(p, "${GO_MOD_PROXY_URL}", "https://proxy.golang.org")
		p = strings.ReplaceAll(p, "${GO_MOD_CACHE_DIR}", "device-agent-"+pv+"/pkg/mod")
		if !slices.Contains(srcURI, p) {
			t.Errorf("SRC_URI lacks the pin %s (from %s)", p, pins)
		}
	}
	for _, l := range fields(readFile(t, recipeDir+"/device-agent-licenses.inc")) {
		if strings.HasPrefix(l, "file://") {
			has("LIC_FILES_CHKSUM", l)
		}
	}
	has("FILES:device-agent", "/etc/mender/device-agent.conf", "/data/mender")
	has("CONFFILES:device-agent", "/etc/mender/device-agent.conf")
	files := v["FILES:device-agent-mender-auth"]
	for _, w := range []string{"/usr/bin/mender-auth", "/systemd/system/mender-authd.service",
		"/usr/share/dbus-1/system.d/io.mender.AuthenticationManager.conf",
		"/usr/share/dbus-1/system-services/io.mender.AuthenticationManager.service"} {
		if !strings.Contains(files, w) {
			t.Errorf("FILES:device-agent-mender-auth = %q lacks %s", files, w)
		}
	}
	has("PACKAGES", "device-agent", "device-agent-mender-auth")
	eq("RPROVIDES:device-agent-mender-auth", "mender-auth")
	has("RCONFLICTS:device-agent-mender-auth", "mender-auth")
	has("RDEPENDS:device-agent-mender-auth", "device-agent", "dbus")
	eq("SYSTEMD_SERVICE:device-agent", "device-agent.service")
	eq("SYSTEMD_SERVICE:device-agent-mender-auth", "mender-authd.service")
	has("SYSTEMD_PACKAGES", "device-agent", "device-agent-mender-auth")
	// Its unit conflicts with the standalone one, which it switches off.
	if !regexp.MustCompile(`(?m)^pkg_postinst:device-agent-mender-auth="`).MatchString(raw) || !strings.Contains(raw, "disable device-agent.service") {
		t.Error("pkg_postinst:device-agent-mender-auth does not disable device-agent.service")
	}
	if standalone {
		has("FILES:device-agent", "/etc/mender/mender.conf")
		has("CONFFILES:device-agent", "/etc/mender/mender.conf")
		eq("DEVICE_AGENT_WRITE_MENDER_CONF", "1")
	} else {
		hasNot("FILES:device-agent", "/etc/mender/mender.conf")
		hasNot("CONFFILES:device-agent", "/etc/mender/mender.conf")
		eq("DEVICE_AGENT_WRITE_MENDER_CONF", "0")
		eq("DEVICE_AGENT_MENDER_CONF", "")
	}
	// The build runs the Makefile's build-agent: the same flags as every
	// agent build.
	if body := v["do_compile()"]; !strings.Contains(body, "oe_runmake build-agent") {
		t.Errorf("do_compile does not run `make build-agent`:\n%s", body)
	}
	// A ${VAR} left in a task body is a variable this series does not have.
	for _, task := range []string{"do_compile()", "do_install()"} {
		if m := regexp.MustCompile(`\$\{[A-Z][A-Z0-9_]*\}`).FindString(v[task]); m != "" {
			t.Errorf("%s keeps %s unexpanded: the variable does not exist on this series", task, m)
		}
	}
	if !strings.Contains(inc, "DEVICE_AGENT_CONF") {
		t.Fatal("device-agent.inc no longer defines DEVICE_AGENT_CONF")
	}
	return v
}

// checkConfig writes the generated files and loads them with the agent's
// own config loader: no problem, no warning, the values local.conf set.
func checkConfig(t *testing.T, v map[string]string, standalone bool) {
	t.Helper()
	dir := t.TempDir()
	overlay := v["DEVICE_AGENT_CONF"]
	var o map[string]any
	if err := json.Unmarshal([]byte(overlay), &o); err != nil {
		t.Fatalf("DEVICE_AGENT_CONF is not JSON: %v: %s", err, overlay)
	}
	if _, ok := o["ServerURL"]; ok {
		t.Error("device-agent.conf holds ServerURL: shared settings belong in mender.conf")
	}
	main := v["DEVICE_AGENT_MENDER_CONF"]
	if !standalone {
		// meta-mender's mender-config writes mender.conf; stand in for it.
		main = `{"ServerURL": "https://mender.example.test"}`
	} else {
		var m map[string]any
		if err := json.Unmarshal([]byte(main), &m); err != nil {
			t.Fatalf("DEVICE_AGENT_MENDER_CONF is not JSON: %v: %s", err, main)
		}
		want := map[string]any{"ServerURL": "https://mender.example.test", "TenantToken": "tenant-token-of-the-test",
			"UpdatePollIntervalSeconds": 600.0, "InventoryPollIntervalSeconds": 28800.0, "RetryPollIntervalSeconds": 300.0}
		for k, w := range want {
			if m[k] != w {
				t.Errorf("mender.conf: %s = %v, want %v", k, m[k], w)
			}
		}
		if _, ok := m["HttpsClient"]; ok {
			t.Error("mender.conf holds HttpsClient: the agent-only settings belong in device-agent.conf")
		}
	}
	mainPath, overlayPath := filepath.Join(dir, "mender.conf"), filepath.Join(dir, "device-agent.conf")
	writeIfChanged(t, mainPath, main)
	writeIfChanged(t, overlayPath, overlay)
	cfg, err := config.Load(config.LoadOptions{MainPath: mainPath, OverlayPath: overlayPath,
		DatastoreDir: filepath.Join(dir, "datastore"), DataDir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatalf("the agent rejects the generated config: %v", err)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("the agent warns about the generated config: %q", cfg.Warnings)
	}
	if cfg.CertFile != "/data/mender/mender-cert.pem" || cfg.KeyFile != "/data/mender/mender-cert-private.pem" {
		t.Errorf("the agent reads cert %q key %q from the generated config", cfg.CertFile, cfg.KeyFile)
	}
	if !slices.Equal(cfg.Servers, []string{"https://mender.example.test"}) {
		t.Errorf("the agent reads the servers %q", cfg.Servers)
	}
}

func TestBitbakeScarthgap(t *testing.T) {
	e := newEnv(t)
	b := e.prepare(t, scarthgap)
	checkParse(t, b.bitbake(t, "-p"))
	v := expectVars(t, b, true, "arm", "7")
	checkConfig(t, v, true)
}

func TestBitbakeWrynose(t *testing.T) {
	e := newEnv(t)
	b := e.prepare(t, wrynose)
	checkParse(t, b.bitbake(t, "-p"))
	v := expectVars(t, b, true, "arm", "7")
	if v["DEVICE_AGENT_GO_MODS_INC"] != "device-agent-go-mods.inc" {
		t.Errorf("wrynose has the gomod fetcher, yet the recipe took %s", v["DEVICE_AGENT_GO_MODS_INC"])
	}
	checkConfig(t, v, true)
}

// meta-mender's client on a Raspberry Pi 4 with our agent as mender-auth:
// the image's runtime graph takes our package for mender-auth.
func TestBitbakeWithMender(t *testing.T) {
	e := newEnv(t)
	b := e.prepare(t, withMender)
	checkParse(t, b.bitbake(t, "-p"))
	v := expectVars(t, b, false, "arm", "7")
	checkConfig(t, v, false)

	out := b.bitbake(t, "-g", "-v", "packagegroup-mtls-test")
	if !strings.Contains(out, "selecting device-agent to satisfy mender-auth due to PREFERRED_RPROVIDER") {
		t.Errorf("bitbake -g did not take device-agent for mender-auth:\n%s", tail(out, 40))
	}
	if regexp.MustCompile(`selecting mender to satisfy (runtime )?mender-auth`).MatchString(out) {
		t.Error("bitbake -g took meta-mender's mender for mender-auth")
	}
	list, err := os.ReadFile(filepath.Join(b.dir, "pn-buildlist"))
	if err != nil {
		t.Fatal(err)
	}
	pns := fields(string(list))
	if !slices.Contains(pns, "device-agent") {
		t.Errorf("pn-buildlist lacks device-agent: %v", pns)
	}
	if !slices.Contains(pns, "mender") {
		t.Errorf("pn-buildlist lacks mender (mender-update): %v", pns)
	}
	// The task graph: the package group's packages depend on ours.
	dot, err := os.ReadFile(filepath.Join(b.dir, "task-depends.dot"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dot), `"device-agent.do_package_write_`) && !strings.Contains(string(dot), `"device-agent.do_packagedata"`) {
		t.Error("task-depends.dot has no device-agent packaging task")
	}
}

// yocto-check-layer over our layer on scarthgap (about 18 minutes on 2
// cores): `make yocto-check`, not part of `make test`.
func TestYoctoCheckLayer(t *testing.T) {
	if os.Getenv("YOCTO_CHECK_LAYER") != "1" {
		t.Skip("set YOCTO_CHECK_LAYER=1 (make yocto-check): runs about 18 minutes")
	}
	e := newEnv(t)
	s := scarthgap
	s.name, s.copyOnly = "check-scarthgap", true
	b := e.prepare(t, s)
	out := b.run(t, 40*time.Minute, "yocto-check-layer", "--no-auto", b.bbfiles)
	t.Logf("yocto-check-layer:\n%s", tail(out, 40))
	if !strings.Contains(out, "INFO: meta-mtls ... PASS") && !regexp.MustCompile(`(?m)meta-mtls\s+\.\.\.\s+PASS`).MatchString(out) {
		t.Errorf("yocto-check-layer did not pass meta-mtls:\n%s", tail(out, 80))
	}
}
