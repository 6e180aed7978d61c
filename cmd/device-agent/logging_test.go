package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func logAll(l *slog.Logger) {
	l.Debug("d", "k", 1)
	l.Info("i", "k", 2)
	l.With("scope", "x").WithGroup("g").Warn("w", "k", 3)
	l.Error("e", "k", 4)
}

func TestLoggerFormats(t *testing.T) {
	tests := []struct {
		name    string
		ls      logSetup
		want    []string // line prefixes, in order
		hasTime bool
	}{
		{"text", logSetup{level: slog.LevelDebug, format: logFormatText},
			[]string{"time=", "time=", "time=", "time="}, true},
		{"text under journald", logSetup{level: slog.LevelDebug, format: logFormatText, journal: true},
			[]string{"<7>level=DEBUG msg=d k=1", "<6>level=INFO msg=i k=2", "<4>level=WARN msg=w scope=x g.k=3", "<3>level=ERROR msg=e k=4"}, false},
		{"json", logSetup{level: slog.LevelDebug, format: logFormatJSON},
			[]string{`{"time":`, `{"time":`, `{"time":`, `{"time":`}, true},
		{"json under journald keeps its time", logSetup{level: slog.LevelDebug, format: logFormatJSON, journal: true},
			[]string{`<7>{"time":`, `<6>{"time":`, `<4>{"time":`, `<3>{"time":`}, true},
		{"level filters under journald", logSetup{level: slog.LevelWarn, format: logFormatText, journal: true},
			[]string{"<4>level=WARN", "<3>level=ERROR"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			logAll(newLogger(&b, tt.ls))
			lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			require.Len(t, lines, len(tt.want), "one line per record:\n%s", b.String())
			for i, l := range lines {
				assert.True(t, strings.HasPrefix(l, tt.want[i]), "line %d %q should start with %q", i, l, tt.want[i])
				assert.Equal(t, tt.hasTime, strings.Contains(l, "time"), "time stamp in %q", l)
				if tt.ls.format == logFormatJSON {
					var m map[string]any
					assert.NoError(t, json.Unmarshal([]byte(l[strings.IndexByte(l, '{'):]), &m), "a JSON object after the prefix: %q", l)
				}
			}
		})
	}
}

func TestParseLogFormat(t *testing.T) {
	for in, want := range map[string]string{"": "text", "text": "text", "JSON": "json"} {
		got, err := parseLogFormat(in)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
	_, err := parseLogFormat("xml")
	assert.ErrorContains(t, err, `--log-format "xml": use text or json`)
}

func TestLogFormatFlag(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mender.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`{"ServerURL":"https://mender.example"}`), 0o600))
	for _, cmd := range []string{"daemon", "check", "show-identity"} {
		t.Run(cmd, func(t *testing.T) {
			stdout, stderr, code := agent(t, nil, cmd, "--config", conf, "--fallback-config", "", "--data", dir, "--log-format", "xml")
			assert.Equal(t, 1, code)
			assert.Contains(t, stdout+stderr, `--log-format "xml": use text or json`)
		})
	}
}

func TestIsJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	match := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	other := fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)
	tests := []struct {
		name string
		env  string
		w    io.Writer
		want bool
	}{
		{"stderr is the journal stream", match, f, true},
		{"inherited variable, stderr redirected elsewhere", other, f, false},
		{"no variable", "", f, false},
		{"malformed variable", "garbage", f, false},
		{"not a file", match, &bytes.Buffer{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"JOURNAL_STREAM": tt.env}
			assert.Equal(t, tt.want, isJournal(tt.w, func(k string) string { return env[k] }))
		})
	}
}
