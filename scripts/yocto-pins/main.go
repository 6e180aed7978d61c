// Command yocto-pins writes the Go module pins of the Yocto recipe
// (yocto/meta-mtls/recipes-mender/device-agent): every module zip and go.mod
// file the go command needs to build cmd/device-agent for linux/arm, each
// with its sha256, and the licence file of every linked module with its md5
// and SPDX name. The recipe fetches exactly these in do_fetch, so a Yocto
// build needs no vendor/ directory and no network after the fetch.
//
// It writes three files, in the formats oe-core's go-mod-update-modules
// class uses, so `bitbake -c update_modules` style diffs stay readable:
//
//	device-agent-go-mods.inc        gomod:// entries (bitbake 2.10+, wrynose)
//	device-agent-go-mods-proxy.inc  the same files as plain https:// entries
//	                                from the module proxy, unpacked into the
//	                                module cache layout (scarthgap)
//	device-agent-licenses.inc       LICENSE += and LIC_FILES_CHKSUM +=
//
// It reads go.mod and go.sum of the repository and the local module cache:
// first `go list -deps` with the normal settings (which downloads what is
// missing, as any build does), then again into an empty module cache fed
// only from the local one, so the pins list what a clean build fetches and
// nothing else. Run it as `make yocto-pins` after changing go.mod.
package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// The recipe directory the pins belong to, relative to the repository root.
const recipeDir = "yocto/meta-mtls/recipes-mender/device-agent"

// The package the recipe builds and how the Makefile builds it (build-agent):
// the tags change which files, and so which imports, are compiled.
const (
	agentPkg  = "./cmd/device-agent"
	agentTags = "nethttpomithttp2"
)

// The file names inside recipeDir.
const (
	GoModsFile   = "device-agent-go-mods.inc"
	ProxyModFile = "device-agent-go-mods-proxy.inc"
	LicensesFile = "device-agent-licenses.inc"
)

func main() {
	root := flag.String("root", ".", "repository root (holds go.mod)")
	out := flag.String("out", "", "directory to write the .inc files to (default ROOT/"+recipeDir+")")
	goarch := flag.String("goarch", "arm", "GOARCH to resolve the agent's imports for")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: yocto-pins [-root DIR] [-out DIR] [-goarch ARCH]\n\nWrites %s, %s and %s.\n\n", GoModsFile, ProxyModFile, LicensesFile)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(*root, recipeDir)
	}
	files, err := Generate(*root, *goarch)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yocto-pins:", err)
		os.Exit(1)
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := atomicfile.Write(filepath.Join(dir, name), files[name], 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "yocto-pins:", err)
			os.Exit(1)
		}
		fmt.Printf("yocto-pins: wrote %s\n", filepath.Join(dir, name))
	}
}

// Generate resolves the agent's modules from the repository at root and
// returns the three .inc files by name.
func Generate(root, goarch string) (map[string][]byte, error) {
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return nil, fmt.Errorf("%s: no go.mod there: run from the repository root or pass -root", root)
	}
	realCache, err := goEnv(root, "GOMODCACHE")
	if err != nil {
		return nil, err
	}
	// Pass 1: make sure the local cache holds what the agent needs.
	if _, err := goList(root, goarch, nil); err != nil {
		return nil, err
	}
	// Pass 2: an empty cache filled only from the local one records exactly
	// what the go command downloads for this build.
	fresh, err := os.MkdirTemp("", "yocto-pins-")
	if err != nil {
		return nil, err
	}
	defer removeModCache(fresh)
	proxy := (&url.URL{Scheme: "file", Path: filepath.ToSlash(filepath.Join(realCache, "cache", "download"))}).String()
	pkgs, err := goList(root, goarch, []string{"GOMODCACHE=" + fresh, "GOPROXY=" + proxy, "GOSUMDB=off"})
	if err != nil {
		return nil, fmt.Errorf("%w (is the module cache %s complete? `go mod download` fills it)", err, realCache)
	}
	files, err := CollectFiles(fresh)
	if err != nil {
		return nil, err
	}
	lics, err := CollectLicenses(fresh, pkgs)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		GoModsFile:   RenderGoMods(files),
		ProxyModFile: RenderProxyMods(files),
		LicensesFile: RenderLicenses(lics),
	}, nil
}

