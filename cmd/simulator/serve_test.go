package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestServeFaultFlags(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name    string
		flags   serveFlags
		wantErr string
		want503 bool // the device request is answered 503 (else it passes on to a 401)
		mgmtOK  bool
	}{
		{name: "fail-rate 1 answers 503 on device paths only", flags: serveFlags{failRate: 1}, want503: true, mgmtOK: true},
		{name: "latency delays but answers", flags: serveFlags{latency: time.Millisecond}},
		{name: "fail-rate out of range", flags: serveFlags{failRate: 1.5}, wantErr: "--fail-rate 1.5"},
		{name: "drop-rate out of range", flags: serveFlags{dropRate: -0.1}, wantErr: "--drop-rate -0.1"},
		{name: "negative latency", flags: serveFlags{latency: -time.Second}, wantErr: "--latency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := fakemender.New(fakemender.Options{})
			require.NoError(t, err)
			err = addServeFaults(b, &tt.flags, log)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			rec := httptest.NewRecorder()
			b.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, menderapi.PathNextV1, nil))
			// Without the fault a GET next without a token is 401; the
			// latency fault passes the request on (then 401).
			if tt.want503 {
				assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
			} else {
				assert.Equal(t, http.StatusUnauthorized, rec.Code)
			}
			assert.Equal(t, 1, b.Stats().FaultsApplied, "the fault applied to the device request")
			if tt.mgmtOK {
				rec := httptest.NewRecorder()
				b.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, menderapi.PathDevauthDevices, nil))
				assert.Equal(t, http.StatusUnauthorized, rec.Code, "management paths get no fault")
				assert.Equal(t, 1, b.Stats().FaultsApplied)
			}
		})
	}
}

func TestBackendListenWarning(t *testing.T) {
	for addr, warn := range map[string]bool{
		"127.0.0.1:0": false, "127.0.0.5:9000": false, "[::1]:0": false, "localhost:0": false,
		"0.0.0.0:9000": true, ":9000": true, "192.168.1.10:443": true, "[::]:1": true, "mender.example.com:443": true,
	} {
		got := backendListenWarning(addr)
		if warn {
			assert.Contains(t, got, "without mTLS", addr)
		} else {
			assert.Empty(t, got, addr)
		}
	}
}
