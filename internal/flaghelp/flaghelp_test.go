package flaghelp

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWrite(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("config", "/etc/mender/mender.conf", "main `FILE`")
	fs.Duration("timeout", 20*time.Second, "`DURATION` limit,\nover two lines")
	fs.Bool("json", false, "print JSON")
	fs.Int("count", 0, "how many `N`")
	fs.String("old", "", "deprecated")
	var b strings.Builder
	Write(&b, "prog x [flags]", "Does x.\n", fs, func(n string) bool { return n == "old" })
	assert.Equal(t, `Usage: prog x [flags]

Does x.

Flags:
  --config FILE
        main FILE (default "/etc/mender/mender.conf")
  --count N
        how many N
  --json
        print JSON
  --timeout DURATION
        DURATION limit,
        over two lines (default 20s)
`, b.String())

	var empty strings.Builder
	Write(&empty, "prog y", "Does y.", flag.NewFlagSet("y", flag.ContinueOnError), nil)
	assert.Equal(t, "Usage: prog y\n\nDoes y.\n", empty.String(), "no Flags section without flags")
}

func TestError(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int("count", 0, "")
	err := fs.Parse([]string{"-bogus"})
	require.Error(t, err)
	assert.Equal(t, "flag provided but not defined: --bogus", Error(err))
	err = fs.Parse([]string{"--count", "x"})
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(Error(err), `invalid value "x" for flag --count:`), Error(err))
	assert.Equal(t, "a-b c", Error(errors.New("a-b c")), "a hyphen inside a word is not a flag")
	assert.Equal(t, "--x: --y, --9 -", Error(errors.New("-x: -y, --9 -")), "after start, colon and space; not before a digit or at the end")
	assert.Equal(t, "a:--b\t--c", Error(errors.New("a:-b\t-c")))
}
