package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscapePath(t *testing.T) {
	tests := []struct{ plain, escaped string }{
		{"github.com/google/go-tpm", "github.com/google/go-tpm"},
		{"github.com/BurntSushi/toml", "github.com/!burnt!sushi/toml"},
		{"github.com/Azure/AZ", "github.com/!azure/!a!z"},
	}
	for _, tt := range tests {
		if got := EscapePath(tt.plain); got != tt.escaped {
			t.Errorf("EscapePath(%q) = %q, want %q", tt.plain, got, tt.escaped)
		}
		got, err := UnescapePath(tt.escaped)
		if err != nil || got != tt.plain {
			t.Errorf("UnescapePath(%q) = %q, %v, want %q", tt.escaped, got, err, tt.plain)
		}
	}
	for _, bad := range []string{"github.com/Upper", "trailing!", "x/!1"} {
		if _, err := UnescapePath(bad); err == nil {
			t.Errorf("UnescapePath(%q) accepted a path the module cache never writes", bad)
		}
	}
}

func TestClassifyLicense(t *testing.T) {
	tests := []struct{ text, want string }{
		{"                                 Apache License\n                           Version 2.0, January 2004", "Apache-2.0"},
		{"Permission is hereby granted, free of charge, to any person obtaining a copy", "MIT"},
		{"Redistribution and use in source and binary forms, with or without\nmodification... Neither the name of Google Inc. nor", "BSD-3-Clause"},
		{"Redistribution and use in source and binary forms, with or without modification, are permitted provided", "BSD-2-Clause"},
		{"Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee", "ISC"},
		{"Mozilla Public License Version 2.0\n==================================", "MPL-2.0"},
	}
	for _, tt := range tests {
		got, err := ClassifyLicense([]byte(tt.text))
		if err != nil || got != tt.want {
			t.Errorf("ClassifyLicense(%.40q) = %q, %v, want %q", tt.text, got, err, tt.want)
		}
	}
	if _, err := ClassifyLicense([]byte("All rights reserved. Do not copy.")); err == nil {
		t.Error("ClassifyLicense named a text that is no known licence")
	}
}

func TestIsLicenseName(t *testing.T) {
	for name, want := range map[string]bool{
		"LICENSE": true, "LICENCE.txt": true, "COPYING": true, "license.md": true, "NOTICE": false,
		"license.go": false, "README.md": false, "LICENSE.json": false,
	} {
		if got := IsLicenseName(name); got != want {
			t.Errorf("IsLicenseName(%q) = %v, want %v", name, got, want)
		}
	}
}

// A package without a licence of its own takes the nearest one up to the
// module root, never one above it.
func TestFindLicenseUp(t *testing.T) {
	root := t.TempDir()
	mod := filepath.Join(root, "example.com", "m@v1.0.0")
	pkg := filepath.Join(mod, "a", "b")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p string) {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "LICENSE")) // outside the module
	if got, err := FindLicenseUp(pkg, mod); err != nil || got != "" {
		t.Fatalf("FindLicenseUp found %q, %v outside the module", got, err)
	}
	write(filepath.Join(mod, "LICENSE"))
	write(filepath.Join(mod, "a", "COPYING"))
	got, err := FindLicenseUp(pkg, mod)
	if err != nil || got != filepath.Join(mod, "a", "COPYING") {
		t.Fatalf("FindLicenseUp = %q, %v, want the nearest a/COPYING", got, err)
	}
}

