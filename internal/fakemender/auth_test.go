package fakemender_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// recordedDir holds the auth requests recorded from the Mender 3.5 Go client,
// shared by the tests of several packages (see its README.md).
const recordedDir = "../../testdata/mender-3.5-auth-requests"

// recorded returns the body and signature Mender 3.5 sent for one key type.
func recorded(t testing.TB, kind string) ([]byte, string) {
	t.Helper()
	body, err := os.ReadFile(filepath.Join(recordedDir, kind, "body.bin"))
	require.NoError(t, err)
	sig, err := os.ReadFile(filepath.Join(recordedDir, kind, "x-men-signature.txt"))
	require.NoError(t, err)
	return body, strings.TrimSpace(string(sig))
}

func rawAuth(body []byte, sig string) req {
	return req{method: "POST", path: menderapi.PathAuthRequests, body: body, hdr: map[string]string{menderapi.HeaderSignature: sig}}
}

func TestRecordedMender35Requests(t *testing.T) {
	for _, kind := range []string{"ecdsa-p256", "rsa2048", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			body, sig := recorded(t, kind)
			s := newServer(t, fakemender.Options{})

			rec := do(t, s, rawAuth(body, sig))
			require.Equal(t, http.StatusUnauthorized, rec.Code, rec.Body.String())
			assert.Equal(t, "dev auth: unauthorized", errorMsg(t, rec).Error)
			devs := s.Devices()
			require.Len(t, devs, 1)
			assert.Equal(t, menderapi.DevStatusPending, devs[0].Status)
			assert.Equal(t, map[string]any{"mac": "02:00:00:00:00:01"}, devs[0].IdentityData)

			require.NoError(t, s.Accept(devs[0].ID))
			rec = do(t, s, rawAuth(body, sig))
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			assert.Equal(t, menderapi.ContentTypeJWT, rec.Header().Get("Content-Type"))
			assert.Len(t, strings.Split(rec.Body.String(), "."), 3)

			// Every single-byte change is refused: 401 when the body still
			// parses (the signature no longer covers it), 400 otherwise.
			sigFailures := 0
			for i := range body {
				mut := append([]byte(nil), body...)
				mut[i] ^= 0x01
				rec := do(t, s, rawAuth(mut, sig))
				if _, perr := menderapi.ParseAuthRequest(mut); perr == nil {
					require.Equal(t, http.StatusUnauthorized, rec.Code, "byte %d flipped: %s", i, rec.Body.String())
					assert.Equal(t, "signature verification failed", errorMsg(t, rec).Error)
					sigFailures++
				} else {
					require.Equal(t, http.StatusBadRequest, rec.Code, "byte %d flipped: %s", i, rec.Body.String())
				}
			}
			// Flips in id_data, field names and (for RSA and Ed25519) the
			// key bits still parse; an EC point flip mostly does not.
			assert.GreaterOrEqual(t, sigFailures, 16, "flips must reach signature verification")

			// Flipping a byte of the signature itself is refused too.
			raw, err := base64.StdEncoding.DecodeString(sig)
			require.NoError(t, err)
			for _, i := range []int{0, len(raw) / 2, len(raw) - 1} {
				mut := append([]byte(nil), raw...)
				mut[i] ^= 0x80
				rec := do(t, s, rawAuth(body, base64.StdEncoding.EncodeToString(mut)))
				assert.Equal(t, http.StatusUnauthorized, rec.Code, "signature byte %d flipped", i)
			}
			assert.Len(t, s.Devices(), 1, "refused requests must not create devices")
		})
	}
}

// signedBody returns a fresh auth body for key and the identity.
func signedBody(t *testing.T, key crypto.Signer, tenant string) []byte {
	t.Helper()
	body, err := menderapi.BuildAuthRequest(`{"mac":"02:00:00:00:00:09"}`, key.Public(), tenant)
	require.NoError(t, err)
	return body
}

