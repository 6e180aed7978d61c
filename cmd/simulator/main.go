// Command simulator is the laptop/server side of the project: it runs a fake
// Mender backend (and, with --mtls, the test mTLS ambassador in front of it),
// issues device certificates, and drives virtual devices through the real
// protocol.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `simulator: fake Mender backend, test mTLS ambassador and device PKI

Usage:
  simulator serve [--dir DIR] [--listen ADDR] [--auto-accept] [--mtls] [--user U --password P] [flags]
  simulator pki init|server|device|sign-csr|revoke --dir DIR [flags]
  simulator ambassador --backend URL --user U [--ca FILE] [--server-cert FILE --server-key FILE] [flags]
  simulator run --server URL --pki-dir DIR --count N [--ramp D] [--duration D] [--report F] [--html F] [flags]
  simulator demo [--count 1000] [--duration 60s] [--report F] [--html F] [--metrics ADDR]
  simulator report merge A.json B.json ... --out ALL.json [--html F]
  simulator version

Commands:
  serve       run the fake Mender backend over HTTPS until Ctrl-C; with --mtls, behind the
              test mTLS ambassador
  pki         the PKI steps of Mender's mTLS guide: CA, server and device certificates, CSRs, revocation
  ambassador  run the mTLS ambassador in front of any Mender server (MTLS_* variables honoured)
  run         drive N virtual devices, each with its own key and certificate, through the real protocol
  demo        the first command to try: backend, ambassador, fresh PKI, a fleet and one real device-agent
  report      merge shard reports
  version     print the version

Run 'simulator COMMAND --help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
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
	case "ambassador":
		err = cmdAmbassador(ctx, args[1:], stdout, stderr, os.Getenv)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "simulator %s\n", version)
		return 0
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "simulator: unknown command %q; run 'simulator help' for the list\n", args[0])
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		printError(stderr, err)
		return 1
	}
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: simulator %s [flags]\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "simulator %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
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
