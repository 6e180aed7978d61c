package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/config"
)

// statusFileName is the daemon's status file in the datastore directory.
const statusFileName = "device-agent-status.json"

// statusFormat is the version of the status file's layout.
const statusFormat = 1

// statusRefresh is how often the status file is rewritten when only time
// stamps changed (a successful poll); any other change is written at once.
// It bounds flash writes when the poll interval is short.
const statusRefresh = time.Minute

// agentStatus is the status file: what the daemon knows, written
// atomically after every change. It holds no secret: no token (only its
// expiry), no key.
type agentStatus struct {
	Format       int       `json:"format"`
	WrittenAt    time.Time `json:"written_at"`
	PID          int       `json:"pid"`
	AgentVersion string    `json:"agent_version"`
	StartedAt    time.Time `json:"started_at"`
	// StoppedAt is set by a clean shutdown.
	StoppedAt time.Time `json:"stopped_at,omitzero"`

	ConfigFiles    []string  `json:"config_files"`
	ConfigLoadedAt time.Time `json:"config_loaded_at"`
	Servers        []string  `json:"servers"`

	Authenticated bool `json:"authenticated"`
	// Pending means the server answered the last auth request 401: the
	// device waits to be accepted.
	Pending       bool      `json:"pending,omitzero"`
	Server        string    `json:"server,omitempty"`
	TokenExpires  time.Time `json:"token_expires,omitzero"`
	LastAuth      time.Time `json:"last_auth,omitzero"`
	LastInventory time.Time `json:"last_inventory,omitzero"`
	LastPoll      time.Time `json:"last_poll,omitzero"`

	LastError   *statusError      `json:"last_error,omitempty"`
	Certificate *statusCert       `json:"certificate,omitempty"`
	Deployment  *statusDeployment `json:"pending_deployment,omitempty"`
	LastReload  *statusReload     `json:"last_reload,omitempty"`
}

type statusError struct {
	At      time.Time `json:"at"`
	Job     string    `json:"job"`
	Message string    `json:"message"`
}

