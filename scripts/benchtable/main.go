// Command benchtable runs `go test -bench` on the packages given and prints
// the results as an aligned table: one row per benchmark with ns/op, the
// derived operations per second, B/op, allocs/op and any custom metrics the
// benchmark reported (b.ReportMetric), such as a ratio measured in one run.
// A benchmark that suppresses ns/op (b.ReportMetric(0, "ns/op")) reports
// figures such as a binary size, not a speed: its row shows only its own
// metrics. What benchmarks log (b.Log) goes to stderr.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		args = []string{"./..."}
	}
	bench := os.Getenv("BENCH")
	if bench == "" {
		bench = "."
	}
	// The fleet benchmarks of one package run for longer than go test's
	// default 10-minute timeout (the 100,000-device start alone takes about
	// five), so the timeout is an hour.
	goArgs := append([]string{"test", "-run", "^$", "-bench", bench, "-benchmem", "-count", "1", "-timeout", "60m"}, args...)
	if bt := os.Getenv("BENCHTIME"); bt != "" {
		goArgs = append(goArgs, "-benchtime", bt)
	}
	cmd := exec.Command("go", goArgs...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	rows, failed := parse(out, os.Stderr)
	werr := cmd.Wait()
	print(os.Stdout, rows)
	if werr != nil || failed {
		fmt.Fprintln(os.Stderr, "benchtable: go test failed")
		os.Exit(1)
	}
}

type row struct {
	pkg, name string
	metrics   [][2]string // unit, value in reported order
}

// parse reads go test -bench output and returns its rows and whether
// anything failed; benchmark log lines are copied to logw.
func parse(r io.Reader, logw io.Writer) ([]row, bool) {
	var rows []row
	pkg := ""
	failed := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "pkg:":
			pkg = f[1]
		case strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "--- FAIL"):
			failed = true
			fmt.Fprintln(os.Stderr, line)
		case strings.HasPrefix(line, "Benchmark") && len(f) >= 4:
			rw := row{pkg: pkg, name: f[0]}
			for i := 2; i+1 < len(f); i += 2 {
				rw.metrics = append(rw.metrics, [2]string{f[i+1], f[i]})
			}
			rows = append(rows, rw)
		case isLogLine(line):
			fmt.Fprintln(logw, line)
		}
	}
	return rows, failed
}

func print(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tns/op\tops/s\tB/op\tallocs/op\tother metrics\t")
	last := ""
	for _, r := range rows {
		if r.pkg != last {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\t\n", shortPkg(r.pkg))
			last = r.pkg
		}
		vals := map[string]string{}
		var other []string
		for _, m := range r.metrics {
			switch m[0] {
			case "ns/op", "B/op", "allocs/op":
				vals[m[0]] = m[1]
			default:
				other = append(other, m[1]+" "+m[0])
			}
		}
		ops := ""
		if ns, err := strconv.ParseFloat(vals["ns/op"], 64); err == nil && ns > 0 {
			ops = strconv.FormatFloat(1e9/ns, 'f', 0, 64)
		} else {
			// No speed: the benchmark's own B/op and allocs/op are the
			// harness's, not the figure's.
			vals = map[string]string{}
		}
		name := strings.TrimPrefix(r.name, "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // drop the GOMAXPROCS suffix
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t\n", name, vals["ns/op"], ops, vals["B/op"], vals["allocs/op"], strings.Join(other, ", "))
	}
	tw.Flush()
}

func shortPkg(p string) string {
	if i := strings.Index(p, "/internal/"); i >= 0 {
		return p[i+1:]
	}
	if i := strings.Index(p, "/test/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

// isLogLine reports whether line is what a benchmark logged: indented
// "file_test.go:N: message".
func isLogLine(line string) bool {
	t := strings.TrimLeft(line, " \t")
	if len(t) == len(line) {
		return false
	}
	file, rest, ok := strings.Cut(t, ":")
	if !ok || !strings.HasSuffix(file, "_test.go") {
		return false
	}
	num, _, ok := strings.Cut(rest, ":")
	_, err := strconv.Atoi(num)
	return ok && err == nil
}
