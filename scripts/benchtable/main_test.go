package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/mender-mtls/mtls-agent/test/bench
BenchmarkAuthRoundTrip-2   	    1000	   200000 ns/op	  6235 auth/s	  4096 B/op	  50 allocs/op
BenchmarkAgentFootprint/size/armv7-2   	  283816	         7.144 MB	     256 B/op	       2 allocs/op
--- BENCH: BenchmarkAgentFootprint/size/armv7-2
    footprint_bench_test.go:72: over budget: stripped armv7 agent is 7.144 MB, the budget is 7.0 MB
BenchmarkAgentFootprint/rss-2   	       1	         12.37 MiB-VmHWM	        12.37 MiB-VmRSS	        60.00 polls	  272112 B/op	    1546 allocs/op
PASS
ok  	github.com/mender-mtls/mtls-agent/test/bench	4.842s
`

func TestParseAndPrint(t *testing.T) {
	var logs strings.Builder
	rows, failed := parse(strings.NewReader(sample), &logs)
	require.False(t, failed)
	require.Len(t, rows, 3)
	assert.Equal(t, "    footprint_bench_test.go:72: over budget: stripped armv7 agent is 7.144 MB, the budget is 7.0 MB\n",
		logs.String(), "benchmark logs go to stderr")

	var out strings.Builder
	print(&out, rows)
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	require.Len(t, lines, 5, "header, package, three rows:\n%s", out.String())
	tests := []struct {
		name   string
		line   string
		fields []string
	}{
		{"a speed shows ns/op, ops/s, B/op, allocs/op", lines[2], []string{"AuthRoundTrip", "200000", "5000", "4096", "50", "6235", "auth/s"}},
		{"a size shows only its figure", lines[3], []string{"AgentFootprint/size/armv7", "7.144", "MB"}},
		{"RSS shows only its figures", lines[4], []string{"AgentFootprint/rss", "12.37", "MiB-VmHWM,", "12.37", "MiB-VmRSS,", "60.00", "polls"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.fields, strings.Fields(tt.line))
		})
	}
}

func TestIsLogLine(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{"    footprint_bench_test.go:72: over budget", true},
		{"\tfleet_bench_test.go:1: x", true},
		{"footprint_bench_test.go:72: not indented", false},
		{"    main.go:72: not a test file", false},
		{"    x_test.go:abc: no line number", false},
		{"BenchmarkX-2 1 2 ns/op", false},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			assert.Equal(t, tt.want, isLogLine(tt.line))
		})
	}
}
