package ambassador

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseBlacklist(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "comments and blanks", in: "# header\n\n   \n#another\n", want: nil},
		{name: "case, zeros, 0x, colons, CRLF", in: "0x00ABcd\r\n5E:D4:5A:07\n  000\n1\n",
			want: []string{"abcd", "5ed45a07", "0", "1"}},
		{name: "openssl serial", in: "5ED45A07980293048852A2799B3887A1C7F86FE9\n",
			want: []string{"5ed45a07980293048852a2799b3887a1c7f86fe9"}},
		{name: "not hex", in: "12\nxyz\n", wantErr: `line 2: serial "xyz"`},
		{name: "inline comment", in: "12 # laptop\n", wantErr: "line 1"},
		{name: "bare 0x", in: "0x\n", wantErr: "line 1"},
		{name: "negative", in: "-12\n", wantErr: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBlacklist([]byte(tt.in))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Len(t, got, len(tt.want))
			for _, w := range tt.want {
				assert.Contains(t, got, w)
			}
		})
	}
}

func TestClassifyHandshakeError(t *testing.T) {
	tests := []struct{ line, want string }{
		{"http: TLS handshake error from 1.2.3.4:5: tls: client didn't provide a certificate", reasonNoCertificate},
		{"http: TLS handshake error from 1.2.3.4:5: tls: failed to verify certificate: x509: certificate signed by unknown authority", reasonUnknownAuthority},
		{"http: TLS handshake error from 1.2.3.4:5: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time", reasonNotValidNow},
		{"http: TLS handshake error from 1.2.3.4:5: tls: failed to verify certificate: x509: certificate specifies an incompatible key usage", reasonNotClientAuth},
		{"http: TLS handshake error from 1.2.3.4:5: EOF", reasonOther},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, classifyHandshakeError(tt.line))
		})
	}
}

func TestErrorLogCounting(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	l := a.ErrorLog()
	l.Print("http: TLS handshake error from 127.0.0.1:1: tls: client didn't provide a certificate")
	l.Print("http: TLS handshake error from 127.0.0.1:1: " + ownRejectionMarker + ": client certificate revoked")
	l.Print("http: superfluous response.WriteHeader call")
	assert.Equal(t, uint64(1), counterValue(a.metrics.handshakeFailures, reasonNoCertificate))
	assert.Equal(t, uint64(0), counterValue(a.metrics.handshakeFailures, reasonRevoked), "own rejections are counted where they happen")
	assert.Equal(t, uint64(1), a.Stats().HandshakeFailures, "only the crypto/tls failure is counted")
}

func TestSaneRequestID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"6f1c0c2e-3a43-4b57-9d4c-0d2b8c7a1e55", true},
		{"req_1.2:3", true},
		{"", false},
		{"with space", false},
		{"new\nline", false},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"ünïcode", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, saneRequestID(tt.id), "%q", tt.id)
	}
	assert.True(t, saneRequestID(newRequestID()), "generated ids are sane")
	assert.NotEqual(t, newRequestID(), newRequestID())
}

func TestParseBinding(t *testing.T) {
	tests := []struct {
		in      string
		want    Binding
		wantErr bool
	}{
		{in: "mac=CN", want: Binding{Attr: "mac", Field: FieldCN}},
		{in: " serial_no = Serial ", want: Binding{Attr: "serial_no", Field: FieldSerial}},
		{in: "host=san-dns", want: Binding{Attr: "host", Field: FieldSANDNS}},
		{in: "group=ou", want: Binding{Attr: "group", Field: FieldOU}},
		{in: "mac", wantErr: true},
		{in: "=CN", wantErr: true},
		{in: "mac=", wantErr: true},
		{in: "mac=email", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBinding(tt.in)
			if tt.wantErr {
				assert.ErrorIs(t, err, ErrBadBinding)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			again, err := ParseBinding(got.String())
			require.NoError(t, err)
			assert.Equal(t, got, again, "String round-trips")
		})
	}
}

