package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// helpCommands is every command that takes flags.
var helpCommands = [][]string{
	{"serve"}, {"ambassador"}, {"run"}, {"demo"}, {"version"}, {"report", "merge"},
	{"pki", "init"}, {"pki", "server"}, {"pki", "device"}, {"pki", "sign-csr"}, {"pki", "revoke"}, {"pki", "list"},
	{"artifact", "write"}, {"artifact", "read"}, {"deploy"},
}

// --help (and -h, -help, 'help COMMAND') on every command prints its help
// to stdout and exits 0; flags are spelled --flag and every placeholder
// names what it takes (no bare "string", "int", "duration" ...).
func TestHelpOnEveryCommand(t *testing.T) {
	genericPlaceholder := regexp.MustCompile(`(?m)^  --[a-z0-9-]+ (string|int|uint|float|duration|value)$`)
	singleDash := regexp.MustCompile(`(?m)^\s+-[a-z]`)
	for _, cmd := range helpCommands {
		for _, form := range [][]string{
			append(append([]string{}, cmd...), "--help"),
			append(append([]string{}, cmd...), "-h"),
			append([]string{"help"}, cmd...),
		} {
			t.Run(strings.Join(form, " "), func(t *testing.T) {
				stdout, stderr, code := sim(t, form...)
				assert.Equal(t, 0, code, "stderr: %s", stderr)
				assert.Empty(t, stderr, "help goes to stdout")
				assert.Contains(t, stdout, "Usage: simulator "+strings.Join(cmd, " "))
				assert.NotRegexp(t, singleDash, stdout, "flags are spelled --flag")
				assert.NotRegexp(t, genericPlaceholder, stdout, "placeholders name what they take")
			})
		}
	}
	for _, args := range [][]string{{"--help"}, {"help"}, {"pki", "--help"}, {"report", "--help"}} {
		stdout, stderr, code := sim(t, args...)
		assert.Equal(t, 0, code, "%v", args)
		assert.Empty(t, stderr, "%v", args)
		assert.Contains(t, stdout, "Usage:", "%v", args)
	}
}

// A flag error is one line naming the flag (spelled --flag) plus where the
// help is, on stderr, exit 2.
func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--nope"}, "simulator serve: flag provided but not defined: --nope"},
		{[]string{"run", "--count", "many"}, `invalid value "many" for flag --count`},
		{[]string{"pki", "init", "--days"}, "flag needs an argument: --days"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := sim(t, tt.args...)
			assert.Equal(t, 2, code)
			assert.Empty(t, stdout)
			assert.Contains(t, stderr, tt.want)
			assert.Contains(t, stderr, "--help' for the flags")
			assert.LessOrEqual(t, strings.Count(stderr, "\n"), 2, "short: %s", stderr)
		})
	}
}

func TestVersion(t *testing.T) {
	stdout, stderr, code := sim(t, "version")
	assert.Equal(t, 0, code, stderr)
	assert.Equal(t, "simulator "+version+"\n", stdout)
}
