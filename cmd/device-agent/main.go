// Command device-agent is the device side of a Mender mTLS deployment: it
// reads mender.conf, loads the device certificate and key, signs auth
// requests with that same key, authenticates (through an mTLS ambassador or
// directly), reports inventory and polls for deployments.
//
// Subcommands: daemon, status, check, show-identity, keygen, provision, version and
// mender-auth (Mender 4/5's mender-auth command line; a symlink named
// mender-auth selects it too). Run `device-agent help` for the flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=..." (see
// version.go for commit and date).
var version = "dev"

const usage = `device-agent: Mender device agent with mTLS client certificates

Usage:
  device-agent daemon        [--config FILE] [--fallback-config FILE] [--agent-config FILE] [--data DIR] [--log-level L] [--log-format F]
                             [--dbus [--forwarder-addr ADDR]]
  device-agent status        [--json] [--data DIR] [--config FILE] [--fallback-config FILE]
  device-agent check         [--config FILE] [--fallback-config FILE] [--data DIR] [--timeout D] [--json]
  device-agent show-identity [--config FILE] [--fallback-config FILE] [--data DIR]
  device-agent keygen        --key handle:0x81000100|PATH --cn NAME --csr OUT [--key-type ecdsa-p256|rsa2048]
                             [--force] [--tpm-device DEV] [--config FILE]
  device-agent provision     --port /dev/ttyS0 [--baud 115200] [--key handle:0x81000100|PATH] [--cert FILE]
                             [--config FILE] [--timeout D]
  device-agent version
  device-agent mender-auth   daemon|bootstrap [mender-auth options]   (also as a mender-auth symlink)

Commands:
  daemon         authenticate, send inventory and poll for deployments until SIGINT/SIGTERM;
                 SIGHUP reloads mender.conf, keys and certificates; one daemon per datastore
  status         show what the daemon last recorded: running, authenticated, token expiry,
                 last inventory/poll/error, certificate, deployment offered (exit 1: never ran)
  check          check config, certificate, key, identity and device type, then connect, TLS
                 handshake and auth request; one PASS/FAIL/SKIP line per check (--json: one
                 JSON object), exit 0 only when none fails
  show-identity  print the identity attributes this device authenticates with
  keygen         create the device key in the TPM (handle:0x81…) or a file, and write a CSR
                 signed by it for the factory CA (simulator pki sign-csr)
  provision      factory provisioning over a serial line from simulator station: create the key,
                 send a CSR, check and store the certificate, set it in mender.conf
  version        print the version, commit, build date, Go version and platform
  mender-auth    act as Mender 4/5's mender-auth: serve io.mender.Authentication1 on D-Bus and
                 the local mTLS forwarder for mender-update and mender-connect; run
                 'device-agent mender-auth --help' for its command line

Environment:
  MENDER_CONF_DIR       directory of mender.conf (default /etc/mender)
  MENDER_DATA_DIR       directory of the identity and inventory scripts (default /usr/share/mender)
  DBUS_SYSTEM_BUS_ADDRESS  the system bus for daemon --dbus and mender-auth (default
                        unix:path=/var/run/dbus/system_bus_socket)
  MENDER_DATASTORE_DIR  state directory: generated key, device_type, artifact_name, the daemon's
                        lock and status files (default /var/lib/mender)
  NOTIFY_SOCKET         set by systemd (Type=notify): the daemon reports READY/RELOADING/STOPPING
  JOURNAL_STREAM        set by systemd: text logs then start with <N> priorities and carry no time

Run 'device-agent COMMAND --help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The daemon reloads on SIGHUP (unhandled, it would kill the process);
	// other commands keep the default action.
	args := os.Args[1:]
	if isMenderAuth(os.Args[0]) { // the /usr/bin/mender-auth symlink
		args = append([]string{menderAuthName}, args...)
	}
	var hup chan os.Signal
	if len(args) > 0 && isDaemonCommand(args[0]) {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
	}
	code := runWith(ctx, args, os.Stdout, os.Stderr, os.Getenv, hup)
	stop()
	os.Exit(code)
}

func isDaemonCommand(name string) bool { return name == "daemon" || name == "run" }

// errUsage marks an error already explained by a usage message (exit 2).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return runWith(ctx, args, stdout, stderr, getenv, nil)
}

// runWith runs the command in args; hup delivers SIGHUP to the daemon (nil:
// the daemon never reloads).
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, hup <-chan os.Signal) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "daemon", "run":
		err = cmdDaemon(ctx, args[1:], stderr, getenv, hup)
	case "status":
		err = cmdStatus(ctx, args[1:], stdout, stderr, getenv)
	case "check":
		err = cmdCheck(ctx, args[1:], stdout, stderr, getenv)
	case "keygen":
		err = cmdKeygen(ctx, args[1:], stdout, stderr, getenv)
	case "provision":
		err = cmdProvision(ctx, args[1:], stdout, stderr, getenv)
	case "show-identity":
		err = cmdShowIdentity(ctx, args[1:], stdout, stderr, getenv)
	case menderAuthName:
		err = cmdMenderAuth(ctx, args[1:], stdout, stderr, getenv)
	case "version", "--version", "-version":
		err = cmdVersion(args[1:], stdout, stderr)
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "device-agent: unknown command %q; run 'device-agent help' for the list\n", args[0])
		return 2
	}
	var help *helpShown
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.text)
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errChecksFailed), errors.Is(err, errReported):
		return 1
	default:
		printError(stderr, err)
		return 1
	}
}

// printError prints each joined error on its own line, prefixed with the
// program name, so a config with three problems shows three lines.
func printError(w io.Writer, err error) {
	if multi, ok := err.(interface{ Unwrap() []error }); ok && len(multi.Unwrap()) > 1 {
		for _, e := range multi.Unwrap() {
			printError(w, e)
		}
		return
	}
	fmt.Fprintf(w, "device-agent: %v\n", err)
}