// The rendered files use the layout go-mod-update-modules writes, sorted
// shorter module paths first, and the proxy entries land where the gomod
// fetcher would put them.
func TestRender(t *testing.T) {
	files := []ModFile{
		{Module: "golang.org/x/sys", Version: "v0.1.0", Sum: "aa", ModSum: "bb"},
		{Module: "github.com/Foo/bar", Version: "v1.0.0", Sum: "cc", ModSum: "dd"},
		{Module: "github.com/Foo", Version: "v2.0.0", Mod: true, Sum: "ee"},
	}
	gomod := string(RenderGoMods(files))
	want := `SRC_URI += "\
    gomod://github.com/Foo;version=v2.0.0;mod=1;sha256sum=ee \
    gomod://github.com/Foo/bar;version=v1.0.0;sha256sum=cc \
    gomod://golang.org/x/sys;version=v0.1.0;sha256sum=aa \
"
`
	if !strings.HasSuffix(gomod, want) {
		t.Errorf("RenderGoMods:\n%s\nwant it to end with\n%s", gomod, want)
	}
	proxy := string(RenderProxyMods(files))
	for _, w := range []string{
		"${GO_MOD_PROXY_URL}/github.com/!foo/bar/@v/v1.0.0.zip;downloadfilename=go-mod/github.com/!foo/bar/@v/v1.0.0.zip;subdir=${GO_MOD_CACHE_DIR}/cache/download/github.com/!foo/bar/@v;unpack=0;sha256sum=cc",
		"${GO_MOD_PROXY_URL}/github.com/!foo/bar/@v/v1.0.0.mod;downloadfilename=go-mod/github.com/!foo/bar/@v/v1.0.0.mod;subdir=${GO_MOD_CACHE_DIR}/cache/download/github.com/!foo/bar/@v;unpack=0;sha256sum=dd",
		"${GO_MOD_PROXY_URL}/github.com/!foo/@v/v2.0.0.mod;",
	} {
		if !strings.Contains(proxy, w) {
			t.Errorf("RenderProxyMods lacks %s:\n%s", w, proxy)
		}
	}
	if strings.Contains(proxy, "github.com/!foo/@v/v2.0.0.zip") {
		t.Error("RenderProxyMods fetches a zip for a go.mod-only module")
	}
	lic := string(RenderLicenses([]License{
		{Path: "golang.org/x/sys@v0.1.0/LICENSE", MD5: "11", SPDX: "BSD-3-Clause"},
		{Path: "github.com/!foo/bar@v1.0.0/LICENSE", MD5: "22", SPDX: "Apache-2.0"},
	}))
	for _, w := range []string{
		`LICENSE += "& Apache-2.0 & BSD-3-Clause"`,
		"    file://pkg/mod/github.com/!foo/bar@v1.0.0/LICENSE;md5=22;spdx=Apache-2.0 \\\n    file://pkg/mod/golang.org/x/sys@v0.1.0/LICENSE;md5=11;spdx=BSD-3-Clause \\\n",
	} {
		if !strings.Contains(lic, w) {
			t.Errorf("RenderLicenses lacks %q:\n%s", w, lic)
		}
	}
}

// CollectFiles takes a zip where there is one and the go.mod file alone
// otherwise, with the sha256 of each.
func TestCollectFiles(t *testing.T) {
	cache := t.TempDir()
	v := func(mod string) string {
		d := filepath.Join(cache, "cache", "download", mod, "@v")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := v("github.com/!foo/a")
	write(filepath.Join(a, "v1.0.0.zip"), "zip")
	write(filepath.Join(a, "v1.0.0.mod"), "module github.com/Foo/a\n")
	write(filepath.Join(a, "v1.0.0.info"), "{}")
	write(filepath.Join(a, "list"), "v1.0.0\n")
	b := v("example.com/b")
	write(filepath.Join(b, "v0.1.0.mod"), "module example.com/b\n")
	files, err := CollectFiles(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("CollectFiles = %+v, want a zip and a go.mod", files)
	}
	for _, f := range files {
		switch f.Module {
		case "github.com/Foo/a":
			zipSum := sha256.Sum256([]byte("zip"))
			modSum := sha256.Sum256([]byte("module github.com/Foo/a\n"))
			if f.Mod || f.Sum != hex.EncodeToString(zipSum[:]) || f.ModSum != hex.EncodeToString(modSum[:]) || f.Version != "v1.0.0" {
				t.Errorf("zip entry %+v", f)
			}
		case "example.com/b":
			if !f.Mod || f.Version != "v0.1.0" || len(f.Sum) != 64 {
				t.Errorf("go.mod entry %+v", f)
			}
		default:
			t.Errorf("unexpected entry %+v", f)
		}
	}
}
