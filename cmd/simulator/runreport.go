package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/fleet"
)

// exitThresholds is the exit code of a run whose thresholds failed, as
// k6 uses.
const exitThresholds = 99

// thresholdsFailedError says that some --threshold did not hold; the
// reports were written. The command exits with exitThresholds.
type thresholdsFailedError struct{ failed, total int }

func (e *thresholdsFailedError) Error() string {
	return fmt.Sprintf("%d of %d thresholds failed (exit code %d); the reports list each one", e.failed, e.total, exitThresholds)
}

// ExitCode is the process exit code for this error.
func (e *thresholdsFailedError) ExitCode() int { return exitThresholds }

// thresholdFlag collects --threshold expressions, each parsed when given
// so a bad one is a usage error before anything runs.
type thresholdFlag []fleet.Threshold

func (t *thresholdFlag) String() string {
	exprs := make([]string, len(*t))
	for i, th := range *t {
		exprs[i] = th.Expr
	}
	return strings.Join(exprs, " ")
}

func (t *thresholdFlag) Set(v string) error {
	th, err := fleet.ParseThreshold(v)
	if err != nil {
		return err
	}
	*t = append(*t, th)
	return nil
}

const thresholdUsage = "check `EXPR` at the end (repeatable); any failed one makes the command exit " +
	"99 after writing every report.\nEXPR is " + fleet.ThresholdGrammar

// reportFlags are the output flags shared by run and demo.
type reportFlags struct {
	report, html, metrics string
	junit                 string
	thresholds            thresholdFlag
	// fs is the command's flag set, listed in the report's run parameters.
	fs *cmdFlags
}

func (r *reportFlags) register(fs *cmdFlags, reportDef, htmlDef string) {
	r.fs = fs
	fs.StringVar(&r.report, "report", reportDef, "write the JSON report to `FILE`")
	fs.StringVar(&r.html, "html", htmlDef, "write the self-contained HTML report to `FILE`")
	fs.StringVar(&r.metrics, "metrics", "", "serve live Prometheus metrics on http://`ADDR`/metrics, e.g. 127.0.0.1:9102")
	r.registerChecks(fs)
}

// registerChecks adds --threshold and --junit (also on report merge).
func (r *reportFlags) registerChecks(fs *cmdFlags) {
	fs.Var(&r.thresholds, "threshold", thresholdUsage)
	fs.StringVar(&r.junit, "junit", "", "write one JUnit XML test case per --threshold to `FILE`, for CI systems")
}

// runInfo returns the run parameters: the command's every flag (secrets
// redacted), the version and the host.
func runInfo(fs *cmdFlags, started time.Time) *fleet.RunInfo {
	ri := fleet.NewRunInfo(fs.Name(), version, started)
	fs.VisitAll(func(f *flag.Flag) {
		if !fs.hidden[f.Name] {
			ri.AddFlag(f.Name, f.Value.String())
		}
	})
	return ri
}

// runFleet runs fl with live progress on stdout and, when asked, a
// Prometheus endpoint; then prints the summary, calls extra (when not nil)
// to print more, and writes the reports. A canceled run (Ctrl-C) still
// prints and writes everything.
func runFleet(ctx context.Context, fl *fleet.Fleet, out reportFlags, stdout io.Writer, log *slog.Logger, extra func(io.Writer)) error {
	if out.metrics != "" {
		ln, err := net.Listen("tcp", out.metrics)
		if err != nil {
			return fmt.Errorf("--metrics %s: %w", out.metrics, err)
		}
		srv := &http.Server{Handler: fl.MetricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
			}
		}()
		defer srv.Close()
		fmt.Fprintf(stdout, "metrics: http://%s/metrics\n", ln.Addr())
	}
	pctx, stopProgress := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		showProgress(pctx, stdout, isTerminal(stdout), fl.Progress)
	}()
	r, err := fl.Run(ctx)
	stopProgress()
	<-progressDone
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stdout, "interrupted: reporting what happened so far")
	}
	if out.fs != nil {
		r.Run = runInfo(out.fs, r.Started)
	}
	r.EvaluateThresholds(out.thresholds)
	fmt.Fprintln(stdout)
	if err := r.WriteSummary(stdout); err != nil {
		return err
	}
	if extra != nil {
		fmt.Fprintln(stdout)
		extra(stdout)
	}
	return writeReports(r, out, stdout)
}

// writeReports writes the JSON, HTML and JUnit reports that out names,
// creating their directories when missing; then, when a threshold failed,
// it returns a *thresholdsFailedError.
func writeReports(r *fleet.Report, out reportFlags, stdout io.Writer) error {
	var errs []error
	for _, p := range []string{out.report, out.html, out.junit} {
		if p != "" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				errs = append(errs, fmt.Errorf("report directory: %w", err))
			}
		}
	}
	if out.report != "" {
		if err := r.SaveJSON(out.report); err != nil {
			errs = append(errs, fmt.Errorf("--report: %w", err))
		} else {
			fmt.Fprintf(stdout, "\nJSON report: %s\n", absPath(out.report))
		}
	}
	if out.html != "" {
		var sb strings.Builder
		if err := r.WriteHTML(&sb); err != nil {
			errs = append(errs, err)
		} else if err := atomicfile.Write(out.html, []byte(sb.String()), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("--html: %w", err))
		} else {
			fmt.Fprintf(stdout, "HTML report: %s\n", absPath(out.html))
		}
	}
	if out.junit != "" {
		if err := r.SaveJUnit(out.junit); err != nil {
			errs = append(errs, fmt.Errorf("--junit: %w", err))
		} else {
			fmt.Fprintf(stdout, "JUnit XML: %s\n", absPath(out.junit))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if n := r.FailedThresholds(); n > 0 {
		return &thresholdsFailedError{failed: n, total: len(r.Thresholds)}
	}
	return nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	if lw, ok := w.(*lockedWriter); ok {
		w = lw.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Progress refresh periods.
const (
	ttyRefresh   = time.Second
	plainRefresh = 10 * time.Second
)

// showProgress prints get() until ctx is done: on a terminal one line
// refreshed in place with \r, otherwise a plain line every 10 s. It ends
// with the final state on its own line.
func showProgress(ctx context.Context, w io.Writer, tty bool, get func() fleet.Progress) {
	every := plainRefresh
	if tty {
		every = ttyRefresh
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last time.Time
	show := func() {
		last = time.Now()
		if tty {
			fmt.Fprintf(w, "\r%s\x1b[K", get())
		} else {
			fmt.Fprintln(w, get())
		}
	}
	for {
		select {
		case <-t.C:
			show()
		case <-ctx.Done():
			if tty {
				show()
				fmt.Fprintln(w)
			} else if time.Since(last) >= time.Second {
				show() // the final state, unless a line just showed it
			}
			return
		}
	}
}
