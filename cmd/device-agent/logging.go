package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Log formats for --log-format.
const (
	logFormatText = "text"
	logFormatJSON = "json"
)

// logSetup says how to build the logger of a command.
type logSetup struct {
	level  slog.Level
	format string // logFormatText or logFormatJSON
	// journal means stderr is the systemd journal: text lines carry no
	// time stamp (journald adds it) and every line starts with its syslog
	// priority, <3> error to <7> debug, so journald keeps the levels.
	journal bool
}

func parseLogFormat(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", logFormatText:
		return logFormatText, nil
	case logFormatJSON:
		return logFormatJSON, nil
	}
	return "", fmt.Errorf("--log-format %q: use text or json", s)
}

// newLogger returns the logger for w as set up by ls.
func newLogger(w io.Writer, ls logSetup) *slog.Logger {
	opts := &slog.HandlerOptions{Level: ls.level}
	if ls.journal && ls.format == logFormatText {
		opts.ReplaceAttr = dropTime
	}
	if !ls.journal {
		if ls.format == logFormatJSON {
			return slog.New(slog.NewJSONHandler(w, opts))
		}
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(newPriorityHandler(w, ls.format, opts))
}

// dropTime removes the record's time: journald stamps every line itself.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// syslogPriority maps a level to the syslog priority journald understands
// as a "<N>" line prefix.
func syslogPriority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3 // err
	case l >= slog.LevelWarn:
		return 4 // warning
	case l >= slog.LevelInfo:
		return 6 // info
	}
	return 7 // debug
}

// priorityHandler formats each record with a text or JSON handler into a
// buffer and writes it to w in one write, prefixed with "<N>" (sd-daemon(3)
// SD_ERR ... SD_DEBUG). Handlers derived with WithAttrs and WithGroup share
// the buffer, its lock and w.
type priorityHandler struct {
	out   *prefixOut
	inner slog.Handler // writes into out.buf
}

type prefixOut struct {
	mu  sync.Mutex
	w   io.Writer
	buf bytes.Buffer
}

func newPriorityHandler(w io.Writer, format string, opts *slog.HandlerOptions) *priorityHandler {
	out := &prefixOut{w: w}
	var inner slog.Handler = slog.NewTextHandler(&out.buf, opts)
	if format == logFormatJSON {
		inner = slog.NewJSONHandler(&out.buf, opts)
	}
	return &priorityHandler{out: out, inner: inner}
}

func (h *priorityHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	o := h.out
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Reset()
	o.buf.WriteString("<" + strconv.Itoa(syslogPriority(r.Level)) + ">")
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := o.w.Write(o.buf.Bytes())
	return err
}

func (h *priorityHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &priorityHandler{out: h.out, inner: h.inner.WithAttrs(as)}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{out: h.out, inner: h.inner.WithGroup(name)}
}

// isJournal reports whether w is the systemd journal stream: systemd sets
// JOURNAL_STREAM to "DEVICE:INODE" of the stream it connects to stdout and
// stderr; a child whose stderr was redirected elsewhere inherits the
// variable, so the file itself must match (systemd.exec(5)).
func isJournal(w io.Writer, getenv func(string) string) bool {
	js := getenv("JOURNAL_STREAM")
	if js == "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	devStr, inoStr, ok := strings.Cut(js, ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devStr, 10, 64)
	ino, err2 := strconv.ParseUint(inoStr, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == dev && uint64(st.Ino) == ino // the field types differ by GOARCH
}
