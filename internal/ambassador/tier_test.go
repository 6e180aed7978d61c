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

// recorded51Dir holds the auth requests recorded from the Mender 5.1 C++
// client (see its README.md).
const recorded51Dir = "../../testdata/mender-5.1-auth-requests"

// tierBody builds and signs an auth request in Mender 5.1's layout.
func tierBody(t testing.TB, idData string, d *device, tier string) ([]byte, string) {
	t.Helper()
	body, err := menderapi.BuildAuthRequestTier(idData, d.key.Public(), "", tier)
	require.NoError(t, err)
	sig, err := menderapi.Sign(d.key, body)
	require.NoError(t, err)
	return body, sig
}

// TestTierPassesThroughWithBinding: behind --bind-identity mac=CN, an auth
// request carrying a tier reaches the backend byte for byte (the tier
// included) and the backend admits it at that tier; the binding still
// refuses a mismatched identity whatever the tier, and a body without a
// tier (Mender 3.x) still works.
func TestTierPassesThroughWithBinding(t *testing.T) {
	tests := []struct {
		name, cn, idData, tier string
		wantStatus             int
		wantErr                string
		wantTier               string // tier of the backend's auth set
	}{
		{name: "micro", cn: "dev-micro", idData: `{"mac":"dev-micro"}`, tier: menderapi.TierMicro,
			wantStatus: http.StatusOK, wantTier: menderapi.TierMicro},
		{name: "standard", cn: "dev-std", idData: `{"mac":"dev-std"}`, tier: menderapi.TierStandard,
			wantStatus: http.StatusOK, wantTier: menderapi.TierStandard},
		{name: "system", cn: "dev-sys", idData: `{"mac":"dev-sys"}`, tier: menderapi.TierSystem,
			wantStatus: http.StatusOK, wantTier: menderapi.TierSystem},
		{name: "no tier (Mender 3.x body)", cn: "dev-35", idData: `{"mac":"dev-35"}`,
			wantStatus: http.StatusOK, wantTier: menderapi.TierStandard},
		{name: "binding mismatch with a tier", cn: "dev-a", idData: `{"mac":"dev-b"}`, tier: menderapi.TierMicro,
			wantStatus: http.StatusForbidden, wantErr: `identity attribute "mac" does not equal the certificate CN`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newFakeMenderEnv(t, func(o *Options) {
				o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
			})
			d := e.newDevice(leafOpts{cn: tt.cn})
			var body []byte
			var sig string
			if tt.tier == "" {
				body, sig = authBody(t, tt.idData, d.key)
			} else {
				body, sig = tierBody(t, tt.idData, d, tt.tier)
			}
			a, err := e.post(d, body, sig)
			require.NoError(t, err)
			if tt.wantErr != "" {
				assertJSONError(t, a, tt.wantStatus, tt.wantErr)
				assert.Empty(t, e.fm.Devices(), "a refused request reaches no backend")
				return
			}
			require.Equal(t, tt.wantStatus, a.status, "body %s", a.body)
			devs := e.fm.Devices()
			require.Len(t, devs, 1)
			require.Len(t, devs[0].AuthSets, 1)
			assert.Equal(t, menderapi.DevStatusAccepted, devs[0].AuthSets[0].Status)
			assert.Equal(t, tt.wantTier, devs[0].AuthSets[0].Tier, "the backend saw the device's tier")
		})
	}
}

// The forwarded body is the device's, byte for byte, with its tier; the
// ambassador neither drops nor adds fields.
func TestTierForwardedByteForByte(t *testing.T) {
	e := newEnv(t, envConfig{mutate: func(_ *env, o *Options) {
		o.BindIdentity = []Binding{{Attr: "mac", Field: FieldCN}}
	}})
	d := e.newDevice(leafOpts{cn: "dev1"})
	body, sig := tierBody(t, `{"mac":"dev1"}`, d, menderapi.TierMicro)
	a, err := e.post(d, body, sig)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	got := e.up.lastAuth()
	assert.Equal(t, string(body), string(got.Body))
	assert.Equal(t, sig, got.Header.Get(menderapi.HeaderSignature))
	var fields map[string]any
	require.NoError(t, json.Unmarshal(got.Body, &fields))
	assert.Equal(t, "micro", fields["tier"])
}

