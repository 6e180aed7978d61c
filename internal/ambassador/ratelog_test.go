package ambassador

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logRecorder is a JSON slog handler's output, safe for concurrent use.
type logRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lines returns the decoded records whose message is msg and level is level.
func (r *logRecorder) lines(t *testing.T, level slog.Level, msg string) []map[string]any {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec), "log line %s", l)
		if rec["msg"] == msg && rec["level"] == level.String() {
			out = append(out, rec)
		}
	}
	return out
}

// testClock is a settable clock for Options.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// suppressedOf returns the "suppressed" attribute of a record, 0 if absent.
func suppressedOf(rec map[string]any) int {
	n, _ := rec["suppressed"].(float64)
	return int(n)
}

// TestHandshakeFailureLogsAreRateLimited: a flood of failing handshakes
// yields a few log lines per reason, while the metrics count every failure.
func TestHandshakeFailureLogsAreRateLimited(t *testing.T) {
	rogue, _ := newTestCA(t, "Rogue CA").issue(t, leafOpts{cn: "rogue"})
	tests := []struct {
		name, msg, reason string
		fail              func(a *Ambassador, cfg *tls.Config)
	}{
		{
			name: "detected by crypto/tls", msg: "tls handshake failed", reason: reasonNoCertificate,
			fail: func(a *Ambassador, _ *tls.Config) {
				a.ErrorLog().Print("http: TLS handshake error from 127.0.0.1:1234: tls: client didn't provide a certificate")
			},
		},
		{
			name: "rejected by VerifyConnection", msg: "tls handshake rejected", reason: reasonUnknownAuthority,
			fail: func(a *Ambassador, cfg *tls.Config) {
				err := cfg.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{rogue}})
				require.Error(t, err)
				// crypto/tls reports the same rejection to the server's error log.
				a.ErrorLog().Print("http: TLS handshake error from 127.0.0.1:1234: " + err.Error())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec logRecorder
			clock := &testClock{t: time.Now()}
			a := newOfflineAmbassador(t, newFakeUpstream(), func(o *Options) {
				o.Logger = rec.logger()
				o.Now = clock.now
			})
			cfg := a.TLSConfig()

			for range 100 {
				tt.fail(a, cfg)
				clock.advance(time.Millisecond)
			}
			assert.Equal(t, uint64(100), counterValue(a.metrics.handshakeFailures, tt.reason), "the metric counts every failure")
			assert.Equal(t, uint64(100), a.Stats().HandshakeFailures, "the stats count every failure")
			lines := rec.lines(t, slog.LevelInfo, tt.msg)
			require.NotEmpty(t, lines, "the first failure is logged at once")
			assert.LessOrEqual(t, len(lines), 2, "at most 2 lines for 100 failures of one reason in one interval")
			assert.Equal(t, tt.reason, lines[0]["reason"])
			assert.Zero(t, suppressedOf(lines[0]), "nothing was suppressed before the first line")
			assert.LessOrEqual(t, len(rec.lines(t, slog.LevelDebug, "tls handshake rejected")), 2,
				"the debug echo of own rejections is limited as well")

			clock.advance(handshakeLogInterval)
			tt.fail(a, cfg)
			lines = rec.lines(t, slog.LevelInfo, tt.msg)
			last := lines[len(lines)-1]
			assert.Positive(t, suppressedOf(last), "the line after the interval carries the suppressed count: %v", last)
			total := 0
			for _, l := range lines {
				total += 1 + suppressedOf(l)
			}
			assert.Equal(t, 101, total, "logged lines plus reported suppressed lines account for every failure")
			assert.Equal(t, uint64(101), counterValue(a.metrics.handshakeFailures, tt.reason))
		})
	}
}

func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Unix(1_700_000_000, 0)
	const iv = 10 * time.Second
	steps := []struct {
		key            string
		at             time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", time.Second, true, 0}, // keys are independent
		{"a", 9 * time.Second, false, 0},
		{"a", 10 * time.Second, true, 2},
		{"a", 11 * time.Second, false, 0},
		{"a", 5 * time.Second, true, 1}, // a clock that went back does not silence a key
		{"b", 30 * time.Second, true, 0},
	}
	for i, s := range steps {
		ok, n := l.allow(s.key, t0.Add(s.at), iv)
		assert.Equal(t, s.wantOK, ok, "step %d", i)
		assert.Equal(t, s.wantSuppressed, n, "step %d", i)
	}
}
