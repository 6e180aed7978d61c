package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at build time by the Makefile: -X main.commit=... -X main.date=...
// (version is in main.go). "" means unknown: commit then comes from the
// VCS stamp of the Go toolchain when there is one.
var (
	commit string
	date   string
)

// buildInfo is what `device-agent version` prints.
type buildInfo struct {
	Version   string // semver from git describe, or "dev"
	Commit    string // revision, "+dirty" when built from a modified tree; "unknown"
	Date      string // build date (UTC, RFC 3339); "unknown"
	GoVersion string
	Platform  string // GOOS/GOARCH plus GOARM, GOARM64, GOAMD64 ... when set
}

// readBuildInfo combines the -X values with the toolchain's build info.
func readBuildInfo(bi *debug.BuildInfo, ok bool, ver, commit, date string) buildInfo {
	info := buildInfo{Version: ver, Commit: commit, Date: date, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	var rev, modified, vcsTime string
	if ok && bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				vcsTime = s.Value
			case "GOARM", "GOARM64", "GOAMD64", "GO386", "GOMIPS", "GOMIPS64", "GOPPC64", "GORISCV64":
				info.Platform += " " + s.Key + "=" + s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" && rev != "" {
		info.Commit = rev
		if len(info.Commit) > 12 {
			info.Commit = info.Commit[:12]
		}
		if modified == "true" {
			info.Commit += "+dirty"
		}
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" && vcsTime != "" {
		info.Date = "unknown (commit time " + vcsTime + ")"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

func (b buildInfo) String() string {
	var s strings.Builder
	fmt.Fprintf(&s, "device-agent %s\n", b.Version)
	fmt.Fprintf(&s, "commit:   %s\n", b.Commit)
	fmt.Fprintf(&s, "built:    %s\n", b.Date)
	fmt.Fprintf(&s, "go:       %s\n", b.GoVersion)
	fmt.Fprintf(&s, "platform: %s\n", b.Platform)
	return s.String()
}

const versionUsage = `Usage: device-agent version

Print the version (from git describe, or dev), commit, build date, Go version
and platform (GOOS/GOARCH, plus GOARM on 32-bit ARM).
`

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, versionUsage)
			return nil
		}
		fmt.Fprint(stderr, versionUsage)
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "device-agent version: unexpected argument %q\n%s", fs.Arg(0), versionUsage)
		return errUsage
	}
	bi, ok := debug.ReadBuildInfo()
	_, err := io.WriteString(stdout, readBuildInfo(bi, ok, version, commit, date).String())
	return err
}
