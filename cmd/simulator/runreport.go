package main

import (
	"context"
	"errors"
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

// reportFlags are the output flags shared by run and demo.
type reportFlags struct {
	report, html, metrics string
}

func (r *reportFlags) register(fs *cmdFlags, reportDef, htmlDef string) {
	fs.StringVar(&r.report, "report", reportDef, "write the JSON report to `FILE`")
	fs.StringVar(&r.html, "html", htmlDef, "write the self-contained HTML report to `FILE`")
	fs.StringVar(&r.metrics, "metrics", "", "serve live Prometheus metrics on http://`ADDR`/metrics, e.g. 127.0.0.1:9102")
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

// writeReports writes the JSON and HTML reports that out names, creating
// their directories when missing.
func writeReports(r *fleet.Report, out reportFlags, stdout io.Writer) error {
	var errs []error
	for _, p := range []string{out.report, out.html} {
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
	return errors.Join(errs...)
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
