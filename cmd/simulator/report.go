package main

import (
	"fmt"
	"io"

	"github.com/mender-mtls/mtls-agent/internal/fleet"
)

const reportSynopsis = `Merge the JSON reports of the shards of one fleet ('simulator run --shard i/N --report FILE'):
counts, latency histograms (exactly), handshakes and memory add up, timelines, time series and
markers are aligned on each shard's start. A shard given twice is refused. The merged summary is
printed; --threshold checks the merged fleet (exit code 99 when one fails, after every file is
written) and --junit writes the checks for CI systems.`

const reportUsage = "Usage: simulator report merge A.json B.json ... --out ALL.json [--html FILE] [--threshold EXPR ...] [--junit FILE]\n\n" +
	reportSynopsis + "\n\n" +
	"Run 'simulator report merge --help' for the flags.\n"

func cmdReport(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "merge" {
		if len(args) > 0 && (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
			fmt.Fprint(stdout, reportUsage)
			return nil
		}
		fmt.Fprint(stderr, reportUsage)
		return errUsage
	}
	fs := newFlagSet("report merge", reportSynopsis, stdout, stderr)
	fs.usage = "simulator report merge A.json B.json ... --out ALL.json [--html FILE] [--threshold EXPR ...] [--junit FILE]"
	out := fs.String("out", "", "merged JSON report `FILE` (required)")
	html := fs.String("html", "", "also write the merged HTML report to `FILE`")
	var checks reportFlags
	checks.registerChecks(fs)
	inputs, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if err := requireFlag(fs, "out", *out); err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("report merge: no input reports: give the shard reports to merge, e.g. shard-*.json")
	}
	reports := make([]*fleet.Report, 0, len(inputs))
	for _, p := range inputs {
		r, err := fleet.ReadReport(p)
		if err != nil {
			return err
		}
		reports = append(reports, r)
	}
	merged, err := fleet.Merge(reports...)
	if err != nil {
		return err
	}
	merged.EvaluateThresholds(checks.thresholds)
	if err := merged.WriteSummary(stdout); err != nil {
		return err
	}
	return writeReports(merged, reportFlags{report: *out, html: *html, junit: checks.junit}, stdout)
}

// parseInterspersed parses flags that may come before, between or after
// the positional arguments, and returns the positional ones.
func parseInterspersed(fs *cmdFlags, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil // everything after the terminator is positional
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