// TestAuthRequestHazards covers the auth-request items of protocol §11.
func TestAuthRequestHazards(t *testing.T) {
	edKey := newKey(t, "ed25519")
	ecKey := newKey(t, "ecdsa").(*ecdsa.PrivateKey)
	rsaKey := newKey(t, "rsa").(*rsa.PrivateKey)

	sign := func(k crypto.Signer, body []byte) string {
		s, err := menderapi.Sign(k, body)
		require.NoError(t, err)
		return s
	}
	tests := []struct {
		name    string
		build   func() ([]byte, string)
		want    int
		wantMsg string
	}{
		{"valid ed25519", func() ([]byte, string) {
			b := signedBody(t, edKey, "")
			return b, sign(edKey, b)
		}, http.StatusOK, ""},
		{"§11.1 signature over a re-serialized body", func() ([]byte, string) {
			b := signedBody(t, edKey, "")
			var ar menderapi.AuthRequest
			require.NoError(t, json.Unmarshal(b, &ar))
			return mustJSON(t, ar), sign(edKey, b) // sent without the trailing newline
		}, http.StatusUnauthorized, "signature verification failed"},
		{"§11.2 ECDSA raw r||s", func() ([]byte, string) {
			b := signedBody(t, ecKey, "")
			d := sha256.Sum256(b)
			r, s, err := ecdsa.Sign(rand.Reader, ecKey, d[:])
			require.NoError(t, err)
			raw := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
			return b, base64.StdEncoding.EncodeToString(raw)
		}, http.StatusUnauthorized, "signature verification failed"},
		{"§11.3 Ed25519 over SHA-256(body)", func() ([]byte, string) {
			b := signedBody(t, edKey, "")
			d := sha256.Sum256(b)
			return b, base64.StdEncoding.EncodeToString(ed25519.Sign(edKey.(ed25519.PrivateKey), d[:]))
		}, http.StatusUnauthorized, "signature verification failed"},
		{"§11.3 RSA-PSS", func() ([]byte, string) {
			b := signedBody(t, rsaKey, "")
			d := sha256.Sum256(b)
			sig, err := rsa.SignPSS(rand.Reader, rsaKey, crypto.SHA256, d[:], nil)
			require.NoError(t, err)
			return b, base64.StdEncoding.EncodeToString(sig)
		}, http.StatusUnauthorized, "signature verification failed"},
		{"§11.4 URL-safe base64", func() ([]byte, string) {
			b := signedBody(t, edKey, "")
			sig := ed25519.Sign(edKey.(ed25519.PrivateKey), b)
			return b, base64.RawURLEncoding.EncodeToString(sig)
		}, http.StatusUnauthorized, "signature verification failed"},
		{"§11.5 PKCS#1 RSA PUBLIC KEY", func() ([]byte, string) {
			pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)}))
			b := mustJSON(t, menderapi.AuthRequest{IDData: `{"mac":"x"}`, PubKey: pemKey})
			return b, sign(rsaKey, b)
		}, http.StatusBadRequest, ""},
		{"§11.6 id_data as an object", func() ([]byte, string) {
			pemKey, err := menderapi.MarshalPublicKeyPEM(edKey.Public())
			require.NoError(t, err)
			b := mustJSON(t, map[string]any{"id_data": map[string]string{"mac": "x"}, "pubkey": pemKey})
			return b, sign(edKey, b)
		}, http.StatusBadRequest, ""},
		{"id_data not an object", func() ([]byte, string) {
			pemKey, err := menderapi.MarshalPublicKeyPEM(edKey.Public())
			require.NoError(t, err)
			b := mustJSON(t, menderapi.AuthRequest{IDData: `["mac"]`, PubKey: pemKey})
			return b, sign(edKey, b)
		}, http.StatusBadRequest, "invalid auth request: id_data must be a JSON object"},
		{"missing id_data", func() ([]byte, string) {
			pemKey, err := menderapi.MarshalPublicKeyPEM(edKey.Public())
			require.NoError(t, err)
			b := mustJSON(t, menderapi.AuthRequest{PubKey: pemKey})
			return b, sign(edKey, b)
		}, http.StatusBadRequest, "invalid auth request: id_data must be provided"},
		{"malformed JSON", func() ([]byte, string) {
			return []byte(`{"id_data":`), "c2ln"
		}, http.StatusBadRequest, ""},
		{"missing signature header", func() ([]byte, string) {
			return signedBody(t, edKey, ""), ""
		}, http.StatusBadRequest, "missing request signature header"},
		{"signature by another key", func() ([]byte, string) {
			b := signedBody(t, edKey, "")
			return b, sign(newKey(t, "ed25519"), b)
		}, http.StatusUnauthorized, "signature verification failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, fakemender.Options{AutoAccept: true})
			body, sig := tt.build()
			hdr := map[string]string{menderapi.HeaderSignature: sig}
			rec := do(t, s, req{method: "POST", path: menderapi.PathAuthRequests, body: body, hdr: hdr})
			require.Equal(t, tt.want, rec.Code, rec.Body.String())
			if tt.want == http.StatusOK {
				assert.Len(t, s.Devices(), 1)
				return
			}
			assert.Empty(t, s.Devices(), "a refused request must not create a device")
			e := errorMsg(t, rec)
			if tt.wantMsg != "" {
				assert.Equal(t, tt.wantMsg, e.Error)
			}
			assert.Equal(t, rec.Header().Get(menderapi.HeaderRequestID), e.RequestID)
		})
	}
}

