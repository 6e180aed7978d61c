package ambassador

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// recordedDir holds the auth requests recorded from the Mender 3.5 Go client,
// shared by the tests of several packages (see its README.md).
const recordedDir = "../../testdata/mender-3.5-auth-requests"

type recordedRequest struct {
	body    []byte
	sig     string
	headers [][2]string
	cert    *x509.Certificate
}

func loadRecorded(t *testing.T, kind string) recordedRequest {
	t.Helper()
	dir := filepath.Join(recordedDir, kind)
	body, err := os.ReadFile(filepath.Join(dir, "body.bin"))
	require.NoError(t, err)
	sig, err := os.ReadFile(filepath.Join(dir, "x-men-signature.txt"))
	require.NoError(t, err)
	hj, err := os.ReadFile(filepath.Join(dir, "headers.json"))
	require.NoError(t, err)
	var headers [][2]string
	require.NoError(t, json.Unmarshal(hj, &headers))
	cp, err := os.ReadFile(filepath.Join(dir, "client.crt"))
	require.NoError(t, err)
	blk, _ := pem.Decode(cp)
	require.NotNil(t, blk, "client.crt must be PEM")
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return recordedRequest{body: body, sig: strings.TrimSpace(string(sig)), headers: headers, cert: cert}
}

// TestRecordedMender35Requests replays the recorded requests through the
// handler with the recorded client certificate as the TLS peer: each is
// accepted and forwarded byte for byte, and each is refused after a one-byte
// change of its body.
func TestRecordedMender35Requests(t *testing.T) {
	flipMACDigit := func(b []byte) {
		i := bytes.Index(b, []byte("02:00:00"))
		require.GreaterOrEqual(t, i, 0)
		b[i+1] = '3'
	}
	flipTrailingNewline := func(b []byte) {
		require.Equal(t, byte('\n'), b[len(b)-1], "Go's json.Encoder ends the body with a newline")
		b[len(b)-1] = ' '
	}
	for _, kind := range []string{"ecdsa-p256", "ed25519", "rsa2048"} {
		t.Run(kind, func(t *testing.T) {
			rec := loadRecorded(t, kind)
			tests := []struct {
				name       string
				mutate     func([]byte)
				wantStatus int
			}{
				{name: "as recorded", wantStatus: http.StatusOK},
				{name: "identity byte changed", mutate: flipMACDigit, wantStatus: http.StatusUnauthorized},
				{name: "trailing newline changed", mutate: flipTrailingNewline, wantStatus: http.StatusUnauthorized},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					up := newFakeUpstream()
					a := newOfflineAmbassador(t, up, func(o *Options) {
						o.ClientCAFiles = []string{filepath.Join(recordedDir, "ca.crt")}
						// The recorded certificates have a fixed validity; check them at a fixed time.
						o.Now = func() time.Time { return rec.cert.NotBefore.Add(time.Hour) }
					})
					body := bytes.Clone(rec.body)
					if tt.mutate != nil {
						tt.mutate(body)
					}
					r := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, bytes.NewReader(body))
					for _, h := range rec.headers {
						if h[0] != "Host" && h[0] != "Content-Length" {
							r.Header.Add(h[0], h[1])
						}
					}
					require.Equal(t, rec.sig, r.Header.Get(menderapi.HeaderSignature))
					r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{rec.cert}}
					w := httptest.NewRecorder()
					a.Handler().ServeHTTP(w, r)

					require.Equal(t, tt.wantStatus, w.Code, "body %s", w.Body)
					c := up.counts()
					if tt.wantStatus != http.StatusOK {
						assert.Contains(t, w.Body.String(), "signature verification failed")
						assert.Zero(t, c.device, "a changed body is not forwarded")
						assert.Zero(t, c.preauths, "a changed body is not preauthorized")
						return
					}
					assert.Equal(t, 1, c.preauths)
					assert.Equal(t, rec.body, up.lastAuth().Body, "forwarded byte for byte")
					assert.Equal(t, "Bearer", up.lastAuth().Header.Get("Authorization"), "the device's headers pass through")
					assert.Equal(t, menderapi.ContentTypeJWT, w.Header().Get(menderapi.HeaderContentType))
				})
			}
		})
	}
}
