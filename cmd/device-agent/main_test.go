package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func agent(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(t.Context(), args, &out, &errb, func(k string) string { return env[k] })
	return out.String(), errb.String(), code
}

func TestCommandDispatch(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage:"},
		{[]string{"help"}, 0, "device-agent daemon"},
		{[]string{"version"}, 0, "device-agent dev"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"daemon", "--no-such-flag"}, 2, "flag provided but not defined"},
		{[]string{"daemon", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"check", "--help"}, 0, "--timeout"},
		{[]string{"daemon", "--config", "/nonexistent/mender.conf", "--fallback-config", ""}, 1, "no mender.conf found"},
		{[]string{"show-identity", "--config", "/nonexistent/mender.conf", "--fallback-config", ""}, 1, "/nonexistent/mender.conf"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := agent(t, nil, tt.args...)
			assert.Equal(t, tt.code, code)
			assert.Contains(t, stdout+stderr, tt.want)
		})
	}
}

func TestDefaultPathsFollowEnvironment(t *testing.T) {
	_, stderr, code := agent(t, map[string]string{"MENDER_CONF_DIR": "/opt/conf"}, "daemon", "--fallback-config", "")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "/opt/conf/mender.conf", "MENDER_CONF_DIR sets the default --config")
}

func TestPrintErrorOneLinePerProblem(t *testing.T) {
	var b bytes.Buffer
	printError(&b, errors.Join(errors.New("ServerURL: bad"), fmt.Errorf("wrapped: %w", errors.New("HttpsClient.Key: missing"))))
	assert.Equal(t, "device-agent: ServerURL: bad\ndevice-agent: wrapped: HttpsClient.Key: missing\n", b.String())
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"": slog.LevelInfo, "DEBUG": slog.LevelDebug, "warning": slog.LevelWarn, "error": slog.LevelError} {
		got, err := parseLevel(in)
		require.NoError(t, err)
		assert.Equal(t, want, got, in)
	}
	_, err := parseLevel("loud")
	assert.ErrorContains(t, err, "DaemonLogLevel")
}

// Help asked for on any subcommand goes to stdout, exits 0 and spells
// flags --flag with named placeholders; a flag error still exits 2.
func TestSubcommandHelp(t *testing.T) {
	for _, cmd := range []string{"daemon", "run", "check", "status", "show-identity", "keygen", "version"} {
		for _, h := range []string{"--help", "-h"} {
			t.Run(cmd+" "+h, func(t *testing.T) {
				stdout, stderr, code := agent(t, nil, cmd, h)
				assert.Equal(t, 0, code, "stderr: %s", stderr)
				assert.Contains(t, stdout, "Usage: device-agent ")
				assert.Empty(t, stderr)
				for _, line := range strings.Split(stdout, "\n") {
					if trimmed := strings.TrimLeft(line, " "); strings.HasPrefix(trimmed, "-") {
						assert.True(t, strings.HasPrefix(trimmed, "--"), "flag spelled --flag: %q", line)
					}
				}
			})
		}
	}
	stdout, _, _ := agent(t, nil, "daemon", "--help")
	assert.Contains(t, stdout, "--config FILE")
	assert.Contains(t, stdout, "--log-level LEVEL")
	_, stderr, code := agent(t, nil, "check", "--bogus")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "device-agent check: flag provided but not defined: --bogus")
	assert.Contains(t, stderr, "device-agent check --help")
}
