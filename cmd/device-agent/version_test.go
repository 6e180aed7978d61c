package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReadBuildInfo(t *testing.T) {
	settings := func(kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.26.1"}
		for i := 0; i < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	host := runtime.GOOS + "/" + runtime.GOARCH
	tests := []struct {
		name              string
		bi                *debug.BuildInfo
		ver, commit, date string
		want              buildInfo
	}{
		{"Makefile build: -X values win", settings("vcs.revision", "0123456789abcdef0123", "GOARM", "7"), "v1.2.3", "fedcba987654", "2026-01-02T03:04:05Z",
			buildInfo{"v1.2.3", "fedcba987654", "2026-01-02T03:04:05Z", "go1.26.1", host + " GOARM=7"}},
		{"go build in a modified checkout", settings("vcs.revision", "0123456789abcdef0123", "vcs.modified", "true", "vcs.time", "2026-01-01T00:00:00Z", "GOAMD64", "v1"), "", "", "",
			buildInfo{"dev", "0123456789ab+dirty", "unknown (commit time 2026-01-01T00:00:00Z)", "go1.26.1", host + " GOAMD64=v1"}},
		{"no build info", nil, "dev", "", "",
			buildInfo{"dev", "unknown", "unknown", runtime.Version(), host}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, readBuildInfo(tt.bi, tt.bi != nil, tt.ver, tt.commit, tt.date))
		})
	}
}

func TestVersionCommand(t *testing.T) {
	tests := []struct {
		args       []string
		code       int
		wantStdout []string
		wantStderr string
	}{
		{[]string{"version"}, 0, []string{"device-agent dev\n", "\ncommit:   ", "\nbuilt:    ", "\ngo:       " + runtime.Version(), "\nplatform: " + runtime.GOOS + "/" + runtime.GOARCH}, ""},
		{[]string{"--version"}, 0, []string{"device-agent dev\n"}, ""},
		{[]string{"version", "--help"}, 0, []string{"Usage: device-agent version"}, ""},
		{[]string{"version", "-h"}, 0, []string{"Usage: device-agent version"}, ""},
		{[]string{"version", "--bogus"}, 2, nil, "flag provided but not defined: -bogus"},
		{[]string{"version", "extra"}, 2, nil, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := agent(t, nil, tt.args...)
			assert.Equal(t, tt.code, code)
			for _, w := range tt.wantStdout {
				assert.Contains(t, stdout, w)
			}
			assert.Contains(t, stderr, tt.wantStderr)
		})
	}
}