func TestAuthAcceptsEveryKeyType(t *testing.T) {
	for _, kind := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			s := newServer(t, fakemender.Options{AutoAccept: true})
			d := &testDevice{key: newKey(t, kind), ident: `{"mac":"02:00:00:00:00:10","sn":"A1"}`}
			rec := d.auth(t, s)
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			// §11.21: the OSS server ignores the tenant token.
			body := signedBody(t, d.key, "tenant-token-is-ignored")
			sig, err := menderapi.Sign(d.key, body)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, do(t, s, rawAuth(body, sig)).Code)
		})
	}
}

// TestJWTClaims checks §3 and §11.7/§11.20: raw JWT body, exact claims.
func TestJWTClaims(t *testing.T) {
	for _, alg := range []string{fakemender.AlgEdDSA, fakemender.AlgRS256} {
		t.Run(alg, func(t *testing.T) {
			clk := newClock()
			s := newServer(t, fakemender.Options{SigningAlg: alg, Now: clk.Now, AutoAccept: true})
			d := newDevice(t, "02:00:00:00:00:02")
			rec := d.auth(t, s)
			require.Equal(t, http.StatusOK, rec.Code)
			tok := rec.Body.String()
			assert.Equal(t, "application/jwt", rec.Header().Get("Content-Type"))
			assert.NotContains(t, tok, "\n", "§11.7: no trailing newline")
			assert.NotContains(t, tok, `"`, "§11.7: no JSON quoting")

			hdr, claims := decodeJWT(t, tok)
			assert.Equal(t, map[string]any{"alg": alg, "typ": "JWT"}, hdr)
			dev := s.Devices()[0]
			require.Len(t, dev.AuthSets, 1)
			uuidV4 := `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`
			assert.Regexp(t, uuidV4, dev.ID)
			assert.Regexp(t, uuidV4, dev.AuthSets[0].ID)
			now := clk.Now().Unix()
			num := func(v int64) json.Number { return json.Number(big.NewInt(v).String()) }
			want := map[string]any{
				"jti": dev.AuthSets[0].ID, "sub": dev.ID, "iss": "Mender",
				"exp": num(now + 7*24*3600), "iat": num(now), "nbf": num(-62135596800),
				"mender.device": true, "mender.plan": "enterprise", "mender.trial": false,
				"mender.addons": []any{
					map[string]any{"name": "configure", "enabled": true},
					map[string]any{"name": "troubleshoot", "enabled": true},
					map[string]any{"name": "monitor", "enabled": true},
				},
			}
			assert.Equal(t, want, claims)

			// The token works on a device endpoint.
			rec = do(t, s, req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: bearerHdr(tok)})
			assert.Equal(t, http.StatusNoContent, rec.Code)
		})
	}
}