// removeModCache deletes a module cache (the go command makes it read-only).
func removeModCache(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	os.RemoveAll(dir)
}

func goEnv(root, name string) (string, error) {
	cmd := exec.Command("go", "env", name)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go env %s is empty", name)
	}
	return v, nil
}

// Package is the part of `go list -json` the pins need.
type Package struct {
	ImportPath string
	Dir        string
	Module     *struct {
		Path    string
		Version string
		Dir     string
	}
}

// goList runs `go list -deps` for the agent as the recipe builds it.
func goList(root, goarch string, extraEnv []string) ([]Package, error) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Dir,Module", "-deps", "-tags", agentTags, agentPkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+goarch, "CGO_ENABLED=0",
		"GOFLAGS=-mod=readonly", "GOWORK=off", "GOTOOLCHAIN=local")
	cmd.Env = append(cmd.Env, extraEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s: %w: %s", agentPkg, err, strings.TrimSpace(stderr.String()))
	}
	var pkgs []Package
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p Package
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

// ModFile is one file of the module cache's download area that a build
// needs: a module zip, or a go.mod file alone (Mod) for a module in the build
// list whose packages are not compiled.
type ModFile struct {
	Module  string // module path, unescaped
	Version string
	Mod     bool   // the go.mod file only
	Sum     string // sha256 of the file, hex
	ModSum  string // for a zip: sha256 of the module's go.mod file, hex
}

// CollectFiles lists the .zip and .mod files under cache/download of the
// module cache at dir, as go-mod-update-modules does: a zip where there is
// one, else the go.mod file alone.
func CollectFiles(dir string) ([]ModFile, error) {
	download := filepath.Join(dir, "cache", "download")
	var files []ModFile
	err := filepath.WalkDir(download, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || d.Name() != "@v" {
			return nil
		}
		rel, err := filepath.Rel(download, filepath.Dir(p))
		if err != nil {
			return err
		}
		module, err := UnescapePath(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		zips := map[string]bool{}
		for _, e := range entries {
			if v, ok := strings.CutSuffix(e.Name(), ".zip"); ok {
				zips[v] = true
			}
		}
		for _, e := range entries {
			name := e.Name()
			switch {
			case strings.HasSuffix(name, ".zip"):
				v := strings.TrimSuffix(name, ".zip")
				sum, err := sha256File(filepath.Join(p, name))
				if err != nil {
					return err
				}
				modSum, err := sha256File(filepath.Join(p, v+".mod"))
				if err != nil {
					return fmt.Errorf("%s: the go.mod file of a downloaded zip is missing: %w", module, err)
				}
				files = append(files, ModFile{Module: module, Version: v, Sum: sum, ModSum: modSum})
			case strings.HasSuffix(name, ".mod"):
				v := strings.TrimSuffix(name, ".mod")
				if zips[v] {
					continue
				}
				sum, err := sha256File(filepath.Join(p, name))
				if err != nil {
					return err
				}
				files = append(files, ModFile{Module: module, Version: v, Mod: true, Sum: sum})
			}
		}
		return fs.SkipDir
	})
	if err != nil {
		return nil, fmt.Errorf("module cache %s: %w", download, err)
	}
	return files, nil
}

