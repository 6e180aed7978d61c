package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// artifactConfig shapes how artifactServer misbehaves.
type artifactConfig struct {
	cuts        []int // per request, in order: bytes to send before cutting; -1 = no cut
	ignoreRange bool  // answer 200 with the whole body to a Range request
	chunked     bool  // no Content-Length
	badRange    bool  // Content-Range starting one byte late
	status      int   // non-zero: answer with this status
}

// artifactServer serves data like a presigned S3 link: Content-Length,
// Range/206, and it can cut connections after a number of bytes.
type artifactServer struct {
	artifactConfig
	data []byte

	mu     sync.Mutex
	reqs   []http.Header
	ranges []string
}

func (a *artifactServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	n := len(a.reqs)
	a.reqs = append(a.reqs, r.Header.Clone())
	a.ranges = append(a.ranges, r.Header.Get("Range"))
	cut := -1
	if n < len(a.cuts) {
		cut = a.cuts[n]
	}
	a.mu.Unlock()

	if a.status != 0 {
		http.Error(w, "access denied", a.status)
		return
	}
	start := 0
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !a.ignoreRange {
		v, ok := strings.CutPrefix(rg, "bytes=")
		v, ok2 := strings.CutSuffix(v, "-")
		s, err := strconv.Atoi(v)
		if !ok || !ok2 || err != nil || s >= len(a.data) {
			http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, status = s, http.StatusPartialContent
		first := start
		if a.badRange {
			first++
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, len(a.data)-1, len(a.data)))
	}
	body := a.data[start:]
	if !a.chunked {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	if cut >= 0 && cut < len(body) {
		_, _ = w.Write(body[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	_, _ = w.Write(body)
}

func (a *artifactServer) requests() ([]http.Header, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reqs, a.ranges
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	n := min(len(p), w.after)
	w.after -= n
	if n < len(p) {
		return n, errors.New("disk full")
	}
	return n, nil
}

func TestDownload(t *testing.T) {
	data := make([]byte, 300_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ca := newCA(t, "Storage CA")
	cert := ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})

	tests := []struct {
		name       string
		srv        artifactConfig
		writer     io.Writer // nil = a buffer that must end up equal to data
		wantErr    string
		wantStatus int
		wantRanges []string
	}{
		{name: "no cut", wantRanges: []string{""}},
		{name: "one cut resumed with Range", srv: artifactConfig{cuts: []int{100_000}},
			wantRanges: []string{"", "bytes=100000-"}},
		{name: "several cuts", srv: artifactConfig{cuts: []int{1000, 50_000, 7}},
			wantRanges: []string{"", "bytes=1000-", "bytes=51000-", "bytes=51007-"}},
		{name: "cut before the first byte of a resume", srv: artifactConfig{cuts: []int{10, 0}},
			wantRanges: []string{"", "bytes=10-", "bytes=10-"}},
		{name: "five resumes is the limit", srv: artifactConfig{cuts: []int{10, 10, 10, 10, 10, 10}},
			wantErr:    "gave up after 5 resumes at 60 of 300000 bytes",
			wantRanges: []string{"", "bytes=10-", "bytes=20-", "bytes=30-", "bytes=40-", "bytes=50-"}},
		{name: "server ignoring Range", srv: artifactConfig{cuts: []int{10}, ignoreRange: true},
			wantErr: "ignored the Range request", wantRanges: []string{"", "bytes=10-"}},
		{name: "wrong Content-Range", srv: artifactConfig{cuts: []int{10}, badRange: true},
			wantErr: "206 answer covers bytes 11-299999/300000, want 10-299999/300000", wantRanges: []string{"", "bytes=10-"}},
		{name: "unknown length refused", srv: artifactConfig{chunked: true},
			wantErr: "no Content-Length", wantRanges: []string{""}},
		{name: "error status", srv: artifactConfig{status: http.StatusForbidden},
			wantStatus: http.StatusForbidden, wantRanges: []string{""}},
		{name: "write error is final", srv: artifactConfig{cuts: []int{10}}, writer: &failingWriter{after: 5},
			wantErr: "write: disk full", wantRanges: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := &artifactServer{artifactConfig: tt.srv, data: data}
			srv := startTLSServer(t, as, cert, nil)
			srv.Config.ErrorLog = nil
			opts, logs := baseOptions(newTestKey(t), "https://mender.test")
			opts.RootCAs = ca.pool
			opts.Rand = constRand(0) // resumes without progress retry at once
			c, err := New(opts)
			require.NoError(t, err)
			var buf bytes.Buffer
			w := tt.writer
			if w == nil {
				w = &buf
			}
			uri := srv.URL + "/bucket/artifact.mender?X-Amz-Signature=s3cr3t&X-Amz-Expires=86400"

			n, err := c.Download(t.Context(), uri, w)
			switch {
			case tt.wantStatus != 0:
				var ae *APIError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, tt.wantStatus, ae.StatusCode)
				assert.Equal(t, OpDownload, ae.Op)
			case tt.wantErr != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.NotContains(t, err.Error(), "s3cr3t", "the presigned signature must not leak into errors")
			default:
				require.NoError(t, err)
				assert.Equal(t, int64(len(data)), n)
				assert.True(t, bytes.Equal(data, buf.Bytes()), "downloaded bytes must equal the artifact")
			}
			if tt.writer == nil && err != nil {
				assert.Equal(t, int64(buf.Len()), n, "the count is what reached the writer")
				assert.True(t, bytes.Equal(data[:n], buf.Bytes()), "what was written is a correct prefix")
			}
			hdrs, ranges := as.requests()
			assert.Equal(t, tt.wantRanges, ranges)
			for _, h := range hdrs {
				assert.Empty(t, h.Get("Authorization"), "the artifact link must be fetched without the device token")
			}
			assert.NotContains(t, logs.String(), "s3cr3t", "the presigned signature must not be logged")
		})
	}
}

func TestDownloadRefusesBadURI(t *testing.T) {
	c, _ := memClient(t, newFakeServer(t), nil)
	for _, uri := range []string{"", "/relative/path", "ftp://host/file", "https://", "::bad"} {
		_, err := c.Download(t.Context(), uri, io.Discard)
		assert.Error(t, err, "uri %q", uri)
	}
}

func TestDownloadUnreachableDoesNotLeakQuery(t *testing.T) {
	ca := newCA(t, "Storage CA")
	srv := startTLSServer(t, http.NotFoundHandler(), ca.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), nil)
	url := srv.URL
	srv.Close()
	opts, logs := baseOptions(newTestKey(t), "https://mender.test")
	opts.RootCAs = ca.pool
	opts.Rand = constRand(0)
	c, err := New(opts)
	require.NoError(t, err)
	_, err = c.Download(t.Context(), url+"/a?X-Amz-Signature=s3cr3t", io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gave up after 5 resumes")
	assert.NotContains(t, err.Error(), "s3cr3t")
	assert.NotContains(t, logs.String(), "s3cr3t")
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		v                string
		start, end, size int64
		ok               bool
	}{
		{"bytes 10-99/100", 10, 99, 100, true},
		{"bytes 0-0/1", 0, 0, 1, true},
		{"bytes 10-99/*", 0, 0, 0, false},
		{"bytes */100", 0, 0, 0, false},
		{"bytes 10-9/100", 0, 0, 0, false},
		{"bytes 10-100/100", 0, 0, 0, false},
		{"items 10-99/100", 0, 0, 0, false},
		{"", 0, 0, 0, false},
		{"bytes -1-99/100", 0, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			s, e, z, ok := parseContentRange(tt.v)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, []int64{tt.start, tt.end, tt.size}, []int64{s, e, z})
		})
	}
}