// TestAuthSetStateMachine covers pending/accepted/rejected, §11.18 (a new
// key on an accepted identity) and decommissioning.
func TestAuthSetStateMachine(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d, devID, tok := acceptedDevice(t, s, "02:00:00:00:00:03")
	inv := func(tok string) int {
		return do(t, s, req{method: "PATCH", path: menderapi.PathInventoryAttributes, body: []byte(`[{"name":"a","value":"b"}]`), hdr: bearerHdr(tok)}).Code
	}
	require.Equal(t, http.StatusOK, inv(tok))

	// §11.18: same identity, new key → new pending auth set and 401.
	rotated := &testDevice{key: newKey(t, "ecdsa"), ident: d.ident}
	assert.Equal(t, http.StatusUnauthorized, rotated.auth(t, s).Code)
	dev := deviceByMAC(t, s, "02:00:00:00:00:03")
	require.Len(t, dev.AuthSets, 2)
	assert.Equal(t, devID, dev.ID, "same identity, same device")
	assert.Equal(t, menderapi.DevStatusAccepted, dev.AuthSets[0].Status)
	assert.Equal(t, menderapi.DevStatusPending, dev.AuthSets[1].Status)
	assert.Equal(t, menderapi.DevStatusAccepted, dev.Status)
	assert.Equal(t, http.StatusOK, inv(tok), "the old key's token keeps working")

	// Accepting the new set rejects the old one and kills its token.
	require.NoError(t, s.Accept(devID))
	assert.ErrorIs(t, s.Accept(devID), fakemender.ErrNoPending)
	assert.Equal(t, http.StatusUnauthorized, inv(tok))
	assert.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "old key now rejected")
	rec := rotated.auth(t, s)
	require.Equal(t, http.StatusOK, rec.Code)
	tok2 := rec.Body.String()
	assert.Equal(t, http.StatusOK, inv(tok2))
	assert.Equal(t, "rejected", s.Stats().AuthRequests[len(s.Stats().AuthRequests)-2].Outcome)

	// Rejecting through the management API: 204, then 401 everywhere.
	aid := deviceByMAC(t, s, "02:00:00:00:00:03").AuthSets[1].ID
	path := menderapi.PathDevauthDevices + "/" + devID + "/auth/" + aid + "/status"
	rec = do(t, s, req{method: "PUT", path: path, body: []byte(`{"status":"rejected"}`), hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	assert.Equal(t, http.StatusUnauthorized, inv(tok2))
	assert.Equal(t, http.StatusUnauthorized, rotated.auth(t, s).Code)

	// Decommission: the device is gone and comes back pending, with a new id.
	rec = do(t, s, req{method: "DELETE", path: menderapi.PathDevauthDevices + "/" + devID, hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusNoContent, rec.Code)
	assert.Empty(t, s.Devices())
	assert.Equal(t, http.StatusUnauthorized, rotated.auth(t, s).Code)
	again := deviceByMAC(t, s, "02:00:00:00:00:03")
	assert.NotEqual(t, devID, again.ID)
	assert.Equal(t, menderapi.DevStatusPending, again.Status)
	assert.ErrorIs(t, s.Accept("no-such-device"), fakemender.ErrNotFound)
}

// TestRevokeAndReauth: DELETE tokens/{jti} → 401 → a new auth request works.
func TestRevokeAndReauth(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d, _, tok := acceptedDevice(t, s, "02:00:00:00:00:04")
	_, claims := decodeJWT(t, tok)
	jti := claims["jti"].(string)
	next := func(tok string) int {
		return do(t, s, req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: bearerHdr(tok)}).Code
	}
	require.Equal(t, http.StatusNoContent, next(tok))

	rec := do(t, s, req{method: "DELETE", path: menderapi.PathDevauthTokensPrefix + jti, hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusNoContent, rec.Code)
	rec = do(t, s, req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: bearerHdr(tok)})
	assert.Equal(t, http.StatusUnauthorized, rec.Code)
	assert.Equal(t, `Bearer realm="ManagementJWT"`, rec.Header().Get("WWW-Authenticate"))
	assert.Equal(t, http.StatusNotFound, do(t, s, req{method: "DELETE", path: menderapi.PathDevauthTokensPrefix + jti, hdr: bearerHdr(mgmt)}).Code)

	rec = d.auth(t, s)
	require.Equal(t, http.StatusOK, rec.Code)
	fresh := rec.Body.String()
	assert.Equal(t, http.StatusNoContent, next(fresh))

	// Decommissioning kills the device's tokens too.
	devID := s.Devices()[0].ID
	require.Equal(t, http.StatusNoContent, do(t, s, req{method: "DELETE", path: menderapi.PathDevauthDevices + "/" + devID, hdr: bearerHdr(mgmt)}).Code)
	assert.Equal(t, http.StatusUnauthorized, next(fresh))
}

// TestExpiredTokenIs401 covers §11.19: expiry is 401, never 403.
func TestExpiredTokenIs401(t *testing.T) {
	clk := newClock()
	s := newServer(t, fakemender.Options{Now: clk.Now, TokenLifetime: time.Hour})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:05")
	next := req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: bearerHdr(tok)}
	clk.Advance(59 * time.Minute)
	assert.Equal(t, http.StatusNoContent, do(t, s, next).Code)
	clk.Advance(time.Minute)
	rec := do(t, s, next)
	assert.Equal(t, http.StatusUnauthorized, rec.Code)
	assert.Equal(t, `Bearer realm="ManagementJWT"`, rec.Header().Get("WWW-Authenticate"))
}

