// Command simulator is the laptop/server side of the project: it runs a fake
// Mender backend (and, with --mtls, the test mTLS ambassador in front of it),
// issues device certificates, and drives virtual devices through the real
// protocol.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `simulator: fake Mender backend, test mTLS ambassador and device PKI

Usage:
  simulator serve [--dir DIR] [--listen ADDR] [--auto-accept] [--mtls] [--user EMAIL --password PASSWORD] [flags]
  simulator pki init|server|device|sign-csr|revoke|list --dir DIR [flags]
  simulator ambassador --backend URL --user EMAIL [--ca FILE] [--server-cert FILE --server-key FILE] [flags]
  simulator run --server URL --pki-dir DIR --count N [--ramp DURATION] [--duration DURATION] [--report FILE] [flags]
  simulator demo [--count N] [--duration DURATION] [--keep] [--report FILE] [--html FILE] [--metrics ADDR]
  simulator report merge A.json B.json ... --out ALL.json [--html FILE]
  simulator artifact write --type MODULE --name NAME --device-type TYPE --file FILE [--dest-dir DIR] -o OUT.mender
  simulator artifact read FILE [--key PUBLIC-KEY]
  simulator station --port P [--port P2 …] --pki-dir DIR [--cn-template T] [--days N] [--loop] [--records FILE]
                    [--preauth URL --user EMAIL --password PASSWORD]
  simulator station verify-records FILE | import-records FILE --preauth URL --user EMAIL --password PASSWORD
  simulator deploy --server URL --user EMAIL (--artifact FILE | --artifact-name NAME) (--devices ID,… | --all) [flags]
  simulator version

Commands:
  serve       run the fake Mender backend over HTTPS until Ctrl-C; with --mtls, behind the
              test mTLS ambassador
  pki         the PKI steps of Mender's mTLS guide: CA, server and device certificates, CSRs,
              revocation, the list of what was issued
  ambassador  run the mTLS ambassador in front of any Mender server (MTLS_* variables honoured)
  run         drive N virtual devices, each with its own key and certificate, through the real protocol
  demo        the first command to try: backend, ambassador, fresh PKI, a fleet and one real device-agent
  report      merge shard reports
  artifact    write and read Mender Artifacts (for users without mender-artifact)
  station     factory provisioning over serial ports: sign the CSRs of boards running
              'device-agent provision', keep hash-chained records, preauthorize the boards
  deploy      upload an artifact, deploy it through the management API and follow it to the end
  version     print the version

Run 'simulator COMMAND --help' (or 'simulator help COMMAND') for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile, err := startProfile(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "simulator:", err)
		os.Exit(1)
	}
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	stopProfile()
	os.Exit(code)
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stdout, stderr)
	case "pki":
		err = cmdPKI(args[1:], stdout, stderr)
	case "run":
		err = cmdRun(ctx, args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "report":
		err = cmdReport(args[1:], stdout, stderr)
	case "artifact":
		err = cmdArtifact(args[1:], stdout, stderr)
	case "station":
		err = cmdStation(ctx, args[1:], stdout, stderr, os.Getenv)
	case "deploy":
		err = cmdDeploy(ctx, args[1:], stdout, stderr, os.Getenv)
	case "ambassador":
		err = cmdAmbassador(ctx, args[1:], stdout, stderr, os.Getenv)
	case "version", "--version", "-version":
		err = cmdVersion(args[1:], stdout, stderr)
	case "help", "--help", "-h", "-help":
		if len(args) > 1 && args[1] != "help" && !strings.HasPrefix(args[1], "-") {
			return run(ctx, append(args[1:len(args):len(args)], "--help"), stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "simulator: unknown command %q; run 'simulator help' for the list\n", args[0])
		return 2
	}
	var coded interface{ ExitCode() int }
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &coded):
		printError(stderr, err)
		return coded.ExitCode()
	default:
		printError(stderr, err)
		return 1
	}
}

// cmdVersion prints the version.
func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "Print the version of this simulator.", stdout, stderr)
	fs.usage = "simulator version"
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "simulator %s\n", version)
	return nil
}

// printError prints each joined error on its own line.
func printError(w io.Writer, err error) {
	if multi, ok := err.(interface{ Unwrap() []error }); ok && len(multi.Unwrap()) > 1 {
		for _, e := range multi.Unwrap() {
			printError(w, e)
		}
		return
	}
	fmt.Fprintf(w, "simulator: %v\n", err)
}
