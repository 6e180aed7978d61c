package identity

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

const (
	// maxStdout bounds a script's output; more is an error.
	maxStdout = 1 << 20
	// maxStderr bounds the stderr kept from a script; the rest is dropped.
	maxStderr = 8 << 10
	// waitDelay is how long a finished or killed script's pipes may stay open
	// (held by a background child) before they are closed.
	waitDelay = 2 * time.Second
)

// ScriptError is a failed identity or inventory script run.
type ScriptError struct {
	// Script is the path of the script.
	Script string
	// ExitCode is the script's exit status; -1 when it did not exit normally
	// (killed, timed out, not started), 0 when it succeeded but its output was bad.
	ExitCode int
	// Stderr is the first non-empty line of the script's stderr, "" if none.
	Stderr string
	// Err is the cause: *exec.ExitError, ErrTimeout, ErrMalformed, ErrEmptyOutput, ...
	Err error
}

// Error returns "run script <path>: <cause>", with the stderr line when there is one.
func (e *ScriptError) Error() string {
	s := fmt.Sprintf("run script %s: %v", e.Script, e.Err)
	if e.Stderr != "" {
		s += fmt.Sprintf(" (stderr: %q)", e.Stderr)
	}
	return s
}

// Unwrap returns the cause.
func (e *ScriptError) Unwrap() error { return e.Err }

// runScript runs the executable at path with no arguments, no shell and no
// stdin, and returns its stdout. Failures are *ScriptError; when ctx ends,
// the error wraps ctx.Err().
func runScript(ctx context.Context, path string, timeout time.Duration, log *slog.Logger) ([]byte, error) {
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var stdout, stderr boundedBuffer
	stdout.max, stderr.max = maxStdout, maxStderr
	cmd := exec.CommandContext(runCtx, path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = waitDelay
	killProcessGroup(cmd)

	start := time.Now()
	err := cmd.Run()
	exitCode := -1
	if cmd.ProcessState != nil {
		exitCode = cmd.ProcessState.ExitCode()
	}
	line := firstLine(stderr.buf.Bytes())
	log.Debug("script finished", "script", path, "exit_code", exitCode, "took", time.Since(start), "stderr", line)

	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("run script %s: %w", path, ctx.Err())
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return nil, &ScriptError{Script: path, ExitCode: -1, Stderr: line,
			Err: fmt.Errorf("%w after %s", ErrTimeout, timeout)}
	case errors.Is(err, exec.ErrWaitDelay) && exitCode == 0:
		// The script succeeded but left a child holding its output open;
		// its output until then is complete as far as the script goes.
		log.Warn("script left a background process holding its output open", "script", path)
	case err != nil:
		return nil, &ScriptError{Script: path, ExitCode: exitCode, Stderr: line, Err: err}
	}
	if stdout.truncated {
		return nil, &ScriptError{Script: path, ExitCode: exitCode, Stderr: line,
			Err: fmt.Errorf("%w: more than %d bytes of output", ErrMalformed, maxStdout)}
	}
	return stdout.buf.Bytes(), nil
}

// firstLine returns the first non-empty line of b, trimmed and shortened.
func firstLine(b []byte) string {
	for line := range strings.SplitSeq(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			if len(line) > 200 {
				line = line[:200] + "..."
			}
			return line
		}
	}
	return ""
}

// boundedBuffer keeps the first max bytes written to it and drops the rest,
// never failing a write so the script does not get EPIPE.
type boundedBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room < len(p) {
		b.truncated = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}
