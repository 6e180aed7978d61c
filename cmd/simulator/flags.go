package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/mender-mtls/mtls-agent/internal/flaghelp"
)

// errHelp marks help that was asked for and printed (exit 0).
var errHelp = errors.New("help shown")

// cmdFlags is one command's flags. Help asked for with --help, -h or
// -help goes to stdout and the command exits 0; a flag error goes to
// stderr as one line plus a pointer to --help, and the command exits 2.
// Flags are spelled --flag in every text it prints.
type cmdFlags struct {
	*flag.FlagSet
	synopsis       string
	usage          string // the usage line after "Usage: "; "" = "simulator NAME [flags]"
	stdout, stderr io.Writer
	hidden         map[string]bool
}

func newFlagSet(name, synopsis string, stdout, stderr io.Writer) *cmdFlags {
	fs := &cmdFlags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), synopsis: synopsis,
		stdout: stdout, stderr: stderr, hidden: map[string]bool{}}
	fs.SetOutput(io.Discard) // parseFlags reports errors; help is printed by printHelp
	fs.Usage = func() {}
	return fs
}

// hide keeps a flag out of the help (a deprecated alias).
func (fs *cmdFlags) hide(name string) { fs.hidden[name] = true }

// printHelp writes the usage line, the synopsis and the flags to w.
func (fs *cmdFlags) printHelp(w io.Writer) {
	usage := fs.usage
	if usage == "" {
		usage = "simulator " + fs.Name() + " [flags]"
	}
	flaghelp.Write(w, usage, fs.synopsis, fs.FlagSet, func(name string) bool { return fs.hidden[name] })
}

// parseFlags parses args. It returns errHelp after printing the help to
// stdout, errUsage after printing a flag error to stderr, and errUsage for
// a positional argument the command does not take.
func parseFlags(fs *cmdFlags, args []string) error {
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.stderr, "simulator %s: unexpected argument %q\nRun 'simulator %s --help' for the flags.\n", fs.Name(), fs.Arg(0), fs.Name())
		return errUsage
	}
	return nil
}

// parse is fs.Parse with the help and error handling of parseFlags; it
// leaves positional arguments to the caller.
func (fs *cmdFlags) parse(args []string) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.printHelp(fs.stdout)
		return errHelp
	}
	msg := flaghelp.Error(err)
	fmt.Fprintf(fs.stderr, "simulator %s: %s\nRun 'simulator %s --help' for the flags.\n", fs.Name(), msg, fs.Name())
	return errUsage
}