type statusCert struct {
	File     string    `json:"file,omitempty"`
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

type statusDeployment struct {
	ID           string    `json:"id"`
	ArtifactName string    `json:"artifact_name"`
	Since        time.Time `json:"since"`
}

type statusReload struct {
	At    time.Time `json:"at"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

// statusWriter keeps the daemon's status and writes the status file. Safe
// for concurrent use (the client's two jobs report concurrently).
type statusWriter struct {
	path string
	now  func() time.Time

	mu        sync.Mutex
	log       *slog.Logger
	st        agentStatus
	certFile  string
	lastKey   string
	lastWrite time.Time
	failing   bool // the last write failed and was logged
}

func newStatusWriter(dir string, pid int, log *slog.Logger, now func() time.Time) *statusWriter {
	if now == nil {
		now = time.Now
	}
	return &statusWriter{
		path: filepath.Join(dir, statusFileName),
		now:  now,
		log:  log,
		st:   agentStatus{Format: statusFormat, PID: pid, AgentVersion: version, StartedAt: now().UTC()},
	}
}

// setLogger switches to the logger of a reloaded configuration.
func (w *statusWriter) setLogger(l *slog.Logger) {
	w.mu.Lock()
	w.log = l
	w.mu.Unlock()
}

// configLoaded records a (re)loaded configuration and writes the file.
func (w *statusWriter) configLoaded(cfg *config.Config, loadedAt time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.ConfigFiles = make([]string, len(cfg.Sources))
	for i, f := range cfg.Sources {
		if abs, err := filepath.Abs(f); err == nil {
			f = abs
		}
		w.st.ConfigFiles[i] = f
	}
	w.st.ConfigLoadedAt = loadedAt.UTC()
	w.st.Servers = cfg.Servers
	w.certFile = cfg.CertFile
	if w.certFile == "" {
		w.st.Certificate = nil
	}
	w.writeLocked(true)
}

// reloaded records the outcome of a reload and writes the file.
func (w *statusWriter) reloaded(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := &statusReload{At: w.now().UTC(), OK: err == nil}
	if err != nil {
		r.Error = oneLine(err.Error())
	}
	w.st.LastReload = r
	w.writeLocked(true)
}

// stopped records a clean shutdown and writes the file.
func (w *statusWriter) stopped() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.StoppedAt = w.now().UTC()
	w.writeLocked(true)
}

// clientState merges a client's snapshot. Time stamps only move forward,
// so a client that replaced another after a reload keeps the history.
func (w *statusWriter) clientState(cs client.State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := &w.st
	st.Authenticated, st.Pending, st.Server = cs.Authenticated, cs.Pending, cs.Server
	st.TokenExpires = utc(cs.TokenExpiry)
	st.LastAuth = later(st.LastAuth, cs.LastAuth)
	st.LastInventory = later(st.LastInventory, cs.LastInventory)
	st.LastPoll = later(st.LastPoll, cs.LastUpdateCheck)
	if e := cs.LastError; e != nil && (st.LastError == nil || e.At.After(st.LastError.At)) {
		st.LastError = &statusError{At: e.At.UTC(), Job: e.Job, Message: oneLine(e.Err)}
	}
	if !cs.LastUpdateCheck.IsZero() { // otherwise this client has not checked yet
		switch d := cs.Deployment; {
		case d == nil:
			st.Deployment = nil
		case st.Deployment == nil || st.Deployment.ID != d.ID:
			st.Deployment = &statusDeployment{ID: d.ID, ArtifactName: d.ArtifactName, Since: d.Since.UTC()}
		}
	}
	st.Certificate = nil
	if c := cs.Certificate; c != nil {
		st.Certificate = &statusCert{File: w.certFile, Subject: c.Subject, Serial: c.Serial, NotAfter: c.NotAfter.UTC()}
	}
	w.writeLocked(false)
}

// snapshot returns a copy of the status (for tests and STATUS= lines).
func (w *statusWriter) snapshot() agentStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

// changeKey is everything but the time stamps of successful polls (the
// first one counts): a change in it is written at once.
func (st *agentStatus) changeKey() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v|%v|%s|%v|%v|%v|%v|%v|%v", st.Authenticated, st.Pending, st.Server, st.TokenExpires, st.StoppedAt,
		st.ConfigLoadedAt, st.LastAuth, st.LastInventory.IsZero(), st.LastPoll.IsZero())
	if e := st.LastError; e != nil {
		fmt.Fprintf(&b, "|err %s %s", e.Job, e.Message)
	}
	if d := st.Deployment; d != nil {
		fmt.Fprintf(&b, "|dep %s", d.ID)
	}
	if c := st.Certificate; c != nil {
		fmt.Fprintf(&b, "|cert %s %v", c.Serial, c.NotAfter)
	}
	if r := st.LastReload; r != nil {
		fmt.Fprintf(&b, "|reload %v", r.At)
	}
	return b.String()
}

// writeLocked writes the status file when force is set, something other
// than a time stamp changed, or statusRefresh passed. A failure is logged
// once until a write succeeds again. Called with w.mu held.
func (w *statusWriter) writeLocked(force bool) {
	now := w.now()
	key := w.st.changeKey()
	if !force && key == w.lastKey && now.Sub(w.lastWrite) < statusRefresh {
		return
	}
	w.st.WrittenAt = now.UTC()
	data, err := json.MarshalIndent(&w.st, "", "  ")
	if err == nil {
		err = atomicfile.Write(w.path, append(data, '\n'), 0o644)
	}
	if err != nil {
		if !w.failing {
			w.log.Warn("cannot write the status file; `device-agent status` shows stale data", "error", err)
			w.failing = true
		}
		return
	}
	if w.failing {
		w.log.Info("status file written again", "file", w.path)
	}
	w.failing = false
	w.lastKey, w.lastWrite = key, now
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b.UTC()
	}
	return a
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// ---- device-agent status -------------------------------------------------

const statusSynopsis = `Show what the daemon last recorded: whether it is running, authenticated
(server, token expiry), the last inventory and update check, the last error,
the client certificate, a deployment offered, and the last reload. It reads
the status file the daemon keeps in the datastore directory (--data) and
says how old it is, whether the files the daemon loaded its configuration
from changed since, and whether the configuration (--config,
--fallback-config) loads now, that is whether a reload would succeed. With
--json it prints the file's fields plus status_file, age_seconds, running,
config_changed and config_error.

Exit status: 0 when the status was shown, 1 when there is no status file
(the daemon never ran with this datastore) or it cannot be read.`

// statusReport is what `status --json` prints.
type statusReport struct {
	StatusFile    string   `json:"status_file"`
	AgeSeconds    float64  `json:"age_seconds"`
	Running       bool     `json:"running"`
	ConfigChanged []string `json:"config_changed,omitempty"`
	// ConfigError is why the configuration (--config, --fallback-config)
	// does not load now, "" when it loads: a reload would fail.
	ConfigError string `json:"config_error,omitempty"`
	agentStatus
}

func cmdStatus(_ context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	flags := newFlagSet("status", statusSynopsis, stderr)
	cf.registerPaths(flags, getenv)
	asJSON := flags.Bool("json", false, "print JSON instead of text")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	dir := cf.data
	if dir == "" {
		dir = config.DefaultDatastoreDir
	}
	path := filepath.Join(dir, statusFileName)
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no status file %s: the daemon has not run with the datastore %s (start it: systemctl start device-agent; or point --data at its datastore)", path, dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("status file %s: %w (run as root, or as the daemon's user)", path, err)
	case err != nil:
		return fmt.Errorf("status file %s: %w", path, err)
	}
	var st agentStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("status file %s is not valid JSON (%w): the daemon rewrites it at its next change", path, err)
	}
	if st.Format != statusFormat {
		return fmt.Errorf("status file %s has format %d; this device-agent reads format %d: use the device-agent binary that wrote it", path, st.Format, statusFormat)
	}
	running, _, err := lockHolder(dir)
	if err != nil {
		return err
	}
	now := time.Now()
	rep := statusReport{
		StatusFile:    path,
		AgeSeconds:    now.Sub(st.WrittenAt).Seconds(),
		Running:       running,
		ConfigChanged: changedSince(st.ConfigFiles, st.ConfigLoadedAt),
		agentStatus:   st,
	}
	if _, err := config.Load(cf.loadOptions(getenv)); err != nil {
		rep.ConfigError = oneLine(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if *asJSON {
		out, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	printStatus(stdout, rep, now)
	return nil
}

// changedSince returns the files modified (or gone) after t.
func changedSince(files []string, t time.Time) []string {
	var out []string
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil || fi.ModTime().After(t) {
			out = append(out, f)
		}
	}
	return out
}

func printStatus(w io.Writer, r statusReport, now time.Time) {
	line := func(label, format string, a ...any) {
		fmt.Fprintf(w, "%-15s %s\n", label+":", fmt.Sprintf(format, a...))
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s)", t.UTC().Format(time.RFC3339), relative(now, t))
	}
	st := r.agentStatus
	switch {
	case r.Running:
		line("daemon", "running, PID %d, %s, started %s", st.PID, st.AgentVersion, when(st.StartedAt))
	case !st.StoppedAt.IsZero():
		line("daemon", "not running: stopped %s (PID %d, %s)", when(st.StoppedAt), st.PID, st.AgentVersion)
	default:
		line("daemon", "not running: PID %d (%s) ended without a clean shutdown; the data below is its last record", st.PID, st.AgentVersion)
	}
	line("status file", "%s, written %s", r.StatusFile, relative(now, st.WrittenAt))
	switch {
	case st.Authenticated:
		line("authenticated", "yes, with %s (last authentication %s)", st.Server, when(st.LastAuth))
	case st.Pending:
		line("authenticated", "no: the server answered 401, the device is pending acceptance (or rejected): accept it in the Mender UI or preauthorize it")
	case st.LastAuth.IsZero() && st.LastError == nil && len(st.Servers) > 0:
		line("authenticated", "not yet: the first authentication with %s is in progress", strings.Join(st.Servers, ", "))
	default:
		line("authenticated", "no (servers %s): see the last error", strings.Join(st.Servers, ", "))
	}
	switch {
	case st.TokenExpires.IsZero():
	case st.TokenExpires.Before(now):
		line("token expires", "%s: expired, the daemon authenticates again at its next request", when(st.TokenExpires))
	default:
		line("token expires", "%s", when(st.TokenExpires))
	}
	line("last inventory", "%s", when(st.LastInventory))
	line("last poll", "%s", when(st.LastPoll))
	if e := st.LastError; e != nil {
		line("last error", "%s in %s: %s", when(e.At), e.Job, e.Message)
	} else {
		line("last error", "none")
	}
	if c := st.Certificate; c != nil {
		line("certificate", "%s, serial %s, expires %s", c.Subject, c.Serial, when(c.NotAfter))
	} else {
		line("certificate", "none (no mTLS client certificate configured)")
	}
	if d := st.Deployment; d != nil {
		line("deployment", "%s (artifact %s) offered since %s; this agent does not install artifacts: install it with mender-update, or abort it on the server",
			d.ID, d.ArtifactName, when(d.Since))
	} else {
		line("deployment", "none offered")
	}
	if len(st.ConfigFiles) > 0 {
		line("config", "%s, loaded %s", strings.Join(st.ConfigFiles, ", "), when(st.ConfigLoadedAt))
	}
	switch {
	case r.ConfigError != "":
		line("config", "does not load now: %s; a reload would fail and keep the running configuration: fix it first (device-agent check)", r.ConfigError)
	case len(r.ConfigChanged) > 0 && r.Running:
		line("config", "%s changed since and loads: reload with `systemctl reload device-agent` (SIGHUP) to apply it", strings.Join(r.ConfigChanged, ", "))
	}
	if rl := st.LastReload; rl != nil {
		if rl.OK {
			line("last reload", "%s, ok", when(rl.At))
		} else {
			line("last reload", "%s, failed: %s; the previous configuration is still running", when(rl.At), rl.Error)
		}
	}
}

// relative says how far t is from now: "12s ago", "in 3d4h".
func relative(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		return "in " + shortDuration(-d)
	}
	return shortDuration(d) + " ago"
}

// shortDuration rounds d to its two largest units: 45s, 3m12s, 5h3m, 12d4h.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	days := int(d.Hours()) / 24
	return fmt.Sprintf("%dd%dh", days, int(d.Hours())%24)
}