func TestBindingCheck(t *testing.T) {
	cert := &x509.Certificate{
		Subject:      pkix.Name{CommonName: "dev-1", OrganizationalUnit: []string{"fleet-a", "lab"}},
		SerialNumber: big.NewInt(0xBEEF),
		DNSNames:     []string{"dev-1.example.com"},
	}
	tests := []struct {
		name     string
		b        Binding
		identity map[string]any
		ok       bool
	}{
		{"CN equal", Binding{"mac", FieldCN}, map[string]any{"mac": "dev-1"}, true},
		{"CN differs", Binding{"mac", FieldCN}, map[string]any{"mac": "dev-2"}, false},
		{"CN is case-sensitive", Binding{"mac", FieldCN}, map[string]any{"mac": "DEV-1"}, false},
		{"attribute missing", Binding{"mac", FieldCN}, map[string]any{"sn": "dev-1"}, false},
		{"one-element array", Binding{"mac", FieldCN}, map[string]any{"mac": []any{"dev-1"}}, false},
		{"two-element array", Binding{"mac", FieldCN}, map[string]any{"mac": []any{"dev-1", "x"}}, false},
		{"number", Binding{"mac", FieldCN}, map[string]any{"mac": 1.0}, false},
		{"serial hex", Binding{"sn", FieldSerial}, map[string]any{"sn": "0x00BEEF"}, true},
		{"serial differs", Binding{"sn", FieldSerial}, map[string]any{"sn": "beee"}, false},
		{"serial not hex", Binding{"sn", FieldSerial}, map[string]any{"sn": "beefy"}, false},
		{"SAN case-insensitive", Binding{"h", FieldSANDNS}, map[string]any{"h": "DEV-1.example.com"}, true},
		{"SAN differs", Binding{"h", FieldSANDNS}, map[string]any{"h": "dev-2.example.com"}, false},
		{"OU any", Binding{"g", FieldOU}, map[string]any{"g": "lab"}, true},
		{"OU differs", Binding{"g", FieldOU}, map[string]any{"g": "fleet-b"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.check(tt.identity, cert)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, ErrIdentityMismatch)
			assert.Contains(t, err.Error(), `"`+tt.b.Attr+`"`, "the error names the attribute")
		})
	}
}

func TestMetricsExposition(t *testing.T) {
	m := newMetrics(&connLimits{max: 7, slots: make(chan struct{}, 1)})
	m.request(200)
	m.request(200)
	m.request(403)
	m.handshakeFailure(reasonRevoked)
	m.authRequests.WithLabelValues("we\"ird\\la\nbel").Inc()
	sum := 0.0
	for _, v := range []float64{0.005, 0.3, 100} { // 0.005 lands in le="0.005": le is inclusive
		m.preauthDuration.Observe(v)
		sum += v
	}
	rec := httptest.NewRecorder()
	m.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Header().Get("Content-Type"), "text/plain; version=0.0.4", "the text format without an Accept header")
	out := rec.Body.String()

	for _, want := range []string{
		"# HELP mtls_requests_total Device requests answered, by HTTP status code.\n# TYPE mtls_requests_total counter\n" +
			"mtls_requests_total{code=\"200\"} 2\nmtls_requests_total{code=\"403\"} 1\n",
		`mtls_handshake_failures_total{reason="revoked"} 1` + "\n",
		`mtls_handshake_failures_total{reason="expired"} 0` + "\n",
		`mtls_auth_requests_total{outcome="we\"ird\\la\nbel"} 1` + "\n",
		"# TYPE mtls_preauth_duration_seconds histogram\n" +
			"mtls_preauth_duration_seconds_bucket{le=\"0.005\"} 1\n" +
			"mtls_preauth_duration_seconds_bucket{le=\"0.01\"} 1\n",
		"mtls_preauth_duration_seconds_bucket{le=\"0.25\"} 1\nmtls_preauth_duration_seconds_bucket{le=\"0.5\"} 2\n",
		"mtls_preauth_duration_seconds_bucket{le=\"60\"} 2\nmtls_preauth_duration_seconds_bucket{le=\"+Inf\"} 3\n" +
			"mtls_preauth_duration_seconds_sum " + strconv.FormatFloat(sum, 'g', -1, 64) + "\nmtls_preauth_duration_seconds_count 3\n",
		"mtls_upstream_duration_seconds_bucket{le=\"+Inf\"} 0\nmtls_upstream_duration_seconds_sum 0\nmtls_upstream_duration_seconds_count 0\n",
		"# TYPE mtls_connections_max gauge\nmtls_connections_max 7\n",
		`mtls_connection_refusals_total{reason="conn_ceiling"} 0` + "\n",
		"mtls_accept_errors_total 0\n",
		"\ngo_goroutines ",
		"\nprocess_open_fds ",
	} {
		assert.Contains(t, out, want)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(line, "mtls_") {
			continue // the Go runtime and process collectors
		}
		if strings.HasPrefix(line, "#") {
			assert.Regexp(t, `^# (HELP|TYPE) mtls_[a-z_]+ `, line)
			continue
		}
		assert.Regexp(t, `^mtls_[a-z_]+(\{[a-z]+="(?:[^"\\]|\\.)*"\})? [0-9.e+-]+$`, line, "sample line syntax")
	}
}

func TestStatusHandlerMethods(t *testing.T) {
	a := newOfflineAmbassador(t, newFakeUpstream(), nil)
	code, body := status(t, a)
	assert.Equal(t, http.StatusServiceUnavailable, code, "not ready before the first login")
	assert.Equal(t, "no management token yet; login pending", body.Reason)
}