// TestAuthorizationHeader covers §11.9 and token forgery attempts.
func TestAuthorizationHeader(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	_, _, tok := acceptedDevice(t, s, "02:00:00:00:00:06")
	mgmt := login(t, s)
	other := newServer(t, fakemender.Options{AutoAccept: true})
	foreign := newDevice(t, "02:00:00:00:00:06").auth(t, other).Body.String()
	parts := strings.Split(tok, ".")
	tests := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"bearer", map[string]string{"Authorization": "Bearer " + tok}, http.StatusNoContent},
		{"scheme is case-insensitive", map[string]string{"Authorization": "bEaReR " + tok}, http.StatusNoContent},
		{"JWT cookie without header", map[string]string{"Cookie": "JWT=" + tok}, http.StatusNoContent},
		{"missing", nil, http.StatusUnauthorized},
		{"two spaces", map[string]string{"Authorization": "Bearer  " + tok}, http.StatusUnauthorized},
		{"trailing space", map[string]string{"Authorization": "Bearer " + tok + " "}, http.StatusUnauthorized},
		{"other scheme", map[string]string{"Authorization": "Token " + tok}, http.StatusUnauthorized},
		{"bare token", map[string]string{"Authorization": tok}, http.StatusUnauthorized},
		{"empty bearer", map[string]string{"Authorization": "Bearer"}, http.StatusUnauthorized},
		{"garbage", map[string]string{"Authorization": "Bearer a.b.c"}, http.StatusUnauthorized},
		{"tampered claims", map[string]string{"Authorization": "Bearer " + parts[0] + "." + parts[1] + "x." + parts[2]}, http.StatusUnauthorized},
		{"signed by another server", map[string]string{"Authorization": "Bearer " + foreign}, http.StatusUnauthorized},
		{"alg none", map[string]string{"Authorization": "Bearer " + b64json(t, map[string]string{"alg": "none"}) + "." + parts[1] + "."}, http.StatusUnauthorized},
		{"management token on a device route", bearerHdr(mgmt), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, s, req{method: "GET", path: menderapi.PathNextV1 + "?artifact_name=a&device_type=b", hdr: tt.hdr})
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
			if tt.want == http.StatusUnauthorized {
				assert.Equal(t, `Bearer realm="ManagementJWT"`, rec.Header().Get("WWW-Authenticate"))
				assert.Equal(t, "unauthorized", errorMsg(t, rec).Error)
			}
		})
	}
}

func b64json(t *testing.T, v any) string { return base64.RawURLEncoding.EncodeToString(mustJSON(t, v)) }