// TestRecordedMender51Requests replays what the Mender 5.1 client sent (with
// its tier) through the handler, the recorded key's certificate as the TLS
// peer and serial=CN bound: accepted and forwarded byte for byte; a
// mismatched binding or a changed byte is refused.
func TestRecordedMender51Requests(t *testing.T) {
	cp, err := os.ReadFile(filepath.Join(recorded51Dir, "client.crt"))
	require.NoError(t, err)
	blk, _ := pem.Decode(cp)
	require.NotNil(t, blk)
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)

	for _, dir := range []string{"standard", "micro-tenant"} {
		body, err := os.ReadFile(filepath.Join(recorded51Dir, dir, "body.bin"))
		require.NoError(t, err)
		sigB, err := os.ReadFile(filepath.Join(recorded51Dir, dir, "x-men-signature.txt"))
		require.NoError(t, err)
		sig := strings.TrimSpace(string(sigB))
		hj, err := os.ReadFile(filepath.Join(recorded51Dir, dir, "headers.json"))
		require.NoError(t, err)
		var headers [][2]string
		require.NoError(t, json.Unmarshal(hj, &headers))

		tests := []struct {
			name       string
			bind       Binding
			mutate     func([]byte)
			wantStatus int
			wantErr    string
		}{
			{name: "as recorded", bind: Binding{Attr: "serial", Field: FieldCN}, wantStatus: http.StatusOK},
			{name: "tier changed", bind: Binding{Attr: "serial", Field: FieldCN},
				mutate: func(b []byte) {
					i := bytes.LastIndex(b, []byte(`"tier":"`))
					require.GreaterOrEqual(t, i, 0)
					b[i+len(`"tier":"`)] = 'X'
				},
				wantStatus: http.StatusUnauthorized, wantErr: "signature verification failed"},
			{name: "binding mismatch", bind: Binding{Attr: "mac", Field: FieldCN},
				wantStatus: http.StatusForbidden, wantErr: "does not equal the certificate CN"},
		}
		for _, tt := range tests {
			t.Run(dir+"/"+tt.name, func(t *testing.T) {
				up := newFakeUpstream()
				a := newOfflineAmbassador(t, up, func(o *Options) {
					o.ClientCAFiles = []string{filepath.Join(recorded51Dir, "ca.crt")}
					o.BindIdentity = []Binding{tt.bind}
					o.IdentityKeys = []string{"mac", "serial"}
					o.Now = func() time.Time { return cert.NotBefore.Add(time.Hour) }
				})
				b := bytes.Clone(body)
				if tt.mutate != nil {
					tt.mutate(b)
				}
				r := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, bytes.NewReader(b))
				for _, h := range headers {
					if !strings.EqualFold(h[0], "Host") && h[0] != "Content-Length" {
						r.Header.Add(h[0], h[1])
					}
				}
				require.Equal(t, sig, r.Header.Get(menderapi.HeaderSignature))
				r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
				w := httptest.NewRecorder()
				a.Handler().ServeHTTP(w, r)

				require.Equal(t, tt.wantStatus, w.Code, "body %s", w.Body)
				c := up.counts()
				if tt.wantErr != "" {
					assert.Contains(t, w.Body.String(), tt.wantErr)
					assert.Zero(t, c.device, "a refused request is not forwarded")
					return
				}
				assert.Equal(t, 1, c.preauths)
				assert.Equal(t, body, up.lastAuth().Body, "forwarded byte for byte, tier included")
				assert.Equal(t, "API_KEY", up.lastAuth().Header.Get("Authorization"), "the device's headers pass through")
			})
		}
	}
}