func sha256File(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// EscapePath writes a module path as the module cache and proxies do:
// an upper-case letter becomes '!' and the lower-case letter.
func EscapePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('!')
			b.WriteRune(r + ('a' - 'A'))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// UnescapePath reverses EscapePath.
func UnescapePath(p string) (string, error) {
	var b strings.Builder
	bang := false
	for _, r := range p {
		switch {
		case bang:
			if r < 'a' || r > 'z' {
				return "", fmt.Errorf("module cache path %q: '!' must be followed by a lower-case letter", p)
			}
			b.WriteRune(r - ('a' - 'A'))
			bang = false
		case r == '!':
			bang = true
		case r >= 'A' && r <= 'Z':
			return "", fmt.Errorf("module cache path %q: upper-case letters are escaped in the cache, this is not one", p)
		default:
			b.WriteRune(r)
		}
	}
	if bang {
		return "", fmt.Errorf("module cache path %q ends in '!'", p)
	}
	return b.String(), nil
}

// License is one licence file of a linked module.
type License struct {
	Path string // relative to the module cache root: <escaped module>@<version>/<file>
	MD5  string
	SPDX string
}

// The file names oe-core's licence finder takes for licences, and the
// extensions it never takes (oe/license_finder.py, find_license_files).
var (
	licenseGlobs   = []string{"*LICEN[CS]E*", "COPYING*", "*[Ll]icense*", "LEGAL*", "[Ll]egal*", "*GPL*", "README.lic*", "COPYRIGHT*", "[Cc]opyright*", "e[dp]l-v10"}
	skipExtensions = []string{".html", ".js", ".json", ".svg", ".ts", ".go", ".sh"}
)

// CollectLicenses finds, for every package that comes from the module cache
// at cache, the first licence file in its directory or the nearest parent
// up to the module root (as go-mod-update-modules does), and names it.
func CollectLicenses(cache string, pkgs []Package) ([]License, error) {
	seen := map[string]License{}
	for _, p := range pkgs {
		if p.Module == nil || p.Module.Dir == "" || !within(cache, p.Dir) {
			continue
		}
		file, err := FindLicenseUp(p.Dir, p.Module.Dir)
		if err != nil {
			return nil, err
		}
		if file == "" {
			return nil, fmt.Errorf("module %s@%s: no licence file for package %s: the recipe cannot ship it", p.Module.Path, p.Module.Version, p.ImportPath)
		}
		rel, err := filepath.Rel(cache, file)
		if err != nil {
			return nil, err
		}
		rel = filepath.ToSlash(rel)
		if _, ok := seen[rel]; ok {
			continue
		}
		text, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		sum := md5.Sum(text)
		id, err := ClassifyLicense(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		seen[rel] = License{Path: rel, MD5: hex.EncodeToString(sum[:]), SPDX: id}
	}
	lics := make([]License, 0, len(seen))
	for _, l := range seen {
		lics = append(lics, l)
	}
	return lics, nil
}

func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// FindLicenseUp returns the first licence file (sorted by name) in dir or
// its parents up to top, or "" when there is none.
func FindLicenseUp(dir, top string) (string, error) {
	for d := dir; within(top, d); d = filepath.Dir(d) {
		entries, err := os.ReadDir(d)
		if err != nil {
			return "", err
		}
		names := []string{}
		for _, e := range entries {
			if e.Type().IsRegular() {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, n := range names {
			if IsLicenseName(n) {
				return filepath.Join(d, n), nil
			}
		}
		if d == top {
			break
		}
	}
	return "", nil
}

// IsLicenseName reports whether oe-core's licence finder takes a file of
// this name for a licence.
func IsLicenseName(name string) bool {
	for _, ext := range skipExtensions {
		if strings.HasSuffix(name, ext) {
			return false
		}
	}
	for _, g := range licenseGlobs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

var spaces = regexp.MustCompile(`\s+`)

// ClassifyLicense names the licence in text by the phrases that set the
// common open-source licences apart. A text it does not know is an error: a
// person has to read it and extend this list.
func ClassifyLicense(text []byte) (string, error) {
	t := strings.ToLower(spaces.ReplaceAllString(string(text), " "))
	has := func(s ...string) bool {
		for _, x := range s {
			if !strings.Contains(t, x) {
				return false
			}
		}
		return true
	}
	switch {
	case has("apache license", "version 2.0"):
		return "Apache-2.0", nil
	case has("mozilla public license version 2.0"):
		return "MPL-2.0", nil
	case has("permission is hereby granted, free of charge"):
		return "MIT", nil
	case has("permission to use, copy, modify, and/or distribute this software for any purpose"):
		return "ISC", nil
	case has("redistribution and use in source and binary forms"):
		if has("neither the name") || has("may be used to endorse or promote") {
			return "BSD-3-Clause", nil
		}
		return "BSD-2-Clause", nil
	}
	return "", errors.New("licence text not recognised: read it and add it to ClassifyLicense in scripts/yocto-pins")
}

// notice heads every generated file.
const notice = `
# Generated by scripts/yocto-pins (make yocto-pins) from go.mod, go.sum and
# the module cache. Do not edit by hand: a test fails when these pins drift
# from go.mod.

`

// foldURI sorts shorter module paths before longer ones, as
// go-mod-update-modules does.
func foldURI(s string) string {
	return strings.NewReplacer(";", " ", "/", "!").Replace(s)
}

func renderList(head string, lines []string, tail string) []byte {
	sort.Slice(lines, func(i, j int) bool { return foldURI(lines[i]) < foldURI(lines[j]) })
	var b strings.Builder
	b.WriteString(notice)
	b.WriteString(head)
	b.WriteString(" \"\\\n")
	for _, l := range lines {
		b.WriteString("    " + l + " \\\n")
	}
	b.WriteString("\"\n")
	b.WriteString(tail)
	return []byte(b.String())
}

// RenderGoMods writes the gomod:// entries (bitbake's gomod fetcher unpacks
// a zip's go.mod itself).
func RenderGoMods(files []ModFile) []byte {
	var lines []string
	for _, f := range files {
		if f.Mod {
			lines = append(lines, fmt.Sprintf("gomod://%s;version=%s;mod=1;sha256sum=%s", f.Module, f.Version, f.Sum))
		} else {
			lines = append(lines, fmt.Sprintf("gomod://%s;version=%s;sha256sum=%s", f.Module, f.Version, f.Sum))
		}
	}
	return renderList("SRC_URI +=", lines, "")
}

// RenderProxyMods writes the same files as https:// entries for a bitbake
// without the gomod fetcher: each file is downloaded from the module proxy
// under a unique name and copied, not unpacked, into the module cache's
// download area, where the go command (GOPROXY=off) finds it.
func RenderProxyMods(files []ModFile) []byte {
	var lines []string
	entry := func(module, version, ext, sum string) string {
		esc := EscapePath(module) + "/@v/"
		return fmt.Sprintf("${GO_MOD_PROXY_URL}/%s%s%s;downloadfilename=go-mod/%s%s%s;subdir=${GO_MOD_CACHE_DIR}/cache/download/%s;unpack=0;sha256sum=%s",
			esc, EscapePath(version), ext, esc, EscapePath(version), ext, strings.TrimSuffix(esc, "/"), sum)
	}
	for _, f := range files {
		if f.Mod {
			lines = append(lines, entry(f.Module, f.Version, ".mod", f.Sum))
			continue
		}
		lines = append(lines, entry(f.Module, f.Version, ".zip", f.Sum), entry(f.Module, f.Version, ".mod", f.ModSum))
	}
	head := `# The module proxy to fetch from (a mirror of proxy.golang.org works).
GO_MOD_PROXY_URL ?= "https://proxy.golang.org"
# Where the files go, relative to WORKDIR: the download area of GOMODCACHE.
GO_MOD_CACHE_DIR ?= "${@os.path.relpath(d.getVar('GOMODCACHE'), d.getVar('WORKDIR'))}"

SRC_URI +=`
	return renderList(head, lines, "")
}

// RenderLicenses writes LICENSE += and LIC_FILES_CHKSUM += for the modules'
// licence files, paths relative to S (GOMODCACHE is ${S}/pkg/mod).
func RenderLicenses(lics []License) []byte {
	ids := map[string]bool{}
	var lines []string
	for _, l := range lics {
		ids[l.SPDX] = true
		lines = append(lines, fmt.Sprintf("file://pkg/mod/%s;md5=%s;spdx=%s", l.Path, l.MD5, url.QueryEscape(l.SPDX)))
	}
	names := slices.Sorted(maps.Keys(ids))
	head := "LICENSE += \"& " + strings.Join(names, " & ") + "\"\n\nLIC_FILES_CHKSUM +="
	if len(names) == 0 {
		head = "LIC_FILES_CHKSUM +="
	}
	return renderList(head, lines, "")
}
