package menderapi

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorded51 holds the auth requests recorded from the Mender 5.1 C++ client
// (see its README.md).
const recorded51 = "../../testdata/mender-5.1-auth-requests"

type recorded51Request struct {
	name string
	body []byte
	sig  string
	// cert is a certificate for the recorded key, issued after the capture.
	cert *x509.Certificate
}

func loadRecorded51(t *testing.T) []recorded51Request {
	t.Helper()
	certPEM, err := os.ReadFile(filepath.Join(recorded51, "client.crt"))
	require.NoError(t, err, "the recorded Mender 5.1 requests live in the repository's top-level testdata/")
	blk, _ := pem.Decode(certPEM)
	require.NotNil(t, blk)
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	var out []recorded51Request
	for _, name := range []string{"standard", "micro-tenant"} {
		dir := filepath.Join(recorded51, name)
		body, err := os.ReadFile(filepath.Join(dir, "body.bin"))
		require.NoError(t, err)
		sig, err := os.ReadFile(filepath.Join(dir, "x-men-signature.txt"))
		require.NoError(t, err)
		out = append(out, recorded51Request{name, body, strings.TrimSpace(string(sig)), cert})
	}
	return out
}

// The requests recorded from Mender 5.1 verify and parse with their tier, and
// BuildAuthRequestTier rebuilds them byte for byte from their fields: the
// agent's body has exactly the 5.1 layout.
func TestRecordedMender51Requests(t *testing.T) {
	want := map[string]struct{ tier, tenant string }{
		"standard":     {TierStandard, ""},
		"micro-tenant": {TierMicro, "tenant-token-for-tests"},
	}
	for _, rec := range loadRecorded51(t) {
		t.Run(rec.name, func(t *testing.T) {
			req, err := VerifyAuthRequest(rec.body, rec.sig)
			require.NoError(t, err)
			assert.True(t, PublicKeysEqual(req.Key, rec.cert.PublicKey), "client.crt holds the recorded key")
			assert.Equal(t, want[rec.name].tier, req.Tier)
			assert.Equal(t, want[rec.name].tier, req.EffectiveTier())
			assert.Equal(t, want[rec.name].tenant, req.TenantToken)
			assert.Equal(t, `{"mac":"52:54:00:ab:cd:ef","serial":"SN-0001"}`, req.CanonicalIDData)
			assert.NotEqual(t, byte('\n'), rec.body[len(rec.body)-1], "the C++ client sends no trailing newline")

			got, err := BuildAuthRequestTier(req.IDData, rec.cert.PublicKey, req.TenantToken, req.Tier)
			require.NoError(t, err)
			assert.Equal(t, string(rec.body), string(got), "BuildAuthRequestTier must produce Mender 5.1's bytes")

			for _, pos := range []int{0, len(rec.body) / 2, len(rec.body) - 3} {
				mut := append([]byte(nil), rec.body...)
				mut[pos] ^= 0x01
				assert.ErrorIs(t, Verify(rec.cert.PublicKey, mut, rec.sig), ErrBadSignature, "byte %d changed", pos)
			}
		})
	}
}

func TestBuildAuthRequestTier(t *testing.T) {
	seed := sha256.Sum256([]byte("menderapi tier"))
	edk := ed25519.NewKeyFromSeed(seed[:])
	pemKey, err := MarshalPublicKeyPEM(edk.Public())
	require.NoError(t, err)
	pemJSON := strings.ReplaceAll(pemKey, "\n", `\n`)
	tests := []struct {
		name, idData, tenant, tier string
		want                       string
	}{
		{"no tenant token: key left out", `{"mac":"a"}`, "", TierStandard,
			`{"id_data":"{\"mac\":\"a\"}","pubkey":"` + pemJSON + `","tier":"standard"}`},
		{"tenant token between pubkey and tier", `{"mac":"a"}`, "tok", TierMicro,
			`{"id_data":"{\"mac\":\"a\"}","pubkey":"` + pemJSON + `","tenant_token":"tok","tier":"micro"}`},
		{"no HTML escaping, like the C++ client", `{"sn":"<a&b>"}`, "", TierSystem,
			`{"id_data":"{\"sn\":\"<a&b>\"}","pubkey":"` + pemJSON + `","tier":"system"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := BuildAuthRequestTier(tt.idData, edk.Public(), tt.tenant, tt.tier)
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(body))
			sig, err := Sign(edk, body)
			require.NoError(t, err)
			req, err := VerifyAuthRequest(body, sig)
			require.NoError(t, err, "a tiered body verifies like any other")
			assert.Equal(t, tt.tier, req.Tier)
			assert.Equal(t, tt.tenant, req.TenantToken)
		})
	}
}

func TestBuildAuthRequestTierRejectsBadTier(t *testing.T) {
	seed := sha256.Sum256([]byte("menderapi tier"))
	edk := ed25519.NewKeyFromSeed(seed[:])
	for _, tier := range []string{"", "Standard", "gold", " micro"} {
		_, err := BuildAuthRequestTier(`{"mac":"a"}`, edk.Public(), "", tier)
		require.Error(t, err, "tier %q", tier)
		assert.Contains(t, err.Error(), "want standard, micro or system")
	}
}

// Golden auth-request body in the agent's (Mender 5.1) layout for a fixed
// identity and key, and its golden Ed25519 signature.
func TestGoldenAuthRequestTier(t *testing.T) {
	seed := sha256.Sum256([]byte("menderapi golden"))
	edk := ed25519.NewKeyFromSeed(seed[:])
	body, err := BuildAuthRequestTier(Attributes{"mac": {"02:00:00:00:00:01"}}.IdentityJSON(), edk.Public(), "", TierStandard)
	require.NoError(t, err)
	sig, err := Sign(edk, body)
	require.NoError(t, err)
	golden(t, "auth-request-tier-ed25519.body", body)
	golden(t, "auth-request-tier-ed25519.sig", []byte(sig+"\n"))
}

// The tier is parsed but not validated (the open-source server ignores it);
// a body without one, as Mender 3.x sends, means standard.
func TestParseAuthRequestTier(t *testing.T) {
	pkix, err := MarshalPublicKeyPEM(genKeys(t)["ed25519"].Public())
	require.NoError(t, err)
	js, _ := jsonString(pkix)
	prefix := `{"id_data":"{\"mac\":\"x\"}","pubkey":` + js
	tests := []struct {
		name, body          string
		wantTier, effective string
		wantErr             bool
	}{
		{"no tier (Mender 3.x)", prefix + `,"tenant_token":""}`, "", TierStandard, false},
		{"standard", prefix + `,"tier":"standard"}`, TierStandard, TierStandard, false},
		{"micro", prefix + `,"tier":"micro"}`, TierMicro, TierMicro, false},
		{"unknown value is kept for the server to judge", prefix + `,"tier":"gold"}`, "gold", "gold", false},
		{"not a string", prefix + `,"tier":5}`, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ParseAuthRequest([]byte(tt.body))
			if tt.wantErr {
				assert.ErrorIs(t, err, ErrBadRequest)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantTier, req.Tier)
			assert.Equal(t, tt.effective, req.EffectiveTier())
		})
	}
}

func TestValidTier(t *testing.T) {
	for _, s := range []string{"standard", "micro", "system"} {
		assert.True(t, ValidTier(s), s)
	}
	for _, s := range []string{"", "Standard", "MICRO", "gold", "standard "} {
		assert.False(t, ValidTier(s), s)
	}
}
